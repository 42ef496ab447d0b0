"""scripts/measure_window_protocol.py: its decision is confirm_window's on the same splits."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from vit_patching.patching.window_protocol import confirm_window
from vit_patching.zoo import load_dataset, load_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("measure_window_protocol", ROOT / "scripts" / "measure_window_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_records_confirm_windows_decision(script, tmp_path, monkeypatch):
    argv = ["measure_window_protocol.py", "--model", "toy-shapes", "--variants", "denoising,coalition", "--n", "3",
            "--step", "16", "--windows", "0:1,1:2,2:4", "--n-candidates", "2", "--coalitions", "2", "--out",
            str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    model = load_model("toy-shapes")
    a, b = load_dataset("shapes", n=3, seed=1), load_dataset("shapes", n=3, seed=2)
    for variant, kw in (("denoising", dict(direction="denoising")),
                        ("coalition", dict(coalitions=2, coalition_groups=2, coalition_seed=0))):
        res = json.loads((tmp_path / f"toy-shapes_{variant}.json").read_text())
        dec = confirm_window(model, a.images, b.images, [(0, 1), (1, 2), (2, 4)], selection_masks=a.masks,
                             confirmation_masks=b.masks, n_candidates=2, eval_kwargs={"step": 16}, **kw)
        assert res["decision"]["message"] == dec.message and res["default"] == [0, 2]
        assert [tuple(w) for w in res["decision"]["candidates"]] == dec.candidates
        for got, want in zip(res["decision"]["evidence"], dec.evidence):
            assert got["diff"] == pytest.approx(want["diff"], abs=1e-12)
            assert got["p_holm"] == pytest.approx(want["p_holm"], abs=1e-12) or math.isnan(want["p_holm"])
        sel = {(r["start"], r["end"]): r for r in res["selection"]}
        assert sorted(sel) == [(0, 1), (0, 2), (1, 2), (2, 4)] and sel[(0, 2)]["diff"] == 0.0
        table = (tmp_path / f"toy-shapes_{variant}.md").read_text()
        assert f"| [0, 2) (default, rank " in table and dec.message in table
    summary = (tmp_path / "decisions.md").read_text().splitlines()
    assert [row.split(" | ")[1] for row in summary[2:]] == ["denoising", "coalition"]


"""scripts/measure_window_protocol.py: its decision is confirm_window's on the same splits, and the tables in
docs/caap_defaults.md are the ones it writes from the committed JSON results (docs/window_protocol/)."""
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
RESULTS = ROOT / "docs" / "window_protocol"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("measure_window_protocol", ROOT / "scripts" / "measure_window_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_records_confirm_windows_decision(script, tmp_path, monkeypatch):
    argv = ["measure_window_protocol.py", "--model", "toy-shapes", "--variants", "coalition", "--n", "3",
            "--step", "16", "--windows", "0:1,1:2,2:4", "--n-candidates", "2", "--coalitions", "2", "--out",
            str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    model = load_model("toy-shapes")
    a, b = load_dataset("shapes", n=3, seed=1), load_dataset("shapes", n=3, seed=2)
    # The coalition variant only (the slowest to recompute is also the one with the most settings to pass on);
    # the single-patch variants go through the same script code, and select_window's plain path is tested in
    # test_windows.py.
    for variant, kw in (("coalition", dict(coalitions=2, coalition_groups=2, coalition_seed=0)),):
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
    assert [row.split(" | ")[1] for row in summary[2:]] == ["coalition"]


def test_docs_tables_are_the_committed_results(script):
    """Every table of the section "Window protocol (issue 25)" is regenerated from the JSON it reports."""
    doc = (ROOT / "docs" / "caap_defaults.md").read_text()
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    assert sorted((r["model"], r["variant"]) for r in results) == sorted(
        (m, v) for m in script.MODELS for v in script.VARIANTS)
    for res in results:
        assert res["settings"]["n"] >= 64 and res["decision"]["settings"]["n_confirmation"] >= 64
        assert script.markdown(res, res["settings"]["top"]) in doc, (res["model"], res["variant"])
    results.sort(key=lambda r: (script.MODELS.index(r["model"]), script.VARIANTS.index(r["variant"])))
    assert script.decisions(results) in doc and script.runs_table(results) in doc
    followup = [json.loads(p.read_text()) for p in sorted((RESULTS / "followup").glob("*.json"))]
    assert [(r["model"], r["variant"], r["windows"]) for r in followup] == [("toy-relation", "coalition", "0:1")]
    assert script.markdown(followup[0], 5) in doc
    assert script.runs_table(followup).splitlines()[-1] in doc

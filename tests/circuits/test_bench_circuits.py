"""scripts/bench_circuits.py --quick runs end to end (so the benchmark cannot rot) and its known-circuit numbers
are the known answers: exact per-edge patching is the oracle (AUROC 1, CPR 0.965) and correlates perfectly with
itself."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_circuits.py"


def test_quick_bench(capsys):
    spec = importlib.util.spec_from_file_location("bench_circuits", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    edges, atp = bench.main(["--quick", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| model | edges | pairs | scorer | time_s | rho_exact |" in out
    assert list(edges.loc[edges.scorer.str[0] != "(", "scorer"]) == [
        "eap", "eap-ig2", "eap-ig-act2", "atp-graddrop", "ifr", "atp-nodes", "exact"]
    exact = edges[edges.scorer == "exact"].iloc[0]
    assert exact.auroc == 1.0 and exact.rho_exact == 1.0
    assert exact.cpr_corrupted == pytest.approx(0.965, abs=1e-3) and exact.cmd_corrupted == pytest.approx(0.034, abs=1e-3)
    eap = edges[edges.scorer == "eap"].iloc[0]
    assert 0.5 < eap.auroc < 1.0  # first-order scores rank distractor edges above some known ones
    assert set(atp.experiment) == {"layer sweep", "head patching (AtP*)", "head patching (plain AtP)"}
    assert (atp.cells == [136, 40, 40]).all()  # 4 sites x 2 blocks x 17 positions; 5 sites x 2 blocks x 4 heads

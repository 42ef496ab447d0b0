"""Circuits on float64 models: edge scores, AtP estimates and circuit evaluations keep float64 end to end, and
equal the float32 run of the same weights to float32 rounding (observed: up to 1e-6 on metrics of size ~1)."""
import pytest
import torch

from circuit_toys import metric, pair, tiny
from vit_patching.circuits import atp_heads, atp_layer_sweep, eap, eap_ig, evaluate_circuit, select_circuit


@pytest.fixture(scope="module")
def runs():
    return {dt: (tiny(dtype=dt), *pair(dtype=dt)) for dt in (torch.float32, torch.float64)}


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_edge_scores_and_circuit_evaluation_in_float64(runs, method):
    out = {}
    for dt, (model, clean, corrupted) in runs.items():
        scores = eap(model, clean, corrupted, metric()) if method == "eap" else \
            eap_ig(model, clean, corrupted, metric(), steps=3)
        for t in (scores.scores, scores.per_image, scores.clean_score, scores.corrupted_score):
            assert t.dtype == dt
        circuits = [select_circuit(scores, top_n=n) for n in (12, 40)]
        ev = evaluate_circuit(model, circuits, clean, corrupted, metric())
        for t in (ev.values, ev.clean_score, ev.corrupted_score, ev.empty_score, ev.faithfulness):
            assert t.dtype == dt
        out[dt] = scores, circuits, ev
    s32, c32, e32 = out[torch.float32]
    s64, c64, e64 = out[torch.float64]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(c32, c64))  # the same circuits are chosen
    torch.testing.assert_close(s64.scores, s32.scores.double(), rtol=0, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(e64.values, e32.values.double(), rtol=0, atol=2e-6)
    torch.testing.assert_close(e64.clean_score, e32.clean_score.double(), rtol=0, atol=2e-6)
    torch.testing.assert_close(e64.faithfulness, e32.faithfulness.double(), rtol=0, atol=2e-6)
    assert (e64.faithfulness - torch.tensor([0.0, 1.0], dtype=torch.float64)).abs().min() > 0.01  # not trivial


def test_atp_in_float64(runs):
    out = {}
    for dt, (model, clean, corrupted) in runs.items():
        sweep = atp_layer_sweep(model, clean, corrupted, metric(), sites=("resid_pre", "attn_out"))
        heads = atp_heads(model, clean, corrupted, metric(), by_pos=True)
        assert sweep.values.dtype == heads.values.dtype == dt
        out[dt] = sweep, heads
    for r32, r64 in zip(out[torch.float32], out[torch.float64]):
        torch.testing.assert_close(r64.values, r32.values.double(), rtol=0, atol=2e-6)

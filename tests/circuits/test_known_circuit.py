"""The hand-built model whose circuit is known: the model is what timm computes, the task is solved, and the
claim holds: the four known edges alone reproduce the clean run, removing any one of them gives the corrupted
run, and removing any other single edge changes nothing."""
from __future__ import annotations

import pytest
import torch

from vit_patching.circuits import Circuit, Graph, evaluate_circuit
from vit_patching.zoo.known_circuit import (
    KNOWN_EDGES, MARKED_PATCH, known_circuit_model, known_circuit_pairs, known_circuit_timm,
)

POS = 1 + 4 * MARKED_PATCH[0] + MARKED_PATCH[1]


@pytest.fixture(scope="module")
def model():
    return known_circuit_model()


@pytest.fixture(scope="module")
def pairs():
    return known_circuit_pairs(4, seed=0)


def test_model_is_timms_model_and_solves_the_task(model):
    p = known_circuit_pairs(16, seed=3)
    with torch.no_grad():
        ours, theirs = model(p.clean), known_circuit_timm()(p.clean)
        corrupted = model(p.corrupted)
    assert (ours - theirs).abs().max() < 1e-5
    assert torch.equal(ours.argmax(-1), p.clean_labels)
    assert torch.equal(corrupted.argmax(-1), p.corrupted_labels)
    assert sorted(p.clean_labels.tolist()) == [0] * 8 + [1] * 8


def test_pairs_differ_only_in_the_marked_patch_with_red_and_green_swapped():
    p = known_circuit_pairs(6, seed=1)
    r, c = MARKED_PATCH
    cell = (slice(None), slice(None), slice(8 * r, 8 * r + 8), slice(8 * c, 8 * c + 8))
    outside = torch.ones_like(p.clean, dtype=torch.bool)
    outside[cell] = False
    assert torch.equal(p.clean[outside], p.corrupted[outside])
    assert torch.equal(p.clean[cell][:, [1, 0, 2]], p.corrupted[cell])
    red_minus_green = (p.clean[:, 0] - p.clean[:, 1])[:, 8 * r, 8 * c]
    assert torch.equal(p.clean_labels, (red_minus_green > 0).long())
    assert red_minus_green.abs().min() >= 0.6
    assert torch.equal(known_circuit_pairs(6, seed=1).clean, p.clean)  # deterministic


def test_copy_heads_attend_to_one_token_exactly(model, pairs):
    _, cache = model.run_with_cache(pairs.clean)
    p0, p1 = cache["blocks.0.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"]
    off = [i for i in range(17) if i != POS]
    for h in (0, 1):  # L0H0 (circuit) and L0H1 (distractor) read the marked patch only, from every query
        assert torch.equal(p0[:, h, :, POS], torch.ones_like(p0[:, h, :, POS]))
        assert torch.equal(p0[:, h][:, :, off], torch.zeros_like(p0[:, h][:, :, off]))
    assert torch.equal(p1[:, 0, :, 0], torch.ones_like(p1[:, 0, :, 0]))  # L1H0 reads CLS
    assert p1[:, 0, :, 1:].max() == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_known_circuit_claim(seed):
    """(a) the known circuit alone, and (seed 0) the full graph less any one other edge, give faithfulness 1;
    (b) the known circuit less any one of its edges gives faithfulness 0. Observed: within 2e-7 of 1 and of 0
    (float32 rounding)."""
    model, p = known_circuit_model(seed), known_circuit_pairs(4, seed=seed)
    g = Graph.of(model)
    known = Circuit.from_edges(g, KNOWN_EDGES)
    minus_known = [Circuit.from_edges(g, [e for e in KNOWN_EDGES if e != k]) for k in KNOWN_EDGES]
    others = [e for e in g.edges if e not in KNOWN_EDGES]
    full_minus_other = [Circuit(g, g.mask & ~g.index([e])) for e in others] if seed == 0 else []
    assert len(g.edges) == 110 and len(others) == 106
    ev = evaluate_circuit(model, [known] + minus_known + full_minus_other, p.clean, p.corrupted, p.metric())
    f = ev.faithfulness
    assert ev.clean_score.min() > 10 and ev.corrupted_score.max() < -10  # a real effect to be faithful to
    assert abs(float(f[0]) - 1) < 3e-7
    assert f[1:5].abs().max() < 3e-7
    if seed == 0:
        assert len(f) == 111 and (f[5:] - 1).abs().max() < 3e-7


def test_claim_holds_to_float64_rounding():
    model, p = known_circuit_model(dtype=torch.float64), known_circuit_pairs(4, dtype=torch.float64)
    g = Graph.of(model)
    circuits = [Circuit.from_edges(g, KNOWN_EDGES)] + [
        Circuit.from_edges(g, [e for e in KNOWN_EDGES if e != k]) for k in KNOWN_EDGES]
    f = evaluate_circuit(model, circuits, p.clean, p.corrupted, p.metric()).faithfulness
    assert f.dtype == torch.float64
    assert abs(float(f[0]) - 1) < 1e-15
    assert f[1:].abs().max() < 1e-15


def test_bad_arguments():
    with pytest.raises(ValueError, match="n: expected"):
        known_circuit_pairs(0)
    with pytest.raises(ValueError, match="dtype: expected torch.float32 or torch.float64"):
        known_circuit_model(dtype=torch.float16)
    with pytest.raises(ValueError, match="seed"):
        known_circuit_timm(seed=-1)


def test_exported_from_the_zoo():
    import vit_patching.zoo as zoo

    assert zoo.known_circuit_model is known_circuit_model and zoo.KNOWN_EDGES == KNOWN_EDGES
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        zoo.nope  # noqa: B018

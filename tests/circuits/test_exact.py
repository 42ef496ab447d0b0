"""Exact per-edge patching as a scorer: equal to single-edge removals evaluated one circuit at a time, to
path patching, and on the model whose circuit is known, the known edges are exactly the ones with an effect."""
from __future__ import annotations

import pytest
import torch

from circuit_toys import metric, no_hooks_left, pair, tiny
from vit_patching.circuits import (
    Circuit, Graph, compare_scorers, edge_auroc, evaluate_circuit, exact_edge_cost, exact_edge_scores,
    select_circuit,
)
from vit_patching.patching import path_patch
from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs


def removals(graph: Graph) -> list[Circuit]:
    """The full graph minus one edge, for every edge (sender-major order)."""
    out = []
    for s, r in graph.mask.nonzero().tolist():
        mask = graph.mask.clone()
        mask[s, r] = False
        out.append(Circuit(graph, mask))
    return out


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_equals_single_edge_removals_evaluated_one_by_one(ablation):
    model = tiny(depth=2, seed=3)
    clean, corrupted = pair(3)
    fn = metric(torch.tensor([1, 2, 0]))
    exact = exact_edge_scores(model, clean, corrupted, fn, ablation=ablation, batch_size=16)
    graph = exact.graph
    edges = graph.mask.nonzero().tolist()
    # each removal on its own, in its own evaluate_circuit call: no batching shared with the scorer
    for (s, r), circuit in zip(edges[::5], removals(graph)[::5]):
        ev = evaluate_circuit(model, circuit, clean, corrupted, fn, ablation=ablation)
        want = ev.clean_score - ev.values[0]
        assert (exact.per_image[s, r] - want).abs().max() < 2e-6
    # all of them, every edge
    ev = evaluate_circuit(model, removals(graph), clean, corrupted, fn, ablation=ablation)
    got = exact.per_image[graph.mask]  # sender-major, as removals()
    assert (got - (ev.clean_score[None] - ev.values)).abs().max() < 2e-6
    assert torch.equal(exact.scores[graph.mask], exact.per_image[graph.mask].mean(-1))
    assert exact.scores[~graph.mask].isnan().all()
    assert exact.method == "exact" and exact.options["ablation"] == ablation
    assert got.abs().max() > 0.05  # the effects are not all zero (the test could not fail otherwise)
    assert no_hooks_left(model)


def test_equals_path_patching_noising_with_heads_and_mlps_frozen():
    model = tiny(depth=2, seed=1)
    clean, corrupted = pair(2)
    fn = metric()
    exact = exact_edge_scores(model, clean, corrupted, fn)
    for u, v in [("embed", "L0H1.k"), ("L0H0", "MLP0"), ("L0H1", "L1H0.q"), ("MLP0", "L1H1.v"), ("L1H0", "logits"),
                 ("MLP1", "logits")]:
        res = path_patch(model, clean, corrupted, fn, senders=[u], receivers=[v], freeze=("heads", "mlps"),
                         direction="noising", progress=False)
        patched = res.values[0, 0]  # one sender, one receiver: [batch]
        assert (patched - res.target_score).abs().max() > 1e-3, (u, v)  # the edge matters
        s, r = exact.graph.senders.index(u), exact.graph.receivers.index(v)
        assert (exact.per_image[s, r] - (exact.clean_score - patched)).abs().max() < 2e-6, (u, v)


def test_known_circuit_edges_are_exactly_the_edges_with_an_effect():
    model, pairs = known_circuit_model(), known_circuit_pairs(8, seed=0)
    exact = exact_edge_scores(model, pairs.clean, pairs.corrupted, pairs.metric())
    known = exact.graph.index(KNOWN_EDGES)
    gap = exact.clean_score - exact.corrupted_score  # removing a known edge gives the corrupted run
    scale = float(gap.abs().max())
    assert gap.min() > 20  # logit differences of opposite sign, about +-12
    assert (exact.per_image[known] - gap[None]).abs().max() < 4e-7 * scale
    assert exact.per_image[exact.graph.mask & ~known].abs().max() < 4e-7 * scale
    assert edge_auroc(exact, KNOWN_EDGES) == 1.0
    assert select_circuit(exact, top_n=4).edges == select_circuit(exact, top_n=4, prune=False).edges
    assert sorted(select_circuit(exact, top_n=4).edges) == sorted(KNOWN_EDGES)
    # the oracle's faithfulness curve on MIB's grid (110 edges): f = 0 up to share 0.02 (2 edges), f = 1 from share
    # 0.05 (5 edges): CPR = 0.03 / 2 + 0.95 = 0.965, CMD = 0.019 + 0.03 / 2 = 0.034
    table = compare_scorers(model, pairs.clean, pairs.corrupted, pairs.metric(), scorers={"exact": exact_edge_scores},
                            known_edges=KNOWN_EDGES).table
    assert table.loc[0, "auroc"] == 1.0
    assert table.loc[0, "cpr"] == pytest.approx(0.965, abs=1e-7)
    assert table.loc[0, "cmd"] == pytest.approx(0.034, abs=1e-7)


def test_known_circuit_float64():
    model = known_circuit_model(dtype=torch.float64)
    pairs = known_circuit_pairs(4, seed=1, dtype=torch.float64)
    exact = exact_edge_scores(model, pairs.clean, pairs.corrupted, pairs.metric())
    assert exact.scores.dtype == exact.per_image.dtype == torch.float64
    known = exact.graph.index(KNOWN_EDGES)
    gap = exact.clean_score - exact.corrupted_score
    assert (exact.per_image[known] - gap[None]).abs().max() < 1e-13
    assert exact.per_image[exact.graph.mask & ~known].abs().max() < 1e-13


def test_refuses_large_graphs_before_any_forward():
    model = tiny(depth=2)
    clean, corrupted = pair(2)
    n_edges = int(Graph.of(model).mask.sum())
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=rf"max_edges: expected a graph of at most 10 edges .* got {n_edges} "
                                             rf"edges; it would take {n_edges * 2 * 5:,} row passes"):
            exact_edge_scores(model, clean, corrupted, metric(), max_edges=10)
        with pytest.raises(ValueError, match="max_edges: expected a positive int"):
            exact_edge_scores(model, clean, corrupted, metric(), max_edges=0)
        with pytest.raises(ValueError, match="batch_size"):
            exact_edge_scores(model, clean, corrupted, metric(), batch_size=0)
        with pytest.raises(ValueError, match="ablation"):
            exact_edge_scores(model, clean, corrupted, metric(), ablation="nope")
    finally:
        handle.remove()
    assert calls == []
    assert exact_edge_cost(model, 2) == n_edges * 2 * 5

"""Circuit figures: one node per component with a drawn edge, edge hover texts with values, escaped titles, a
legend for edge colour and width, and score filters (read from the figure object)."""
import functools

import pytest
import torch

from circuit_toys import metric, pair, tiny
from vit_patching.circuits import Circuit, Graph, circuit_figure, eap, select_circuit
from vit_patching.circuits.graph import component
from vit_patching.circuits.plot import N_WIDTHS, NEGATIVE, POSITIVE, node_position


def test_circuit_figure_nodes_edges_and_escaping():
    model, (clean, corrupted) = tiny(), pair()
    scores = eap(model, clean, corrupted, metric())
    circuit = select_circuit(scores, top_n=6)
    fig = circuit_figure(circuit, title="<img src=x onerror=alert(1)>")
    assert "<img" not in fig.layout.title.text
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert list(nodes.text) == circuit.nodes
    hover = next(t for t in fig.data if t.name == "edges")
    assert len(hover.text) == circuit.n_edges
    u, v = circuit.edges[0]
    s, r = circuit.graph.senders.index(u), circuit.graph.receivers.index(v)
    assert f"{u} → {v}" in hover.text[0] and f"{float(scores.scores[s, r]):+.4g}" in hover.text[0]
    colors = {t.line.color for t in fig.data if t.mode == "lines"}
    signs = {bool(scores.scores[circuit.graph.senders.index(a), circuit.graph.receivers.index(b)] >= 0)
             for a, b in circuit.edges}
    assert len(colors) == len(signs)


def test_node_positions_run_left_to_right():
    assert node_position("embed", 2)[0] < node_position("L0H1", 2)[0] < node_position("MLP0", 2)[0] \
        < node_position("L1H0", 2)[0]
    assert node_position("L1H1", 2)[1] == 1
    g = Graph.of(tiny())
    fig = circuit_figure(Circuit(g, torch.zeros_like(g.mask)))  # an empty circuit draws an empty graph
    assert len(next(t for t in fig.data if t.name == "nodes").x) == 0


@functools.lru_cache(maxsize=1)
def _big_graph() -> Graph:
    return Graph.of(tiny(depth=4, num_heads=4, embed_dim=32))


def _big_circuit(n_edges: int = 160):
    """A 4-block, 4-head graph (toy-shapes' shape: 479 edges) with ``n_edges`` random edges and random signed
    scores on every edge."""
    g = _big_graph()
    assert int(g.mask.sum()) == 479
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(g.mask.shape, generator=gen)
    idx = g.mask.nonzero()
    pick = idx[torch.randperm(len(idx), generator=gen)[:n_edges]]
    mask = torch.zeros_like(g.mask)
    mask[pick[:, 0], pick[:, 1]] = True
    return Circuit(g, mask, scores)


def _drawn(fig):
    """(sender, receiver) of every drawn edge, read from the hover texts."""
    hover = next(t for t in fig.data if t.name == "edges")
    return [tuple(t.split("<br>")[0].split(" → ")) for t in hover.text]


def test_legend_names_each_colour_and_width_with_its_score_range():
    c = _big_circuit()
    assert c.n_edges == 160
    fig = circuit_figure(c, max_width=8.0)
    assert fig.layout.showlegend and fig.layout.legend.title.text == "160 edges; colour: sign, width: |score|"
    lines = [t for t in fig.data if t.mode == "lines"]
    assert all(t.showlegend is not False for t in lines)
    assert all(t.showlegend is False for t in fig.data if t.mode != "lines")
    g = c.graph
    vals = {(g.senders[s], g.receivers[r]): float(c.scores[s, r]) for s, r in c.mask.nonzero().tolist()}
    top = max(abs(v) for v in vals.values())
    n_segments = 0
    for t in lines:
        sign, rng = t.name.split(", |score| ")
        hi = float(rng.split("–")[1])
        assert t.line.color == (POSITIVE if sign == "positive" else NEGATIVE)
        # Width grows with the bin: bin b (|score| in [b, b+1) * top / 5) is drawn max_width * (b + 1) / 5 wide.
        b = round(hi / top * N_WIDTHS) - 1
        assert t.line.width == max(0.5, 8.0 * (b + 1) / N_WIDTHS)
        assert rng == f"{top * b / N_WIDTHS:.3g}–{top * (b + 1) / N_WIDTHS:.3g}"
        expected = [e for e, v in vals.items() if (v >= 0) == (sign == "positive")
                    and min(N_WIDTHS - 1, int(abs(v) / top * N_WIDTHS)) == b]
        assert len(t.x) == 3 * len(expected)  # x0, x1, None per edge
        n_segments += len(expected)
    assert n_segments == 160
    assert len(lines) == len({t.name for t in lines})  # one legend entry per (sign, width)


def test_only_nodes_with_a_drawn_edge_are_shown():
    c = _big_circuit(12)
    fig = circuit_figure(c)
    used = {u for u, _ in c.edges} | {component(v) for _, v in c.edges}
    shown = list(next(t for t in fig.data if t.name == "nodes").text)
    assert set(shown) == used and len(shown) < len(c.graph.senders) + 1
    fig = circuit_figure(c, top_k=3)
    drawn = _drawn(fig)
    assert set(next(t for t in fig.data if t.name == "nodes").text) == \
        {u for u, _ in drawn} | {component(v) for _, v in drawn}


def test_score_filters_draw_exactly_the_strongest_edges():
    c = _big_circuit()
    g = c.graph
    vals = {(g.senders[s], g.receivers[r]): float(c.scores[s, r]) for s, r in c.mask.nonzero().tolist()}
    by_size = sorted(vals, key=lambda e: -abs(vals[e]))
    fig = circuit_figure(c, top_k=20, title="t")
    assert set(_drawn(fig)) == set(by_size[:20])
    assert fig.layout.title.text == "t" and fig.layout.legend.title.text.startswith("20 of 160 edges;")
    t = abs(vals[by_size[49]])
    assert set(_drawn(circuit_figure(c, min_abs_score=t))) == set(by_size[:50])
    assert set(_drawn(circuit_figure(c, min_abs_score=t, top_k=10))) == set(by_size[:10])
    assert set(_drawn(circuit_figure(c, min_abs_score=t, top_k=500))) == set(by_size[:50])
    fig = circuit_figure(c, min_abs_score=10 * t + 100)  # nothing passes: an empty figure, no legend
    assert _drawn(fig) == [] and not fig.layout.showlegend
    assert fig.layout.legend.title.text.startswith("0 of 160 edges;")


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_k=0), "top_k: expected a positive int"),
    (dict(top_k=True), "top_k: expected a positive int"),
    (dict(min_abs_score=-1.0), "min_abs_score: expected a finite number >= 0"),
    (dict(min_abs_score=float("nan")), "min_abs_score: expected a finite number >= 0"),
    (dict(max_width=0.0), "max_width: expected a finite number > 0"),
    (dict(scores=torch.zeros(3, 3)), r"scores: expected a \[sender, receiver\] tensor of shape"),
])
def test_bad_figure_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        circuit_figure(_big_circuit(5), **kwargs)


def test_filters_need_scores():
    c = _big_circuit(5)
    unscored = Circuit(c.graph, c.mask)
    with pytest.raises(ValueError, match="top_k: needs edge scores"):
        circuit_figure(unscored, top_k=3)
    fig = circuit_figure(unscored)  # without scores every edge is drawn alike, one legend entry
    assert [t.name for t in fig.data if t.mode == "lines"] == ["edge (no scores)"]

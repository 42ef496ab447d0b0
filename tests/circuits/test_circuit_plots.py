"""Circuit figures: one node per component in the circuit, edge hover texts with values, escaped titles."""
import torch

from circuit_toys import metric, pair, tiny
from vit_patching.circuits import Circuit, Graph, circuit_figure, eap, select_circuit
from vit_patching.circuits.plot import node_position


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

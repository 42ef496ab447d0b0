"""Figures for circuits: the circuit graph (layers left to right, heads and MLPs as nodes, edges coloured by
sign and sized by score) and the faithfulness-vs-size curve. Plotly is imported when a figure is made.

Every user-supplied string (titles) is HTML-escaped before it reaches the figure.
"""

from __future__ import annotations

import html
from typing import Any

import torch

from vit_patching.patching import Node

from .evaluate import CircuitEvaluation
from .graph import Circuit, component

__all__ = ["circuit_figure", "faithfulness_figure", "node_position"]

POSITIVE, NEGATIVE = "#c0392b", "#2c6fbb"
N_WIDTHS = 5  # edges are drawn in this many width bins per sign (one Plotly trace each)


def node_position(node: str, n_heads: int) -> tuple[float, float]:
    """Figure coordinates of a node: x = residual-stream stage (embed 0, heads of block l at 2l+1, MLP l at
    2l+2, logits last), y = head index (MLPs, embed and logits in the middle).

    Example:
        >>> node_position("L1H2", 4), node_position("MLP1", 4)
        ((3.0, 2.0), (4.0, 1.5))
    """
    mid = (n_heads - 1) / 2
    if node == "logits":
        return (float(1 << 30), mid)  # replaced by the last stage + 1 by the caller
    n = Node.parse(node)
    if n.kind == "embed":
        return (0.0, mid)
    if n.kind == "mlp":
        return (2.0 * n.layer + 2, mid)
    return (2.0 * n.layer + 1, float(n.head))


def circuit_figure(circuit: Circuit, *, title: str = "circuit", scores: Any = None, max_width: float = 8.0):
    """Interactive graph of a circuit (Plotly figure; nothing is shown).

    Args:
        circuit: The :class:`~vit_patching.circuits.graph.Circuit`.
        title: Figure title (escaped).
        scores: Edge scores ``[sender, receiver]`` to size and colour edges by (default ``circuit.scores``;
            without any, every edge is drawn alike).
        max_width: Line width of the largest |score|.

    Returns:
        ``plotly.graph_objects.Figure``: one marker per node (hover: name), lines per edge (hover at the
        midpoint: sender -> receiver input and score).

    Example:
        >>> fig = circuit_figure(select_circuit(scores, top_n=20), title="toy-shapes")
        >>> fig.write_html("circuit.html")
    """
    import plotly.graph_objects as go

    g = circuit.graph
    H, L = g.n_heads, g.n_layers
    vals = circuit.scores if scores is None else torch.as_tensor(scores)
    edges = circuit.mask.nonzero().tolist()
    w = [float(vals[s, r]) if vals is not None else 1.0 for s, r in edges]
    top = max((abs(v) for v in w), default=1.0) or 1.0

    def pos(node: str) -> tuple[float, float]:
        x, y = node_position(node, H)
        return (2.0 * L + 1 if node == "logits" else x, y)

    fig = go.Figure()
    mids_x, mids_y, mids_text, mids_color = [], [], [], []
    bins: dict[tuple[bool, int], tuple[list, list]] = {}
    for (s, r), v in zip(edges, w):
        u, rv = g.senders[s], g.receivers[r]
        (x0, y0), (x1, y1) = pos(u), pos(component(rv))
        b = min(N_WIDTHS - 1, int(abs(v) / top * N_WIDTHS))
        xs, ys = bins.setdefault((v >= 0, b), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mids_x.append((x0 + x1) / 2)
        mids_y.append((y0 + y1) / 2)
        mids_text.append(f"{u} → {rv}<br>score {v:+.4g}")
        mids_color.append(POSITIVE if v >= 0 else NEGATIVE)
    for (positive, b), (xs, ys) in sorted(bins.items()):
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line={"color": POSITIVE if positive else NEGATIVE, "width": max(0.5, max_width * (b + 1) / N_WIDTHS)},
            opacity=0.6,
        ))
    fig.add_trace(go.Scatter(x=mids_x, y=mids_y, mode="markers", text=mids_text, hoverinfo="text",
                             marker={"size": 6, "color": mids_color, "opacity": 0.5}, name="edges"))
    nodes = circuit.nodes
    fig.add_trace(go.Scatter(
        x=[pos(n)[0] for n in nodes], y=[pos(n)[1] for n in nodes], mode="markers+text", text=nodes,
        textposition="top center", hoverinfo="text", name="nodes",
        marker={"size": 14, "color": ["#555" if n in ("embed", "logits") else "#e67e22" if n.startswith("MLP")
                                      else "#27ae60" for n in nodes], "line": {"width": 1, "color": "#222"}},
    ))
    ticks = [0] + [2 * l + 1 for l in range(L)] + [2 * l + 2 for l in range(L)] + [2 * L + 1]
    labels = ["embed"] + [f"heads L{l}" for l in range(L)] + [f"MLP{l}" for l in range(L)] + ["logits"]
    fig.update_layout(
        title=html.escape(str(title)), template="plotly_white", showlegend=False,
        xaxis={"tickvals": ticks, "ticktext": labels, "title": "residual-stream stage"},
        yaxis={"title": "head", "tickvals": list(range(H))}, hovermode="closest",
    )
    return fig


def faithfulness_figure(evaluation: CircuitEvaluation, *, title: str = "faithfulness vs circuit size"):
    """Faithfulness (0 = empty circuit / corrupted run, 1 = clean run) against the number of edges
    (:meth:`CircuitEvaluation.plot`).

    Example:
        >>> fig = faithfulness_figure(faithfulness_curve(model, scores, clean, corrupted))
    """
    if not isinstance(evaluation, CircuitEvaluation):
        raise TypeError(f"evaluation: expected a CircuitEvaluation (from evaluate_circuit / faithfulness_curve), "
                        f"got {type(evaluation).__name__}")
    return evaluation.plot(title=title)

"""Figures for circuits: the circuit graph (layers left to right, heads and MLPs as nodes, edges coloured by
sign and sized by score, with a legend and score filters) and the faithfulness-vs-size curve. Plotly is
imported when a figure is made.

Every user-supplied string (titles) is HTML-escaped before it reaches the figure.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_positive_int, check_positive_number
from vit_patching.patching import Node

from .graph import Circuit, component

if TYPE_CHECKING:  # pragma: no cover
    from .evaluate import CircuitEvaluation

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


def _drawn_edges(circuit: Circuit, vals: Tensor | None, min_abs_score: Any, top_k: Any) -> list[tuple[int, int, float]]:
    """The circuit's edges ``(sender, receiver, score)`` that pass the score filters, in graph order."""
    if min_abs_score is not None:
        min_abs_score = check_positive_number(min_abs_score, "min_abs_score", allow_zero=True)
    if top_k is not None:
        top_k = check_positive_int(top_k, "top_k")
    if vals is None and (min_abs_score is not None or top_k is not None):
        which = "min_abs_score" if min_abs_score is not None else "top_k"
        raise ValueError(f"{which}: needs edge scores to filter by, got a circuit without scores (pass scores=)")
    edges = [(s, r, float(vals[s, r]) if vals is not None else 1.0) for s, r in circuit.mask.nonzero().tolist()]
    edges.sort(key=lambda e: -abs(e[2]))  # stable: ties keep graph order
    if min_abs_score is not None:
        edges = [e for e in edges if abs(e[2]) >= min_abs_score]
    return sorted(edges if top_k is None else edges[:top_k])


def circuit_figure(
    circuit: Circuit,
    *,
    title: str = "circuit",
    scores: Float[Tensor, "sender receiver"] | None = None,
    max_width: float = 8.0,
    min_abs_score: float | None = None,
    top_k: int | None = None,
):
    """Interactive graph of a circuit (Plotly figure; nothing is shown).

    Only nodes that carry a drawn edge are shown. Edges are coloured by the sign of their score and drawn in
    ``N_WIDTHS`` widths by |score| (relative to the largest drawn |score|); the legend names each colour and
    width with its |score| range, and clicking an entry hides those edges. For large circuits (a few hundred
    edges), ``min_abs_score`` and ``top_k`` draw only the strongest edges.

    Args:
        circuit: The :class:`~vit_patching.circuits.graph.Circuit`.
        title: Figure title (escaped).
        scores: Edge scores ``[sender, receiver]`` to size and colour edges by (default ``circuit.scores``;
            without any, every edge is drawn alike).
        max_width: Line width of the largest |score|.
        min_abs_score: Draw only edges with |score| at least this (needs scores).
        top_k: Draw only the ``top_k`` edges with the largest |score| (needs scores; after ``min_abs_score``).

    Returns:
        ``plotly.graph_objects.Figure``: one marker per node (hover: name), lines per edge (hover at the
        midpoint: sender -> receiver input and score), one legend entry per (sign, width) drawn.

    Raises:
        TypeError: ``circuit`` is not a Circuit.
        ValueError: ``scores`` of the wrong shape, a bad ``max_width`` / ``min_abs_score`` / ``top_k``, or a
            filter without scores.

    Example:
        >>> fig = circuit_figure(select_circuit(scores, top_n=160), title="toy-shapes", top_k=40)
        >>> fig.write_html("circuit.html")
    """
    import plotly.graph_objects as go

    if not isinstance(circuit, Circuit):
        raise TypeError(f"circuit: expected a Circuit (select_circuit / Circuit.from_edges), "
                        f"got {type(circuit).__name__}")
    max_width = check_positive_number(max_width, "max_width")
    g = circuit.graph
    H, L = g.n_heads, g.n_layers
    vals = circuit.scores if scores is None else torch.as_tensor(scores)
    if vals is not None and tuple(vals.shape) != tuple(g.mask.shape):
        raise ValueError(f"scores: expected a [sender, receiver] tensor of shape {tuple(g.mask.shape)}, "
                         f"got shape {tuple(vals.shape)}")
    edges = _drawn_edges(circuit, vals, min_abs_score, top_k)
    top = max((abs(v) for _, _, v in edges), default=1.0) or 1.0

    def pos(node: str) -> tuple[float, float]:
        x, y = node_position(node, H)
        return (2.0 * L + 1 if node == "logits" else x, y)

    fig = go.Figure()
    mids_x, mids_y, mids_text, mids_color = [], [], [], []
    bins: dict[tuple[bool, int], tuple[list, list]] = {}
    for s, r, v in edges:
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
    # Legend: positive edges first, wide to thin; each entry states its |score| range (the width bins).
    for (positive, b), (xs, ys) in sorted(bins.items(), key=lambda kv: (not kv[0][0], -kv[0][1])):
        if vals is None:
            name = "edge (no scores)"
        else:
            sign = "positive" if positive else "negative"
            lo, hi = top * b / N_WIDTHS, top * (b + 1) / N_WIDTHS
            name = f"{sign}, |score| {lo:.3g}–{hi:.3g}"
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", name=name, legendgroup=name,
            line={"color": POSITIVE if positive else NEGATIVE, "width": max(0.5, max_width * (b + 1) / N_WIDTHS)},
            opacity=0.6,
        ))
    fig.add_trace(go.Scatter(x=mids_x, y=mids_y, mode="markers", text=mids_text, hoverinfo="text",
                             marker={"size": 6, "color": mids_color, "opacity": 0.5}, name="edges",
                             showlegend=False))
    used = {g.senders[s] for s, _, _ in edges} | {component(g.receivers[r]) for _, r, _ in edges}
    nodes = [n for n in circuit.nodes if n in used]  # graph order; nodes whose edges were all filtered out go
    fig.add_trace(go.Scatter(
        x=[pos(n)[0] for n in nodes], y=[pos(n)[1] for n in nodes], mode="markers+text", text=nodes,
        textposition="top center", hoverinfo="text", name="nodes", showlegend=False,
        marker={"size": 14, "color": ["#555" if n in ("embed", "logits") else "#e67e22" if n.startswith("MLP")
                                      else "#27ae60" for n in nodes], "line": {"width": 1, "color": "#222"}},
    ))
    ticks = [0] + [2 * l + 1 for l in range(L)] + [2 * l + 2 for l in range(L)] + [2 * L + 1]
    labels = ["embed"] + [f"heads L{l}" for l in range(L)] + [f"MLP{l}" for l in range(L)] + ["logits"]
    shown = f"{len(edges)} of {circuit.n_edges} edges" if len(edges) < circuit.n_edges else f"{len(edges)} edges"
    fig.update_layout(
        title=html.escape(str(title)), template="plotly_white", showlegend=bool(edges),
        legend={"title": {"text": f"{shown}; colour: sign, width: |score|"}},
        xaxis={"tickvals": ticks, "ticktext": labels, "title": "residual-stream stage"},
        yaxis={"title": "head", "tickvals": list(range(H))}, hovermode="closest",
    )
    return fig


def faithfulness_figure(evaluation: "CircuitEvaluation", *, title: str = "faithfulness vs circuit size"):
    """Faithfulness (0 = empty circuit / corrupted run, 1 = clean run) against the number of edges.

    Example:
        >>> fig = faithfulness_figure(faithfulness_curve(model, scores, clean, corrupted))
    """
    import plotly.graph_objects as go

    sizes = evaluation.sizes
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    f = evaluation.faithfulness.tolist()
    fig = go.Figure(go.Scatter(
        x=[sizes[i] for i in order], y=[f[i] for i in order], mode="lines+markers", name="circuit",
        hovertemplate="%{x} edges: faithfulness %{y:.3f}<extra></extra>",
    ))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="clean")
    fig.add_hline(y=0.0, line_dash="dot", annotation_text=html.escape(f"empty ({evaluation.ablation})"))
    fig.update_layout(title=html.escape(str(title)), template="plotly_white", xaxis_type="log",
                      xaxis_title="edges in circuit", yaxis_title=f"faithfulness ({html.escape(evaluation.metric)})")
    return fig

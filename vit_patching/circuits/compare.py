"""Circuit scorers compared as in the MIB circuit-localisation track (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark"): faithfulness curves over circuit sizes, CPR and CMD.

* **Faithfulness curve**: for each size, the circuit of the top-``n`` edges by ``|score|`` (pruned to edges
  with a path to the logits, :func:`~vit_patching.circuits.graph.select_circuit`) is evaluated with every other
  edge ablated (:func:`~vit_patching.circuits.evaluate.evaluate_circuit`); faithfulness
  ``f = (m(circuit) - m(empty)) / (m(clean) - m(empty))`` of the image-mean metric.
* **Size grid**: shares of the graph's edges, MIB's ``(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
  1)`` by default, ``n = floor(share * edges)`` (so a share below ``1 / edges`` is the empty circuit, f = 0, as
  in MIB), or explicit edge counts (``counts=``, shares ``n / edges``).
* **CPR** (circuit performance ratio, higher is better): the area under the curve over the share axis,
  trapezoid rule between consecutive grid points: ``sum_i (x_{i+1} - x_i) (f_i + f_{i+1}) / 2``.
* **CMD** (circuit-model difference, lower is better): the same area of ``|1 - f|``:
  ``sum_i (x_{i+1} - x_i) (|1 - f_i| + |1 - f_{i+1}|) / 2``.

Both integrate over the grid as given, from its first to its last share, on a linear axis, as MIB's
``evaluate_area_under_curve`` does by default: on MIB's grid the axis spans 0.999, so a curve of ones has
CPR 0.999 and CMD 0; on a grid from 0 to 1 it has CPR 1.

Example:
    >>> curve = faithfulness_by_size(model, eap(model, clean, corrupted), clean, corrupted)
    >>> cpr(curve), cmd(curve)
    >>> result = compare_scorers(model, clean, corrupted, known_edges=KNOWN_EDGES)
    >>> result.table; result.figure.show()
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_batch_size, check_bool, check_choice, check_fraction, check_positive_int, is_int
from vit_patching.model import HookedViT

from .common import Metric, check_pair
from .eap import eap, eap_ig
from .evaluate import ABLATIONS, CircuitEvaluation, evaluate_circuit
from .graph import EdgeScores, Graph, select_circuit
from .known import edge_auroc
from .node_edges import atp_node_edges

__all__ = ["MIB_SHARES", "FaithfulnessCurve", "ScorerComparison", "cmd", "compare_scorers", "cpr", "curves_figure",
           "default_scorers", "faithfulness_by_size"]

#: MIB's grid of circuit sizes, as shares of the graph's edges.
MIB_SHARES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

Scorer = Callable[[HookedViT, Tensor, Tensor, Any], EdgeScores]


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-``n`` circuits over a grid of sizes.

    Attributes:
        share: Grid point of each size, a share of the graph's edges (increasing).
        top_n: Edges asked for at each size (``floor(share * n_edges)`` or the given count).
        kept: Edges left after pruning.
        faithfulness: Faithfulness per size ``[size]``.
        n_edges: Edges of the full graph.
        scorer: Name of the scores' method.
        evaluation: The :class:`~vit_patching.circuits.evaluate.CircuitEvaluation` (None for a hand-made curve).

    Example:
        >>> FaithfulnessCurve.from_values([0, 0.5, 1], [0, 1, 1]).to_dataframe()
    """

    share: list[float]
    top_n: list[int]
    kept: list[int]
    faithfulness: Float[Tensor, " size"]
    n_edges: int
    scorer: str = ""
    evaluation: CircuitEvaluation | None = None

    @classmethod
    def from_values(cls, share: Sequence[float], faithfulness: Sequence[float],
                    scorer: str = "") -> "FaithfulnessCurve":
        """A curve from numbers (e.g. another tool's), for :func:`cpr` / :func:`cmd`; shares increasing in [0, 1].

        Example:
            >>> cpr(FaithfulnessCurve.from_values([0.0, 1.0], [1.0, 1.0]))
            1.0
        """
        share = _check_shares(share, "share")
        f = torch.as_tensor(list(faithfulness), dtype=torch.float64)
        if f.ndim != 1 or f.numel() != len(share) or not torch.isfinite(f).all():
            raise ValueError(f"faithfulness: expected {len(share)} finite numbers (one per share), "
                             f"got {list(faithfulness)!r}")
        return cls(share, [], [], f, 0, scorer)

    def to_dataframe(self):
        """One row per size: scorer, share, top_n, kept, faithfulness."""
        import pandas as pd

        n = len(self.share)
        return pd.DataFrame({"scorer": [self.scorer] * n, "share": self.share,
                             "top_n": self.top_n or [None] * n, "kept": self.kept or [None] * n,
                             "faithfulness": self.faithfulness.tolist()})

    def __repr__(self) -> str:
        f = ", ".join(f"{v:.3f}" for v in self.faithfulness.tolist())
        return f"FaithfulnessCurve(scorer={self.scorer!r}, sizes={len(self.share)}, faithfulness=[{f}])"


def _check_shares(shares: Any, name: str) -> list[float]:
    if isinstance(shares, (str, bytes)) or not isinstance(shares, Sequence) or len(shares) == 0:
        raise ValueError(f"{name}: expected a non-empty list of shares of edges in [0, 1], got {shares!r}")
    out = [check_fraction(s, name) for s in shares]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{name}: expected strictly increasing shares, got {list(shares)!r}")
    return out


def _area(x: Sequence[float], y: Tensor) -> float:
    """Trapezoid rule over the grid as given (no extrapolation to 0 or 1)."""
    xs = torch.tensor(x, dtype=torch.float64)
    ys = y.double()
    return float(((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2).sum())


def cpr(curve: FaithfulnessCurve) -> float:
    """CPR, higher is better: area under the faithfulness curve over the share axis (trapezoid rule between the
    grid points, as MIB).

    Example:
        >>> cpr(FaithfulnessCurve.from_values([0.0, 0.5, 0.5001, 1.0], [0.0, 0.0, 1.0, 1.0]))   # a step at 0.5
        0.49995
    """
    if not isinstance(curve, FaithfulnessCurve):
        raise TypeError(f"curve: expected a FaithfulnessCurve, got {type(curve).__name__}")
    return _area(curve.share, curve.faithfulness)


def cmd(curve: FaithfulnessCurve) -> float:
    """CMD, lower is better: area between the faithfulness curve and 1, ``|1 - f|`` at each grid point
    integrated with the trapezoid rule over the share axis (as MIB).

    Example:
        >>> cmd(FaithfulnessCurve.from_values([0.0, 1.0], [1.0, 1.0]))
        0.0
    """
    if not isinstance(curve, FaithfulnessCurve):
        raise TypeError(f"curve: expected a FaithfulnessCurve, got {type(curve).__name__}")
    return _area(curve.share, (1 - curve.faithfulness.double()).abs())


def _sizes(n_edges: int, shares: Any, counts: Any) -> tuple[list[float], list[int]]:
    if shares is not None and counts is not None:
        raise ValueError(f"shares, counts: expected at most one of them, got shares={shares!r}, counts={counts!r}")
    if counts is None:
        grid = _check_shares(MIB_SHARES if shares is None else shares, "shares")
        # floor(share * edges) as MIB's int(); rounded first so 0.1 * 110 = 11.000000000000002 is 11, not noise
        return grid, [int(math.floor(round(s * n_edges, 9))) for s in grid]
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or len(counts) == 0 or any(
            not is_int(n) or not 0 <= n <= n_edges for n in counts):
        raise ValueError(f"counts: expected a non-empty list of edge counts in [0, {n_edges}], got {counts!r}")
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"counts: expected strictly increasing edge counts, got {list(counts)!r}")
    return [n / n_edges for n in counts], [int(n) for n in counts]


def faithfulness_by_size(
    model: HookedViT,
    scores: EdgeScores,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    shares: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    ablation: str = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
    prune: bool = True,
    batch_size: int = 64,
) -> FaithfulnessCurve:
    """The MIB faithfulness curve of ``scores``: the top-``n`` circuit evaluated at each size of a grid.

    Args:
        model: A HookedViT.
        scores: Edge scores of ``model``'s graph.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        shares: Sizes as shares of the graph's edges, increasing in [0, 1] (default :data:`MIB_SHARES`);
            ``n = floor(share * edges)``.
        counts: Sizes as edge counts instead, increasing (exclusive with ``shares``).
        ablation: How edges outside the circuit are ablated (``evaluate_circuit``'s ``ablation``: ``corrupted``,
            ``zero``, ``mean``, ``mean_positional``, ``resample``, ``optimal``).
        reference: The images ``mean`` / ``mean_positional`` / ``resample`` / ``optimal`` draw on
            (``evaluate_circuit``'s ``reference``; default the corrupted images).
        prune: Prune each circuit to edges with a path to the logits (MIB prunes).
        batch_size: Rows (circuit x image) per forward pass.

    Returns:
        :class:`FaithfulnessCurve` (``cpr(curve)``, ``cmd(curve)``, ``curve.to_dataframe()``).

    Raises:
        ValueError: both ``shares`` and ``counts``, a share outside [0, 1], a count outside the graph, sizes
            not increasing, mismatched images, a bad ablation.

    Example:
        >>> curve = faithfulness_by_size(model, eap(model, clean, corrupted), clean, corrupted, counts=[5, 20, 80])
        >>> curve.to_dataframe()
    """
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores: expected EdgeScores (from eap / eap_ig), got {type(scores).__name__}")
    check_bool(prune, "prune")
    n_edges = int(scores.graph.mask.sum())
    grid, top_n = _sizes(n_edges, shares, counts)
    unique = sorted(set(top_n))  # small graphs map several shares to one count: evaluate each circuit once
    circuits = [select_circuit(scores, top_n=n, prune=prune) for n in unique]
    ev = evaluate_circuit(model, circuits, clean, corrupted, metric, ablation=ablation, reference=reference,
                          batch_size=batch_size)
    f_unique = ev.faithfulness
    at = {n: i for i, n in enumerate(unique)}
    faith = torch.stack([f_unique[at[n]] for n in top_n])
    kept = [circuits[at[n]].n_edges for n in top_n]
    return FaithfulnessCurve(grid, top_n, kept, faith, n_edges, scores.method, ev)


@dataclass
class ScorerComparison:
    """Scorers side by side: one table, one figure, and the curves and scores behind them.

    Attributes:
        table: One row per scorer: ``scorer``, ``cpr``, ``cmd``, ``auroc`` (with known edges), ``time_s``
            (the scorer's wall time; evaluation not included), ``edges``.
        figure: Plotly figure, the faithfulness curves (one line per scorer).
        curves: The :class:`FaithfulnessCurve` of each scorer.
        scores: The :class:`~vit_patching.circuits.graph.EdgeScores` of each scorer.

    Example:
        >>> compare_scorers(model, clean, corrupted).table
    """

    table: Any
    figure: Any
    curves: dict[str, FaithfulnessCurve] = field(default_factory=dict)
    scores: dict[str, EdgeScores] = field(default_factory=dict)


def default_scorers(ig_steps: int = 5) -> dict[str, Scorer]:
    """The package's edge scorers: EAP, EAP-IG with ``ig_steps`` steps, and node-level AtP's edges
    (:func:`~vit_patching.circuits.node_edges.atp_node_edges`).

    Example:
        >>> list(default_scorers())
        ['eap', 'eap-ig', 'atp-nodes']
    """
    check_positive_int(ig_steps, "ig_steps")
    return {"eap": eap, "eap-ig": lambda m, c, x, metric: eap_ig(m, c, x, metric, steps=ig_steps),
            "atp-nodes": atp_node_edges}


def compare_scorers(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    scorers: Mapping[str, Scorer] | None = None,
    known_edges: Sequence[tuple[str, str]] | None = None,
    shares: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    ablation: str = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
    batch_size: int = 64,
    title: str = "faithfulness vs circuit size",
) -> ScorerComparison:
    """Score the graph with each scorer, evaluate its MIB faithfulness curve, and tabulate CPR, CMD, AUROC, time.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"`` (used by scorers and evaluation).
        scorers: ``name -> fn(model, clean, corrupted, metric) -> EdgeScores`` (default: EAP, EAP-IG with 5
            steps and node-level AtP, :func:`default_scorers`).
        known_edges: The known circuit; adds an ``auroc`` column (:func:`~vit_patching.circuits.known.edge_auroc`).
        shares: Size grid as shares of edges (default :data:`MIB_SHARES`).
        counts: Size grid as edge counts instead.
        ablation: How edges outside each circuit are ablated in the evaluation (the scorers run as given: to score
            under the same intervention, pass e.g. ``functools.partial(eap, ablation="mean", reference=...)``).
        reference: The reference images of ``ablation`` (default the corrupted images).
        batch_size: Rows per forward pass of the evaluation.
        title: Figure title (HTML-escaped).

    Returns:
        :class:`ScorerComparison`.

    Raises:
        ValueError: an empty ``scorers``, mismatched images, bad known edges, sizes, ablation or batch size
            (before any scorer runs).
        TypeError: a scorer that is not callable or does not return ``EdgeScores``.

    Example:
        >>> res = compare_scorers(model, pairs.clean, pairs.corrupted, pairs.metric(), known_edges=KNOWN_EDGES)
        >>> res.table[["scorer", "cpr", "cmd", "auroc"]]
    """
    import pandas as pd

    scorers = default_scorers() if scorers is None else dict(scorers)
    if not scorers or not all(isinstance(k, str) and callable(v) for k, v in scorers.items()):
        raise ValueError(f"scorers: expected a non-empty mapping of names to callables, got {scorers!r}")
    check_pair(model, clean, corrupted)
    check_choice(ablation, ABLATIONS, "ablation")
    check_batch_size(batch_size)
    graph = Graph.of(model)
    n_edges = int(graph.mask.sum())
    if known_edges is not None:
        graph.index(list(known_edges), "known_edges")  # unknown names fail here, before any scorer runs
    _sizes(n_edges, shares, counts)
    rows, curves, all_scores = [], {}, {}
    for name, fn in scorers.items():
        t0 = time.perf_counter()
        s = fn(model, clean, corrupted, metric)
        elapsed = time.perf_counter() - t0
        if not isinstance(s, EdgeScores):
            raise TypeError(f"scorers[{name!r}]: expected a function returning EdgeScores, got {type(s).__name__}")
        curve = faithfulness_by_size(model, s, clean, corrupted, metric, shares=shares, counts=counts,
                                     ablation=ablation, reference=reference, batch_size=batch_size)
        curve.scorer = name
        row = {"scorer": name, "cpr": cpr(curve), "cmd": cmd(curve)}
        if known_edges is not None:
            row["auroc"] = edge_auroc(s, known_edges)
        row.update({"time_s": elapsed, "edges": n_edges})
        rows.append(row)
        curves[name], all_scores[name] = curve, s
    return ScorerComparison(pd.DataFrame(rows), curves_figure(curves, title=title), curves, all_scores)


def curves_figure(curves: Mapping[str, FaithfulnessCurve], *, title: str = "faithfulness vs circuit size"):
    """Faithfulness against the share of edges, one line per scorer (Plotly; names and title escaped); a log axis,
    or a linear one when some curve has a share of 0 (a log axis would drop that point).

    Example:
        >>> curves_figure({"eap": curve}).data[0].name
        'eap'
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, c in curves.items():
        sizes = "<br>top %{customdata[0]} edges, %{customdata[1]} after pruning" if c.top_n else ""
        fig.add_trace(go.Scatter(
            x=c.share, y=c.faithfulness.tolist(), mode="lines+markers", name=html.escape(str(name)),
            customdata=list(zip(c.top_n, c.kept)) if c.top_n else None,
            hovertemplate="share %{x}<br>faithfulness %{y:.3f}" + sizes + "<extra></extra>",
        ))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="clean run")
    fig.add_hline(y=0.0, line_dash="dot", annotation_text="empty circuit")
    has_zero = any(float(min(c.share)) <= 0 for c in curves.values())
    fig.update_layout(title=html.escape(str(title)), template="plotly_white", xaxis_type="linear" if has_zero else "log",
                      xaxis_title="share of edges in circuit", yaxis_title="faithfulness")
    return fig

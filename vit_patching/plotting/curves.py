"""Metric curves (insertion/deletion, faithfulness sweeps): mean curve, uncertainty band, AUC in the legend."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from vit_patching.plotting._common import PALETTE, ArrayLike, check_choice, esc, hex_to_rgba, hover_safe, to_numpy
from vit_patching.plotting._facets import figure_title, top_margin

__all__ = ["curve_auc", "faithfulness_vs_size", "metric_curves"]


def curve_auc(y: Float[ArrayLike, "step"], x: Float[ArrayLike, "step"]) -> float:
    """Area under a curve by the trapezoidal rule.

    Example:
        >>> import torch
        >>> curve_auc(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
        0.5
    """
    return float(np.trapezoid(to_numpy(y, "y"), to_numpy(x, "x")))


def metric_curves(
    curves: Mapping[str, Float[ArrayLike, "..."]],
    x: Float[ArrayLike, "step"] | None = None,
    *,
    metric_name: str = "metric",
    x_label: str = "fraction of patches",
    title: str = "",
    band: Literal["sem", "std", "none"] = "sem",
    show_auc: bool = True,
    width: int = 640,
    height: int = 420,
) -> go.Figure:
    """Plot one curve per method; curves with a batch axis are averaged with a shaded band.

    Args:
        curves: name -> values ``[step]`` or ``[batch, step]`` (NaNs are ignored in the mean).
        x: shared x values ``[step]`` (default ``linspace(0, 1, step)`` per curve, i.e. fractions).
        metric_name: y-axis title.
        x_label: x-axis title.
        title: figure title.
        band: for batched curves, mean +- standard error (``"sem"``), +- standard deviation (``"std"``)
            or no band (``"none"``).
        show_auc: append ``(AUC a)`` of the mean curve (trapezoidal rule over ``x``) to legend names.
        width, height: figure size in pixels.

    Returns:
        The figure; mean lines carry ``meta={"kind": "curve", "name": ..., "auc": ...}``, bands
        ``meta={"kind": "band", ...}``.

    Raises:
        ValueError: if ``curves`` is empty, a curve is not 1-D/2-D, or its length does not match ``x``.

    Example:
        >>> import torch
        >>> fig = metric_curves({"caap": torch.rand(8, 11), "random": torch.rand(11)})
        >>> fig.data[-1].name.startswith("random (AUC ")
        True
    """
    if not curves:
        raise ValueError("curves: expected at least one curve, got an empty mapping")
    check_choice(band, ("sem", "std", "none"), "band")
    x_arr = None
    if x is not None:
        x_arr = to_numpy(x, "x")
    fig = go.Figure()
    for i, (name, values) in enumerate(curves.items()):
        arr = to_numpy(values, f"curves[{name!r}]")
        if arr.ndim not in (1, 2):
            raise ValueError(f"curves[{name!r}]: expected [step] or [batch, step], got shape {tuple(arr.shape)}")
        batched = arr.ndim == 2
        mean = np.nanmean(arr, axis=0) if batched else arr
        n_steps = mean.shape[0]
        if x_arr is not None and x_arr.shape[0] != n_steps:
            raise ValueError(f"curves[{name!r}]: expected {x_arr.shape[0]} steps to match x, got {n_steps}")
        xs = x_arr if x_arr is not None else np.linspace(0.0, 1.0, n_steps)
        auc = curve_auc(mean, xs)
        color = PALETTE[i % len(PALETTE)]
        if batched and band != "none" and arr.shape[0] > 1:
            n = np.sum(np.isfinite(arr), axis=0)
            spread = np.nanstd(arr, axis=0, ddof=1)
            if band == "sem":
                spread = spread / np.sqrt(n)
            for part, y in (("upper", mean + spread), ("lower", mean - spread)):
                fig.add_trace(go.Scatter(
                    x=xs, y=y, mode="lines", line=dict(width=0, color=color), hoverinfo="skip", showlegend=False,
                    fill="tonexty" if part == "lower" else None, fillcolor=hex_to_rgba(color, 0.2),
                    name=esc(f"{name} {band} {part}"), legendgroup=esc(name), meta=dict(kind="band", name=str(name), part=part),
                ))
        label = esc(f"{name} (AUC {auc:.3f})" if show_auc else name)
        fig.add_trace(go.Scatter(
            x=xs, y=mean, mode="lines+markers" if n_steps <= 25 else "lines", line=dict(color=color, width=2),
            marker=dict(size=5), name=label, legendgroup=esc(name),
            hovertemplate=f"{hover_safe(name)}<br>{hover_safe(x_label)}: %{{x:.3g}}<br>{hover_safe(metric_name)}: "
            "%{y:.4g}<extra></extra>",
            meta=dict(kind="curve", name=str(name), auc=auc, n=int(arr.shape[0]) if batched else 1),
        ))
    fig.update_layout(
        width=width, height=height, template="plotly_white",
        xaxis=dict(title=dict(text=esc(x_label))), yaxis=dict(title=dict(text=esc(metric_name))),
        legend=dict(x=1.02, xanchor="left", y=1.0, yanchor="top"),
        margin=dict(l=60, r=20, t=top_margin(title), b=50),
    )
    if title:
        fig.update_layout(title=figure_title(title))
    return fig


def faithfulness_vs_size(
    sizes: list[int], faithfulness: list[float], *, ablation: str, metric: str,
    title: str = "faithfulness vs circuit size", unit: str = "edges", x_title: str | None = None,
    name: str = "circuit",
) -> go.Figure:
    """Circuit faithfulness (0 = empty circuit / corrupted run, 1 = clean run) against the number of edges (or of
    ``unit``: ``FeatureCurve.plot`` counts SAE latents), on a log axis, or a linear one when a size is 0 (a log axis
    would drop the empty circuit's point); ``CircuitEvaluation.plot`` and
    :func:`vit_patching.circuits.faithfulness_figure` draw with it. ``x_title`` defaults to ``"{unit} in circuit"``;
    ``name`` is the trace's legend name.

    Example:
        >>> fig = faithfulness_vs_size([10, 1, 100], [0.5, 0.1, 0.9], ablation="corrupted", metric="logit_diff")
        >>> list(fig.data[0].x)
        [1, 10, 100]
    """
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    fig = go.Figure(go.Scatter(
        x=[sizes[i] for i in order], y=[faithfulness[i] for i in order], mode="lines+markers", name=esc(name),
        hovertemplate=f"%{{x}} {hover_safe(unit)}: faithfulness %{{y:.3f}}<extra></extra>",
    ))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="clean")
    fig.add_hline(y=0.0, line_dash="dot", annotation_text=esc(f"empty ({ablation})"))
    fig.update_layout(title=esc(title), template="plotly_white", xaxis_type="log" if min(sizes) > 0 else "linear",
                      xaxis_title=esc(x_title if x_title is not None else f"{unit} in circuit"),
                      yaxis_title=f"faithfulness ({esc(metric)})")
    return fig

"""Figures for SAE feature views: one latent's activation histogram, the firing-frequency density across latents,
and a latent's direct effect on the classes as bars (``vit_patching.sae.views`` / ``vit_patching.sae.effects``).

All functions are pure: tensors/arrays and labels in, a ``plotly.graph_objects.Figure`` out; caller strings are
escaped. The bar colours follow the RdBu convention of every figure here: blue for positive, red for negative.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from jaxtyping import Float, Real

from vit_patching.plotting._common import ArrayLike, Number, check_ndim, esc, hover_safe, labels_or_default, to_numpy
from vit_patching.plotting._facets import figure_title, top_margin
from vit_patching.plotting.colors import DIVERGING

__all__ = ["activation_histogram", "direct_effect_figure", "feature_density"]

# The two ends of RdBu: the colours of positive (blue) and negative (red) values in every figure.
_BLUE, _RED = (plotly.colors.sample_colorscale(DIVERGING, [1.0, 0.0]))


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, width: int, height: int) -> go.Figure:
    fig.update_layout(width=width, height=height, template="plotly_white", bargap=0.05,
                      xaxis=dict(title=dict(text=esc(x_title))), yaxis=dict(title=dict(text=esc(y_title))),
                      margin=dict(l=60, r=20, t=top_margin(title), b=50))
    if title:
        fig.update_layout(title=figure_title(title))
    return fig


def activation_histogram(
    counts: Real[ArrayLike, " bins"],
    width: Number,
    *,
    n_tokens: int | None = None,
    title: str = "",
    log_y: bool = False,
    fig_width: int = 560,
    fig_height: int = 360,
) -> go.Figure:
    """Bars of a latent's positive activations: bin ``i`` covers ``[i * width, (i + 1) * width)``.

    Args:
        counts: Tokens per bin (``FeatureActivations.hist_counts[row]``).
        width: Bin width (``FeatureActivations.hist_width[row]``; 0 for a latent that never fired: no bars).
        n_tokens: All counted tokens, for the share in the hover text.
        title: Figure title.
        log_y: Log-scale counts.
        fig_width, fig_height: Figure size in pixels.

    Returns:
        One bar trace with ``meta={"kind": "activation_histogram", "width": width, "fired": total count}``.

    Example:
        >>> import torch
        >>> fig = activation_histogram(torch.tensor([3.0, 1.0, 0.0]), 0.5)
        >>> list(fig.data[0].x), list(fig.data[0].y)
        ([0.25, 0.75, 1.25], [3.0, 1.0, 0.0])
    """
    arr = to_numpy(counts, "counts")
    check_ndim(arr, 1, "counts", "bins")
    if not (isinstance(width, (int, float)) and np.isfinite(width) and width >= 0):
        raise ValueError(f"width: expected a finite bin width >= 0, got {width!r}")
    centres = (np.arange(arr.shape[0]) + 0.5) * float(width)
    total = float(arr.sum())
    share = arr / n_tokens if n_tokens else np.full_like(arr, np.nan)
    fig = go.Figure(go.Bar(
        x=centres, y=arr, width=float(width), marker_color=_BLUE, customdata=np.stack([share], -1),
        hovertemplate="activation %{x:.4g} ± " + f"{float(width) / 2:.3g}" + "<br>%{y} tokens "
        "(%{customdata[0]:.3%} of all)<extra></extra>",
        meta=dict(kind="activation_histogram", width=float(width), fired=total),
    ))
    _layout(fig, title, "activation (tokens where the latent is > 0)", "tokens", fig_width, fig_height)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def feature_density(
    frequency: Float[ArrayLike, " latent"],
    *,
    bins: int = 40,
    title: str = "",
    fig_width: int = 560,
    fig_height: int = 360,
) -> go.Figure:
    """Histogram of ``log10`` firing frequency across latents; latents that never fired are counted apart (title
    of the legend entry and ``meta["dead"]``), as ``log10(0)`` has no bin.

    Args:
        frequency: Share of tokens where each latent fires (``FeatureActivations.frequency``), in [0, 1].
        bins: Equal-width bins over the live latents' range of ``log10`` frequency.
        title: Figure title.
        fig_width, fig_height: Figure size in pixels.

    Returns:
        One bar trace with ``meta={"kind": "feature_density", "dead": n, "edges": [...]}``; bar heights are the
        latents per bin (``numpy.histogram`` of the live latents' ``log10`` frequency).

    Example:
        >>> import torch
        >>> fig = feature_density(torch.tensor([0.0, 0.01, 0.1, 0.1]), bins=2)
        >>> fig.data[0].meta["dead"], list(fig.data[0].y)
        (1, [1, 2])
    """
    arr = to_numpy(frequency, "frequency")
    check_ndim(arr, 1, "frequency", "latent")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError("frequency: expected firing frequencies in [0, 1], got values outside it or non-finite")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected a positive int, got {bins!r}")
    live = np.log10(arr[arr > 0])
    dead = int(np.sum(arr == 0))
    lo, hi = (float(live.min()), float(live.max())) if live.size else (-1.0, 0.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(live, bins=bins, range=(lo, hi))
    fig = go.Figure(go.Bar(
        x=(edges[:-1] + edges[1:]) / 2, y=counts.tolist(), width=float(edges[1] - edges[0]), marker_color=_BLUE,
        name=f"{live.size} live latents ({dead} never fired)",
        hovertemplate="log10 frequency %{x:.3g}<br>%{y} latents<extra></extra>",
        meta=dict(kind="feature_density", dead=dead, edges=edges.tolist()),
    ))
    fig.update_layout(showlegend=True, legend=dict(x=0.01, y=0.99))
    return _layout(fig, title, "log10 firing frequency", "latents", fig_width, fig_height)


def direct_effect_figure(
    effect: Float[ArrayLike, " n_classes"],
    class_names: Sequence[str] | None = None,
    *,
    top: int = 10,
    title: str = "",
    fig_width: int = 560,
    fig_height: int | None = None,
) -> go.Figure:
    """Horizontal bars of the ``top`` classes a latent raises most (blue) and lowers most (red).

    Args:
        effect: The latent's direct effect on each class (``latent_direct_effect(...)[row].mean(0)``).
        class_names: One name per class (default ``class {i}``); escaped.
        top: Classes shown each way (all classes when there are at most ``2 * top``).
        title: Figure title.
        fig_width, fig_height: Figure size in pixels (height: 22 px per bar by default).

    Returns:
        One bar trace, classes ordered by effect (largest at the top), ``meta={"kind": "direct_effect",
        "classes": [class indices shown]}``.

    Example:
        >>> import torch
        >>> fig = direct_effect_figure(torch.tensor([0.5, -1.0, 2.0]), ["a", "b", "<c>"], top=1)
        >>> fig.data[0].meta["classes"], list(fig.data[0].y)
        ([2, 1], ['&lt;c&gt;', 'b'])
    """
    arr = to_numpy(effect, "effect")
    check_ndim(arr, 1, "effect", "n_classes")
    names = labels_or_default(class_names, arr.shape[0], "class_names", "class", "class ")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected a positive int, got {top!r}")
    order = np.argsort(-arr, kind="stable")
    shown = order if arr.shape[0] <= 2 * top else np.concatenate([order[:top], order[-top:]])
    fig = go.Figure(go.Bar(
        x=arr[shown], y=[esc(names[i]) for i in shown], orientation="h",
        marker_color=[_BLUE if arr[i] >= 0 else _RED for i in shown],
        customdata=[[hover_safe(names[i])] for i in shown],
        hovertemplate="%{customdata[0]}: %{x:+.4g}<extra></extra>",
        meta=dict(kind="direct_effect", classes=[int(i) for i in shown]),
    ))
    fig.update_yaxes(autorange="reversed")
    height = fig_height if fig_height is not None else 120 + 22 * len(shown)
    return _layout(fig, title, "direct effect on the class score", "", fig_width, height)

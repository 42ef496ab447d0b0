"""Colour scales shared by every figure: one symmetric diverging range helper, one sequential helper.

All heatmaps in a figure refer to a Plotly ``coloraxis`` built here, so facets share one scale and one
colour bar, and a value means the same colour everywhere.
"""
from __future__ import annotations

import numpy as np
import plotly.colors
from jaxtyping import Float

from vit_patching.plotting._common import ArrayLike, Number, esc, to_numpy

DIVERGING = "RdBu"
"""Default diverging scale (Plotly's RdBu: low values red, high values blue, white at the centre)."""
SEQUENTIAL = "Viridis"
"""Default sequential scale, for scores that are not centred on a meaningful value."""


def symmetric_range(*values: Float[ArrayLike, "..."], zmid: Number = 0.0) -> tuple[float, float]:
    """Symmetric colour range ``(zmid - m, zmid + m)`` with ``m`` the largest ``|v - zmid|`` over all inputs.

    NaN and inf are ignored. If nothing finite is left, or every value equals ``zmid``, ``m`` falls back
    to 1 so the colour bar stays usable.

    Args:
        *values: any number of arrays (e.g. the grid and the prefix-token values of every facet).
        zmid: the value drawn in the scale's neutral middle colour.

    Returns:
        ``(cmin, cmax)`` with ``cmin + cmax == 2 * zmid``.

    Example:
        >>> import torch
        >>> symmetric_range(torch.tensor([0.5, -2.0]), torch.tensor([1.0]))
        (-2.0, 2.0)
    """
    m = 0.0
    for i, v in enumerate(values):
        arr = to_numpy(v, f"values[{i}]")
        finite = arr[np.isfinite(arr)]
        if finite.size:
            m = max(m, float(np.max(np.abs(finite - zmid))))
    if m == 0.0:
        m = 1.0
    return (zmid - m, zmid + m)


def faded_colorscale(colorscale: str = DIVERGING, max_alpha: Number = 0.7, n: int = 21) -> list[list]:
    """A diverging scale made transparent at its centre, for heatmaps drawn over images.

    Alpha rises from 0 at the middle of the scale (the neutral value) to ``max_alpha`` at both ends,
    so the picture stays visible where values are near neutral and strong values are coloured.

    Example:
        >>> scale = faded_colorscale("RdBu", 0.8, n=3)
        >>> [c for _, c in scale]
        ['rgba(103,0,31,0.8)', 'rgba(247,247,247,0)', 'rgba(5,48,97,0.8)']
    """
    ts = np.linspace(0.0, 1.0, n)
    out = []
    for t, color in zip(ts, plotly.colors.sample_colorscale(colorscale, list(ts), colortype="rgb")):
        r, g, b = (int(round(v)) for v in plotly.colors.unlabel_rgb(color))
        # sqrt ramp: values a quarter of the way out are already clearly tinted
        alpha = round(float(max_alpha) * abs(2 * t - 1) ** 0.5, 4)
        out.append([float(t), f"rgba({r},{g},{b},{alpha:g})"])
    return out


def faded_sequential_colorscale(colorscale: str = SEQUENTIAL, max_alpha: Number = 0.85, n: int = 21) -> list[list]:
    """A sequential scale made transparent at its low end, for non-negative values drawn over images.

    Alpha rises from 0 at the bottom of the scale to ``max_alpha`` at the top (square-root ramp, as
    `faded_colorscale`), so the picture shows through where values are near zero.

    Example:
        >>> scale = faded_sequential_colorscale("Viridis", 0.8, n=2)
        >>> [c for _, c in scale]
        ['rgba(68,1,84,0)', 'rgba(253,231,37,0.8)']
    """
    ts = np.linspace(0.0, 1.0, n)
    out = []
    for t, color in zip(ts, plotly.colors.sample_colorscale(colorscale, list(ts), colortype="rgb")):
        r, g, b = (int(round(v)) for v in plotly.colors.unlabel_rgb(color))
        alpha = round(float(max_alpha) * float(t) ** 0.5, 4)
        out.append([float(t), f"rgba({r},{g},{b},{alpha:g})"])
    return out


def overlay_colors(
    colorscale: str, opacity: Number | None, *, over_image: bool, fade: bool
) -> tuple[str | list, float]:
    """Colour scale and trace opacity for a heatmap, possibly drawn over an image.

    Without an image: the scale as given, opacity ``opacity`` (default 1). Over an image with ``fade``:
    `faded_colorscale` reaching alpha ``opacity`` (default 0.8) at the ends, trace opacity 1. Over an
    image without ``fade``: the plain scale at uniform ``opacity`` (default 0.5).

    Example:
        >>> overlay_colors("RdBu", None, over_image=False, fade=True)
        ('RdBu', 1.0)
    """
    if not over_image:
        return colorscale, float(1.0 if opacity is None else opacity)
    if fade:
        return faded_colorscale(colorscale, 0.8 if opacity is None else opacity), 1.0
    return colorscale, float(0.5 if opacity is None else opacity)


def diverging_coloraxis(
    *values: Float[ArrayLike, "..."],
    zmid: Number = 0.0,
    colorscale: str | list = DIVERGING,
    title: str = "",
    colorbar: dict | None = None,
) -> dict:
    """Layout ``coloraxis`` dict for a diverging scale centred on ``zmid`` over ``values`` (see `symmetric_range`).

    Example:
        >>> import plotly.graph_objects as go, torch
        >>> fig = go.Figure(go.Heatmap(z=[[0.0, 1.0]], coloraxis="coloraxis"))
        >>> fig = fig.update_layout(coloraxis=diverging_coloraxis(torch.tensor([0.0, 1.0]), title="recovery"))
    """
    cmin, cmax = symmetric_range(*values, zmid=zmid)
    return dict(
        colorscale=colorscale,
        cmin=cmin,
        cmax=cmax,
        colorbar=dict(title=dict(text=esc(title), side="right"), **(colorbar or {})),
    )


def sequential_coloraxis(
    *values: Float[ArrayLike, "..."],
    colorscale: str = SEQUENTIAL,
    reversescale: bool = False,
    title: str = "",
    colorbar: dict | None = None,
) -> dict:
    """Layout ``coloraxis`` dict spanning ``[min, max]`` of the finite ``values`` (for unsigned scores).

    Example:
        >>> import torch
        >>> sequential_coloraxis(torch.tensor([0.25, 0.75]))["cmax"]
        0.75
    """
    finite = [a[np.isfinite(a)] for a in (to_numpy(v, f"values[{i}]") for i, v in enumerate(values))]
    finite = [a for a in finite if a.size]
    if finite:
        lo = float(min(a.min() for a in finite))
        hi = float(max(a.max() for a in finite))
    else:
        lo, hi = 0.0, 1.0
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return dict(
        colorscale=colorscale,
        reversescale=reversescale,
        cmin=lo,
        cmax=hi,
        colorbar=dict(title=dict(text=esc(title), side="right"), **(colorbar or {})),
    )

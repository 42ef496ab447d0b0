"""Attribution figures: maps over images, side-by-side comparisons, layer-window selection.

A map is a 2-D array: either a patch grid ``[grid_h, grid_w]`` or a pixel map ``[height, width]``.
Drawn over an image, a grid cell covers ``height / grid_h`` x ``width / grid_w`` pixels.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float

from vit_patching.plotting._common import (
    ArrayLike,
    Number,
    check_choice,
    check_labels,
    check_ndim,
    esc,
    fmt,
    hover_safe,
    ImageStyle,
    greyscale_underlay,
    underlay_rgb,
    labels_or_default,
    layout_key,
    to_numpy,
)
from vit_patching.plotting._facets import cell_ticks, default_cols, facet_layout
from vit_patching.plotting._traces import (
    Z_FORMAT,
    CellHover,
    cell_heatmap,
    colorbar_for,
    grid_hover,
    image_trace,
    matrix_heatmap,
)
from vit_patching.plotting.colors import DIVERGING, SEQUENTIAL, diverging_coloraxis, overlay_colors, sequential_coloraxis

__all__ = ["attribution_overlay", "compare_maps", "greyscale_underlay", "patch_map", "window_heatmap", "window_slider"]

Upsample = Literal["nearest", "bilinear"]


def _check_map(m: ArrayLike, name: str) -> np.ndarray:
    arr = to_numpy(m, name)
    check_ndim(arr, 2, name, "grid_h grid_w or height width")
    return arr


def _placed_map(arr: np.ndarray, rgb: np.ndarray | None, upsample: str) -> tuple[np.ndarray, tuple[float, float]]:
    """The array to draw for a map and its cell size (axis units) over an optional image.

    Without an image, cells are 1 x 1. Over an image, ``"nearest"`` draws the map's own cells stretched
    to the image (exactly nearest-neighbour upsampling, without inflating the figure); ``"bilinear"``
    interpolates to the image's pixel grid (torch, ``align_corners=False``) and draws 1-pixel cells.
    """
    if rgb is None:
        return arr, (1.0, 1.0)
    height, width = rgb.shape[:2]
    if upsample == "bilinear" and arr.shape != (height, width):
        t = torch.from_numpy(arr)[None, None]
        arr = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    return arr, (height / arr.shape[0], width / arr.shape[1])


def _map_hover(arr: np.ndarray, header: str, value_label: str) -> CellHover:
    """Hover with row and col for maps up to 64 x 64 cells; larger (pixel) maps show the pointer's x, y instead,
    which needs no per-cell data."""
    if arr.size <= 4096:
        return grid_hover(arr, esc(header), value_label, None)
    head = f"{hover_safe(header)}<br>" if header else ""
    return CellHover(f"{head}x %{{x:.1f}}, y %{{y:.1f}}<br>{hover_safe(value_label)}: %{{z:{Z_FORMAT}}}<extra></extra>")


def _single_panel(fig: go.Figure, ext: tuple[float, float], size_px: int, title: str, n_extra_b: int = 0):
    """Lay out one square-celled panel of extent ``ext`` = (width, height) axis units; return its facet."""
    scale = size_px / max(ext)
    facet = facet_layout(fig, [""], n_cols=1, content_px=(ext[0] * scale, ext[1] * scale), title=title)[0]
    if n_extra_b:
        fig.update_layout(height=fig.layout.height + n_extra_b, margin=dict(b=fig.layout.margin.b + n_extra_b))
    return facet


def _set_cell_axes(fig: go.Figure, facet_axes: tuple[str, str], shape: tuple[int, int], cell: tuple[float, float]) -> None:
    rows, cols = shape
    fig.layout[layout_key(facet_axes[0])].update(range=[0, cols * cell[1]], **cell_ticks(cols, cell[1]))
    fig.layout[layout_key(facet_axes[1])].update(range=[rows * cell[0], 0], **cell_ticks(rows, cell[0]))


def attribution_overlay(
    image: Float[ArrayLike, "channel height width"],
    attribution: Float[ArrayLike, "map_h map_w"],
    *,
    upsample: Upsample = "nearest",
    opacity: Number | None = None,
    fade: bool = True,
    colorscale: str = DIVERGING,
    zmid: Number = 0.0,
    title: str = "",
    value_label: str = "attribution",
    size_px: int = 420,
    image_style: ImageStyle = "grey",
) -> go.Figure:
    """An attribution map drawn semi-transparently over the image it explains.

    Args:
        image: pixels ``[channel, height, width]`` in [0, 1] (1 or 3 channels).
        attribution: a patch grid ``[grid_h, grid_w]`` or a pixel map ``[height, width]``.
        upsample: ``"nearest"`` (blocky patches) or ``"bilinear"`` (smooth, interpolated to pixels).
        opacity: opacity of the map: with ``fade`` the opacity at the scale's ends (default 0.8),
            without it a uniform opacity (default 0.5).
        fade: make the colour scale transparent at ``zmid`` (see `faded_colorscale`) so the image shows
            through where the attribution is near neutral.
        colorscale: diverging Plotly colour scale, symmetric around ``zmid``.
        zmid: value at the centre of the scale.
        title: figure title.
        value_label: colour bar title: say what the values are (e.g. ``"CAAP score (logit)"``).
        size_px: size of the panel's longer side in pixels.
        image_style: ``"grey"`` (default) draws the image desaturated under the map (`greyscale_underlay`), so
            that red and blue objects in the picture cannot be read as map values; ``"colour"`` draws it as is.

    Raises:
        ValueError: if the map is not 2-D, the image is not ``[1|3, H, W]`` in [0, 1], or ``upsample`` or
            ``image_style`` is unknown.

    Example:
        >>> import torch
        >>> fig = attribution_overlay(torch.rand(3, 32, 32), torch.randn(4, 4))
        >>> [t.type for t in fig.data]
        ['image', 'heatmap']
    """
    check_choice(upsample, ("nearest", "bilinear"), "upsample")
    rgb = underlay_rgb(image, image_style)
    z, cell = _placed_map(_check_map(attribution, "attribution"), rgb, upsample)
    colorscale, opacity = overlay_colors(colorscale, opacity, over_image=True, fade=fade)
    fig = go.Figure()
    facet = _single_panel(fig, (float(rgb.shape[1]), float(rgb.shape[0])), size_px, title)
    fig.add_trace(image_trace(rgb, facet.main))
    fig.add_trace(cell_heatmap(z, facet.main, cell=cell, hover=_map_hover(z, "", value_label),
                               opacity=opacity, name=value_label, meta=dict(kind="map")))
    _set_cell_axes(fig, facet.main, rgb.shape[:2], (1.0, 1.0))
    fig.update_layout(coloraxis=diverging_coloraxis(z, zmid=zmid, colorscale=colorscale, title=value_label, colorbar=colorbar_for(fig)))
    return fig


def patch_map(
    attribution: Float[ArrayLike, "grid_h grid_w"],
    *,
    title: str = "",
    value_label: str = "attribution",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    cell_px: Number | None = None,
) -> go.Figure:
    """A patch-grid map on its own: square cells, row 0 at the top, hover with row, col and value.

    Example:
        >>> import torch
        >>> fig = patch_map(torch.arange(6.0).reshape(2, 3))
        >>> fig.data[0].customdata[1][2]
        'row: 1<br>col: 2<br>attribution: 5'
    """
    arr = _check_map(attribution, "attribution")
    rows = [str(r) for r in range(arr.shape[0])]
    cols = [str(c) for c in range(arr.shape[1])]
    return matrix_heatmap(
        arr, rows, cols, row_name="row", col_name="col", title=title, value_label=value_label,
        zmid=zmid, colorscale=colorscale, cell_px=cell_px,
    )


def compare_maps(
    maps: Mapping[str, Float[ArrayLike, "..."]],
    image: Float[ArrayLike, "channel height width"] | None = None,
    *,
    shared_scale: bool = True,
    upsample: Upsample = "nearest",
    opacity: Number | None = None,
    fade: bool = True,
    facet_cols: int | None = None,
    title: str = "",
    value_label: str = "attribution",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    facet_px: int = 200,
    image_style: ImageStyle = "grey",
) -> go.Figure:
    """Several attribution maps side by side (one facet each, titled by its key), optionally over an image.

    Args:
        maps: name -> 2-D map (``[grid_h, grid_w]`` or ``[height, width]``); sizes may differ.
        image: optional underlay, pixels ``[channel, height, width]`` in [0, 1].
        shared_scale: one colour scale for all maps (comparable colours) or one per map (own colour bar).
        upsample: how maps are drawn over the image, ``"nearest"`` or ``"bilinear"``.
        opacity: map opacity over an image (see `attribution_overlay`).
        fade: over an image, fade the colour scale to transparent at ``zmid`` (see `attribution_overlay`).
        facet_cols: facets per row.
        title: figure title.
        value_label: colour bar title.
        zmid: value at the centre of the diverging scale(s).
        colorscale: diverging Plotly colour scale.
        facet_px: size of each facet's longer side in pixels.
        image_style: the underlay, ``"grey"`` (default, desaturated) or ``"colour"`` (see `attribution_overlay`).

    Raises:
        ValueError: if ``maps`` is empty or a map is not 2-D.

    Example:
        >>> import torch
        >>> fig = compare_maps({"caap": torch.randn(4, 4), "rollout": torch.rand(4, 4)}, shared_scale=False)
        >>> [t.coloraxis for t in fig.data]
        ['coloraxis', 'coloraxis2']
    """
    if not maps:
        raise ValueError("maps: expected at least one map, got an empty mapping")
    check_choice(upsample, ("nearest", "bilinear"), "upsample")
    names = [str(k) for k in maps]
    arrays = [_check_map(m, f"maps[{k!r}]") for k, m in maps.items()]
    rgb = underlay_rgb(image, image_style) if image is not None else None
    placed = [_placed_map(a, rgb, upsample) for a in arrays]
    if rgb is not None:
        ext = (float(rgb.shape[1]), float(rgb.shape[0]))
    elif len({a.shape for a in arrays}) == 1:
        ext = (float(arrays[0].shape[1]), float(arrays[0].shape[0]))
    else:
        ext = (1.0, 1.0)  # mixed shapes: square facets, each map keeps its aspect via scaleanchor
    scale = facet_px / max(ext)
    colorscale, opacity = overlay_colors(colorscale, opacity, over_image=rgb is not None, fade=fade)
    fig = go.Figure()
    facets = facet_layout(
        fig, names, n_cols=facet_cols or default_cols(len(names)), content_px=(ext[0] * scale, ext[1] * scale),
        h_gap_px=40 if shared_scale else 90, v_gap_px=34, margin_r=100 if shared_scale else 70, title=title,
        x_title="col" if rgb is None else "", y_title="row" if rgb is None else "",
    )
    for i, (facet, name, (z, cell)) in enumerate(zip(facets, names, placed)):
        axis = "coloraxis" if shared_scale or i == 0 else f"coloraxis{i + 1}"
        if rgb is not None:
            fig.add_trace(image_trace(rgb, facet.main))
        fig.add_trace(cell_heatmap(z, facet.main, cell=cell, hover=_map_hover(z, name, value_label), coloraxis=axis,
                                   opacity=opacity, name=name, meta=dict(kind="map", facet=i)))
        if rgb is not None:
            _set_cell_axes(fig, facet.main, rgb.shape[:2], (1.0, 1.0))
        else:
            _set_cell_axes(fig, facet.main, z.shape, cell)
        if not shared_scale:
            colorbar = dict(
                thickness=10, x=facet.x_domain[1] + 0.01, xanchor="left", y=sum(facet.y_domain) / 2,
                yanchor="middle", len=facet.y_domain[1] - facet.y_domain[0], tickfont=dict(size=9),
            )
            # each facet's own bar is titled too: a bare bar does not say what its numbers are
            fig.layout[axis] = diverging_coloraxis(z, zmid=zmid, colorscale=colorscale, title=value_label,
                                                   colorbar=colorbar)
    if shared_scale:
        fig.update_layout(coloraxis=diverging_coloraxis(
            *[z for z, _ in placed], zmid=zmid, colorscale=colorscale, title=value_label, colorbar=colorbar_for(fig),
        ))
    return fig


def window_heatmap(
    scores: Float[ArrayLike, "start end"],
    *,
    metric_name: str = "score",
    higher_is_better: bool = True,
    highlight: tuple[int, int] | None = None,
    start_labels: Sequence[str] | None = None,
    end_labels: Sequence[str] | None = None,
    title: str = "Layer-window selection",
    colorscale: str = SEQUENTIAL,
    cell_px: Number | None = None,
) -> go.Figure:
    """Scores of layer windows ``[start, end]`` as a start x end heatmap, the best window starred.

    Invalid windows (e.g. ``end < start``) are NaN and drawn blank. The colour scale is sequential and
    reversed when lower is better, so the best windows are always the brightest.

    Args:
        scores: one score per (start, end) window, NaN where the window is invalid.
        metric_name: name of the score (colour bar, hover, legend).
        higher_is_better: whether the best window has the highest or the lowest score.
        highlight: an extra window ``(start, end)`` to mark, e.g. the one a method selected.
        start_labels, end_labels: row / column labels (default the indices).
        title: figure title.
        colorscale: sequential Plotly colour scale.
        cell_px: cell size in pixels.

    Returns:
        The figure; the best cell is a scatter trace with ``meta={"kind": "best", "start": s, "end": e}``.

    Raises:
        ValueError: if every score is NaN, ``highlight`` is outside the grid or a label count is wrong.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.1, 0.5], [float("nan"), 0.3]])
        >>> fig = window_heatmap(s, metric_name="insertion AUC")
        >>> fig.data[1].meta
        {'kind': 'best', 'start': 0, 'end': 1, 'value': 0.5}
    """
    arr = to_numpy(scores, "scores")
    check_ndim(arr, 2, "scores", "start end")
    if not np.isfinite(arr).any():
        raise ValueError(f"scores: expected at least one finite score, got all NaN/inf for shape {arr.shape}")
    rows = labels_or_default(start_labels, arr.shape[0], "start_labels", "start", "")
    cols = labels_or_default(end_labels, arr.shape[1], "end_labels", "end", "")
    if highlight is not None and not (0 <= highlight[0] < arr.shape[0] and 0 <= highlight[1] < arr.shape[1]):
        raise ValueError(f"highlight: expected (start, end) inside the {arr.shape} score grid, got {highlight}")
    masked = np.where(np.isfinite(arr), arr, -np.inf if higher_is_better else np.inf)
    best = np.unravel_index(np.argmax(masked) if higher_is_better else np.argmin(masked), arr.shape)
    best = (int(best[0]), int(best[1]))
    coloraxis = sequential_coloraxis(arr, colorscale=colorscale, reversescale=not higher_is_better, title=metric_name)
    fig = matrix_heatmap(
        arr, rows, cols, row_name="start", col_name="end", title=title, value_label=metric_name, zmid=0.0,
        colorscale=colorscale, cell_px=cell_px, coloraxis=coloraxis,
    )
    best_value = float(arr[best])
    fig.add_trace(go.Scatter(
        x=[best[1] + 0.5], y=[best[0] + 0.5], mode="markers",
        marker=dict(symbol="star", size=16, color="white", line=dict(color="black", width=1.5)),
        name=esc(f"best: {rows[best[0]]}-{cols[best[1]]} ({metric_name} {fmt(best_value)})"),
        hovertemplate=f"best window<br>start: {hover_safe(rows[best[0]])}<br>end: {hover_safe(cols[best[1]])}<br>"
        f"{hover_safe(metric_name)}: {fmt(best_value)}<extra></extra>",
        meta=dict(kind="best", start=best[0], end=best[1], value=best_value),
    ))
    if highlight is not None:
        h_value = float(arr[highlight])
        fig.add_trace(go.Scatter(
            x=[highlight[1] + 0.5], y=[highlight[0] + 0.5], mode="markers",
            marker=dict(symbol="square-open", size=22, color="black", line=dict(width=3)),
            name=esc(f"selected: {rows[highlight[0]]}-{cols[highlight[1]]} ({metric_name} {fmt(h_value)})"),
            hoverinfo="skip", meta=dict(kind="highlight", start=int(highlight[0]), end=int(highlight[1]), value=h_value),
        ))
    # The legend goes under the x-axis title; the figure grows by one line per entry to make room.
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    b = fig.layout.margin.b
    extra = 26 * (1 + (highlight is not None))
    fig.update_layout(
        height=fig.layout.height + extra, margin=dict(b=b + extra), showlegend=True,
        legend=dict(x=0.0, xanchor="left", y=-b / plot_h, yanchor="top", font=dict(size=10)),
    )
    return fig


def window_slider(
    maps: Sequence[Float[ArrayLike, "..."]],
    labels: Sequence[str],
    image: Float[ArrayLike, "channel height width"] | None = None,
    *,
    upsample: Upsample = "nearest",
    opacity: Number | None = None,
    fade: bool = True,
    title: str = "",
    value_label: str = "attribution",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    size_px: int = 380,
    image_style: ImageStyle = "grey",
) -> go.Figure:
    """One figure with a slider stepping through maps (e.g. one per layer window) on a shared colour scale.

    Each map is its own heatmap trace; the slider toggles which one is visible (the image underlay
    stays), so the first map is shown initially.

    Args:
        maps: 2-D maps of one shape (``[grid_h, grid_w]`` or ``[height, width]``).
        labels: one slider label per map, e.g. ``["L0-3", "L4-7"]``.
        image: optional underlay, pixels ``[channel, height, width]`` in [0, 1].
        upsample: how maps are drawn over the image, ``"nearest"`` or ``"bilinear"``.
        opacity: map opacity over an image (see `attribution_overlay`).
        fade: over an image, fade the colour scale to transparent at ``zmid`` (see `attribution_overlay`).
        title: figure title (the current label is appended).
        value_label: colour bar title.
        zmid: value at the centre of the diverging scale.
        colorscale: diverging Plotly colour scale.
        size_px: size of the panel's longer side in pixels.
        image_style: the underlay, ``"grey"`` (default, desaturated) or ``"colour"`` (see `attribution_overlay`).

    Raises:
        ValueError: if ``maps`` is empty, a map is not 2-D, shapes differ or the label count is wrong.

    Example:
        >>> import torch
        >>> fig = window_slider([torch.randn(4, 4), torch.randn(4, 4)], ["L0-5", "L6-11"])
        >>> [s.label for s in fig.layout.sliders[0].steps]
        ['L0-5', 'L6-11']
    """
    if len(maps) == 0:
        raise ValueError("maps: expected at least one map, got none")
    check_labels(labels, len(maps), "labels", "map")
    check_choice(upsample, ("nearest", "bilinear"), "upsample")
    arrays = [_check_map(m, f"maps[{i}]") for i, m in enumerate(maps)]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"maps: expected maps of one shape, got shapes {sorted(shapes)}")
    rgb = underlay_rgb(image, image_style) if image is not None else None
    placed = [_placed_map(a, rgb, upsample) for a in arrays]
    shape = rgb.shape[:2] if rgb is not None else arrays[0].shape
    colorscale, opacity = overlay_colors(colorscale, opacity, over_image=rgb is not None, fade=fade)
    fig = go.Figure()
    facet = _single_panel(fig, (float(shape[1]), float(shape[0])), size_px, f"{title}: {labels[0]}" if title else str(labels[0]), n_extra_b=80)
    n_fixed = 0
    if rgb is not None:
        fig.add_trace(image_trace(rgb, facet.main))
        n_fixed = 1
    for i, (label, (z, cell)) in enumerate(zip(labels, placed)):
        fig.add_trace(cell_heatmap(z, facet.main, cell=cell, hover=_map_hover(z, str(label), value_label),
                                   opacity=opacity, name=str(label), meta=dict(kind="map", step=i)))
        fig.data[-1].visible = i == 0
    _set_cell_axes(fig, facet.main, shape, (1.0, 1.0) if rgb is not None else placed[0][1])
    steps = []
    for i, label in enumerate(labels):
        visible = [True] * n_fixed + [j == i for j in range(len(arrays))]
        step_title = esc(f"{title}: {label}" if title else label)
        steps.append(dict(label=esc(label), method="update", args=[{"visible": visible}, {"title.text": step_title}]))
    fig.update_layout(
        coloraxis=diverging_coloraxis(*[z for z, _ in placed], zmid=zmid, colorscale=colorscale,
                                      title=value_label, colorbar=colorbar_for(fig)),
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="window: "), pad=dict(t=35), len=1.0, x=0.0)],
    )
    return fig

"""Figures for patching results: layer x position patch grids, layer x head, head x position, path patching.

All functions are pure: plain tensors/arrays and labels in, a ``plotly.graph_objects.Figure`` out.
Patch positions follow the token layout ``pos = n_prefix + row * grid_w + col`` (row-major, prefix tokens
such as CLS and registers first); grids are drawn like images, row 0 at the top.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float

from vit_patching.plotting._common import (
    ArrayLike,
    Number,
    check_grid,
    check_labels,
    check_ndim,
    esc,
    fmt,
    ImageStyle,
    underlay_rgb,
    labels_or_default,
    layout_key,
    to_numpy,
)
from vit_patching.plotting._facets import cell_ticks, default_cols, facet_layout
from vit_patching.plotting._traces import cell_heatmap, colorbar_for, grid_hover, image_trace, matrix_heatmap
from vit_patching.plotting.colors import DIVERGING, diverging_coloraxis, overlay_colors

__all__ = ["head_position_facets", "layer_head_grid", "layer_patch_grid", "path_patching_heatmap"]


def _patch_facets(
    rows: np.ndarray,
    titles: list[str],
    headers: list[str],
    *,
    grid_size: tuple[int, int],
    n_prefix: int,
    prefix_labels: Sequence[str],
    image: Float[ArrayLike, "channel height width"] | None,
    title: str,
    value_label: str,
    facet_cols: int,
    zmid: Number,
    colorscale: str,
    opacity: Number | None,
    fade: bool,
    facet_px: int,
    image_style: str = "grey",
) -> go.Figure:
    """One patch-grid facet per row of ``rows`` [n_facet, pos], with a prefix-token strip above each."""
    grid_h, grid_w = grid_size
    rgb = underlay_rgb(image, image_style) if image is not None else None
    # Cell size in axis units: pixels when an image is drawn underneath (a cell covers one patch), else 1.
    cell = (rgb.shape[0] / grid_h, rgb.shape[1] / grid_w) if rgb is not None else (1.0, 1.0)
    ext_w, ext_h = grid_w * cell[1], grid_h * cell[0]
    scale = facet_px / max(ext_w, ext_h)
    content = (ext_w * scale, ext_h * scale)
    strip_px = 16.0 if n_prefix else 0.0
    # Prefix cells are wider than patch cells (up to a third of the facet) so their labels fit inside.
    strip_w = min(content[0], n_prefix * content[0] / 3)
    colorscale, opacity = overlay_colors(colorscale, opacity, over_image=rgb is not None, fade=fade)

    fig = go.Figure()
    facets = facet_layout(
        fig, titles, n_cols=facet_cols, content_px=content, strip_px=strip_px, strip_w_px=strip_w,
        h_gap_px=40, v_gap_px=34, title=title, x_title="col", y_title="row",
    )
    for i, facet in enumerate(facets):
        grid = rows[i, n_prefix:].reshape(grid_h, grid_w)
        if rgb is not None:
            fig.add_trace(image_trace(rgb, facet.main))
        fig.add_trace(cell_heatmap(
            grid, facet.main, cell=cell, hover=grid_hover(grid, headers[i], value_label, n_prefix),
            opacity=opacity, name=titles[i], meta=dict(kind="grid", facet=i),
        ))
        fig.layout[layout_key(facet.main[0])].update(range=[0, ext_w], **cell_ticks(grid_w, cell[1]))
        fig.layout[layout_key(facet.main[1])].update(range=[ext_h, 0], **cell_ticks(grid_h, cell[0]))
        if facet.strip is not None:
            prefix = rows[i, :n_prefix]
            hover = [f"{headers[i]}<br>{esc(lab)} (pos {j})<br>{esc(value_label)}: {fmt(v)}"
                     for j, (lab, v) in enumerate(zip(prefix_labels, prefix))]
            fig.add_trace(go.Heatmap(
                z=prefix[None, :], x=list(range(n_prefix)), y=[0], text=[[esc(lab) for lab in prefix_labels]],
                texttemplate="%{text}", textfont=dict(size=9), customdata=[hover],
                hovertemplate="%{customdata}<extra></extra>", xgap=1, coloraxis="coloraxis",
                xaxis=facet.strip[0], yaxis=facet.strip[1], name=esc(f"{titles[i]} prefix"),
                meta=dict(kind="prefix", facet=i),
            ))
            fig.layout[layout_key(facet.strip[0])].update(range=[-0.5, n_prefix - 0.5])
            fig.layout[layout_key(facet.strip[1])].update(range=[-0.5, 0.5])
    fig.update_layout(coloraxis=diverging_coloraxis(
        rows, zmid=zmid, colorscale=colorscale, title=value_label, colorbar=colorbar_for(fig),
    ))
    return fig


def layer_patch_grid(
    values: Float[ArrayLike, "layer pos"],
    *,
    grid_size: tuple[int, int],
    n_prefix: int,
    prefix_labels: Sequence[str],
    layer_labels: Sequence[str] | None = None,
    image: Float[ArrayLike, "channel height width"] | None = None,
    title: str = "Activation patching by layer and position",
    value_label: str = "recovery",
    facet_cols: int | None = None,
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    opacity: Number | None = None,
    fade: bool = True,
    facet_px: int = 180,
    image_style: ImageStyle = "grey",
) -> go.Figure:
    """One facet per layer, each a grid_h x grid_w heatmap of the patch positions' values.

    Every facet also shows its prefix tokens (CLS, registers) in a labelled strip above the grid. All
    heatmaps share one diverging colour scale centred on ``zmid`` whose symmetric range is the largest
    ``|value - zmid|`` over everything shown, prefix tokens included. With ``image`` the grid is drawn
    semi-transparently over the picture in pixel coordinates (a cell spans one patch).

    Args:
        values: one value per layer and token position, positions laid out as
            ``pos = n_prefix + row * grid_w + col``.
        grid_size: ``(grid_h, grid_w)`` patch grid.
        n_prefix: number of prefix tokens before the patches.
        prefix_labels: one label per prefix token, e.g. ``["CLS", "reg0"]``.
        layer_labels: facet titles, one per layer (default ``"layer {l}"``).
        image: optional underlay, pixels ``[channel, height, width]`` in [0, 1] (1 or 3 channels).
        title: figure title.
        value_label: name of the value (colour bar title and hover text).
        facet_cols: facets per row (default: a roughly square arrangement).
        zmid: value at the centre of the colour scale.
        colorscale: a Plotly diverging colour scale name.
        opacity: heatmap opacity; over an image with ``fade`` it is the opacity at the scale's ends
            (default 0.8), without ``fade`` a uniform opacity (default 0.5); 1 without an image.
        fade: over an image, make the colour scale transparent at ``zmid`` (see `faded_colorscale`)
            so the picture shows through where values are near neutral.
        facet_px: size in pixels of each facet's longer side.
        image_style: the underlay, ``"grey"`` (default: desaturated, so that red and blue objects cannot be read
            as values) or ``"colour"``.

    Returns:
        The figure; traces carry ``meta={"kind": "grid"|"prefix"|"image", "facet": l}``.

    Raises:
        ValueError: if ``pos`` does not match ``n_prefix + grid_h * grid_w`` or a label count is wrong.

    Example:
        >>> import torch
        >>> fig = layer_patch_grid(torch.randn(2, 1 + 4 * 4), grid_size=(4, 4), n_prefix=1,
        ...                        prefix_labels=["CLS"])
        >>> [t.meta["kind"] for t in fig.data]
        ['grid', 'prefix', 'grid', 'prefix']
    """
    arr = to_numpy(values, "values")
    check_ndim(arr, 2, "values", "layer pos")
    check_grid(arr.shape[1], grid_size, n_prefix, "values")
    check_labels(prefix_labels, n_prefix, "prefix_labels", "prefix token")
    titles = labels_or_default(layer_labels, arr.shape[0], "layer_labels", "layer", "layer ")
    return _patch_facets(
        arr, titles, [f"layer: {esc(t)}" for t in titles], grid_size=grid_size, n_prefix=n_prefix,
        prefix_labels=prefix_labels, image=image, title=title, value_label=value_label,
        facet_cols=facet_cols or default_cols(arr.shape[0]), zmid=zmid, colorscale=colorscale,
        opacity=opacity, fade=fade, facet_px=facet_px, image_style=image_style,
    )


def _select(indices: Sequence[int] | None, n: int, name: str) -> list[int]:
    """Checked list of indices into an axis of size ``n`` (all of them when None)."""
    if indices is None:
        return list(range(n))
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < n]
    if bad or not out:
        raise ValueError(f"{name}: expected a non-empty list of indices in [0, {n}), got {list(indices)}")
    return out


def head_position_facets(
    values: Float[ArrayLike, "layer pos head"],
    *,
    grid_size: tuple[int, int],
    n_prefix: int,
    prefix_labels: Sequence[str],
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    layer_labels: Sequence[str] | None = None,
    head_labels: Sequence[str] | None = None,
    image: Float[ArrayLike, "channel height width"] | None = None,
    title: str = "Head patching by position",
    value_label: str = "recovery",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    opacity: Number | None = None,
    fade: bool = True,
    facet_px: int = 130,
    image_style: ImageStyle = "grey",
    max_facets: int = 64,
) -> go.Figure:
    """Patch grids for (layer, head) pairs: one facet row per selected layer, one column per selected head.

    Same conventions as `layer_patch_grid` (prefix strip, shared symmetric colour scale over the shown
    facets, optional image underlay).

    Args:
        values: one value per layer, token position and head.
        grid_size: ``(grid_h, grid_w)`` patch grid.
        n_prefix: number of prefix tokens before the patches.
        prefix_labels: one label per prefix token.
        layers: layer indices to show (default all).
        heads: head indices to show (default all).
        layer_labels: one label per layer of ``values`` (default ``"L{l}"``).
        head_labels: one label per head of ``values`` (default ``"H{h}"``).
        image: optional underlay, pixels ``[channel, height, width]`` in [0, 1].
        title: figure title.
        value_label: name of the value.
        zmid: value at the centre of the colour scale.
        colorscale: a Plotly diverging colour scale name.
        opacity: heatmap opacity (see `layer_patch_grid`).
        fade: over an image, fade the colour scale to transparent at ``zmid`` (see `layer_patch_grid`).
        facet_px: size in pixels of each facet's longer side.
        image_style: the underlay, ``"grey"`` (default: desaturated, so that red and blue objects cannot be read
            as values) or ``"colour"``.
        max_facets: refuse to draw more facets than this (pick ``layers``/``heads`` instead).

    Raises:
        ValueError: on a grid/pos mismatch, wrong label counts, indices out of range or too many facets.

    Example:
        >>> import torch
        >>> fig = head_position_facets(torch.randn(3, 1 + 2 * 2, 4), grid_size=(2, 2), n_prefix=1,
        ...                            prefix_labels=["CLS"], layers=[2], heads=[0, 3])
        >>> [a.text for a in fig.layout.annotations]
        ['L2 H0', 'L2 H3']
    """
    arr = to_numpy(values, "values")
    check_ndim(arr, 3, "values", "layer pos head")
    n_layers, n_pos, n_heads = arr.shape
    check_grid(n_pos, grid_size, n_prefix, "values")
    check_labels(prefix_labels, n_prefix, "prefix_labels", "prefix token")
    l_labels = labels_or_default(layer_labels, n_layers, "layer_labels", "layer", "L")
    h_labels = labels_or_default(head_labels, n_heads, "head_labels", "head", "H")
    sel_l = _select(layers, n_layers, "layers")
    sel_h = _select(heads, n_heads, "heads")
    n_facets = len(sel_l) * len(sel_h)
    if n_facets > max_facets:
        raise ValueError(
            f"layers/heads: expected at most max_facets={max_facets} facets, got {len(sel_l)} layers x "
            f"{len(sel_h)} heads = {n_facets}; pass layers=[...] and/or heads=[...] to choose a subset"
        )
    rows = np.stack([arr[l, :, h] for l in sel_l for h in sel_h])
    titles = [f"{l_labels[l]} {h_labels[h]}" for l in sel_l for h in sel_h]
    headers = [f"layer: {esc(l_labels[l])}<br>head: {esc(h_labels[h])}" for l in sel_l for h in sel_h]
    return _patch_facets(
        rows, titles, headers, grid_size=grid_size, n_prefix=n_prefix, prefix_labels=prefix_labels,
        image=image, title=title, value_label=value_label, facet_cols=len(sel_h), zmid=zmid,
        colorscale=colorscale, opacity=opacity, fade=fade, facet_px=facet_px, image_style=image_style,
    )


def layer_head_grid(
    values: Float[ArrayLike, "layer head"],
    *,
    layer_labels: Sequence[str] | None = None,
    head_labels: Sequence[str] | None = None,
    title: str = "Head patching",
    value_label: str = "recovery",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    cell_px: Number | None = None,
) -> go.Figure:
    """Layer x head heatmap (layers as rows, layer 0 at the top) on a symmetric diverging scale.

    Args:
        values: one value per layer and head.
        layer_labels: row labels (default ``"L{l}"``).
        head_labels: column labels (default ``"H{h}"``).
        title: figure title.
        value_label: name of the value (colour bar and hover).
        zmid: value at the centre of the colour scale.
        colorscale: a Plotly diverging colour scale name.
        cell_px: cell size in pixels (default: fit ~420 px).

    Raises:
        ValueError: if a label count does not match ``values``.

    Example:
        >>> import torch
        >>> fig = layer_head_grid(torch.randn(4, 6))
        >>> list(fig.layout.yaxis.ticktext)[:2]
        ['L0', 'L1']
    """
    arr = to_numpy(values, "values")
    check_ndim(arr, 2, "values", "layer head")
    rows = labels_or_default(layer_labels, arr.shape[0], "layer_labels", "layer", "L")
    cols = labels_or_default(head_labels, arr.shape[1], "head_labels", "head", "H")
    return matrix_heatmap(
        arr, rows, cols, row_name="layer", col_name="head", title=title, value_label=value_label,
        zmid=zmid, colorscale=colorscale, cell_px=cell_px,
    )


def path_patching_heatmap(
    values: Float[ArrayLike, "sender receiver"],
    sender_labels: Sequence[str],
    receiver_labels: Sequence[str],
    *,
    title: str = "Path patching",
    value_label: str = "recovery",
    zmid: Number = 0.0,
    colorscale: str = DIVERGING,
    cell_px: Number | None = None,
) -> go.Figure:
    """Sender x receiver heatmap of path-patching effects (senders as rows).

    Args:
        values: effect of patching the path from each sender to each receiver.
        sender_labels: one label per sender (rows), e.g. ``["L0H1", "L1H3"]``.
        receiver_labels: one label per receiver (columns).
        title: figure title.
        value_label: name of the value.
        zmid: value at the centre of the colour scale.
        colorscale: a Plotly diverging colour scale name.
        cell_px: cell size in pixels.

    Raises:
        ValueError: if a label count does not match ``values``.

    Example:
        >>> import torch
        >>> fig = path_patching_heatmap(torch.randn(2, 3), ["L0H0", "L0H1"], ["L1H0", "L1H1", "logits"])
        >>> fig.layout.xaxis.title.text
        'receiver'
    """
    arr = to_numpy(values, "values")
    check_ndim(arr, 2, "values", "sender receiver")
    check_labels(sender_labels, arr.shape[0], "sender_labels", "sender")
    check_labels(receiver_labels, arr.shape[1], "receiver_labels", "receiver")
    return matrix_heatmap(
        arr, [str(s) for s in sender_labels], [str(s) for s in receiver_labels], row_name="sender",
        col_name="receiver", title=title, value_label=value_label, zmid=zmid, colorscale=colorscale,
        cell_px=cell_px,
    )

"""Figures of :class:`~vit_patching.patching.results.PatchingResult`: picks the values, axes and labels of a
result and hands them to the figure functions of :mod:`vit_patching.plotting` (imported here, on first plot)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

KINDS = ("layer_grid", "layer_head", "head_facets", "path")
_DEFAULT_KIND = {
    ("site", "layer", "pos"): "layer_grid",
    ("site", "layer", "head"): "layer_head",
    ("site", "layer", "pos", "head"): "head_facets",
    ("sender", "receiver"): "path",
    ("site", "latent"): "layer_head",  # latent sweeps: the latent axis drawn as heads are
    ("site", "pos", "latent"): "head_facets",
}
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
MODEBAR_PX = 36  # Plotly's modebar (top right, ~30 px): the title goes below it, not under it
MIN_GRID_WIDTH_PX = 450  # layer x head / sender x receiver grids: readable cells and room for the title
MAX_GRID_HEIGHT_PX = 480
NAN_COLOR = "#bdbdbd"  # cells with no value (not run, or 0/0 recovery); zero is white on the diverging scale


def cell_values(result: Any, image: int | None, normalized: bool) -> Tensor:
    """``[*axes]``: one image's values, or the (NaN-aware) mean over images."""
    batch = result.values.shape[-1]
    if image is None:
        return result.mean(normalized=normalized)
    if isinstance(image, bool) or not isinstance(image, int) or not 0 <= image < batch:
        raise ValueError(f"image must be an image index in [0, {batch}), got {image!r}")
    return (result.normalized if normalized else result.values)[..., image]


def _full_positions(result: Any, values: Tensor) -> Tensor:
    """Scatter a swept subset of positions (last axis) into all ``n_pos`` positions, NaN elsewhere."""
    o = result.options
    n_pos = o["n_prefix"] + o["grid_size"][0] * o["grid_size"][1]
    full = torch.full((*values.shape[:-1], n_pos), float("nan"), dtype=values.dtype)
    full[..., torch.tensor(o.get("pos_indices", range(n_pos)))] = values
    return full


def _sites(result: Any, site: str | None) -> list[int]:
    names = result.labels["site"]
    if site is None:
        return list(range(len(names)))
    if site not in names:
        raise ValueError(f"site must be one of {names}, got {site!r}")
    return [names.index(site)]


def _underlay(result: Any, image: int | None, underlay: bool) -> Tensor | None:
    pixels = result.options.get("pixels")
    if not underlay or pixels is None:
        return None
    if image is None and pixels.shape[0] != 1:
        return None  # a mean over several images has no one picture to sit on
    return pixels[image or 0].clamp(0, 1)


def _grid_kwargs(result: Any) -> dict[str, Any]:
    o = result.options
    missing = [k for k in ("grid_size", "n_prefix", "prefix_labels") if k not in o]
    if missing:
        raise ValueError(f"this result has no token layout in options (missing {missing}); cannot draw patch grids")
    return dict(grid_size=tuple(o["grid_size"]), n_prefix=o["n_prefix"], prefix_labels=list(o["prefix_labels"]))


def plot_result(
    result: Any,
    kind: str | None,
    *,
    site: str | None,
    receiver: int,
    image: int | None,
    normalized: bool,
    underlay: bool,
    **kwargs: Any,
) -> Any:
    """Dispatch :meth:`PatchingResult.plot` on ``kind`` (default from the result's axes)."""
    from vit_patching import plotting

    kind = kind or _DEFAULT_KIND.get(tuple(result.axes))
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} (no default for axes {result.axes}), got {kind!r}")
    values = cell_values(result, image, normalized)
    kwargs.setdefault("value_label", "recovery" if normalized else result.metric)
    if kind != "layer_head" or tuple(result.axes) != ("sender", "receiver"):
        kwargs.setdefault("title", f"{result.kind} ({result.direction}, {result.metric})")
    axes = tuple(result.axes)

    if kind == "layer_grid":
        _require(axes, ("site", "layer", "pos"), kind)
        idx = _sites(result, site)
        rows = _full_positions(result, values[idx]).flatten(0, 1)  # [site*layer, pos]
        n_layer = values.shape[1]
        site_names = [result.labels["site"][i] for i in idx]
        layer_names = result.labels["layer"]
        kwargs.setdefault("facet_cols", n_layer)
        fig = plotting.layer_patch_grid(
            rows, layer_labels=[f"{s} {l}" if len(idx) > 1 else l for s in site_names for l in layer_names],
            image=_underlay(result, image, underlay), **_grid_kwargs(result), **kwargs,
        )
        return finish_figure(fig, rows)
    if kind == "head_facets" and axes == ("site", "pos", "latent"):  # one facet row per site, one per latent
        idx = _sites(result, site)
        facets = _full_positions(result, values[idx].transpose(1, 2)).transpose(1, 2)
        kwargs.setdefault("title", f"{result.kind} ({result.direction}, {result.metric})")
        fig = plotting.head_position_facets(
            facets, layer_labels=[result.labels["site"][i] for i in idx], head_labels=result.labels["latent"],
            image=_underlay(result, image, underlay), **_grid_kwargs(result), **kwargs,
        )
        return finish_figure(fig, facets)
    if kind == "head_facets":
        _require(axes, ("site", "layer", "pos", "head"), kind)
        idx = _sites(result, site)
        if len(idx) != 1:
            raise ValueError(f"kind='head_facets' shows one site; pass site= one of {result.labels['site']}")
        facets = _full_positions(result, values[idx[0]].transpose(1, 2)).transpose(1, 2)
        fig = plotting.head_position_facets(
            facets, layer_labels=result.labels["layer"], head_labels=result.labels["head"],
            image=_underlay(result, image, underlay), **_grid_kwargs(result), **kwargs,
        )
        return finish_figure(fig, facets)
    if kind == "path":
        _require(axes, ("sender", "receiver"), kind)
        kwargs.setdefault("cell_px", grid_cell_px(values.shape, result.labels["sender"]))
        fig = plotting.path_patching_heatmap(values, result.labels["sender"], result.labels["receiver"], **kwargs)
        return finish_figure(fig, values, min_width=MIN_GRID_WIDTH_PX)
    # layer_head
    if axes == ("site", "latent"):
        idx = _sites(result, site)
        rows = values[idx]
        labels = [result.labels["site"][i] for i in idx]
        kwargs.setdefault("cell_px", grid_cell_px(rows.shape, labels))
        fig = plotting.layer_head_grid(rows, layer_labels=labels, head_labels=result.labels["latent"], **kwargs)
        return finish_figure(fig, rows, min_width=MIN_GRID_WIDTH_PX)
    if axes == ("site", "layer", "head"):
        idx = _sites(result, site)
        rows = values[idx].flatten(0, 1)
        names = [result.labels["site"][i] for i in idx]
        layer_labels = [f"{s} {l}" if len(idx) > 1 else l for s in names for l in result.labels["layer"]]
        kwargs.setdefault("cell_px", grid_cell_px(rows.shape, layer_labels))
        fig = plotting.layer_head_grid(rows, layer_labels=layer_labels, head_labels=result.labels["head"], **kwargs)
        return finish_figure(fig, rows, min_width=MIN_GRID_WIDTH_PX)
    _require(axes, ("sender", "receiver"), kind)
    grid, labels = _path_head_grid(result, values, receiver)
    kwargs.setdefault("title", f"path patching into {result.labels['receiver'][receiver]} "
                               f"({result.direction}, {result.metric})")
    kwargs.setdefault("cell_px", grid_cell_px(grid.shape, labels["layer_labels"]))
    fig = plotting.layer_head_grid(grid, **labels, **kwargs)
    return finish_figure(fig, grid, min_width=MIN_GRID_WIDTH_PX)


def grid_cell_px(shape: tuple[int, ...], row_labels: list[str]) -> float:
    """Cell size of a [rows, cols] grid figure: large enough that the figure is at least
    :data:`MIN_GRID_WIDTH_PX` wide (a 2-layer x 4-head grid is otherwise ~300 px, its title cut off), at most
    80 px, and no taller than :data:`MAX_GRID_HEIGHT_PX` where the rows allow."""
    n_rows, n_cols = shape
    default = min(40.0, max(14.0, 420.0 / max(n_rows, n_cols)))
    # Mirrors the plotting module's margins: left for the row labels, 110 px right for the colour bar.
    fixed_w = 30 + 7 * max((len(s) for s in row_labels), default=1) + 110
    cell = min(80.0, max(default, (MIN_GRID_WIDTH_PX - fixed_w) / n_cols))
    return max(default, min(cell, MAX_GRID_HEIGHT_PX / n_rows))


def finish_figure(fig: Any, values: Tensor, *, min_width: int = 0) -> Any:
    """Layout every patching figure gets: the title below Plotly's modebar (a wider top margin), at least
    ``min_width`` px (and as wide as the title), and NaN cells drawn in :data:`NAN_COLOR`, distinct from zero
    (white), with a note under the colour bar when there are any."""
    lay = fig.layout
    top = (lay.margin.t or 0) + MODEBAR_PX
    fig.update_layout(margin=dict(t=top), height=(lay.height or 0) + MODEBAR_PX)
    if lay.title.text:
        pad = (lay.title.pad.t or 0) + MODEBAR_PX
        fig.update_layout(title=dict(pad=dict(t=pad)))
        # ~7.5 px per character at Plotly's 17 px title font, from the left margin.
        min_width = max(min_width, int((lay.margin.l or 0) + 7.5 * len(_plain(lay.title.text)) + 30))
    if lay.width is not None and lay.width < min_width:
        extra = min_width - lay.width
        fig.update_layout(width=min_width, margin=dict(r=(lay.margin.r or 0) + extra))  # plot area unchanged
    fig.update_layout(plot_bgcolor=NAN_COLOR)  # heatmaps leave NaN cells transparent: the background shows
    if bool(values.isnan().any()) and lay.coloraxis.colorbar is not None:
        title = lay.coloraxis.colorbar.title.text or ""
        fig.update_layout(coloraxis_colorbar_title_text=f"{title}<br><sub>grey: NaN</sub>")
    return fig


def _plain(text: str) -> str:
    return re.sub(r"<[^>]+>", "", text)


def _path_head_grid(result: Any, values: Tensor, receiver: int) -> tuple[Tensor, dict[str, list[str]]]:
    """Layer x head grid of the single-head senders of a path result, through one receiver column."""
    n_r = values.shape[1]
    if isinstance(receiver, bool) or not isinstance(receiver, int) or not 0 <= receiver < n_r:
        raise ValueError(f"receiver must be a receiver index in [0, {n_r}), got {receiver!r}")
    heads = {}
    for i, label in enumerate(result.labels["sender"]):
        m = _HEAD_RE.match(label)
        if m:
            heads[(int(m[1]), int(m[2]))] = i
    if not heads:
        raise ValueError("kind='layer_head' on a path result needs single-head senders like 'L1H0'")
    n_l = 1 + max(l for l, _ in heads)
    n_h = 1 + max(h for _, h in heads)
    grid = torch.full((n_l, n_h), float("nan"))
    for (l, h), i in heads.items():
        grid[l, h] = values[i, receiver]
    return grid, {"layer_labels": [f"L{l}" for l in range(n_l)], "head_labels": [f"H{h}" for h in range(n_h)]}


def _require(axes: tuple[str, ...], expected: tuple[str, ...], kind: str) -> None:
    if axes != expected:
        raise ValueError(f"kind={kind!r} needs a result with axes {expected}, this one has {axes}")

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
}
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")


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
        return plotting.layer_patch_grid(
            rows, layer_labels=[f"{s} {l}" if len(idx) > 1 else l for s in site_names for l in layer_names],
            image=_underlay(result, image, underlay), **_grid_kwargs(result), **kwargs,
        )
    if kind == "head_facets":
        _require(axes, ("site", "layer", "pos", "head"), kind)
        idx = _sites(result, site)
        if len(idx) != 1:
            raise ValueError(f"kind='head_facets' shows one site; pass site= one of {result.labels['site']}")
        return plotting.head_position_facets(
            _full_positions(result, values[idx[0]].transpose(1, 2)).transpose(1, 2),
            layer_labels=result.labels["layer"], head_labels=result.labels["head"],
            image=_underlay(result, image, underlay), **_grid_kwargs(result), **kwargs,
        )
    if kind == "path":
        _require(axes, ("sender", "receiver"), kind)
        return plotting.path_patching_heatmap(values, result.labels["sender"], result.labels["receiver"], **kwargs)
    # layer_head
    if axes == ("site", "layer", "head"):
        idx = _sites(result, site)
        rows = values[idx].flatten(0, 1)
        names = [result.labels["site"][i] for i in idx]
        layer_labels = [f"{s} {l}" if len(idx) > 1 else l for s in names for l in result.labels["layer"]]
        return plotting.layer_head_grid(rows, layer_labels=layer_labels, head_labels=result.labels["head"], **kwargs)
    _require(axes, ("sender", "receiver"), kind)
    grid, labels = _path_head_grid(result, values, receiver)
    kwargs.setdefault("title", f"path patching into {result.labels['receiver'][receiver]} "
                               f"({result.direction}, {result.metric})")
    return plotting.layer_head_grid(grid, **labels, **kwargs)


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

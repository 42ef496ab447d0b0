"""Attention-head patching (TransformerLens's ``get_act_patch_attn_head_*``), batched through the one engine.

Sites are a head's output ``z`` and its ``q``, ``k``, ``v`` and attention ``pattern``. Patched over all
positions at once (axes ``site, layer, head``) or one position at a time (axes ``site, layer, pos, head``;
for ``pattern`` the position is the query, i.e. destination, token: its whole row of attention is patched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_bool, check_indices, check_names
from vit_patching.hook_names import get_act_name, site_axes
from vit_patching.model import HookedViT

from .experiment import check_inputs, grid_experiment
from .memory import check_memory_args
from .engine import Site
from .metrics import Metric
from .results import PatchingResult

#: Site name -> short activation name for :func:`~vit_patching.hook_names.get_act_name`:
#: ``get_act_name(HEAD_SITES[site], layer)`` is the hook head patching writes (every one has a head axis).
HEAD_SITES: dict[str, str] = {
    site: site for site in ("z", "q", "k", "v", "pattern") if "head" in site_axes(get_act_name(site, 0))
}


def patch_heads(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    sites: str | Sequence[str] = ("z", "q", "k", "v", "pattern"),
    by_pos: bool = False,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    direction: str = "denoising",
    batch_size: int | str = 128,
    max_memory: int | None = None,
    progress: bool = True,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Patch each head's z/q/k/v/pattern alone (all positions, or each position), batched.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"`` (see :func:`layer_sweep`).
        sites: Names from :data:`HEAD_SITES`.
        by_pos: Patch one token position at a time (the query/destination position for ``pattern``).
        layers: Blocks (default all).
        heads: Heads (default all).
        positions: Token positions for ``by_pos`` (default all).
        direction: ``"denoising"`` or ``"noising"``.
        batch_size: Rows (cell x image) per forward pass, or ``"auto"``: as many as fit ``max_memory`` (see
            :mod:`~vit_patching.patching.memory`; the cached runs are counted).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar.
        pixels: Optional display images in [0, 1] for by-position figures.

    Returns:
        :class:`PatchingResult`, axes ``("site", "layer", "head")`` or, with ``by_pos``,
        ``("site", "layer", "pos", "head")``.

    Raises:
        ValueError: unknown site, layer/head/position out of range, ``positions`` without ``by_pos``.

    Example:
        >>> res = patch_heads(model, clean, corrupted, "logit_diff", sites="z")
        >>> res.axes, res.mean().shape
        (('site', 'layer', 'head'), torch.Size([1, 6, 3]))
        >>> res_pos = patch_heads(model, clean, corrupted, sites=("z", "pattern"), by_pos=True, layers=[4])
    """
    layout = check_inputs(model, clean, corrupted, pixels)
    check_memory_args(batch_size, max_memory)
    check_bool(by_pos, "by_pos")
    if positions is not None and not by_pos:
        raise ValueError(f"positions: expected None without by_pos=True (every position is patched at once), "
                         f"got {positions!r}")
    axes: dict[str, list[Any]] = {
        "site": check_names(sites, list(HEAD_SITES), "sites"),
        "layer": check_indices(layers, model.cfg.n_layers, "layers", "layer"),
    }
    if by_pos:
        axes["pos"] = check_indices(positions, layout.n_pos, "positions", "token position")
    axes["head"] = check_indices(heads, model.cfg.n_heads, "heads", "head")

    def make_site(site: str, layer: int, head: int, pos: int | None = None) -> Site:
        return Site(get_act_name(HEAD_SITES[site], layer), pos=pos, head=head)

    return grid_experiment(
        model, clean, corrupted, metric, axes=axes, make_site=make_site,
        kind="head_patch_by_pos" if by_pos else "head_patch", layout=layout, direction=direction,
        batch_size=batch_size, max_memory=max_memory, progress=progress, pixels=pixels,
    )

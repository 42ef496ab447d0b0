"""Layer x position activation-patching sweeps (TransformerLens's ``get_act_patch_{resid_pre,...}``), batched.

Every (site, layer, position) cell patches one token's activation of one hook from the source run into the
target run. All cells and images run through :func:`~vit_patching.patching.engine.run_patch_spec` as rows of
a few large forward passes, each starting from the target run's cached residual at the earliest block its rows
touch. Positions are token positions (CLS and registers first, then patches row-major), never pixel columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_indices, check_names
from vit_patching.hook_names import get_act_name, site_axes
from vit_patching.model import HookedViT

from .experiment import check_inputs, grid_experiment
from .memory import check_memory_args
from .engine import Site
from .metrics import Metric
from .results import PatchingResult

#: Site name -> short activation name for :func:`~vit_patching.hook_names.get_act_name` (all ``[batch pos
#: d_model]``): ``get_act_name(SWEEP_SITES[site], layer)`` is the hook a sweep patches.
SWEEP_SITES: dict[str, str] = {
    site: site for site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
    if site_axes(get_act_name(site, 0)) == ("pos",)  # the table only holds what the engine patches per position
}
#: The sites of TransformerLens's ``get_act_patch_block_every``.
BLOCK_EVERY_SITES = ("resid_pre", "attn_out", "mlp_out")


def layer_sweep(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    sites: str | Sequence[str] = ("resid_pre", "resid_mid", "attn_out", "mlp_out"),
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    direction: str = "denoising",
    batch_size: int | str = 128,
    max_memory: int | None = None,
    progress: bool = True,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Patch every (site, layer, token position) alone and measure the metric, batched over cells and images.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape (image ``i`` pairs with clean image ``i``).
        metric: ``metric(logits [rows, n_classes], image_index [rows]) -> [rows]`` (see
            :mod:`~vit_patching.patching.metrics`), or ``"logit_diff"`` (clean minus corrupted predicted class),
            ``"logit"`` / ``"prob"`` (of the clean predicted class).
        sites: Names from :data:`SWEEP_SITES`.
        layers: Blocks to sweep (default all).
        positions: Token positions to sweep (default all, prefix tokens included).
        direction: ``"denoising"`` (clean values into the corrupted run) or ``"noising"`` (the reverse).
        batch_size: Rows (cell x image) per forward pass, or ``"auto"``: as many as fit ``max_memory`` (see
            :mod:`~vit_patching.patching.memory`; the cached runs are counted).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar.
        pixels: Optional display images in [0, 1] (e.g. ``ToyBatch.pixels``) for the figure's underlay.

    Returns:
        :class:`PatchingResult` with axes ``("site", "layer", "pos")`` and values ``[site, layer, pos, batch]``;
        ``result.normalized`` is 0 at the target run and 1 at the source run.

    Raises:
        ValueError: unknown site, layer/position out of range, mismatched clean/corrupted, bad direction.

    Example:
        >>> res = layer_sweep(model, clean, corrupted, "logit_diff", sites=("resid_pre",), batch_size=256)
        >>> res.mean().shape                                  # [site, layer, pos]
        torch.Size([1, 6, 65])
        >>> fig = res.plot()                                  # one patch grid per layer
    """
    layout = check_inputs(model, clean, corrupted, pixels)
    check_memory_args(batch_size, max_memory)
    site_names = check_names(sites, list(SWEEP_SITES), "sites")
    axes = {
        "site": site_names,
        "layer": check_indices(layers, model.cfg.n_layers, "layers", "layer"),
        "pos": check_indices(positions, layout.n_pos, "positions", "token position"),
    }

    def make_site(site: str, layer: int, pos: int) -> Site:
        return Site(get_act_name(SWEEP_SITES[site], layer), pos=pos)

    return grid_experiment(
        model, clean, corrupted, metric, axes=axes, make_site=make_site, kind="layer_sweep", layout=layout,
        direction=direction, batch_size=batch_size, max_memory=max_memory, progress=progress, pixels=pixels,
    )


def block_every(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    **kwargs: Any,
) -> PatchingResult:
    """The stacked every-block sweep (resid_pre, attn_out, mlp_out), like TransformerLens's
    ``get_act_patch_block_every``: :func:`layer_sweep` with ``sites=BLOCK_EVERY_SITES``.

    Example:
        >>> res = block_every(model, clean, corrupted, "logit_diff")
        >>> res.labels["site"]
        ['resid_pre', 'attn_out', 'mlp_out']
    """
    if "sites" in kwargs:
        raise ValueError(f"sites: expected none (block_every fixes sites={BLOCK_EVERY_SITES}; use "
                         f"layer_sweep(sites=...) for others), got {kwargs['sites']!r}")
    return layer_sweep(model, clean, corrupted, metric, sites=BLOCK_EVERY_SITES, **kwargs)

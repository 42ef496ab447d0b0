"""Attribution patching over SAE latents: the first-order estimate of :func:`~vit_patching.patching.latent_sweep`.

With a spliced SAE (``model.add_sae``) the latents ``a`` at ``{hook}.sae.hook_sae_acts_post`` are ordinary hook
points, so AtP treats each latent as a node: patching latent ``k`` from the source run into the target run
changes the metric by about ``sum_pos (a'[pos, k] - a[pos, k]) * dm/da[pos, k]`` (the gradient in the target run;
per position without the sum). One cached source run, one forward and one backward of the target run give every
latent's estimate. The values follow :func:`~vit_patching.patching.latent_sweep`'s layout (target metric plus the
estimated change, axes ``site, latent`` or ``site, pos, latent``), so its figures apply, and ``verify_top_k``
re-runs the largest estimates exactly through the engine.

With the error term the gradient reaches the latents through the decoder only (the error is held at the target
run's), exactly as a latent patch acts; without it the model runs on the reconstruction, and the estimate is of the
spliced model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_batch_size, check_bool, check_indices, is_int
from vit_patching.hook_names import split_sae_name
from vit_patching.model import HookedViT
from vit_patching.patching import PatchingResult, Site
from vit_patching.patching.engine import result_dtype
from vit_patching.patching.experiment import axis_labels, layout_options
from vit_patching.patching.latents import latent_hook, latent_positions
from vit_patching.sae.sites import get_splice, latent_width, token_span

from .common import Metric, check_pair, forward_backward, resolve_metric, source_target, top_cells, verify_cells

__all__ = ["atp_latents"]


def atp_latents(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    hook: str,
    latents: int | Sequence[int] | None = None,
    per_position: bool = False,
    positions: int | Sequence[int] | None = None,
    point: str = "acts_post",
    direction: str = "denoising",
    verify_top_k: int = 0,
    batch_size: int = 128,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Attribution-patching estimate of :func:`~vit_patching.patching.latent_sweep` (same axes and values).

    Args:
        model: A HookedViT with an SAE spliced at ``hook``.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        hook: The hook the SAE is spliced at, or its latent hook name.
        latents: Latent indices (default all).
        per_position: One estimate per (position, latent) instead of per latent (all positions patched at once).
        positions: Model token positions for ``per_position`` (default every token the SAE covers).
        point: ``"acts_post"`` (default) or ``"acts_pre"``.
        direction: ``"denoising"`` or ``"noising"``.
        verify_top_k: Re-run this many cells (largest |mean estimate|) exactly through the engine.
        batch_size: Rows per forward pass of the verification runs.
        pixels: Optional display images for per-position figures.

    Returns:
        :class:`~vit_patching.patching.PatchingResult` with axes ``("site", "latent")`` or
        ``("site", "pos", "latent")``, kind ``"atp_latents"`` / ``"atp_latents_by_pos"``;
        ``options["verification"]`` holds the exact re-runs when ``verify_top_k > 0``.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     est = atp_latents(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, verify_top_k=5)
        >>> est.options["verification"].exact.shape       # the 5 largest estimates re-run exactly, per image
        torch.Size([5, 2])
    """
    layout = check_pair(model, clean, corrupted)
    check_bool(per_position, "per_position")
    name = latent_hook(model, hook, point)
    if positions is not None and not per_position:
        raise ValueError(f"positions: expected None without per_position=True (every position is patched at once), "
                         f"got {positions!r}")
    splice = get_splice(model, split_sae_name(name)[0])
    d_sae = latent_width(splice)
    if d_sae is None:
        raise ValueError("latents: the spliced module states no d_sae; expected one of this project's SAEs or a "
                         "module with a d_sae attribute")
    latent_ids = check_indices(list(latents) if isinstance(latents, range) else latents, d_sae, "latents", "latent")
    first = token_span(splice, layout.n_pos)[0]
    pos_ids = latent_positions(model, name, layout.n_pos, positions) if per_position else []
    if not is_int(verify_top_k) or verify_top_k < 0:
        raise ValueError(f"verify_top_k: expected a non-negative int (cells to re-run exactly), got {verify_top_k!r}")
    check_batch_size(batch_size)
    source, target = source_target(direction, clean, corrupted)

    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(source, names_filter=[name], return_cache_object=False)
        target_logits_ng = model(target)
    clean_logits, corrupted_logits = (
        (source_logits, target_logits_ng) if direction == "denoising" else (target_logits_ng, source_logits)
    )
    fn, metric_name = resolve_metric(metric, clean_logits, corrupted_logits)
    target_logits, acts, grads = forward_backward(model, target, [name], fn)
    ids = torch.arange(target.shape[0], device=target_logits.device)
    dtype = result_dtype(target_logits.dtype)
    source_score, target_score = fn(source_logits, ids).to(dtype).cpu(), fn(target_logits, ids).to(dtype).cpu()

    lat = torch.tensor(latent_ids, device=acts[name].device)
    effect = ((source_cache[name] - acts[name]) * grads[name])[..., lat]  # [batch, pos, latent]
    if per_position:
        effect = effect[:, torch.tensor([p - first for p in pos_ids], device=effect.device)]
        values = effect.permute(1, 2, 0)[None]  # [site, pos, latent, batch]
        axes = {"site": [name], "pos": pos_ids, "latent": latent_ids}
    else:
        values = effect.sum(1).transpose(0, 1)[None]  # every position of latent k at once: [site, latent, batch]
        axes = {"site": [name], "latent": latent_ids}
    values = target_score + values.to(dtype).cpu()
    opts = layout_options(layout, pixels)
    opts.update({f"{a}_indices": list(v) for a, v in axes.items() if a != "site"})
    opts.update(method="atp", batch_size=batch_size)
    result = PatchingResult(values, tuple(axes), {a: axis_labels(a, v, layout) for a, v in axes.items()},
                            target_score, source_score, metric_name, direction,
                            "atp_latents_by_pos" if per_position else "atp_latents", opts, n_forwards=0)
    if verify_top_k:
        def make_site(cell: tuple[int, ...]) -> Site:
            if per_position:
                return Site(name, pos=pos_ids[cell[1]] - first, latent=latent_ids[cell[2]])
            return Site(name, latent=latent_ids[cell[1]])

        result.options["verification"] = verify_cells(
            model, result, top_cells(values - target_score, verify_top_k), make_site, fn, clean, corrupted, batch_size,
        )
    return result

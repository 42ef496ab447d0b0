"""Latent sweeps: patch each latent of a spliced SAE alone, at every position at once or one position at a time.

A spliced SAE's latents (``model.add_sae``; ``{hook}.sae.hook_sae_acts_post``, :mod:`vit_patching.sae.splice`)
are engine sites with axes ``("pos", "latent")``: the latent index plays the role a head plays on per-head hooks.
:func:`latent_sweep` writes latent ``k`` of the source run into the target run (at every position of the SAE, or
at one), batched through :func:`~vit_patching.patching.engine.run_patch_spec` like the layer and head sweeps:
every row starts from the target run's cached residual entering the SAE's block. With ``use_error_term=True``
a patch changes the model's activation by exactly the change of the reconstruction (the error stays the target
run's); without it the model runs on the reconstruction everywhere, so the baselines are the spliced model's.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_bool, check_choice, check_indices
from vit_patching.hook_names import SAE_LATENT_HOOKS, get_act_name, sae_act_name, split_sae_name
from vit_patching.model import HookedViT
from vit_patching.sae.sites import get_splice, latent_width, token_span

from .engine import Site
from .experiment import check_inputs, grid_experiment
from .memory import check_memory_args
from .metrics import Metric
from .results import PatchingResult

__all__ = ["latent_hook", "latent_positions", "latent_sweep"]


def latent_hook(model: HookedViT, hook: str, point: str = "acts_post") -> str:
    """The full name of the latents of the SAE spliced at ``hook`` (which may already be an SAE latent name),
    refused when no SAE is spliced there.

    Example:
        >>> with model.saes([sae]):
        ...     print(latent_hook(model, "blocks.1.hook_resid_post"))
        blocks.1.hook_resid_post.sae.hook_sae_acts_post
    """
    if not isinstance(hook, str):
        raise TypeError(f"hook: expected a hook name (str), got {type(hook).__name__}")
    sae = split_sae_name(hook)
    if sae is not None:
        if sae[1] not in SAE_LATENT_HOOKS:
            raise ValueError(f"hook: expected an SAE's latents ({list(SAE_LATENT_HOOKS)}) or the hook it is spliced "
                             f"at, got {hook!r}")
        get_splice(model, sae[0])
        return hook
    check_choice(point, [p.removeprefix("hook_sae_") for p in SAE_LATENT_HOOKS], "point")
    get_splice(model, hook)
    return sae_act_name(get_act_name(hook), point)


def latent_positions(model: HookedViT, name: str, n_pos: int, positions: int | Sequence[int] | None) -> list[int]:
    """Checked model token positions among those the SAE of latent hook ``name`` covers (default all of them).

    Example:
        >>> with model.saes([sae], positions="patches"):      # the CLS token (position 0) passes the SAE by
        ...     print(latent_positions(model, latent_hook(model, sae.cfg.hook_name), 17, None)[:3])
        [1, 2, 3]
    """
    first, count = token_span(get_splice(model, split_sae_name(name)[0]), n_pos)
    if positions is None:
        return list(range(first, first + count))
    out = check_indices(positions, n_pos, "positions", "token position")
    outside = [p for p in out if not first <= p < first + count]
    if outside:
        raise ValueError(f"positions: expected token positions the SAE covers, [{first}, {first + count}), got "
                         f"{outside} in {positions!r}")
    return out


def latent_sweep(
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
    batch_size: int | str = 128,
    max_memory: int | None = None,
    progress: bool = True,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Patch each latent of the SAE spliced at ``hook`` alone (all positions, or each position), batched.

    Args:
        model: A HookedViT with an SAE spliced at ``hook`` (``model.add_sae`` / ``model.saes``).
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"`` (see
            :func:`~vit_patching.patching.layer_sweep`), on the spliced model's logits.
        hook: The hook the SAE is spliced at (e.g. ``"blocks.1.hook_resid_post"``), or its latent hook name.
        latents: Latent indices (default all ``d_sae``).
        per_position: Patch one token position at a time (axes ``site, pos, latent``) instead of every position
            of the SAE at once (axes ``site, latent``).
        positions: Model token positions for ``per_position`` (default every token the SAE covers).
        point: ``"acts_post"`` (the latents, default) or ``"acts_pre"`` (this project's SAEs' pre-activations).
        direction: ``"denoising"`` (clean latents into the corrupted run) or ``"noising"``.
        batch_size: Rows (cell x image) per forward pass, or ``"auto"`` (see
            :mod:`~vit_patching.patching.memory`).
        max_memory: Budget in bytes for ``batch_size="auto"``.
        progress: Show a tqdm bar.
        pixels: Optional display images in [0, 1] for per-position figures.

    Returns:
        :class:`~vit_patching.patching.PatchingResult` with axes ``("site", "latent")`` or, with
        ``per_position``, ``("site", "pos", "latent")`` (one site: the latent hook); kind ``"latent_sweep"`` /
        ``"latent_sweep_by_pos"``. ``options["pos_indices"]`` are model token positions.

    Raises:
        ValueError: no SAE at ``hook``, latent or position out of range, ``positions`` without ``per_position``,
            mismatched clean/corrupted, bad direction.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     res = latent_sweep(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, latents=range(8),
        ...                        progress=False)
        >>> res.axes, res.mean().shape
        (('site', 'latent'), torch.Size([1, 8]))
        >>> fig = res.plot()                                   # site x latent heatmap
    """
    layout = check_inputs(model, clean, corrupted, pixels)
    check_memory_args(batch_size, max_memory)
    check_bool(per_position, "per_position")
    name = latent_hook(model, hook, point)
    if positions is not None and not per_position:
        raise ValueError(f"positions: expected None without per_position=True (every position is patched at once), "
                         f"got {positions!r}")
    d_sae = latent_width(get_splice(model, split_sae_name(name)[0]))
    if d_sae is None:
        raise ValueError("latents: the spliced module states no d_sae; expected one of this project's SAEs or a "
                         "module with a d_sae attribute")
    latent_ids = check_indices(list(latents) if isinstance(latents, range) else latents, d_sae, "latents", "latent")
    axes: dict[str, list] = {"site": [name]}
    first = 0
    if per_position:
        axes["pos"] = latent_positions(model, name, layout.n_pos, positions)
        first = token_span(get_splice(model, split_sae_name(name)[0]), layout.n_pos)[0]
    axes["latent"] = latent_ids

    def make_site(site: str, latent: int, pos: int | None = None) -> Site:
        return Site(site, pos=None if pos is None else pos - first, latent=latent)

    return grid_experiment(
        model, clean, corrupted, metric, axes=axes, make_site=make_site,
        kind="latent_sweep_by_pos" if per_position else "latent_sweep", layout=layout, direction=direction,
        batch_size=batch_size, max_memory=max_memory, progress=progress, pixels=pixels,
    )

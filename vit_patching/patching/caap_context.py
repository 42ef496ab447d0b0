"""Preparing CAAP (:mod:`vit_patching.patching.caap`): the neutral / site vocabulary, the shared source and
neutral-prefix runs, the patch spec and the memory count.

* :func:`prepare_caap` runs the source once (caching the site at the window layers) and the neutral prefix once
  per window start, and returns a :class:`CAAPContext`; :func:`~vit_patching.patching.caap.caap_from_context`
  runs the patched forwards of one window from it (``select_window`` reuses one context for every window).
* :func:`caap_spec` is the :class:`~vit_patching.patching.engine.PatchSpec` CAAP executes; :func:`caap_memory`
  what CAAP holds, for ``batch_size="auto"``.
* :data:`NEUTRALS`, :data:`AUTO_NEUTRALS`, :data:`SITES`, :data:`DEFAULT_NEUTRAL`: the options
  :func:`prepare_caap` validates.

The public entry points (:func:`~vit_patching.patching.caap.caap`, ``caap_from_context``, the other defaults) live
in :mod:`vit_patching.patching.caap`, which re-exports every public name of this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching import images as image_ops
from vit_patching.checks import check_batch_size, check_choice, check_positive_number, is_int
from vit_patching.hook_names import get_act_name, site_suffix
from vit_patching.images import baseline_images, describe_baseline
from vit_patching.model import HookedViT, check_scores

from .caap_results import DEFAULT_DIRECTION, DIRECTIONS
from .engine import PatchSpec, Site, spec_row_elements
from .memory import hook_elements

__all__ = [
    "AUTO_NEUTRALS", "CAAPContext", "DEFAULT_NEUTRAL", "NEUTRALS", "SITES", "caap_memory", "caap_spec", "prepare_caap",
]

#: The image neutrals ``"auto"`` chooses from (the package's baseline vocabulary).
AUTO_NEUTRALS: tuple[str, ...] = image_ops.BASELINES
NEUTRALS: tuple[str, ...] = (*image_ops.BASELINES, "auto", "mean_activations")
#: Site name -> hook suffix. ``resid_pre`` of block ``l`` is the input of block ``l``.
SITES: dict[str, str] = {s: site_suffix(get_act_name(s, 0)) for s in ("resid_pre", "resid_post", "attn_out", "mlp_out")}

#: Default neutral context: best or tied-best insertion - deletion AUC on both toy models, computed once for all
#: images (docs/caap_defaults.md).
DEFAULT_NEUTRAL = "zeros"


# ------------------------------------------------------------------------------------------------- checks
def _check_finite(x: Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name}: expected finite pixel values, got {int(bad.sum())} NaN/Inf entries in shape {tuple(x.shape)}")


def _check_target(model: HookedViT, target: Any, batch: int) -> Tensor | None:
    # A Python int too large for int64 would overflow inside torch before the range check could name it.
    n = model.cfg.n_classes
    if is_int(target) and not 0 <= target < n:
        raise ValueError(f"target: expected a class index in [0, {n}), got {target!r}")
    return model.check_target(target, batch)


# ------------------------------------------------------------------------------------------------ context
@dataclass
class CAAPContext:
    """Everything the patched runs of several windows share: the source run and the neutral prefixes.

    Built by :func:`prepare_caap`; reused by :func:`~vit_patching.patching.caap.caap_from_context` for every window
    (``select_window``).

    Attributes:
        images: Source images ``[batch, C, H, W]``.
        source_logits: Unpatched source logits ``[batch, n_classes]``.
        source_cache: Source activations ``{hook: [batch, pos, d_model]}`` at the site of every cached layer
            (denoising; empty for noising).
        neutral_resid: Neutral residual entering block ``start``, per start ``{start: [batch | 1, pos, d_model]}``.
        neutral_logits: Unpatched neutral logits per start ``{start: [batch | 1, n_classes]}`` (equal for every
            start unless the neutral is ``mean_activations``).
        target: Class per image ``[batch]``.
        site: Site name.
        options: Neutral description and settings.
        neutral_choice: The neutral used per image (``"auto"`` chooses per image).
        direction: ``"denoising"`` or ``"noising"`` (what was cached for which run).
        source_resid: Noising only: the source residual entering block ``start``, per start ``{start: [batch, pos,
            d_model]}`` (the run patched into).
        neutral_cache: Noising only: the neutral's activations at the site of every cached layer, per start
            ``{start: {hook: [batch | 1, pos, d_model]}}`` (the same dict for every start unless the neutral is
            ``mean_activations``, whose neutral run starts at the window's first block).
    """

    images: Float[Tensor, "batch channel height width"]
    source_logits: Float[Tensor, "batch n_classes"]
    source_cache: dict[str, Tensor]
    neutral_resid: dict[int, Tensor]
    neutral_logits: dict[int, Tensor]
    target: Int[Tensor, " batch"]
    site: str
    options: dict[str, Any] = field(default_factory=dict)
    neutral_choice: list[str] = field(default_factory=list)
    direction: str = DEFAULT_DIRECTION
    source_resid: dict[int, Tensor] = field(default_factory=dict)
    neutral_cache: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.images.shape[0]


def _site_hook(site: str, layer: int) -> str:
    return get_act_name(site, layer)


def _chunked(model: HookedViT, x: Tensor, hooks: list[str], batch_size: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the ``hooks`` activations of ``x``, ``batch_size`` images per forward pass."""
    outs, caches = [], []
    for i in range(0, x.shape[0], batch_size):
        out, cache = model.run_with_cache(x[i : i + batch_size], names_filter=lambda n: n in hooks, return_cache_object=False)
        outs.append(out)
        caches.append(cache)
    return torch.cat(outs), {h: torch.cat([c[h] for c in caches]) for h in hooks}


def _auto_neutral(
    model: HookedViT, images: Tensor, target: Tensor, blur_sigma: float | None, batch_size: int
) -> tuple[Tensor, list[str], Tensor]:
    """Per image, the image neutral whose unpatched run gives ``target`` the lowest probability.

    Returns the chosen neutral images ``[batch, C, H, W]``, their names and every candidate's probability
    ``[n_candidates, batch]``. Ties go to the earlier name of :data:`AUTO_NEUTRALS` (``"zeros"`` first).
    """
    dc = model.cfg.data_config
    names = [n for n in AUTO_NEUTRALS if n != "black" or image_ops.normalization(dc) is not None]
    xs, probs = [], []
    for n in names:
        x0, _ = baseline_images(images, n, data_config=dc, blur_sigma=blur_sigma)
        logits, _ = _chunked(model, x0, [], batch_size)
        p = logits.float().softmax(-1).cpu().expand(images.shape[0], -1)
        probs.append(p.gather(1, target[:, None])[:, 0])
        xs.append(x0.expand_as(images))
    probs_t = torch.stack(probs)
    best = probs_t.argmin(dim=0)  # first minimum: the earlier candidate on ties
    chosen = torch.stack(xs)[best.to(images.device), torch.arange(images.shape[0], device=images.device)]
    return chosen, [names[int(k)] for k in best], probs_t


@torch.no_grad()
def prepare_caap(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    *,
    starts: Sequence[int],
    layers: Sequence[int],
    target: int | Int[Tensor, " batch"] | None = None,
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    batch_size: int = 64,
    direction: str = DEFAULT_DIRECTION,
) -> CAAPContext:
    """Run the source once (caching the site at ``layers``) and the neutral prefix once per start in ``starts``.

    For ``direction="noising"`` the roles swap: the neutral run's site activations at ``layers`` are cached (the
    values written) and the source residual entering each start (the run written into).

    Source-independent neutrals (``zeros``, ``black``, a single user image, ``mean_activations``) are run once
    with batch 1 and shared by every image; ``blur``/``image_mean``/``auto``/a per-image tensor are run per image.

    Example:
        >>> from vit_patching.patching.caap import caap_from_context
        >>> ctx = prepare_caap(model, images, starts=[0, 1], layers=range(4))
        >>> attr = caap_from_context(model, ctx, window=(1, 3))
    """
    check_scores(model)
    model.check_images(images)
    if images.device != model.device:
        raise ValueError(f"images: expected a tensor on the model's device {model.device}, got {images.device}")
    check_choice(site, list(SITES), "site")
    check_choice(direction, DIRECTIONS, "direction")
    if not isinstance(neutral, Tensor):
        check_choice(neutral, NEUTRALS, "neutral")
    check_batch_size(batch_size)
    batch = images.shape[0]
    given = _check_target(model, target, batch)
    is_mean_act = isinstance(neutral, str) and neutral == "mean_activations"
    if is_mean_act and reference is None:
        raise ValueError("reference: neutral='mean_activations' needs reference images [n, C, H, W] to average over")
    if not is_mean_act and reference is not None:
        raise ValueError(f"reference: only used with neutral='mean_activations', got neutral={describe_baseline(neutral)!r}")
    if reference is not None:
        model.check_images(reference, "reference")
        if reference.shape[1:] != images.shape[1:]:
            raise ValueError(f"reference: expected images of shape [n, {', '.join(map(str, images.shape[1:]))}], got {tuple(reference.shape)}")
    if isinstance(neutral, str) and neutral == "blur" and blur_sigma is not None:
        check_positive_number(blur_sigma, "blur_sigma")
    if isinstance(neutral, Tensor):  # shape/dtype errors before any forward pass
        baseline_images(images[:1], neutral[:1] if neutral.ndim == 4 else neutral, name="neutral")
        if neutral.ndim == 4 and neutral.shape[0] not in (1, batch):
            baseline_images(images, neutral, name="neutral")
        _check_finite(neutral, "neutral")
    starts, layers = sorted(set(starts)), sorted(set(layers))
    noising = direction == "noising"
    site_hooks = [_site_hook(site, l) for l in layers]
    start_hooks = {s: get_act_name("resid_pre", s) for s in starts}

    # Denoising writes the source's site activations into the neutral run (cached from its start); noising
    # writes the neutral's into the source run.
    source_logits, source_cache = _chunked(model, images, list(start_hooks.values()) if noising else site_hooks, batch_size)
    source_resid: dict[int, Tensor] = {}
    if noising:
        source_resid = {s: source_cache[h] for s, h in start_hooks.items()}
        source_cache = {}
    neutral_cache: dict[int, dict[str, Tensor]] = {}
    tgt = given if given is not None else source_logits.argmax(dim=-1).cpu()
    choice: list[str]
    if is_mean_act:
        _, ref_cache = _chunked(model, reference.to(device=images.device, dtype=images.dtype), list(start_hooks.values()), batch_size)
        neutral_resid = {s: ref_cache[h].mean(dim=0, keepdim=True) for s, h in start_hooks.items()}
        neutral_logits = {}
        for s, r in neutral_resid.items():  # the neutral run of a window starts at its first block
            hooks = [h for l, h in zip(layers, site_hooks) if l >= s] if noising else []
            neutral_logits[s], cache_s = model.run_with_cache(
                r, start_at_layer=s, names_filter=lambda n, hs=hooks: n in hs, return_cache_object=False
            )
            if noising:
                neutral_cache[s] = cache_s
        per_image, choice = False, ["mean_activations"] * batch
    else:
        if isinstance(neutral, str) and neutral == "auto":
            x0, choice, _ = _auto_neutral(model, images, tgt, blur_sigma, batch_size)
            per_image = True
        else:
            x0, per_image = baseline_images(images, neutral, data_config=model.cfg.data_config, blur_sigma=blur_sigma)
            choice = [describe_baseline(neutral)] * batch
        logits0, cache0 = _chunked(model, x0, site_hooks if noising else list(start_hooks.values()), batch_size)
        neutral_resid = {} if noising else {s: cache0[h] for s, h in start_hooks.items()}
        neutral_logits = {s: logits0 for s in starts}
        if noising:
            neutral_cache = {s: cache0 for s in starts}
    options = {
        "neutral": describe_baseline(neutral),
        "neutral_per_image": per_image,
        "site": site,
        "direction": direction,
        "target_source": "given" if given is not None else "predicted",
    }
    if isinstance(neutral, str) and neutral in ("blur", "auto"):
        options["blur_sigma"] = min(images.shape[-2:]) / 16 if blur_sigma is None else blur_sigma
    if reference is not None:
        options["reference_size"] = reference.shape[0]
    return CAAPContext(
        images, source_logits, source_cache, neutral_resid, neutral_logits, tgt, site, options, choice,
        direction=direction, source_resid=source_resid, neutral_cache=neutral_cache,
    )


def caap_spec(model: HookedViT, images: Tensor, window: tuple[int, int], site: str, include_prefix: bool) -> PatchSpec:
    """The CAAP patch spec: variant ``i`` pins patch ``i`` (and the prefix tokens if asked) at every window layer.

    Example:
        >>> spec = caap_spec(model, images, (1, 3), "resid_pre", include_prefix=False)
        >>> spec.variants[0]
        (Site(hook='blocks.1.hook_resid_pre', pos=1, head=None), Site(hook='blocks.2.hook_resid_pre', pos=1, head=None))
    """
    layout = model.layout_for(images)
    prefix = tuple(range(layout.n_prefix)) if include_prefix else ()
    hooks = [_site_hook(site, l) for l in range(*window)]
    variants = [tuple(Site(h, pos=p) for h in hooks for p in (*prefix, i)) for i in layout.patch_positions()]
    return PatchSpec(variants, labels=[layout.label(i) for i in layout.patch_positions()])


def caap_memory(
    model: HookedViT, images: Tensor, windows: Sequence[tuple[int, int]], site: str = "resid_pre",
    include_prefix: bool = False,
) -> dict[str, int]:
    """What CAAP holds over ``windows``, for :func:`~vit_patching.patching.memory.resolve_batch_size`: once, the
    source run's site at every layer the windows cover and the neutral residual entering each window's first
    block (per image); per row, what the engine keeps for the widest window's spec
    (:func:`~vit_patching.patching.engine.spec_row_elements`).

    Example:
        >>> from vit_patching.patching.memory import resolve_batch_size
        >>> kw = caap_memory(model, images, [(0, 2)])
        >>> resolve_batch_size("auto", model, max_memory=2**28, **kw) >= 1
        True
    """
    n_pos = model.layout_for(images).n_pos
    layers = {l for s, e in windows for l in range(s, e)}
    per_image = sum(hook_elements(model.cfg, _site_hook(site, l), n_pos) for l in layers)
    per_image += len({s for s, _ in windows}) * n_pos * model.cfg.d_model
    widest = max(windows, key=lambda w: w[1] - w[0])
    spec = caap_spec(model, images, widest, site, include_prefix)
    return {"held_elements": images.shape[0] * per_image, "extra_elements_per_row": spec_row_elements(model, spec, n_pos),
            "n_pos": n_pos}

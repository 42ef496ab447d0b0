"""CAAP: Causal Attribution via Activation Patching (Izadi et al., arXiv 2603.13652).

For each image patch ``i``, the source image's activations at ``i`` are written into a *neutral* target
context at every layer of a window ``[start, end)``; the patched run's target-class score is patch ``i``'s
attribution. Only the paper's abstract could be read, so every free choice is an option here
(``docs/caap_defaults.md``):

* ``neutral`` — the context patched into: ``"zeros"`` (0 after normalisation = the dataset-mean colour),
  ``"black"`` (0 in pixel space), ``"image_mean"`` (each image's mean colour), ``"blur"`` (the blurred
  source), ``"auto"`` (per image, the one of those four whose unpatched run gives the explained class the lowest
  probability), a user image tensor, or ``"mean_activations"`` (the mean residual of a ``reference`` image set,
  no image at all). The image neutrals are :data:`vit_patching.images.BASELINES`.
* ``site`` — ``"resid_pre"`` (the residual stream entering each window block, default), ``"resid_post"``,
  ``"attn_out"`` or ``"mlp_out"`` (one component's output at the patch token).
* ``window`` — ``[start, end)``; the patch token is pinned at every layer inside it.
* ``readout`` — ``"logit"``, ``"prob"`` (softmax), ``"delta_logit"`` / ``"delta_prob"`` (minus the unpatched
  neutral run's value; same ranking as the plain readout).
* ``include_prefix`` — also pin CLS / register tokens to their source values inside the window.
* ``direction`` — ``"denoising"`` (default: the above) or ``"noising"``, the complement: the *neutral's*
  activations at patch ``i`` are written into the *source* run over the window, and the attribution is the score
  drop ``source - patched`` (positive = evidence, as for denoising). Denoising asks "is this patch enough to
  bring the class back?", noising "is this patch needed to keep it?" (``docs/caap_defaults.md``).

How it runs: CAAP is a :class:`~vit_patching.patching.engine.PatchSpec` (variant ``i`` = the site at patch ``i``
in every window layer; prefix positions too with ``include_prefix``) executed by the batched engine. The
source run and the neutral prefix (blocks ``0..start-1``) are computed once; the ``N`` patched runs start at
block ``start`` from the cached neutral residual, batched over patches and images, with fused attention. The
patched runs do not depend on the class, so the logits of every class are kept (:meth:`Attribution.for_class`).

Neutral diagnosis: every result records what the unpatched neutral run predicts (``neutral_prediction``,
``neutral_target_prob``, ...) and warns (``logging`` and :attr:`Attribution.warnings`) when the neutral context
already predicts the explained class or gives it more than ``warn_share`` of the source's probability: then
for denoising the map shows what moves the score of a context that already says the class, not evidence for it;
for noising the drops are small (the neutral's patches carry the class too).

Defaults, measured on the shipped toy models (``docs/caap_defaults.md``; 32 held-out images each, insertion minus
deletion AUC and the pointing game): ``neutral="zeros"``, ``readout="logit"``, ``window=[0, ceil(L / 2))``. With
them, insertion - deletion AUC is 0.888 (toy-shapes) / 0.390 (toy-conjunction) against 0.037 / 0.017 for a random
map, pointing game 0.97 / 0.59 against 0.13 / 0.13. Windows starting at block 0 beat later ones on both models;
``black`` and ``blur`` neutrals are far worse. Deep pretrained ViTs were not measured: choose their window with
:func:`~vit_patching.patching.windows.select_window`.

Example:
    >>> from vit_patching.zoo import load_model, load_dataset
    >>> model = load_model("toy-shapes")
    >>> attr = caap(model, load_dataset("shapes", n=2, seed=0).images, window=(1, 3))
    >>> attr.map.shape, attr.pixel_map.shape
    (torch.Size([2, 8, 8]), torch.Size([2, 64, 64]))
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching import checks, images as image_ops
from vit_patching.checks import check_batch_size, check_bool, check_choice, check_positive_number, is_int
from vit_patching.hook_names import get_act_name, site_suffix
from vit_patching.images import DEFAULT_UPSAMPLE, UPSAMPLE_MODES, baseline_images, describe_baseline, upsample_map
from vit_patching.model import HookedViT, check_classifier

from .caap_results import (
    DEFAULT_DIRECTION, DEFAULT_WARN_SHARE, DIRECTIONS, READOUTS, Attribution, caap_map_values, caap_readout,
    compare_attributions, neutral_warnings,
)
from .engine import PatchRun, PatchSpec, Site, run_patch_spec, spec_row_elements
from .memory import check_memory_args, hook_elements, resolve_batch_size

logger = logging.getLogger(__name__)

__all__ = [
    "Attribution", "CAAPContext", "DEFAULT_DIRECTION", "DEFAULT_NEUTRAL", "DEFAULT_READOUT", "DEFAULT_WARN_SHARE",
    "DIRECTIONS", "NEUTRALS", "READOUTS", "SITES", "caap", "caap_from_context", "caap_memory", "compare_attributions",
    "default_window", "prepare_caap",
]

#: The image neutrals ``"auto"`` chooses from (the package's baseline vocabulary).
AUTO_NEUTRALS: tuple[str, ...] = image_ops.BASELINES
NEUTRALS: tuple[str, ...] = (*image_ops.BASELINES, "auto", "mean_activations")
#: Site name -> hook suffix. ``resid_pre`` of block ``l`` is the input of block ``l``.
SITES: dict[str, str] = {s: site_suffix(get_act_name(s, 0)) for s in ("resid_pre", "resid_post", "attn_out", "mlp_out")}
UPSAMPLES: tuple[str, ...] = UPSAMPLE_MODES

#: Default neutral context: best or tied-best insertion - deletion AUC on both toy models, computed once for all
#: images (docs/caap_defaults.md).
DEFAULT_NEUTRAL = "zeros"
#: Default readout: ``prob`` was not significantly better on insertion - deletion (+0.011 +- 0.009) and worse on
#: the pointing game (docs/caap_defaults.md).
DEFAULT_READOUT = "logit"
#: Default window as fractions of depth, ``[floor(a * L), ceil(b * L))``: ``[0, 2)`` had the best mean on the
#: 4-layer toys (docs/caap_defaults.md); an extrapolation for deeper models.
DEFAULT_WINDOW_FRACTIONS = (0.0, 0.5)

#: ``caap.check_window`` is :func:`vit_patching.checks.check_window`.
check_window = checks.check_window


def default_window(n_layers: int) -> tuple[int, int]:
    """The default window for a model of ``n_layers`` blocks (see :data:`DEFAULT_WINDOW_FRACTIONS`).

    Example:
        >>> default_window(4), default_window(12)
        ((0, 2), (0, 6))
    """
    a, b = DEFAULT_WINDOW_FRACTIONS
    start = min(int(math.floor(a * n_layers)), n_layers - 1)
    end = max(min(int(math.ceil(b * n_layers)), n_layers), start + 1)
    return start, end


# --------------------------------------------------------------------------------- deprecated neutral helpers
def to_pixels(model: HookedViT, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch channel height width"]:
    """Deprecated: use ``vit_patching.images.to_pixels(images, model.cfg.data_config)``."""
    warnings.warn("caap.to_pixels is deprecated, use vit_patching.images.to_pixels(images, model.cfg.data_config)",
                  DeprecationWarning, stacklevel=2)
    return image_ops.to_pixels(images, model.cfg.data_config)


def neutral_images(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    neutral: str | Tensor,
    blur_sigma: float | None = None,
) -> tuple[Float[Tensor, "_ channel height width"], bool]:
    """Deprecated: use ``vit_patching.images.baseline_images(images, neutral, data_config=..., blur_sigma=...)``."""
    warnings.warn("caap.neutral_images is deprecated, use vit_patching.images.baseline_images", DeprecationWarning, stacklevel=2)
    return baseline_images(images, neutral, data_config=model.cfg.data_config, blur_sigma=blur_sigma)


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

    Built by :func:`prepare_caap`; reused by :func:`caap_from_context` for every window (``select_window``).

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
        >>> ctx = prepare_caap(model, images, starts=[0, 1], layers=range(4))
        >>> attr = caap_from_context(model, ctx, window=(1, 3))
    """
    check_classifier(model)
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


# ---------------------------------------------------------------------------------------------- the method
def caap_from_context(
    model: HookedViT,
    ctx: CAAPContext,
    window: tuple[int, int],
    *,
    readout: str = DEFAULT_READOUT,
    include_prefix: bool = False,
    upsample: str = DEFAULT_UPSAMPLE,
    batch_size: int = 64,
    warn_share: float = DEFAULT_WARN_SHARE,
    log_warnings: bool = True,
    progress: bool = False,
) -> Attribution:
    """CAAP for one window from a prepared :class:`CAAPContext` (the window's layers must be cached there), in
    the context's direction.

    ``log_warnings=False`` keeps the neutral warnings in the result only (``select_window`` logs them once).

    Example:
        >>> ctx = prepare_caap(model, images, starts=range(4), layers=range(4))
        >>> maps = {w: caap_from_context(model, ctx, w).map for w in [(0, 2), (1, 3)]}
    """
    start, end = check_window(window, model.cfg.n_layers)
    check_choice(readout, READOUTS, "readout")
    check_choice(upsample, UPSAMPLES, "upsample")
    check_batch_size(batch_size)
    check_bool(include_prefix, "include_prefix")
    warn_share = check_positive_number(warn_share, "warn_share", allow_zero=True)
    noising = ctx.direction == "noising"
    prefixes = ctx.source_resid if noising else ctx.neutral_resid
    if start not in prefixes:
        raise ValueError(f"window: start {start} has no cached prefix in the context (prepared starts {sorted(prefixes)})")
    values_cache = ctx.neutral_cache[start] if noising else ctx.source_cache
    missing = [l for l in range(start, end) if _site_hook(ctx.site, l) not in values_cache]
    if missing:
        raise ValueError(f"window: layers {missing} are not cached in the context (prepare them with layers=...)")
    images = ctx.images
    spec = caap_spec(model, images, (start, end), ctx.site, include_prefix)
    b = ctx.batch
    logits0 = ctx.neutral_logits[start].expand(b, -1)
    keep_all = lambda logits, image_index: logits  # noqa: E731  keep every class: maps for all classes from N runs
    start_hook = get_act_name("resid_pre", start)
    if noising:  # the neutral's values written into the source run: one engine, the roles swapped
        run: PatchRun = run_patch_spec(
            model, spec, keep_all, target=images, target_cache={start_hook: ctx.source_resid[start]},
            target_logits=ctx.source_logits, source_cache={h: t.expand(b, *t.shape[1:]) for h, t in values_cache.items()},
            source_logits=logits0, batch_size=batch_size, progress=progress,
        )
    else:
        run = run_patch_spec(
            model, spec, keep_all, source=images, target_cache={start_hook: ctx.neutral_resid[start].expand(b, -1, -1)},
            target_logits=logits0, source_cache=ctx.source_cache, source_logits=ctx.source_logits,
            batch_size=batch_size, progress=progress,
        )
    layout = model.layout_for(images)
    gh, gw = layout.grid_size
    patched = run.values.transpose(0, 1).reshape(b, gh, gw, -1)  # [batch, grid_h, grid_w, n_classes]
    neutral_logits = logits0.float().cpu()
    source_logits = ctx.source_logits.float().cpu()
    tgt = ctx.target
    values = caap_map_values(run.values, tgt, readout, neutral_logits, source_logits, ctx.direction)  # [N, batch]
    amap = values.transpose(0, 1).reshape(b, gh, gw)
    options = dict(ctx.options)
    options.update(readout=readout, include_prefix=include_prefix, upsample=upsample, batch_size=batch_size, warn_share=warn_share)
    # The diagnosis: what the unpatched neutral run says (its own prediction, the explained class's score).
    p0 = neutral_logits.softmax(-1)
    base = readout.removeprefix("delta_")
    where = f" (neutral run from block {start})" if options["neutral"] == "mean_activations" else ""
    warns = neutral_warnings(neutral_logits, source_logits, tgt, options["neutral"], warn_share, where, ctx.direction)
    if log_warnings:
        for w in warns:
            logger.warning(w)
    return Attribution(
        patch_map=amap,
        pixel_map=upsample_map(amap, tuple(images.shape[-2:]), mode=upsample),
        target=tgt,
        settings=options,
        window=(start, end),
        direction=ctx.direction,
        neutral_score=caap_readout(neutral_logits, tgt, readout, neutral_logits),
        source_score=caap_readout(source_logits, tgt, readout, neutral_logits),
        patched_logits=patched,
        neutral_logits=neutral_logits,
        source_logits=source_logits,
        pixels=image_ops.to_pixels(images, model.cfg.data_config),
        n_forwards=run.n_forwards,
        neutral_prediction=p0.argmax(-1),
        neutral_prediction_prob=p0.max(-1).values,
        neutral_target_score=caap_readout(neutral_logits, tgt, base, neutral_logits),
        neutral_target_prob=caap_readout(neutral_logits, tgt, "prob", neutral_logits),
        neutral_choice=list(ctx.neutral_choice),
        warnings=warns,
    )


def caap(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    target: int | Int[Tensor, " batch"] | None = None,
    window: tuple[int, int] | None = None,
    *,
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    readout: str = DEFAULT_READOUT,
    include_prefix: bool = False,
    direction: str = DEFAULT_DIRECTION,
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
    warn_share: float = DEFAULT_WARN_SHARE,
    batch_size: int | str = 64,
    max_memory: int | None = None,
    progress: bool = False,
) -> Attribution:
    """CAAP attribution maps: each patch's source activations pinned into a neutral context over a layer window.

    Args:
        model: A HookedViT with a classification head (eval mode).
        images: Normalised source images ``[batch, C, H, W]`` at the model's input size (finite values).
        target: Class to explain per image (int or ``[batch]``); ``None`` = the model's prediction.
        window: ``(start, end)``: blocks ``start..end-1`` get the patch pinned; ``None`` = :func:`default_window`.
        neutral: ``"zeros"``, ``"black"``, ``"image_mean"``, ``"blur"``, ``"auto"`` (per image, the one of those
            four whose unpatched run gives the explained class the lowest probability; ``neutral_choice`` records
            it), ``"mean_activations"`` or a normalised image tensor ``[C, H, W]`` / ``[1 | batch, C, H, W]``.
        site: ``"resid_pre"`` (default), ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        readout: ``"logit"``, ``"prob"``, ``"delta_logit"`` or ``"delta_prob"`` (minus the unpatched neutral run).
        include_prefix: Also pin CLS/register tokens inside the window to the values of the run patched from
            (default: they come from the run patched into).
        direction: ``"denoising"`` (default): the source's patch into the neutral run, ``map`` = the patched
            readout. ``"noising"``: the neutral's patch into the source run, ``map`` = the drop
            ``readout(source) - readout(patched)`` (``delta_*`` readouts give the same drop as the plain ones).
            Positive = evidence for the class in both.
        reference: Images whose mean residual is the neutral context for ``neutral="mean_activations"``.
        blur_sigma: Gaussian sigma in pixels for ``neutral="blur"`` (default: image side / 16).
        upsample: How ``pixel_map`` is made from the patch map: ``"bilinear"`` (default,
            :data:`vit_patching.images.DEFAULT_UPSAMPLE`, as every method and metric) or ``"nearest"``.
        warn_share: Warn (``logging`` and ``result.warnings``) when the neutral run gives the explained class
            more than this share of the source's probability, or predicts it (default 0.5).
        batch_size: Patched rows (patch x image) per forward pass, or ``"auto"`` (from free memory, see
            :func:`~vit_patching.patching.memory.auto_batch_size`; the cached source run and neutral prefix and
            each row's writes are counted, :func:`caap_memory`).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar over the patched chunks.

    Returns:
        An :class:`Attribution`.

    Raises:
        ValueError/TypeError: naming the argument, for an empty, reversed or out-of-range window, a target out
            of range, images of the wrong size or with NaN/Inf values, or an unknown option.

    Example:
        >>> from vit_patching.zoo import load_model, load_dataset
        >>> model = load_model()
        >>> attr = caap(model, load_dataset("shapes", n=4, seed=0).images, window=(0, 2), readout="prob")
        >>> attr.map.shape, attr.target.shape
        (torch.Size([4, 8, 8]), torch.Size([4]))
    """
    check_classifier(model)
    check_memory_args(batch_size, max_memory)
    L = model.cfg.n_layers
    window = default_window(L) if window is None else check_window(window, L)
    check_choice(readout, READOUTS, "readout")
    check_choice(upsample, UPSAMPLES, "upsample")
    check_choice(site, list(SITES), "site")
    check_bool(include_prefix, "include_prefix")
    check_choice(direction, DIRECTIONS, "direction")
    check_positive_number(warn_share, "warn_share", allow_zero=True)
    if batch_size == "auto":  # rows per forward from the budget, counting what CAAP caches
        model.check_images(images)
        batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory,
                                        **caap_memory(model, images, [window], site, include_prefix))
    ctx = prepare_caap(
        model, images, starts=[window[0]], layers=range(*window), target=target, neutral=neutral, site=site,
        reference=reference, blur_sigma=blur_sigma, batch_size=batch_size, direction=direction,
    )
    return caap_from_context(
        model, ctx, window, readout=readout, include_prefix=include_prefix, upsample=upsample,
        batch_size=batch_size, warn_share=warn_share, progress=progress,
    )

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

Where things live: this module has the entry points (:func:`caap`, :func:`caap_from_context`), the readout /
window defaults and :func:`default_window`; :mod:`vit_patching.patching.caap_context` the preparation
(:func:`prepare_caap`, :class:`CAAPContext`, :func:`caap_spec`, :func:`caap_memory`, the neutral and site
vocabulary), re-exported here; :mod:`vit_patching.patching.caap_results` the :class:`Attribution` result and the
readouts.

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

from jaxtyping import Float, Int
from torch import Tensor

from vit_patching import checks, images as image_ops
from vit_patching.checks import check_batch_size, check_bool, check_choice, check_finite, check_positive_number
from vit_patching.hook_names import get_act_name
from vit_patching.images import DEFAULT_UPSAMPLE, UPSAMPLE_MODES, baseline_images, upsample_map
from vit_patching.model import HookedViT, check_scores

from .caap_context import (  # re-exported: the preparation half of CAAP lives there
    AUTO_NEUTRALS, DEFAULT_NEUTRAL, NEUTRALS, SITES, CAAPContext, caap_memory, caap_spec, prepare_caap,
)
from .caap_results import (
    DEFAULT_DIRECTION, DEFAULT_WARN_SHARE, DIRECTIONS, READOUTS, Attribution, caap_map_values, caap_readout,
    compare_attributions, neutral_warnings,
)
from .engine import PatchRun, run_patch_spec
from .memory import check_memory_args, resolve_batch_size

logger = logging.getLogger(__name__)

__all__ = [
    "Attribution", "CAAPContext", "DEFAULT_DIRECTION", "DEFAULT_NEUTRAL", "DEFAULT_READOUT", "DEFAULT_WARN_SHARE",
    "DIRECTIONS", "NEUTRALS", "READOUTS", "SITES", "caap", "caap_from_context", "caap_memory", "compare_attributions",
    "check_readout_window", "default_window", "prepare_caap",
]

UPSAMPLES: tuple[str, ...] = UPSAMPLE_MODES

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


# ---------------------------------------------------------------------------------------------- the method
def check_readout_window(model: HookedViT, window: tuple[int, int], readout: str) -> None:
    """Refuse a window that writes downstream of a readout read inside the network (a spliced SAE's latent,
    :class:`~vit_patching.readouts.latent.LatentReadout`), and a softmax readout of its single score.

    Example:
        >>> from vit_patching.readouts import LatentReadout
        >>> from vit_patching.sae import SAEConfig, make_sae
        >>> sae = make_sae(SAEConfig("standard", model.cfg.d_model, 64, hook_name="blocks.1.hook_resid_pre"))
        >>> with model.saes([sae]):
        ...     scored = model.with_readout(LatentReadout("blocks.1.hook_resid_pre", 0))
        >>> scored.readout.max_window_end()            # blocks 0..0 may be pinned: window (0, 1)
        1
        >>> check_readout_window(scored, (0, 1), "logit")
    """
    inner = model.readout
    limit = getattr(inner, "max_window_end", None)
    if limit is None:
        return
    if window[1] > limit():
        raise ValueError(f"window: expected a window that ends at or before block {limit()} (the readout reads "
                         f"{inner.hook!r} inside the network; later blocks do not run), got {tuple(window)}")
    if readout in ("prob", "delta_prob"):
        raise ValueError(f"readout: expected 'logit' or 'delta_logit' for a single latent score (its softmax is "
                         f"always 1), got {readout!r}")


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
    check_readout_window(model, (start, end), readout)
    check_choice(upsample, UPSAMPLES, "upsample")
    check_batch_size(batch_size)
    check_bool(include_prefix, "include_prefix")
    warn_share = check_positive_number(warn_share, "warn_share", allow_zero=True)
    noising = ctx.direction == "noising"
    prefixes = ctx.source_resid if noising else ctx.neutral_resid
    if start not in prefixes:
        raise ValueError(f"window: start {start} has no cached prefix in the context (prepared starts {sorted(prefixes)})")
    values_cache = ctx.neutral_cache[start] if noising else ctx.source_cache
    missing = [l for l in range(start, end) if get_act_name(ctx.site, l) not in values_cache]
    if missing:
        raise ValueError(f"window: layers {missing} are not cached in the context (prepare them with layers=...)")
    images = ctx.images
    spec = caap_spec(model, images, (start, end), ctx.site, include_prefix)
    b = ctx.batch
    logits0 = ctx.neutral_logits[start].expand(b, -1)
    # Named in CAAP's words before the engine's own check (which says target/source, here neutral/images).
    check_finite(ctx.source_logits, "source logits (the images' own run)")
    check_finite(logits0, "neutral logits (the unpatched neutral run)")
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
    amap = check_finite(values.transpose(0, 1).reshape(b, gh, gw), "CAAP map")  # e.g. a prob readout's 0 * inf
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
        model: A HookedViT with a classification head or a readout (eval mode). With a spliced SAE's latent as
            the readout (``model.with_readout(LatentReadout(hook, k))``, ``target=0``) the map says which patches
            drive feature ``k``; the window must then end at or before the SAE's block
            (:func:`check_readout_window`).
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
    check_scores(model)
    check_memory_args(batch_size, max_memory)
    L = model.cfg.n_layers
    window = default_window(L) if window is None else check_window(window, L)
    check_choice(readout, READOUTS, "readout")
    check_readout_window(model, window, readout)
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

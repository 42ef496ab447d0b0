"""Shared plumbing of the patching experiments (sweeps, heads, paths): argument checks, the clean/corrupted ->
source/target convention, metric resolution, caching both runs once, and grid-shaped specs run by the engine.

Conventions: **denoising** writes clean-run values into the corrupted run (source = clean, target = corrupted:
how much does the site restore?); **noising** writes corrupted-run values into the clean run (source =
corrupted, target = clean: how much does the site break?). Results are normalised so that 0 = the unpatched
target run and 1 = the unpatched source run.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vit_patching.checks import check_choice, check_finite
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT, TokenLayout, check_scores

from .engine import PatchRun, PatchSpec, Site, cache_for, check_image_batch, run_patch_spec, spec_memory
from .memory import resolve_batch_size
from .metrics import RECOVERY_EPS, Metric, logit_diff, target_logit, target_prob
from .results import PatchingResult

DIRECTIONS = ("denoising", "noising")
METRIC_NAMES = ("logit_diff", "logit", "prob")


def check_inputs(model: HookedViT, clean: Any, corrupted: Any, pixels: Any = None) -> TokenLayout:
    """Validate the model (a classifier), a clean/corrupted image pair (non-empty, finite) and optional display
    pixels, before any compute; return the pair's token layout."""
    check_scores(model)
    check_image_batch(model, clean, "clean")
    check_image_batch(model, corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"corrupted: expected clean's shape {tuple(clean.shape)} [batch, channel, height, width], "
            f"got {tuple(corrupted.shape)}"
        )
    if pixels is not None:
        if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[0] != clean.shape[0] \
                or tuple(pixels.shape[-2:]) != tuple(clean.shape[-2:]) or pixels.shape[1] not in (1, 3):
            raise ValueError(
                f"pixels: expected display images [batch, 1 or 3, height, width] in [0, 1] matching clean "
                f"{tuple(clean.shape)}, got {tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__}"
            )
    return model.layout_for(clean)


def source_target(direction: str, clean: Tensor, corrupted: Tensor) -> tuple[Tensor, Tensor]:
    """``(source, target)``: denoising writes clean into corrupted, noising corrupted into clean."""
    check_choice(direction, DIRECTIONS, "direction")
    return (clean, corrupted) if direction == "denoising" else (corrupted, clean)


def resolve_metric(metric: Metric | str, clean_logits: Tensor, corrupted_logits: Tensor) -> tuple[Metric, str]:
    """A metric callable and its name; strings use the clean run's predicted class.

    ``"logit"`` / ``"prob"``: logit / probability of the clean prediction. ``"logit_diff"``: clean prediction's
    logit minus the corrupted prediction's logit (0 for images where both runs predict the same class).

    Every experiment on a clean/corrupted pair (sweeps, heads, paths, AtP, EAP, EAP-IG, circuit evaluation)
    resolves its metric here, so the checks of both runs live here too: non-finite logits raise
    :class:`~vit_patching.checks.NonFiniteError` naming the images; a metric that does not return one finite
    value per row raises a ValueError naming it; images whose clean and corrupted runs score the same (a
    ``logit_diff`` pair predicting one class) get a ``UserWarning`` naming them, as every normalised result and
    circuit faithfulness is NaN there.

    Example:
        >>> fn, name = resolve_metric("logit", torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]]))
        >>> name, fn(torch.tensor([[5.0, 7.0]]), torch.tensor([0]))
        ('logit', tensor([7.]))
    """
    check_finite(clean_logits, "clean logits")
    check_finite(corrupted_logits, "corrupted logits")
    if callable(metric):
        fn, name = metric, getattr(metric, "__name__", "metric")
    else:
        check_choice(metric, METRIC_NAMES, "metric")
        clean_cls = clean_logits.argmax(-1)
        fn = {"logit": lambda: target_logit(clean_cls), "prob": lambda: target_prob(clean_cls),
              "logit_diff": lambda: logit_diff(clean_cls, corrupted_logits.argmax(-1))}[metric]()
        name = metric
    ids = torch.arange(clean_logits.shape[0], device=clean_logits.device)
    clean_score = check_metric_output(fn, name, clean_logits, ids, "clean")
    corrupted_score = check_metric_output(fn, name, corrupted_logits, ids, "corrupted")
    same = torch.nonzero((clean_score - corrupted_score).abs() <= RECOVERY_EPS).flatten().tolist()
    if same:
        warnings.warn(
            f"metric: clean and corrupted runs give the same {name} for image(s) {same}"
            + (" (both predict the same class, so logit_diff is 0 in both)" if name == "logit_diff" else "")
            + ": their normalised results and circuit faithfulness are NaN; pair images the model tells apart",
            UserWarning, stacklevel=2,
        )
    return fn, name


def check_metric_output(fn: Metric, name: str, logits: Tensor, ids: Tensor, run: str) -> Tensor:
    """``fn(logits, ids)`` if it is one finite value per row ``[rows]``, else an error naming the metric.

    Example:
        >>> check_metric_output(lambda logits, ids: logits, "identity", torch.zeros(2, 3), torch.arange(2), "clean")
        Traceback (most recent call last):
        ...
        ValueError: metric: expected identity(logits, image_index) to return one value per row [2], got shape (2, 3)
    """
    out = fn(logits, ids)
    if not isinstance(out, Tensor) or tuple(out.shape) != (logits.shape[0],):
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"metric: expected {name}(logits, image_index) to return one value per row "
                         f"[{logits.shape[0]}], got {got}")
    return check_finite(out, f"{name} of the {run} run")


def layout_options(layout: TokenLayout, pixels: Tensor | None) -> dict[str, Any]:
    """What figures need to draw a position axis as an image grid."""
    return {
        "grid_size": tuple(layout.grid_size),
        "n_prefix": layout.n_prefix,
        "prefix_labels": list(layout.prefix_labels),
        "pixels": None if pixels is None else pixels.detach().float().cpu(),
    }


def axis_labels(axis: str, indices: Sequence[Any], layout: TokenLayout) -> list[str]:
    """Tick labels of an experiment axis: layers ``L3``, heads ``H1``, positions ``CLS``/``P(r,c)``, SAE latents
    ``F7``."""
    if axis == "layer":
        return [f"L{i}" for i in indices]
    if axis == "head":
        return [f"H{i}" for i in indices]
    if axis == "pos":
        return [layout.label(i) for i in indices]
    if axis == "latent":  # an SAE's latents (features)
        return [f"F{i}" for i in indices]
    return [str(i) for i in indices]


@dataclass
class CachedRuns:
    """Both unpatched runs of an experiment, cached once, and the resolved metric.

    Attributes:
        source, target: The images written from / patched into.
        source_logits, target_logits: Unpatched logits ``[batch, n_classes]``.
        source_cache: The source run's activations at the hooks the experiment writes from.
        target_cache: The target run's residual entering every block (where chunks start) and any extra hooks.
        metric: The metric callable; ``metric_name`` its name.
    """

    source: Tensor
    target: Tensor
    source_logits: Tensor
    target_logits: Tensor
    source_cache: dict[str, Tensor]
    target_cache: dict[str, Tensor]
    metric: Metric
    metric_name: str


def cache_runs(
    model: HookedViT,
    metric: Metric | str,
    clean: Tensor,
    corrupted: Tensor,
    *,
    direction: str,
    source_hooks: Sequence[str],
    target_hooks: Sequence[str] = (),
) -> CachedRuns:
    """Cache the source run at ``source_hooks`` and the target run at every block's input plus ``target_hooks``
    (one forward each), and resolve ``metric`` against the clean/corrupted predictions."""
    if not callable(metric):  # a bad name fails before the two forwards
        check_choice(metric, METRIC_NAMES, "metric")
    source, target = source_target(direction, clean, corrupted)
    prefix = [get_act_name("resid_pre", l) for l in range(model.cfg.n_layers)]
    source_logits, source_cache = cache_for(model, source, source_hooks)
    target_logits, target_cache = cache_for(model, target, [*prefix, *target_hooks])
    clean_logits, corrupted_logits = (
        (source_logits, target_logits) if direction == "denoising" else (target_logits, source_logits)
    )
    fn, name = resolve_metric(metric, clean_logits, corrupted_logits)
    return CachedRuns(source, target, source_logits, target_logits, source_cache, target_cache, fn, name)


def run_cached(
    model: HookedViT,
    spec: PatchSpec,
    metric: Metric | str,
    clean: Tensor,
    corrupted: Tensor,
    *,
    direction: str,
    batch_size: int,
    progress: bool,
) -> tuple[PatchRun, str]:
    """Cache both runs once (:func:`cache_runs`: source at the spec's hooks, target at every block's input),
    then run the spec."""
    c = cache_runs(model, metric, clean, corrupted, direction=direction, source_hooks=spec.hooks)
    run = run_patch_spec(
        model, spec, c.metric, target=c.target, source=c.source, target_cache=c.target_cache,
        source_cache=c.source_cache, target_logits=c.target_logits, source_logits=c.source_logits,
        batch_size=batch_size, progress=progress,
    )
    return run, c.metric_name


def grid_experiment(
    model: HookedViT,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric | str,
    *,
    axes: dict[str, list[Any]],
    make_site: Callable[..., Site],
    kind: str,
    layout: TokenLayout,
    direction: str,
    batch_size: int | str,
    progress: bool,
    pixels: Tensor | None,
    options: dict[str, Any] | None = None,
    max_memory: int | None = None,
) -> PatchingResult:
    """Patch one site per cell of the cartesian product of ``axes`` (in order); one engine run for all cells.

    ``make_site(**{axis: index})`` builds the cell's :class:`Site`; the ``site`` axis holds site names.
    ``batch_size="auto"`` is resolved here, before the caches, counting them (:func:`cache_runs` keeps the
    target run's residual entering every block and the source run at the spec's hooks).
    """
    names = list(axes)
    cells = list(itertools.product(*axes.values()))
    spec = PatchSpec([(make_site(**dict(zip(names, cell))),) for cell in cells])
    batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory, n_pos=layout.n_pos, **spec_memory(
        model, spec, n_pos=layout.n_pos, batch=clean.shape[0], target_layers=model.cfg.n_layers,
    ))
    run, metric_name = run_cached(
        model, spec, metric, clean, corrupted, direction=direction, batch_size=batch_size, progress=progress
    )
    sizes = [len(v) for v in axes.values()]
    opts = layout_options(layout, pixels)
    opts.update({f"{a}_indices": list(v) for a, v in axes.items() if a != "site"})
    opts.update(batch_size=batch_size, chunk_start_layers=run.info.get("chunk_start_layers"), **(options or {}))
    return PatchingResult(
        values=run.values.view(*sizes, -1),
        axes=tuple(names),
        labels={a: axis_labels(a, v, layout) for a, v in axes.items()},
        target_score=run.target_score,
        source_score=run.source_score,
        metric=metric_name,
        direction=direction,
        kind=kind,
        options=opts,
        n_forwards=run.n_forwards,
    )

"""Shared plumbing of the patching experiments (sweeps, heads, paths): argument checks, the clean/corrupted ->
source/target convention, metric resolution, caching both runs once, and grid-shaped specs run by the engine.

Conventions: **denoising** writes clean-run values into the corrupted run (source = clean, target = corrupted:
how much does the site restore?); **noising** writes corrupted-run values into the clean run (source =
corrupted, target = clean: how much does the site break?). Results are normalised so that 0 = the unpatched
target run and 1 = the unpatched source run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from .engine import PatchRun, PatchSpec, Site, cache_for, run_patch_spec
from .metrics import Metric, logit_diff, target_logit, target_prob
from .results import PatchingResult

DIRECTIONS = ("denoising", "noising")
METRIC_NAMES = ("logit_diff", "logit", "prob")


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def as_names(value: str | Sequence[str], choices: Sequence[str], name: str) -> list[str]:
    """A non-empty list of distinct names from ``choices`` (a single string is one name)."""
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"{name} must name at least one of {list(choices)}, got {value!r}")
    for n in names:
        check_choice(n, choices, name)
    if len(set(names)) != len(names):
        raise ValueError(f"{name} must not repeat names, got {names}")
    return names


def check_indices(values: int | Sequence[int] | None, n: int, name: str, what: str) -> list[int]:
    """Checked, distinct indices into ``range(n)`` (all of them when ``values`` is None)."""
    if values is None:
        return list(range(n))
    out = [values] if isinstance(values, int) else list(values)
    if not out:
        raise ValueError(f"{name} must list at least one {what} in [0, {n}), got {values!r}")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"{name} must hold {what} indices in [0, {n}), got {v!r} in {values!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat indices, got {out}")
    return out


def check_inputs(model: Any, clean: Any, corrupted: Any, pixels: Any = None) -> Any:
    """Validate a clean/corrupted image pair (and optional display pixels); return their token layout."""
    model.check_images(clean, "clean")
    model.check_images(corrupted, "corrupted")
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"clean and corrupted must have the same shape [batch, channel, height, width], got "
            f"{tuple(clean.shape)} and {tuple(corrupted.shape)}"
        )
    if pixels is not None:
        if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[0] != clean.shape[0] \
                or tuple(pixels.shape[-2:]) != tuple(clean.shape[-2:]) or pixels.shape[1] not in (1, 3):
            raise ValueError(
                f"pixels must be display images [batch, 1 or 3, height, width] in [0, 1] matching clean "
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
    """
    if callable(metric):
        return metric, getattr(metric, "__name__", "metric")
    check_choice(metric, METRIC_NAMES, "metric")
    clean_cls = clean_logits.argmax(-1)
    if metric == "logit":
        return target_logit(clean_cls), metric
    if metric == "prob":
        return target_prob(clean_cls), metric
    return logit_diff(clean_cls, corrupted_logits.argmax(-1)), metric


def layout_options(layout: Any, pixels: Tensor | None) -> dict[str, Any]:
    """What figures need to draw a position axis as an image grid."""
    return {
        "grid_size": tuple(layout.grid_size),
        "n_prefix": layout.n_prefix,
        "prefix_labels": list(layout.prefix_labels),
        "pixels": None if pixels is None else pixels.detach().float().cpu(),
    }


def axis_labels(axis: str, indices: Sequence[Any], layout: Any) -> list[str]:
    """Tick labels of an experiment axis: layers ``L3``, heads ``H1``, positions ``CLS``/``P(r,c)``."""
    if axis == "layer":
        return [f"L{i}" for i in indices]
    if axis == "head":
        return [f"H{i}" for i in indices]
    if axis == "pos":
        return [layout.label(i) for i in indices]
    return [str(i) for i in indices]


def run_cached(
    model: Any,
    spec: PatchSpec,
    metric: Metric | str,
    clean: Tensor,
    corrupted: Tensor,
    *,
    direction: str,
    batch_size: int,
    progress: bool,
) -> tuple[PatchRun, str]:
    """Cache both runs once (source: the spec's hooks; target: every block's input), then run the spec."""
    source, target = source_target(direction, clean, corrupted)
    prefix = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    source_logits, source_cache = cache_for(model, source, spec.hooks)
    target_logits, target_cache = cache_for(model, target, prefix)
    clean_logits, corrupted_logits = (
        (source_logits, target_logits) if direction == "denoising" else (target_logits, source_logits)
    )
    fn, name = resolve_metric(metric, clean_logits, corrupted_logits)
    run = run_patch_spec(
        model, spec, fn, target=target, source=source, target_cache=target_cache, source_cache=source_cache,
        target_logits=target_logits, source_logits=source_logits, batch_size=batch_size, progress=progress,
    )
    return run, name


def grid_experiment(
    model: Any,
    clean: Tensor,
    corrupted: Tensor,
    metric: Metric | str,
    *,
    axes: dict[str, list[Any]],
    make_site: Callable[..., Site],
    kind: str,
    layout: Any,
    direction: str,
    batch_size: int,
    progress: bool,
    pixels: Tensor | None,
    options: dict[str, Any] | None = None,
) -> PatchingResult:
    """Patch one site per cell of the cartesian product of ``axes`` (in order); one engine run for all cells.

    ``make_site(**{axis: index})`` builds the cell's :class:`Site`; the ``site`` axis holds site names.
    """
    names = list(axes)
    cells = list(itertools.product(*axes.values()))
    spec = PatchSpec([(make_site(**dict(zip(names, cell))),) for cell in cells])
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


def check_batch_size(batch_size: Any) -> int:
    """A positive int batch size (rows per forward pass)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (rows per forward pass), got {batch_size!r}")
    return batch_size

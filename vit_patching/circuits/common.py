"""Plumbing shared by the gradient-based estimates (AtP, CAAP estimate, EAP): argument checks, metric
resolution, one forward + backward with activations and gradients captured by hooks, and top-k verification.

The gradient runs attach forward hooks through ``model.hooks`` (removed on exit, also after an exception), so
no hook outlives a call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_finite
from vit_patching.model import HookedViT
from vit_patching.patching import PatchingResult, PatchSpec, run_patch_spec
from vit_patching.patching.experiment import DIRECTIONS, METRIC_NAMES, resolve_metric, source_target
from vit_patching.patching.experiment import check_inputs as check_pair  # the experiments' own check of a pair

__all__ = ["DIRECTIONS", "METRIC_NAMES", "Verification", "check_pair", "forward_backward", "resolve_metric",
           "source_target", "top_cells", "verify_cells"]

Metric = Callable[[Tensor, Tensor], Tensor]


def forward_backward(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"] | Float[Tensor, "batch pos d_model"],
    hooks: Sequence[str],
    metric: Metric,
    *,
    start_layer: int | None = None,
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One forward and one backward pass: logits, and the activations and metric gradients at ``hooks``.

    The metric is summed over images (each image's metric depends only on its own row), so each row of a
    gradient is that image's gradient.

    Args:
        model: A HookedViT.
        images: Images, or the residual entering ``start_layer``.
        hooks: Hook names to capture (switched-on hooks of ``model.hook_dict``).
        metric: ``metric(logits, image_index) -> [batch]``.
        start_layer: Start the forward at this block from a residual.

    Returns:
        ``(logits, acts, grads)`` with ``acts[h]`` and ``grads[h]`` detached, of the hook's shape.

    Example:
        >>> logits, acts, grads = forward_backward(model, corrupted, ["blocks.0.hook_resid_pre"], fn)
    """
    names = sorted(set(hooks))
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    # Gradients flow from the input even when the weights are frozen (requires_grad=False).
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names]):
        logits = model(x) if start_layer is None else model(x, start_at_layer=start_layer)
        check_finite(logits.detach(), "logits of the gradient run")  # rows are images: the error names them
        total = metric(logits, torch.arange(x.shape[0], device=logits.device)).sum()
        missing = [n for n in names if n not in acts]
        if missing:
            raise RuntimeError(f"hooks never fired: {missing}")
        grads = torch.autograd.grad(total, [acts[n] for n in names], allow_unused=True)
    out_grads = {n: torch.zeros_like(acts[n]) if g is None else g.detach() for n, g in zip(names, grads)}
    for n, g in out_grads.items():  # finite logits can still give a non-finite gradient (e.g. a saturated softmax)
        check_finite(g, f"metric gradient at {n!r}")
    return logits.detach(), {n: a.detach() for n, a in acts.items()}, out_grads


@dataclass
class Verification:
    """The ``k`` largest estimates re-run exactly through the patching engine.

    Attributes:
        cells: Index tuple of each verified cell into the result's leading axes (largest |estimate| first).
        labels: Readable cell labels, e.g. ``"resid_pre L2 P(3,4)"``.
        estimate: Estimated metric per cell and image ``[k, batch]`` (same units as the result's values).
        exact: Exactly patched metric per cell and image ``[k, batch]``.
        n_forwards: Patched forward passes the exact runs took.

    Example:
        >>> v = res.options["verification"]
        >>> (v.estimate - v.exact).abs().max()
    """

    cells: list[tuple[int, ...]]
    labels: list[str]
    estimate: Float[Tensor, "k batch"]
    exact: Float[Tensor, "k batch"]
    n_forwards: int = 0

    def errors(self) -> Float[Tensor, " k"]:
        """Mean absolute error of the estimate per verified cell."""
        return (self.estimate - self.exact).abs().mean(-1)


def top_cells(effect: Float[Tensor, "... batch"], k: int) -> list[tuple[int, ...]]:
    """Index tuples of the ``k`` cells with the largest |mean effect over images| (largest first).

    Example:
        >>> top_cells(torch.tensor([[[1.0], [-3.0]], [[0.5], [2.0]]]), 2)
        [(0, 1), (1, 1)]
    """
    mean = effect.float().nanmean(-1).abs().nan_to_num(nan=-1.0)
    order = torch.argsort(mean.reshape(-1), descending=True, stable=True)[: min(k, mean.numel())]
    return [tuple(int(i) for i in torch.unravel_index(j, mean.shape)) for j in order]


def verify_cells(model: HookedViT, result: PatchingResult, cells: list[tuple[int, ...]], make_site: Any,
                 fn: Metric, clean: Tensor, corrupted: Tensor, batch_size: int) -> Verification:
    """Run the chosen cells of an estimate exactly through the engine (one variant per cell, ``make_site(cell)``
    its :class:`~vit_patching.patching.Site`): the ``verify_top_k`` re-runs of AtP and its latent variant."""
    source, target = source_target(result.direction, clean, corrupted)
    spec = PatchSpec([(make_site(c),) for c in cells])
    run = run_patch_spec(model, spec, fn, target=target, source=source, batch_size=batch_size, progress=False)
    labels = [" ".join(result.labels[a][i] for a, i in zip(result.axes, c)) for c in cells]
    estimate = torch.stack([result.values[c] for c in cells])
    return Verification(cells, labels, estimate, run.values, run.n_forwards)

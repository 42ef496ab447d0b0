"""Patching metrics: functions of the patched logits, one value per row.

A metric is called as ``metric(logits [rows, n_classes], image_index [rows]) -> [rows]``: every row belongs to
one input image, whose target class (or classes) the metric looks up. Build them with :func:`target_logit`,
:func:`logit_diff` or :func:`target_prob`; normalise with :func:`recovery`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Metric = Callable[[Tensor, Tensor], Tensor]

#: Baselines closer than this give no normalisation (:func:`recovery` returns NaN for such images).
RECOVERY_EPS = 1e-8


def _as_targets(target: int | Tensor, name: str) -> Tensor:
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.ndim > 1:
        raise ValueError(f"{name} must be an int or a 1-D integer tensor (one class per image), got {t!r}")
    return t


def _pick(target: Tensor, image_index: Tensor) -> Tensor:
    target = target.to(image_index.device)
    return target.expand(int(image_index.max()) + 1)[image_index] if target.ndim == 0 else target[image_index]


def target_logit(target: int | Int[Tensor, " batch"]) -> Metric:
    """Logit of each image's target class.

    Example:
        >>> metric = target_logit(torch.tensor([3, 1]))
        >>> metric(torch.randn(4, 10), torch.tensor([0, 0, 1, 1])).shape
        torch.Size([4])
    """
    t = _as_targets(target, "target")

    def metric(logits: Float[Tensor, "rows n_classes"], image_index: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        return logits.gather(1, _pick(t, image_index)[:, None])[:, 0]

    metric.__name__ = "target_logit"
    return metric


def logit_diff(target: int | Int[Tensor, " batch"], other: int | Int[Tensor, " batch"]) -> Metric:
    """``logit[target] - logit[other]`` per image (e.g. clean class minus corrupted class)."""
    t, o = _as_targets(target, "target"), _as_targets(other, "other")

    def metric(logits: Float[Tensor, "rows n_classes"], image_index: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        return (
            logits.gather(1, _pick(t, image_index)[:, None])[:, 0]
            - logits.gather(1, _pick(o, image_index)[:, None])[:, 0]
        )

    metric.__name__ = "logit_diff"
    return metric


def target_prob(target: int | Int[Tensor, " batch"]) -> Metric:
    """Softmax probability of each image's target class."""
    t = _as_targets(target, "target")

    def metric(logits: Float[Tensor, "rows n_classes"], image_index: Int[Tensor, " rows"]) -> Float[Tensor, " rows"]:
        # at least float32 (a half model's softmax), float64 kept
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1).gather(
            1, _pick(t, image_index)[:, None]
        )[:, 0]

    metric.__name__ = "target_prob"
    return metric


METRICS = {"logit": target_logit, "prob": target_prob}


def recovery(
    values: Float[Tensor, "... batch"],
    target_score: Float[Tensor, " batch"],
    source_score: Float[Tensor, " batch"],
    eps: float = RECOVERY_EPS,
) -> Float[Tensor, "... batch"]:
    """Normalise so that 0 = the unpatched target run and 1 = the unpatched source run.

    For denoising (source = clean) this is the fraction of the clean behaviour restored; for noising
    (source = corrupted) it is the fraction destroyed. Images whose two baselines coincide (within ``eps``)
    give NaN rather than a meaningless ratio.
    """
    denom = source_score - target_score
    safe = torch.where(denom.abs() > eps, denom, torch.full_like(denom, float("nan")))
    return (values - target_score) / safe

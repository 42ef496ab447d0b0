"""Faithfulness metrics: insertion / deletion AUC (Petsiuk et al., RISE 2018) and Chefer et al.'s (2021)
positive / negative perturbation test.

The model is any callable ``images [batch, channel, height, width] -> logits [batch, n_classes]`` (a timm model, a
HookedViT, a lambda). Images are normalised model inputs; substrates live in the same space. Everything runs under
``torch.no_grad()``; an ``nn.Module`` in training mode is refused.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_patching.checks import check_batch_size, check_choice, is_int
from vit_patching.images import DEFAULT_UPSAMPLE, check_baseline
from vit_patching.evaluation.perturbation import (
    Model,
    Substrate,
    as_float_images,
    check_images,
    check_map_batch,
    check_model,
    check_targets,
    describe_substrate,
    forward_logits,
    make_substrate,
    model_data_config,
    perturbation_ranks,
    run_perturbations,
    steps_to_counts,
    trapezoid_auc,
)

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class PerturbationCurve:
    """Insertion or deletion curves and their AUCs.

    Attributes:
        curves: score after each step, ``curves[:, 0]`` before any change, ``curves[:, -1]`` after all units.
        auc: trapezoid AUC per image, x normalised to [0, 1] (:func:`trapezoid_auc`).
        fractions: the x axis, ``k / n`` for step ``k`` of ``n``.
        n_perturbed: units (pixels or patches) changed at each point; the last step may be partial.
        targets: the class scored for each image.
        settings: everything needed to reproduce and label the numbers (mode, unit, step, substrate, score, ...).
    """

    curves: Float[Tensor, "batch n_points"]
    auc: Float[Tensor, "batch"]
    fractions: Float[Tensor, "n_points"]
    n_perturbed: Int[Tensor, "n_points"]
    targets: Int[Tensor, "batch"]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_auc(self) -> float:
        """AUC averaged over the images."""
        return float(self.auc.mean())


@dataclass
class PerturbationTestResult:
    """Chefer et al.'s positive / negative perturbation test on one batch (or a merged set).

    Attributes:
        fractions: fraction of units removed at each point.
        n_removed: units removed at each point (``floor(fraction * n_units)``).
        correct: whether the top-1 prediction equals the label after each removal.
        accuracy: ``correct`` averaged over images.
        auc: ``(sum a_j - (a_0 + a_last) / 2) / (n - 1) * 100`` over the accuracies (percent).
        target_prob: softmax probability of the label after each removal (per-image variant).
        prob_auc: the same trapezoid on ``target_prob`` per image, in [0, 1] (not times 100).
        labels: the class each image was scored against.
        settings: order, unit, substrate, upsampling and the label source.
    """

    fractions: Float[Tensor, "n_fractions"]
    n_removed: Int[Tensor, "n_fractions"]
    correct: Bool[Tensor, "batch n_fractions"]
    accuracy: Float[Tensor, "n_fractions"]
    auc: float
    target_prob: Float[Tensor, "batch n_fractions"]
    prob_auc: Float[Tensor, "batch"]
    labels: Int[Tensor, "batch"]
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def merge(cls, results: Sequence["PerturbationTestResult"]) -> "PerturbationTestResult":
        """Pool batches of the same test (same fractions and settings) into one set-level result."""
        if not results:
            raise ValueError("results: expected at least one PerturbationTestResult, got an empty sequence")
        first = results[0]
        for r in results[1:]:
            if not torch.equal(r.fractions, first.fractions) or r.settings != first.settings:
                raise ValueError("results: expected results with identical fractions and settings, got a mismatch")
        correct = torch.cat([r.correct for r in results])
        accuracy = correct.double().mean(dim=0).to(first.accuracy.dtype)
        return cls(
            fractions=first.fractions,
            n_removed=first.n_removed,
            correct=correct,
            accuracy=accuracy,
            auc=float(trapezoid_auc(accuracy.double()) * 100),
            target_prob=torch.cat([r.target_prob for r in results]),
            prob_auc=torch.cat([r.prob_auc for r in results]),
            labels=torch.cat([r.labels for r in results]),
            settings=dict(first.settings),
        )


def _check_common(
    model: Model, images: Tensor, saliency: Tensor, targets: Tensor | None, batch_size: int, name: str
) -> None:
    check_model(model)
    check_images(images)
    check_map_batch(saliency, images.shape[0])
    if targets is not None:
        check_targets(targets, images.shape[0], name)
    check_batch_size(batch_size)


def _substrate(
    model: Model, images: Tensor, substrate: Substrate, data_config: Mapping[str, Any] | None
) -> tuple[Tensor, str]:
    """The substrate image batch (``"black"`` from ``data_config``, else the model's own) and its record."""
    if isinstance(substrate, str):
        substrate = check_baseline(substrate, "substrate")  # warns once for a deprecated name, returns the new one
    dc = model_data_config(model) if data_config is None else data_config
    return make_substrate(images, substrate, data_config=dc), describe_substrate(substrate)


def _resolve_targets(model: Model, images: Tensor, targets: Tensor | None, batch_size: int) -> Tensor:
    if targets is not None:
        return targets.to(device=images.device, dtype=torch.long)
    return forward_logits(model, images, batch_size).argmax(dim=1).to(images.device)


def insertion_deletion(
    model: Model,
    images: Float[Tensor, "batch channel height width"],
    saliency: Float[Tensor, "_batch map_h map_w"],
    targets: Int[Tensor, "_batch"] | None = None,
    *,
    mode: str,
    unit: str = "pixel",
    step: int | None = None,
    patch_size: int | None = None,
    substrate: Substrate | None = None,
    data_config: Mapping[str, Any] | None = None,
    score: str = "prob",
    upsample: str = DEFAULT_UPSAMPLE,
    batch_size: int = 64,
    progress: bool = False,
) -> PerturbationCurve:
    """Insertion or deletion game (Petsiuk et al., RISE, BMVC 2018).

    Units (pixels, or ``p x p`` patches) are ranked by saliency, most relevant first (ties: raster order). Deletion
    starts from the image and replaces the first ``k * step`` units with the substrate; insertion starts from the
    substrate and copies the first ``k * step`` units of the image back. There are ``n = ceil(n_units / step)``
    steps and ``n + 1`` scores ``s_0 .. s_n``; AUC = ``(sum s_k - (s_0 + s_n) / 2) / n``. Deletion: lower is better;
    insertion: higher is better.

    Args:
        model: callable images -> logits ``[batch, n_classes]``; an ``nn.Module`` must be in eval mode.
        images: normalised images.
        saliency: maps at patch resolution ``[batch, grid_h, grid_w]`` or pixel resolution ``[batch, H, W]``.
            Pixel steps bring them to ``H x W`` with :func:`upsample_map` (``upsample``); patch steps average-pool a
            pixel map over each patch.
        targets: class scored per image; ``None`` takes the model's top-1 class on the clean image (RISE).
        mode: ``"insertion"`` or ``"deletion"``.
        unit: ``"pixel"`` or ``"patch"`` (one ``p x p`` patch per step in patch-score order by default).
        step: units per step. Default: ``W`` pixels (RISE's 224 at 224 x 224, so ``n = H`` steps), or 1 patch.
        patch_size: patch side for ``unit="patch"``; inferred from a patch-resolution map when ``None``.
        substrate: ``"zeros"``, ``"black"``, ``"image_mean"``, ``"blur"`` or a tensor (see :func:`make_substrate`;
            ``"blur"`` is RISE's, kernel 11 and sigma 5). Default: RISE's, ``"zeros"`` (dataset-mean colour) for
            deletion and ``"blur"`` for insertion.
        data_config: mean/std for ``"black"``; default the model's ``cfg.data_config`` (a HookedViT), if any.
        score: ``"prob"`` (softmax probability of the target, RISE) or ``"logit"``.
        upsample: ``"bilinear"`` or ``"nearest"`` for pixel steps on patch-resolution maps.
        batch_size: perturbed images per forward pass.
        progress: show a tqdm bar.

    Returns:
        A :class:`PerturbationCurve`.

    Example:
        >>> import torch
        >>> model = lambda x: torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], dim=1)
        >>> images, maps = torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4)
        >>> res = insertion_deletion(model, images, maps, mode="deletion", unit="patch")
        >>> res.curves.shape, res.auc.shape
        (torch.Size([2, 17]), torch.Size([2]))
    """
    check_choice(mode, ("insertion", "deletion"), "mode")
    check_choice(unit, ("pixel", "patch"), "unit")
    check_choice(score, ("prob", "logit"), "score")
    _check_common(model, images, saliency, targets, batch_size, "targets")
    if step is not None and (not is_int(step) or step <= 0):
        raise ValueError(f"step: expected a positive int (units per step) or None, got {step!r}")
    if substrate is None:
        substrate = "blur" if mode == "insertion" else "zeros"
    images = as_float_images(images)
    h, w = images.shape[-2:]
    with torch.no_grad():
        sub, substrate_record = _substrate(model, images, substrate, data_config)
        ranks, n_units, p = perturbation_ranks(
            saliency.to(images.device), (h, w), unit=unit, patch_size=patch_size, descending=True, upsample=upsample
        )
        if step is None:
            step = w if unit == "pixel" else 1
        counts = steps_to_counts(n_units, step).to(images.device)
        tgt = _resolve_targets(model, images, targets, batch_size)
        logits, probs, _ = run_perturbations(
            model, images, sub, ranks, counts, tgt,
            insert=(mode == "insertion"), batch_size=batch_size, progress=progress, desc=mode,
        )
    curves = probs if score == "prob" else logits
    n = counts.shape[0] - 1
    settings = {
        "mode": mode,
        "unit": unit,
        "step": step,
        "n_steps": n,
        "n_units": n_units,
        "patch_size": p,
        "substrate": substrate_record,
        "score": score,
        "upsample": upsample if unit == "pixel" else "avg_pool" if tuple(saliency.shape[-2:]) == (h, w) else "none",
        "targets": "given" if targets is not None else "predicted",
        "order": "most relevant first, ties in raster order",
    }
    logger.debug("insertion_deletion %s", settings)
    return PerturbationCurve(
        curves=curves,
        auc=trapezoid_auc(curves),
        fractions=torch.arange(n + 1, dtype=curves.dtype) / n,
        n_perturbed=counts.cpu(),
        targets=tgt.cpu(),
        settings=settings,
    )


def insertion_auc(
    model: Model,
    images: Float[Tensor, "batch channel height width"],
    saliency: Float[Tensor, "_batch map_h map_w"],
    targets: Int[Tensor, "_batch"] | None = None,
    **kwargs: Any,
) -> PerturbationCurve:
    """Insertion game: :func:`insertion_deletion` with ``mode="insertion"`` (default substrate: blur).

    Example:
        >>> import torch
        >>> model = lambda x: x.mean((2, 3))  # 3 "classes", one per channel
        >>> insertion_auc(model, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), step=8).curves.shape
        torch.Size([1, 9])
    """
    return insertion_deletion(model, images, saliency, targets, mode="insertion", **kwargs)


def deletion_auc(
    model: Model,
    images: Float[Tensor, "batch channel height width"],
    saliency: Float[Tensor, "_batch map_h map_w"],
    targets: Int[Tensor, "_batch"] | None = None,
    **kwargs: Any,
) -> PerturbationCurve:
    """Deletion game: :func:`insertion_deletion` with ``mode="deletion"`` (default substrate: zeros = mean colour).

    Example:
        >>> import torch
        >>> model = lambda x: x.mean((2, 3))
        >>> deletion_auc(model, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), step=8).auc.shape
        torch.Size([1])
    """
    return insertion_deletion(model, images, saliency, targets, mode="deletion", **kwargs)


def perturbation_test(
    model: Model,
    images: Float[Tensor, "batch channel height width"],
    saliency: Float[Tensor, "_batch map_h map_w"],
    labels: Int[Tensor, "_batch"] | None = None,
    *,
    order: str,
    fractions: Sequence[int | float] = DEFAULT_FRACTIONS,
    unit: str = "pixel",
    patch_size: int | None = None,
    substrate: Substrate = "zeros",
    data_config: Mapping[str, Any] | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
    batch_size: int = 64,
    progress: bool = False,
) -> PerturbationTestResult:
    """Positive / negative perturbation test (Chefer et al., CVPR 2021).

    For each fraction ``f``, starting from the clean image each time, the ``floor(f * n_units)`` most relevant
    (``order="positive"``) or least relevant (``order="negative"``) units are set to the substrate (all channels);
    ties keep raster order. Scored by top-1 accuracy against ``labels`` (the GT in Chefer's protocol) or, when
    ``labels`` is ``None``, against the model's clean prediction. AUC = ``(sum a_j - (a_0 + a_last)/2) / (n-1) * 100``
    with the fractions treated as equally spaced. Positive: lower is better; negative: higher is better.

    Chefer's exact setting: images normalised with mean = std = 0.5, ``substrate="black"`` with that data config
    (or ``black_substrate((.5,)*3, (.5,)*3)``: -1), maps min-max normalised after bilinear upsampling (ordering is
    unaffected by min-max).

    Args:
        model: callable images -> logits; an ``nn.Module`` must be in eval mode.
        images: normalised images.
        saliency: patch- or pixel-resolution maps (see :func:`insertion_deletion`).
        labels: class per image, or ``None`` for the clean top-1 prediction.
        order: ``"positive"`` (most relevant removed first) or ``"negative"`` (least relevant first).
        fractions: increasing fractions in [0, 1] (default 0.1 .. 0.9); at least two.
        unit: ``"pixel"`` or ``"patch"``.
        patch_size: patch side for ``unit="patch"`` (inferred from a patch-resolution map when ``None``).
        substrate: ``"zeros"`` (default, dataset-mean colour), ``"black"``, ``"image_mean"``, ``"blur"`` or a
            tensor (see :func:`make_substrate`).
        data_config: mean/std for ``"black"``; default the model's ``cfg.data_config`` (a HookedViT), if any.
        upsample: map upsampling for pixel units.
        batch_size: perturbed images per forward pass.
        progress: show a tqdm bar.

    Returns:
        A :class:`PerturbationTestResult` (use :meth:`PerturbationTestResult.merge` to pool batches).

    Example:
        >>> import torch
        >>> model = lambda x: torch.stack([x.mean((1, 2, 3)), torch.full((x.shape[0],), 0.5)], dim=1)
        >>> res = perturbation_test(model, torch.ones(1, 3, 8, 8), torch.rand(1, 8, 8), order="positive")
        >>> res.accuracy.shape
        torch.Size([9])
    """
    check_choice(order, ("positive", "negative"), "order")
    check_choice(unit, ("pixel", "patch"), "unit")
    _check_common(model, images, saliency, labels, batch_size, "labels")
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(not 0.0 <= f <= 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"fractions: expected at least two strictly increasing values in [0, 1], got {list(fractions)!r}")
    images = as_float_images(images)
    h, w = images.shape[-2:]
    with torch.no_grad():
        sub, substrate_record = _substrate(model, images, substrate, data_config)
        ranks, n_units, p = perturbation_ranks(
            saliency.to(images.device), (h, w), unit=unit, patch_size=patch_size,
            descending=(order == "positive"), upsample=upsample,
        )
        # floor as in the reference code's int(base_size * p); the epsilon guards 0.29 * 100 = 28.999...
        counts = torch.tensor([math.floor(f * n_units + 1e-9) for f in fr], device=images.device)
        tgt = _resolve_targets(model, images, labels, batch_size)
        _, probs, preds = run_perturbations(
            model, images, sub, ranks, counts, tgt,
            insert=False, batch_size=batch_size, progress=progress, desc=f"{order} perturbation",
        )
    correct = preds == tgt.cpu()[:, None]
    accuracy = correct.double().mean(dim=0).to(probs.dtype)
    settings = {
        "order": order,
        "unit": unit,
        "n_units": n_units,
        "patch_size": p,
        "substrate": substrate_record,
        "upsample": upsample if unit == "pixel" else "avg_pool" if tuple(saliency.shape[-2:]) == (h, w) else "none",
        "labels": "given" if labels is not None else "predicted",
        "ties": "raster order",
    }
    return PerturbationTestResult(
        fractions=torch.tensor(fr, dtype=probs.dtype),
        n_removed=counts.cpu(),
        correct=correct,
        accuracy=accuracy,
        auc=float(trapezoid_auc(accuracy.double()) * 100),
        target_prob=probs,
        prob_auc=trapezoid_auc(probs),
        labels=tgt.cpu(),
        settings=settings,
    )

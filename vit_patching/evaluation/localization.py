"""Localisation metrics against ground-truth masks: pointing game, energy-based pointing game, mask IoU, average
precision and Chefer et al.'s segmentation test.

Maps come at patch resolution ``[batch, grid_h, grid_w]`` or pixel resolution ``[batch, height, width]`` and are
brought to the mask resolution with :func:`~vit_patching.evaluation.perturbation.upsample_map` (default bilinear,
``align_corners=False``). Masks are any-dtype tensors ``[batch, height, width]``; non-zero means inside.
Images whose mask is empty get NaN (or ``valid = False``) rather than a made-up score.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

from vit_patching.checks import check_choice
from vit_patching.evaluation.perturbation import (
    check_map_batch,
    check_targets,
    minmax_normalize,
    stable_order,
)
from vit_patching.images import DEFAULT_UPSAMPLE, UPSAMPLE_MODES, upsample_map

logger = logging.getLogger(__name__)

Threshold = Union[str, float, int]  # "mean" or a number


# ---------------------------------------------------------------------------------------------------- helpers
def _check_masks(masks: Tensor, batch: int) -> Tensor:
    if masks.ndim != 3:
        raise ValueError(f"masks: expected shape [batch, height, width], got {tuple(masks.shape)}")
    if masks.shape[0] != batch:
        raise ValueError(f"masks: expected batch size {batch} (one mask per map), got shape {tuple(masks.shape)}")
    return masks != 0


def _maps_at_mask_size(saliency: Tensor, masks: Tensor, upsample: str) -> tuple[Tensor, Tensor]:
    """Validate the pair and return ``(maps at mask resolution, boolean masks)``."""
    check_map_batch(saliency, saliency.shape[0])
    gt = _check_masks(masks, saliency.shape[0])
    check_choice(upsample, UPSAMPLE_MODES, "upsample")
    return upsample_map(saliency, tuple(gt.shape[-2:]), mode=upsample), gt


def dilate_mask(masks: Bool[Tensor, "batch height width"], radius: int | float) -> Bool[Tensor, "batch height width"]:
    """Grow masks by a disk: a pixel is inside if some mask pixel lies within Euclidean distance ``radius``.

    Equivalent to ``distance_transform(~mask) <= radius``; ``radius = 0`` returns the mask.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 5, 5, dtype=torch.bool); m[0, 2, 2] = True
        >>> dilate_mask(m, 1).sum().item()
        5
    """
    if not radius >= 0:
        raise ValueError(f"radius: expected a non-negative number of pixels, got {radius!r}")
    r = int(radius)
    if r == 0:
        return masks.clone()
    offs = torch.arange(-r, r + 1, dtype=torch.float64)
    disk = (offs[:, None] ** 2 + offs[None, :] ** 2) <= float(radius) ** 2
    kernel = disk.to(torch.float32)[None, None].to(masks.device)
    hit = F.conv2d(masks.to(torch.float32)[:, None], kernel, padding=r)[:, 0]
    return hit > 0.5


def binarize_map(
    saliency: Float[Tensor, "batch height width"],
    threshold: Threshold = "mean",
    top_fraction: int | float | None = None,
) -> Bool[Tensor, "batch height width"]:
    """Foreground prediction from a map, per image, after min-max rescaling to [0, 1].

    Rules: ``threshold="mean"`` (Chefer's protocol): ``map > mean(map)``; a float ``t``: ``map > t`` on the rescaled
    map; ``top_fraction=f`` (overrides ``threshold``): the ``round(f * H * W)`` highest pixels, ties in raster order.
    A constant map is all background under ``"mean"`` and under any ``t >= 0``.

    Example:
        >>> import torch
        >>> binarize_map(torch.tensor([[[0.0, 1.0, 4.0, 5.0]]]))
        tensor([[[False, False,  True,  True]]])
    """
    res = minmax_normalize(saliency)
    if top_fraction is not None:
        if not 0.0 <= top_fraction <= 1.0:
            raise ValueError(f"top_fraction: expected a fraction in [0, 1], got {top_fraction!r}")
        batch = res.shape[0]
        flat = res.reshape(batch, -1)
        k = int(round(top_fraction * flat.shape[1]))
        order = stable_order(flat, descending=True)[:, :k]
        out = torch.zeros_like(flat, dtype=torch.bool)
        out.scatter_(1, order, True)
        return out.reshape(res.shape)
    if isinstance(threshold, str):
        check_choice(threshold, ("mean",), "threshold")
        return res > res.mean(dim=(1, 2), keepdim=True)
    return res > float(threshold)


# ------------------------------------------------------------------------------------------------ pointing game
@dataclass
class PointingGameResult:
    """Pointing-game outcome per image.

    Attributes:
        hits: whether the arg-max (per the tie rule) falls inside the dilated mask.
        valid: False where the mask is empty (excluded from the accuracies, ``hits`` False).
        points: ``(row, col)`` of the first maximal pixel in raster order, at mask resolution.
        classes: class of each image, when given (for the per-class mean).
        settings: tolerance, tie rule and upsampling.
    """

    hits: Bool[Tensor, "batch"]
    valid: Bool[Tensor, "batch"]
    points: Int[Tensor, "batch 2"]
    classes: Int[Tensor, "batch"] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Hits / valid images (NaN if there is no valid image)."""
        n = int(self.valid.sum())
        return float(self.hits[self.valid].sum()) / n if n else float("nan")

    @property
    def class_accuracy(self) -> dict[int, float] | None:
        """Per-class hits / (hits + misses) over valid images, or None without classes."""
        if self.classes is None:
            return None
        out: dict[int, float] = {}
        for c in torch.unique(self.classes[self.valid]).tolist():
            sel = self.valid & (self.classes == c)
            out[int(c)] = float(self.hits[sel].double().mean())
        return out

    @property
    def mean_class_accuracy(self) -> float | None:
        """Mean over classes of the per-class accuracy (Zhang et al.'s summary), or None without classes."""
        acc = self.class_accuracy
        if acc is None:
            return None
        return sum(acc.values()) / len(acc) if acc else float("nan")

    @classmethod
    def merge(cls, results: Sequence["PointingGameResult"]) -> "PointingGameResult":
        """Concatenate batches of the same game."""
        if not results:
            raise ValueError("results: expected at least one PointingGameResult, got an empty sequence")
        with_classes = [r.classes is not None for r in results]
        if any(with_classes) and not all(with_classes):
            raise ValueError("results: expected classes on all results or on none, got a mix")
        return cls(
            hits=torch.cat([r.hits for r in results]),
            valid=torch.cat([r.valid for r in results]),
            points=torch.cat([r.points for r in results]),
            classes=torch.cat([r.classes for r in results]) if all(with_classes) else None,
            settings=dict(results[0].settings),
        )


def pointing_game(
    saliency: Float[Tensor, "batch map_h map_w"],
    masks: Shaped[Tensor, "_batch height width"],
    *,
    tolerance: int | float = 15,
    tie: str = "first",
    upsample: str = DEFAULT_UPSAMPLE,
    classes: Int[Tensor, "_batch"] | None = None,
) -> PointingGameResult:
    """Pointing game (Zhang et al., ECCV 2016) with a pixel tolerance.

    The map is brought to the mask resolution (:func:`upsample_map`, ``upsample``); the mask is dilated by a disk of
    radius ``tolerance`` (:func:`dilate_mask`; 15 px is the standard variant, 0 is TIS / Quantus); a hit is an
    arg-max inside the dilated mask. Ties among maximal pixels: ``"first"`` (default) uses the first maximal pixel
    in raster order (``torch.argmax``); ``"any"`` is a hit if any maximal pixel is inside (Quantus); ``"all"`` needs
    every maximal pixel inside. So a constant map hits under ``"first"`` iff pixel (0, 0) is in the dilated mask,
    under ``"any"`` iff the mask is non-empty. For patch maps, bilinear upsampling gives a smooth peak inside the
    best patch; with ``upsample="nearest"`` the whole best patch ties and the tie rule decides.

    Args:
        saliency: maps at patch or pixel resolution.
        masks: ground-truth masks at input resolution (non-zero = object).
        tolerance: dilation radius in pixels, >= 0.
        tie: ``"first"``, ``"any"`` or ``"all"``.
        upsample: ``"bilinear"`` or ``"nearest"``.
        classes: optional class per image for the per-class mean accuracy.

    Returns:
        A :class:`PointingGameResult`.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 16, 16); masks[0, 4:8, 4:8] = 1
        >>> sal = torch.zeros(1, 16, 16); sal[0, 5, 5] = 1
        >>> pointing_game(sal, masks, tolerance=0).hits
        tensor([True])
    """
    check_choice(tie, ("first", "any", "all"), "tie")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance: expected a non-negative number of pixels, got {tolerance!r}")
    maps, gt = _maps_at_mask_size(saliency, masks, upsample)
    batch, h, w = maps.shape
    if classes is not None:
        check_targets(classes, batch, "classes")
    valid = gt.reshape(batch, -1).any(dim=1)
    if not valid.all():
        logger.warning("pointing_game: %d image(s) with an empty mask are excluded", int((~valid).sum()))
    region = dilate_mask(gt, tolerance)
    flat = maps.reshape(batch, -1)
    first = flat.argmax(dim=1)
    is_max = flat == flat.max(dim=1, keepdim=True).values
    inside = region.reshape(batch, -1)
    if tie == "first":
        hits = inside.gather(1, first[:, None])[:, 0]
    elif tie == "any":
        hits = (is_max & inside).any(dim=1)
    else:
        hits = (~is_max | inside).all(dim=1)
    hits = hits & valid
    points = torch.stack([first // w, first % w], dim=1)
    return PointingGameResult(
        hits=hits.cpu(),
        valid=valid.cpu(),
        points=points.cpu(),
        classes=None if classes is None else classes.cpu(),
        settings={"tolerance": tolerance, "tie": tie, "upsample": upsample},
    )


def energy_pointing_game(
    saliency: Float[Tensor, "batch map_h map_w"],
    masks: Shaped[Tensor, "_batch height width"],
    *,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Float[Tensor, "batch"]:
    """Energy-based pointing game (Score-CAM): share of the min-max rescaled map's mass inside the mask.

    ``L = minmax(map)`` at mask resolution, ``E = sum(L * mask) / sum(L)``. A constant map spreads its energy
    uniformly, so ``E = |mask| / (H * W)``; an empty mask gives NaN. Average with ``nanmean`` over a set.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 8, 8); masks[0, :4] = 1
        >>> sal = torch.zeros(1, 8, 8); sal[0, :2] = 1.0
        >>> energy_pointing_game(sal, masks)
        tensor([1.])
    """
    maps, gt = _maps_at_mask_size(saliency, masks, upsample)
    batch = maps.shape[0]
    flat = minmax_normalize(maps).reshape(batch, -1)
    constant = flat.sum(dim=1) == 0
    flat = torch.where(constant[:, None], torch.ones_like(flat), flat)
    inside = gt.reshape(batch, -1)
    energy = (flat * inside).sum(dim=1) / flat.sum(dim=1)
    return torch.where(inside.any(dim=1), energy, torch.full_like(energy, float("nan")))


# --------------------------------------------------------------------------------------------- IoU and AP
def mask_iou(
    saliency: Float[Tensor, "batch map_h map_w"],
    masks: Shaped[Tensor, "_batch height width"],
    *,
    threshold: Threshold = "mean",
    top_fraction: int | float | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
) -> Float[Tensor, "batch"]:
    """Per-image foreground IoU between the binarised map (:func:`binarize_map`) and the mask.

    NaN when both the prediction and the mask are empty.

    Example:
        >>> import torch
        >>> masks = torch.zeros(1, 8, 8); masks[0, 2:5, 2:5] = 1
        >>> mask_iou(masks.clone(), masks)
        tensor([1.])
    """
    maps, gt = _maps_at_mask_size(saliency, masks, upsample)
    pred = binarize_map(maps, threshold=threshold, top_fraction=top_fraction)
    inter = (pred & gt).sum(dim=(1, 2)).to(maps.dtype)
    union = (pred | gt).sum(dim=(1, 2)).to(maps.dtype)
    return inter / union


def average_precision(
    scores: Float[Tensor, "batch *item"],
    labels: Shaped[Tensor, "..."],
) -> Float[Tensor, "batch"]:
    """Average precision per row, with scikit-learn's definition (no interpolation, ties grouped).

    ``AP = sum_t (R_t - R_{t-1}) P_t`` over the distinct score thresholds ``t`` in decreasing order, where ``P_t`` and
    ``R_t`` are the precision and recall of ``score >= t``. All trailing axes are flattened. A row without positives
    gives NaN.

    Example:
        >>> import torch
        >>> average_precision(torch.tensor([[0.1, 0.4, 0.35, 0.8]]), torch.tensor([[0, 0, 1, 1]]))
        tensor([0.8333])
    """
    batch = scores.shape[0]
    s = scores.reshape(batch, -1)
    if labels.shape[0] != batch or labels[0].numel() != s.shape[1]:
        raise ValueError(
            f"labels: expected shape {tuple(scores.shape)} (one label per score), got {tuple(labels.shape)}"
        )
    y = (labels.reshape(batch, -1) != 0)
    out = torch.empty(batch, dtype=s.dtype, device=s.device)
    for b in range(batch):
        order = stable_order(s[b : b + 1], descending=True)[0]
        ss, yy = s[b][order], y[b][order].to(torch.float64)
        n_pos = yy.sum()
        if n_pos == 0:
            out[b] = float("nan")
            continue
        # last index of every run of equal scores = one threshold
        ends = torch.nonzero(torch.cat([ss[1:] != ss[:-1], ss.new_ones(1, dtype=torch.bool)])).flatten()
        tp = yy.cumsum(0)[ends]
        precision = tp / (ends + 1).to(torch.float64)
        recall = tp / n_pos
        prev = torch.cat([recall.new_zeros(1), recall[:-1]])
        out[b] = ((recall - prev) * precision).sum().to(s.dtype)
    return out


# ------------------------------------------------------------------------------------------ segmentation test
@dataclass
class SegmentationResult:
    """Chefer et al.'s segmentation test (ImageNet-Segmentation protocol) on one batch or a merged set.

    The set-level numbers are micro-accumulated (pixel accuracy, IoU per class), or means of per-image values
    (AP, F1), as in the reference code. Use :meth:`merge` to pool batches.

    Attributes:
        correct: correctly labelled pixels, summed over images.
        labelled: labelled pixels, summed over images (all pixels).
        intersection: ``[background, foreground]`` intersections, summed over images.
        union: ``[background, foreground]`` unions, summed over images.
        ap: per-image 2-class micro AP: one-hot GT ``[~mask, mask]`` vs scores ``[1 - Res, Res]``, flattened.
        f1: per-image F1 of the foreground prediction (0 when undefined).
        iou: per-image foreground IoU (NaN when prediction and mask are both empty).
        settings: threshold rule and upsampling.
    """

    correct: int
    labelled: int
    intersection: Float[Tensor, "2"]
    union: Float[Tensor, "2"]
    ap: Float[Tensor, "batch"]
    f1: Float[Tensor, "batch"]
    iou: Float[Tensor, "batch"]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def pixel_accuracy(self) -> float:
        """Sum of correct pixels / sum of labelled pixels."""
        return self.correct / self.labelled

    @property
    def iou_per_class(self) -> Float[Tensor, "2"]:
        """Dataset-accumulated ``[IoU_background, IoU_foreground]``."""
        return self.intersection / self.union

    @property
    def miou(self) -> float:
        """Mean of the two dataset-accumulated class IoUs."""
        return float(self.iou_per_class.mean())

    @property
    def mean_ap(self) -> float:
        """Mean over images of the 2-class AP."""
        return float(self.ap.mean())

    @property
    def mean_f1(self) -> float:
        """Mean over images of the foreground F1."""
        return float(self.f1.mean())

    @classmethod
    def merge(cls, results: Sequence["SegmentationResult"]) -> "SegmentationResult":
        """Pool batches: sums for the accumulated counts, concatenation for per-image values."""
        if not results:
            raise ValueError("results: expected at least one SegmentationResult, got an empty sequence")
        return cls(
            correct=sum(r.correct for r in results),
            labelled=sum(r.labelled for r in results),
            intersection=torch.stack([r.intersection for r in results]).sum(dim=0),
            union=torch.stack([r.union for r in results]).sum(dim=0),
            ap=torch.cat([r.ap for r in results]),
            f1=torch.cat([r.f1 for r in results]),
            iou=torch.cat([r.iou for r in results]),
            settings=dict(results[0].settings),
        )


def segmentation_metrics(
    saliency: Float[Tensor, "batch map_h map_w"],
    masks: Shaped[Tensor, "_batch height width"],
    *,
    threshold: Threshold = "mean",
    top_fraction: int | float | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
) -> SegmentationResult:
    """Segmentation test (Chefer et al., 2021): pixel accuracy, mIoU, mAP and mF1 of maps against masks.

    ``Res`` = min-max(map upsampled to the mask size); foreground = ``Res > mean(Res)`` per image (or the given
    ``threshold`` / ``top_fraction``, see :func:`binarize_map`). A perfect map (1 on the mask, 0 elsewhere) scores 1
    everywhere; a constant map predicts all background (IoU_FG = 0, F1 = 0, pixel accuracy = background share).

    Example:
        >>> import torch
        >>> masks = torch.zeros(2, 8, 8); masks[:, 2:6, 2:6] = 1
        >>> res = segmentation_metrics(masks.clone(), masks)
        >>> res.pixel_accuracy, res.miou, res.mean_ap, res.mean_f1
        (1.0, 1.0, 1.0, 1.0)
    """
    maps, gt = _maps_at_mask_size(saliency, masks, upsample)
    batch = maps.shape[0]
    res = minmax_normalize(maps)
    pred = binarize_map(res, threshold=threshold, top_fraction=top_fraction)
    correct = int((pred == gt).sum())
    inter = torch.stack([(~pred & ~gt).sum(), (pred & gt).sum()]).to(torch.float64)
    union = torch.stack([(~pred | ~gt).sum(), (pred | gt).sum()]).to(torch.float64)
    scores = torch.stack([1 - res, res], dim=1)
    onehot = torch.stack([~gt, gt], dim=1)
    ap = average_precision(scores, onehot)
    tp = (pred & gt).sum(dim=(1, 2)).to(torch.float64)
    fp = (pred & ~gt).sum(dim=(1, 2)).to(torch.float64)
    fn = (~pred & gt).sum(dim=(1, 2)).to(torch.float64)
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    img_union = (pred | gt).sum(dim=(1, 2)).to(torch.float64)
    iou = tp / img_union
    return SegmentationResult(
        correct=correct,
        labelled=int(gt.numel()),
        intersection=inter.cpu(),
        union=union.cpu(),
        ap=ap.to(torch.float64).cpu(),
        f1=f1.cpu(),
        iou=iou.cpu(),
        settings={"threshold": threshold, "top_fraction": top_fraction, "upsample": upsample},
    )

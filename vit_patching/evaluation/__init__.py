"""Faithfulness and localisation metrics for saliency maps, model-agnostic.

Any callable ``images [batch, channel, height, width] -> logits [batch, n_classes]`` can be evaluated (a timm
model, a HookedViT, a lambda). Maps may be at patch resolution ``[batch, grid_h, grid_w]`` or pixel resolution
``[batch, height, width]``; :func:`upsample_map` is the one resize rule used everywhere.

Faithfulness: :func:`insertion_deletion` (:func:`insertion_auc`, :func:`deletion_auc`; RISE) and
:func:`perturbation_test` (Chefer's positive / negative perturbation). Localisation: :func:`pointing_game`,
:func:`energy_pointing_game`, :func:`mask_iou`, :func:`average_precision`, :func:`segmentation_metrics`.

Example:
    >>> import torch
    >>> from vit_patching.evaluation import deletion_auc
    >>> model = lambda x: x.mean((2, 3))
    >>> deletion_auc(model, torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2), unit="patch").curves.shape
    torch.Size([1, 5])
"""
from vit_patching.evaluation.faithfulness import (
    DEFAULT_FRACTIONS,
    PerturbationCurve,
    PerturbationTestResult,
    deletion_auc,
    insertion_auc,
    insertion_deletion,
    perturbation_test,
)
from vit_patching.evaluation.localization import (
    PointingGameResult,
    SegmentationResult,
    average_precision,
    binarize_map,
    dilate_mask,
    energy_pointing_game,
    mask_iou,
    pointing_game,
    segmentation_metrics,
)
from vit_patching.evaluation.perturbation import (
    black_substrate,
    gaussian_blur,
    make_substrate,
    minmax_normalize,
    perturbation_ranks,
    stable_order,
    trapezoid_auc,
    upsample_map,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "PerturbationCurve",
    "PerturbationTestResult",
    "PointingGameResult",
    "SegmentationResult",
    "average_precision",
    "binarize_map",
    "black_substrate",
    "deletion_auc",
    "dilate_mask",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion_auc",
    "insertion_deletion",
    "make_substrate",
    "mask_iou",
    "minmax_normalize",
    "perturbation_ranks",
    "perturbation_test",
    "pointing_game",
    "segmentation_metrics",
    "stable_order",
    "trapezoid_auc",
    "upsample_map",
]

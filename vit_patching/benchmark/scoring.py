"""Per-image metric values and curves of one batch of attribution maps (the benchmark's columns).

Metrics (per image; the table shows the mean over images):

* ``insertion`` / ``deletion``: RISE games (:func:`~vit_patching.evaluation.insertion_auc` /
  :func:`~vit_patching.evaluation.deletion_auc`), by default with RISE's substrates (blur, k=11 sigma=5 /
  ``"zeros"`` = the dataset-mean colour); where the blurred image keeps the class, as on the toy models,
  insertion from blur saturates at 1 and ``"zeros"`` is the informative choice (the benchmark's
  ``insertion_substrate="auto"`` picks the substrate per model: :mod:`vit_patching.benchmark.substrate`).
  Softmax probability of the explained class, one patch per step (``unit="patch"``) or one image row of pixels.
* ``ins_minus_del``: insertion minus deletion.
* ``pos_perturbation`` / ``neg_perturbation``: Chefer et al.'s perturbation test
  (:func:`~vit_patching.evaluation.perturbation_test`, fractions 0.1..0.9, black substrate); per image the
  trapezoid of its 0/1 correctness curve x 100, whose mean is the set-level AUC.
* with masks: ``pointing_game`` (15 px tolerance scaled by ``H / 224``), ``energy_pg``, ``mask_iou`` (mean
  threshold) and ``mask_ap`` (foreground average precision), on the pixel maps.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_patching import evaluation as ev
from vit_patching.attribution import AttributionMaps
from vit_patching.benchmark.config import RISE_BLUR, check_substrate
from vit_patching.checks import check_batch_size, check_choice
from vit_patching.images import baseline_images, normalization, upsample_map

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["evaluate_maps", "substrate_images"]


def substrate_images(
    images: Float[Tensor, "batch channel height width"], substrate: str, data_config: dict[str, Any] | None
) -> Float[Tensor, "_ channel height width"]:
    """The substrate of the faithfulness games as images (a name of :data:`~vit_patching.images.BASELINES`).

    ``"blur"`` is RISE's (kernel 11, sigma 5) at every image size.

    Example:
        >>> substrate_images(torch.ones(2, 3, 4, 4), "zeros", None).shape
        torch.Size([1, 3, 4, 4])
    """
    kernel, sigma = RISE_BLUR
    side = min(images.shape[-2:])
    kernel = min(kernel, side if side % 2 else side - 1)  # a kernel never wider than the image
    base, _ = baseline_images(images, substrate, data_config=data_config, blur_sigma=sigma, blur_kernel=kernel,
                              name="substrate")
    return base


def evaluate_maps(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    maps: AttributionMaps,
    labels: Int[Tensor, "batch"] | None = None,
    masks: Bool[Tensor, "batch height width"] | None = None,
    *,
    unit: str = "patch",
    batch_size: int = 64,
    pg_tolerance: int | float = 15.0,
    insertion_substrate: str = "blur",
    deletion_substrate: str = "zeros",
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """Per-image metric values and curves for one batch of maps (see the module docstring for the metrics).

    Args:
        model: the HookedViT the maps explain.
        images: the images (on the model's device).
        maps: the method's maps for ``images`` (``maps.target`` is the class scored by the RISE games).
        labels: ground truth for the perturbation test (``None``: the clean prediction).
        masks: evidence masks for the localisation metrics (``None``: skipped).
        unit: ``"patch"`` or ``"pixel"`` for the faithfulness games.
        batch_size: perturbed images per forward pass.
        pg_tolerance: pointing-game tolerance in pixels.
        insertion_substrate: insertion start image (``"blur"``, ``"zeros"``, ``"black"``, ``"image_mean"``).
        deletion_substrate: deletion replacement (same names).

    Returns:
        ``(metrics, curves)``: ``metrics[name]`` is one float per image (NaN where undefined, e.g. an empty mask),
        ``curves[name]`` one list per image.

    Example:
        >>> from vit_patching.attribution import get_method
        >>> from vit_patching.zoo import load_dataset, load_model
        >>> model, x = load_model("toy-shapes"), load_dataset("shapes", n=1).images
        >>> metrics, curves = evaluate_maps(model, x, get_method("random", model).attribute(x))
        >>> sorted(metrics)[:2], len(curves["insertion"][0])
        (['deletion', 'ins_minus_del'], 65)
    """
    check_choice(unit, ("patch", "pixel"), "unit")
    check_batch_size(batch_size)
    insertion_substrate = check_substrate(insertion_substrate, "insertion_substrate")
    deletion_substrate = check_substrate(deletion_substrate, "deletion_substrate")
    dev = images.device
    dc = model.cfg.data_config
    fmap = (maps.patch_map if unit == "patch" else maps.pixel_map).to(dev)
    target = maps.target.to(dev)
    ins_sub = substrate_images(images, insertion_substrate, dc)
    del_sub = substrate_images(images, deletion_substrate, dc)
    ins = ev.insertion_auc(model, images, fmap, target, unit=unit, substrate=ins_sub, batch_size=batch_size)
    dele = ev.deletion_auc(model, images, fmap, target, unit=unit, substrate=del_sub, batch_size=batch_size)
    # Chefer et al.: black pixels; without a data config (no mean/std) black is unknown, so the mean colour.
    black = substrate_images(images, "black" if normalization(dc) is not None else "zeros", dc)
    lab = None if labels is None else labels.to(dev)
    pos = ev.perturbation_test(model, images, fmap, lab, order="positive", unit=unit, substrate=black, batch_size=batch_size)
    neg = ev.perturbation_test(model, images, fmap, lab, order="negative", unit=unit, substrate=black, batch_size=batch_size)
    metrics: dict[str, Tensor] = {
        "insertion": ins.auc,
        "deletion": dele.auc,
        "ins_minus_del": ins.auc - dele.auc,
        "pos_perturbation": ev.trapezoid_auc(pos.correct.double()) * 100,
        "neg_perturbation": ev.trapezoid_auc(neg.correct.double()) * 100,
    }
    curves = {
        "insertion": ins.curves, "deletion": dele.curves,
        "pos_perturbation": pos.correct.double(), "neg_perturbation": neg.correct.double(),
    }
    if masks is not None:
        pix, m = maps.pixel_map, masks.cpu()
        pg = ev.pointing_game(pix, m, tolerance=pg_tolerance)
        nan = torch.full_like(pg.hits, float("nan"), dtype=torch.float64)
        metrics["pointing_game"] = torch.where(pg.valid, pg.hits.double(), nan)
        metrics["energy_pg"] = ev.energy_pointing_game(pix, m)
        metrics["mask_iou"] = ev.mask_iou(pix, m)
        metrics["mask_ap"] = ev.average_precision(upsample_map(pix, tuple(m.shape[-2:])), m)
    return (
        {k: [float(x) for x in v.detach().cpu().double()] for k, v in metrics.items()},
        {k: v.detach().cpu().double().tolist() for k, v in curves.items()},
    )

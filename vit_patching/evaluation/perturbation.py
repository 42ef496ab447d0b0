"""Shared machinery of the perturbation metrics: substrates, orderings and the batched runner.

Conventions (used by every metric in :mod:`vit_patching.evaluation`):

* **Maps** come at patch resolution ``[batch, grid_h, grid_w]`` or at pixel resolution ``[batch, height, width]``.
  :func:`upsample_map` (:func:`vit_patching.images.upsample_map`, default
  :data:`vit_patching.images.DEFAULT_UPSAMPLE` = bilinear) is the one place where they change resolution.
* **Orderings** are stable sorts: among equal scores, units (pixels or patches) are taken in raster order
  (row-major, first index first), in both the most-relevant-first and the least-relevant-first direction.
* **Substrates** live in the model's input (normalised) space, like the images, and are named with the one
  baseline vocabulary of :mod:`vit_patching.images` (``"zeros"``, ``"black"``, ``"image_mean"``, ``"blur"``).
  The metrics' ``"blur"`` is the same image family as everywhere else with the metric's own kernel: RISE's
  insertion substrate, kernel 11 and sigma 5 px (:data:`SUBSTRATE_BLUR_KERNEL`, :data:`SUBSTRATE_BLUR_SIGMA`),
  not the ``side / 16`` sigma of CAAP's neutral.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, Shaped
from torch import Tensor, nn
from tqdm.auto import tqdm

from vit_patching import checks
from vit_patching.images import (
    DEFAULT_UPSAMPLE,
    UPSAMPLE_MODES,
    baseline_images,
    check_baseline,
    describe_baseline,
    gaussian_blur,
    upsample_map,
)
from vit_patching.images import black_image as black_substrate

logger = logging.getLogger(__name__)

__all__ = [
    "SUBSTRATE_BLUR_KERNEL", "SUBSTRATE_BLUR_SIGMA", "Substrate", "black_substrate", "describe_substrate",
    "gaussian_blur", "make_substrate", "minmax_normalize", "perturbation_ranks", "stable_order", "trapezoid_auc",
    "upsample_map",
]

# A substrate name from vit_patching.images.BASELINES or a tensor. Choice arguments are typed ``str`` (not Literal)
# so that a bad value always meets our ValueError, with or without a runtime type checker.
Substrate = Union[str, Tensor]
Model = Callable[[Tensor], Tensor]

#: RISE's insertion blur (Petsiuk et al., 2018): kernel 11, sigma 5 px, whatever the image size.
SUBSTRATE_BLUR_KERNEL = 11
SUBSTRATE_BLUR_SIGMA = 5.0


# --------------------------------------------------------------------------------------------------- validation
def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Deprecated: use :func:`vit_patching.checks.check_choice` ``(value, choices, name)``.

    Kept, with its old argument order, for modules that still import it from here.
    """
    checks.check_choice(value, choices, name)


def check_model(model: Model) -> None:
    """Refuse a module in training mode (dropout, batch-norm updates would make scores random or stateful)."""
    if not callable(model):
        raise TypeError(f"model: expected a callable images -> logits, got {type(model).__name__}")
    if isinstance(model, nn.Module) and model.training:
        raise ValueError("model: expected an nn.Module in eval mode (call model.eval() first), got training=True")


def check_images(images: Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images: expected shape [batch, channel, height, width], got {_shape(images)}")
    if images.shape[0] == 0:
        raise ValueError(f"images: expected at least one image, got shape {_shape(images)}")


def check_map_batch(saliency: Tensor, batch: int, name: str = "saliency") -> None:
    if saliency.ndim != 3:
        raise ValueError(
            f"{name}: expected shape [batch, grid_h, grid_w] or [batch, height, width], got {_shape(saliency)}"
        )
    if saliency.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size {batch} (one map per image), got shape {_shape(saliency)}")
    if not torch.isfinite(saliency).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_targets(targets: Tensor, batch: int, name: str = "targets") -> None:
    if targets.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},) (one class per image), got {_shape(targets)}")


def model_data_config(model: Model) -> Mapping[str, Any] | None:
    """The data config (mean/std) of a HookedViT-like model (``model.cfg.data_config``), else None."""
    return getattr(getattr(model, "cfg", None), "data_config", None)


def minmax_normalize(saliency: Float[Tensor, "batch *spatial"]) -> Float[Tensor, "batch *spatial"]:
    """Rescale each map to [0, 1] by its own min and max; a constant map becomes all zeros (not NaN).

    Example:
        >>> import torch
        >>> minmax_normalize(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
        tensor([[0., 1.],
                [0., 0.]])
    """
    flat = saliency.reshape(saliency.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe, torch.zeros_like(flat))
    return out.reshape(saliency.shape)


# ------------------------------------------------------------------------------------------------ substrates
def make_substrate(
    images: Float[Tensor, "batch channel height width"],
    substrate: Substrate,
    *,
    data_config: Mapping[str, Any] | None = None,
) -> Float[Tensor, "batch channel height width"]:
    """Build the image that perturbed pixels are taken from.

    Args:
        images: normalised image batch.
        substrate: a name from :data:`vit_patching.images.BASELINES`: ``"zeros"`` (0 in normalised space = the
            dataset-mean colour), ``"black"`` (needs ``data_config``), ``"image_mean"`` (each image's own
            per-channel mean colour), ``"blur"`` (RISE's: :func:`gaussian_blur` with kernel 11 and sigma 5); or a
            tensor broadcastable to ``images`` (e.g. ``[C, 1, 1]`` from :func:`black_substrate`, ``[C, H, W]`` or
            ``[B, C, H, W]``). The former names ``"zero"`` and ``"mean"`` still work, with a DeprecationWarning.
        data_config: the model's timm data config (mean/std), for ``"black"``.

    Returns:
        A tensor of the same shape, dtype and device as ``images``.

    Example:
        >>> import torch
        >>> make_substrate(torch.ones(2, 3, 4, 4), "zeros").abs().sum()
        tensor(0.)
        >>> make_substrate(torch.ones(1, 3, 2, 2), "black", data_config={"mean": [0.5] * 3, "std": [0.5] * 3}).unique()
        tensor([-1.])
    """
    if isinstance(substrate, Tensor):
        if not substrate.is_floating_point():
            raise TypeError(f"substrate: expected a floating-point (normalised) image tensor, got dtype {substrate.dtype}")
        try:
            out = torch.broadcast_to(substrate.to(device=images.device, dtype=images.dtype), images.shape)
        except RuntimeError:
            raise ValueError(
                f"substrate: expected a tensor broadcastable to images {_shape(images)} "
                f"(e.g. [C, 1, 1], [C, H, W] or [B, C, H, W]), got shape {_shape(substrate)}"
            ) from None
        return out.clone()
    name = check_baseline(substrate, "substrate")
    base, _ = baseline_images(
        images, name, data_config=data_config, blur_sigma=SUBSTRATE_BLUR_SIGMA, blur_kernel=SUBSTRATE_BLUR_KERNEL,
        name="substrate",
    )
    return base.expand_as(images).clone()


def describe_substrate(substrate: Substrate) -> str:
    """A short record of the substrate for the settings of a result (deprecated names recorded as the new ones)."""
    if isinstance(substrate, str) and substrate in ("zero", "mean"):
        return {"zero": "zeros", "mean": "image_mean"}[substrate]
    return describe_baseline(substrate)


# ------------------------------------------------------------------------------------------------- orderings
def stable_order(scores: Float[Tensor, "batch n"], descending: bool = True) -> Int[Tensor, "batch n"]:
    """Indices that sort each row by score; ties keep raster (index) order in both directions.

    Example:
        >>> import torch
        >>> stable_order(torch.tensor([[1.0, 3.0, 3.0, 0.0]]))
        tensor([[1, 2, 0, 3]])
    """
    return torch.sort(scores, dim=1, descending=descending, stable=True).indices


def order_to_rank(order: Int[Tensor, "batch n"]) -> Int[Tensor, "batch n"]:
    """Invert a permutation per row: ``rank[b, order[b, i]] = i``."""
    rank = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank.scatter_(1, order, positions)
    return rank


def infer_patch_size(map_hw: tuple[int, int], image_hw: tuple[int, int], patch_size: int | None) -> int:
    """Patch side for patch steps: given, or read off a patch-resolution map (``image = grid * p`` on both axes)."""
    h, w = image_hw
    if patch_size is not None:
        checks.check_positive_int(patch_size, "patch_size")
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"patch_size: expected a divisor of the image size {(h, w)}, got {patch_size}"
            )
        return patch_size
    gh, gw = map_hw
    if (gh, gw) != (h, w) and h % gh == 0 and w % gw == 0 and h // gh == w // gw:
        return h // gh
    raise ValueError(
        "patch_size: expected an int, or a patch-resolution saliency map [batch, grid_h, grid_w] with "
        f"grid * p = image size; got patch_size=None with map {(gh, gw)} and image {(h, w)}"
    )


def perturbation_ranks(
    saliency: Float[Tensor, "batch map_h map_w"],
    image_size: tuple[int, int],
    *,
    unit: str = "pixel",
    patch_size: int | None = None,
    descending: bool = True,
    upsample: str = DEFAULT_UPSAMPLE,
) -> tuple[Int[Tensor, "batch height width"], int, int | None]:
    """For every pixel, the position of its unit (pixel or patch) in the perturbation order.

    Pixel unit: the map is brought to ``image_size`` with :func:`upsample_map` and pixels are ordered by score.
    Patch unit: the map must be at patch resolution (``grid * patch_size = image``) or at pixel resolution, in which
    case it is average-pooled over each ``p x p`` patch; patches are ordered by score and every pixel gets its patch's
    rank. Ties keep raster order (see :func:`stable_order`).

    Returns:
        ``(ranks, n_units, patch_size)``: perturbing ``k`` units means changing the pixels with ``ranks < k``.

    Example:
        >>> import torch
        >>> ranks, n, p = perturbation_ranks(torch.tensor([[[0.0, 1.0]]]), (2, 4), unit="patch")
        >>> ranks[0], n, p
        (tensor([[1, 1, 0, 0],
                [1, 1, 0, 0]]), 2, 2)
    """
    checks.check_choice(unit, ("pixel", "patch"), "unit")
    checks.check_choice(upsample, UPSAMPLE_MODES, "upsample")
    h, w = image_size
    batch = saliency.shape[0]
    sal = saliency if saliency.is_floating_point() else saliency.float()
    if unit == "pixel":
        full = upsample_map(sal, (h, w), mode=upsample)
        rank = order_to_rank(stable_order(full.reshape(batch, -1), descending=descending))
        return rank.reshape(batch, h, w), h * w, None
    p = infer_patch_size(tuple(sal.shape[-2:]), (h, w), patch_size)
    gh, gw = h // p, w // p
    if tuple(sal.shape[-2:]) == (h, w) and (gh, gw) != (h, w):
        sal = F.avg_pool2d(sal[:, None], kernel_size=p)[:, 0]
    elif tuple(sal.shape[-2:]) != (gh, gw):
        raise ValueError(
            f"saliency: expected a map at patch resolution {(gh, gw)} or pixel resolution {(h, w)} for patch "
            f"steps with patch_size={p}, got {tuple(sal.shape[-2:])}"
        )
    prank = order_to_rank(stable_order(sal.reshape(batch, -1), descending=descending)).reshape(batch, gh, gw)
    rank = prank.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)
    return rank, gh * gw, p


# ------------------------------------------------------------------------------------------------ the runner
def forward_logits(model: Model, images: Tensor, batch_size: int) -> Tensor:
    """Logits of ``images`` in chunks of ``batch_size`` (no grad), checked to be ``[batch, n_classes]``."""
    outs = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        out = model(chunk)
        check_logits(out, chunk.shape[0])
        outs.append(out)
    return torch.cat(outs)


def check_logits(out: object, n: int) -> None:
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != n:
        got = _shape(out) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model: expected logits of shape [{n}, n_classes] for {n} images, got {got}")


def run_perturbations(
    model: Model,
    images: Tensor,
    substrate: Tensor,
    ranks: Tensor,
    counts: Tensor,
    targets: Tensor,
    *,
    insert: bool,
    batch_size: int,
    progress: bool = False,
    desc: str = "perturbation",
) -> tuple[Tensor, Tensor, Tensor]:
    """Score every (image, count) pair: ``[batch, n_points]`` target logits, target probabilities and predictions.

    Deletion (``insert=False``): pixels with ``ranks < count`` take the substrate, the rest keep the image.
    Insertion (``insert=True``): pixels with ``ranks < count`` take the image, the rest the substrate.
    Pairs are flattened and evaluated ``batch_size`` at a time, so many perturbed images share one forward.
    """
    batch, n_points = images.shape[0], counts.shape[0]
    total = batch * n_points
    first, second = (images, substrate) if insert else (substrate, images)
    logits_t, probs_t, preds = [], [], []
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(start + batch_size, total), device=images.device)
            img, k = idx // n_points, idx % n_points
            mask = ranks[img] < counts[k][:, None, None]
            x = torch.where(mask[:, None], first[img], second[img])
            out = model(x)
            check_logits(out, x.shape[0])
            out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
            tgt = targets[img].to(out.device)[:, None]
            logits_t.append(out.gather(1, tgt)[:, 0])
            probs_t.append(out.softmax(dim=1).gather(1, tgt)[:, 0])
            preds.append(out.argmax(dim=1))
            bar.update(x.shape[0])
    shape = (batch, n_points)
    return (
        torch.cat(logits_t).reshape(shape).cpu(),
        torch.cat(probs_t).reshape(shape).cpu(),
        torch.cat(preds).reshape(shape).cpu(),
    )


def trapezoid_auc(curves: Float[Tensor, "*batch n_points"]) -> Float[Tensor, "*batch"]:
    """Trapezoid area under curves sampled at equally spaced x in [0, 1]: ``(sum s_k - (s_0 + s_n)/2) / n``.

    ``n`` is the number of intervals (points - 1). This is RISE's insertion/deletion AUC; Chefer's perturbation AUC is
    the same value times 100.

    Example:
        >>> import torch
        >>> trapezoid_auc(torch.tensor([1.0, 0.5, 0.0]))
        tensor(0.5000)
    """
    n = curves.shape[-1] - 1
    if n < 1:
        raise ValueError(f"curves: expected at least 2 points on the last axis, got shape {_shape(curves)}")
    return (curves.sum(dim=-1) - (curves[..., 0] + curves[..., -1]) / 2) / n


def steps_to_counts(n_units: int, step: int) -> Tensor:
    """Units perturbed after each of the ``ceil(n_units / step)`` steps, starting at 0 and ending at ``n_units``."""
    n_steps = math.ceil(n_units / step)
    return torch.clamp(torch.arange(n_steps + 1) * step, max=n_units)


def as_float_images(images: Shaped[Tensor, "batch channel height width"]) -> Tensor:
    return images if images.is_floating_point() else images.float()

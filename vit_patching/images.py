"""Image-space concepts shared by CAAP, the attribution methods and the metrics: normalisation, pixels, the
one vocabulary of baseline images, blur and map upsampling.

**Baselines.** CAAP's *neutral context*, occlusion's and RISE's fill, Integrated Gradients' *baseline* and the
insertion/deletion *substrate* are the same thing: an image in the model's input (normalised) space that stands
for "no evidence". They are named once, here (:data:`BASELINES`):

================  ==================================================================================
``"zeros"``       0 in normalised space: the data set's mean colour (the default everywhere)
``"black"``       black pixels, ``(0 - mean) / std`` (needs the model's data config)
``"image_mean"``  each image's own per-channel mean colour
``"blur"``        a Gaussian blur of each image (sigma ``side / 16`` px unless a sigma is given)
================  ==================================================================================

or a normalised image tensor. The metrics' former names ``"zero"`` and ``"mean"`` are accepted with a
``DeprecationWarning``.

**Maps.** Patch maps are brought to pixel resolution by :func:`upsample_map`, bilinear
(``align_corners=False``) by default (:data:`DEFAULT_UPSAMPLE`), for every method and metric.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 32, 32)
    >>> base, per_image = baseline_images(x, "zeros")
    >>> tuple(base.shape), per_image
    ((1, 3, 32, 32), False)
    >>> to_pixels(torch.zeros(1, 3, 2, 2), {"mean": (0.5,) * 3, "std": (0.5,) * 3}).unique()
    tensor([0.5000])
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from .checks import check_choice, check_positive_number, is_int

__all__ = [
    "BASELINES", "Baseline", "DEFAULT_BASELINE", "DEFAULT_UPSAMPLE", "UPSAMPLE_MODES",
    "baseline_images", "black_image", "blur_kernel_size", "check_baseline", "describe_baseline",
    "gaussian_blur", "normalization", "to_pixels", "upsample_map",
]

#: The baseline (neutral / substrate) image names, in the order documented above.
BASELINES: tuple[str, ...] = ("zeros", "black", "image_mean", "blur")
DEFAULT_BASELINE = "zeros"
#: A baseline name or a normalised image tensor.
Baseline = Union[str, Tensor]
_DEPRECATED = {"zero": "zeros", "mean": "image_mean"}

UPSAMPLE_MODES: tuple[str, ...] = ("nearest", "bilinear")
#: How every patch map is brought to pixels unless a caller says otherwise.
DEFAULT_UPSAMPLE = "bilinear"


# ------------------------------------------------------------------------------------------- normalisation
def normalization(data_config: Mapping[str, Any] | None) -> tuple[Tensor, Tensor] | None:
    """``(mean, std)`` as ``[1, C, 1, 1]`` float32 tensors from a timm data config, or None without one."""
    dc = data_config or {}
    if "mean" not in dc or "std" not in dc:
        return None
    shape = (1, -1, 1, 1)
    return (torch.tensor(dc["mean"], dtype=torch.float32).view(shape),
            torch.tensor(dc["std"], dtype=torch.float32).view(shape))


def to_pixels(
    images: Float[Tensor, "batch channel height width"], data_config: Mapping[str, Any] | None
) -> Float[Tensor, "batch channel height width"]:
    """Undo the input normalisation of a timm data config to get pixels in [0, 1] (float32, on the CPU).

    Without a data config each image is min-max scaled instead (for display only).

    Example:
        >>> to_pixels(torch.tensor([[[[-1.0]], [[0.0]], [[1.0]]]]), {"mean": (0.5,) * 3, "std": (0.5,) * 3}).flatten()
        tensor([0.0000, 0.5000, 1.0000])
    """
    x = images.detach().float().cpu()
    norm = normalization(data_config)
    if norm is None:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    mean, std = norm
    return (x * std + mean).clamp(0, 1)


def black_image(mean: Sequence[int | float], std: Sequence[int | float]) -> Float[Tensor, "channel 1 1"]:
    """Black (0 in [0, 1] pixels) in normalised space, ``(0 - mean) / std``, shape ``[C, 1, 1]``.

    Example:
        >>> black_image((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).flatten()
        tensor([-1., -1., -1.])
    """
    if len(mean) != len(std) or len(mean) == 0:
        raise ValueError(f"mean, std: expected two equal-length non-empty sequences, got {mean!r} and {std!r}")
    m = torch.tensor([float(v) for v in mean])
    s = torch.tensor([float(v) for v in std])
    if not (s > 0).all():
        raise ValueError(f"std: expected positive values, got {std!r}")
    return (-m / s)[:, None, None]


# ---------------------------------------------------------------------------------------------------- blur
def blur_kernel_size(sigma: float, side: int) -> int:
    """Odd kernel size covering +-3 sigma, at least 3 and at most the image side."""
    k = 2 * int(math.ceil(3 * sigma)) + 1
    return max(3, min(k, side if side % 2 else side - 1))


def gaussian_blur(
    images: Float[Tensor, "batch channel height width"],
    kernel_size: int = 11,
    sigma: int | float = 5.0,
) -> Float[Tensor, "batch channel height width"]:
    """Per-channel Gaussian blur with zero padding (defaults: RISE's insertion substrate, kernel 11, sigma 5).

    The kernel is a sampled, normalised 2-D Gaussian; padding is ``kernel_size // 2`` zeros in the normalised
    input space, so borders are pulled towards 0 = the dataset-mean colour, as in RISE. (RISE builds its kernel
    with scipy's ``gaussian_filter`` on a delta, which reflects the tails back into the window: slightly flatter.)

    Example:
        >>> gaussian_blur(torch.ones(1, 3, 32, 32))[0, :, 16, 16]
        tensor([1.0000, 1.0000, 1.0000])
    """
    if not is_int(kernel_size) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected a positive odd int, got {kernel_size!r}")
    check_positive_number(sigma, "sigma")
    coords = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - kernel_size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel2d = torch.outer(g, g)
    kernel2d = kernel2d / kernel2d.sum()
    channels = images.shape[1]
    weight = kernel2d.expand(channels, 1, kernel_size, kernel_size).contiguous()
    return F.conv2d(images, weight, padding=kernel_size // 2, groups=channels)


# ---------------------------------------------------------------------------------------------- baselines
def check_baseline(baseline: Any, name: str = "neutral", *, per_image_tensor: bool = True) -> Baseline:
    """Validate a baseline: a name from :data:`BASELINES` or a floating-point normalised image tensor.

    Args:
        baseline: The value to check.
        name: The argument's name in error messages (``"neutral"``, ``"baseline"``, ``"substrate"``).
        per_image_tensor: Whether a ``[batch, C, H, W]`` tensor is allowed (else only ``[C, H, W]`` or
            ``[1, C, H, W]``, for callers that chunk images and cannot carry a per-image tensor along).

    Returns:
        The baseline, with a deprecated name replaced by its current one.
    """
    if isinstance(baseline, Tensor):
        if not baseline.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point (normalised) image tensor, got dtype {baseline.dtype}")
        ok = baseline.ndim == 3 or (baseline.ndim == 4 and (per_image_tensor or baseline.shape[0] == 1))
        if not ok:
            shapes = "[C, H, W] or [1 or batch, C, H, W]" if per_image_tensor else "[C, H, W] or [1, C, H, W]"
            raise ValueError(f"{name}: expected an image tensor {shapes}, got shape {tuple(baseline.shape)}")
        return baseline
    if isinstance(baseline, str) and baseline in _DEPRECATED:
        new = _DEPRECATED[baseline]
        warnings.warn(f"{name}: {baseline!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=3)
        return new
    return check_choice(baseline, BASELINES, name)


def describe_baseline(baseline: Baseline) -> str:
    """A short record of a baseline for a result's settings (``"zeros"``, ``"tensor[3, 32, 32]"``)."""
    return f"tensor{list(baseline.shape)}" if isinstance(baseline, Tensor) else baseline


def baseline_images(
    images: Float[Tensor, "batch channel height width"],
    baseline: Baseline = DEFAULT_BASELINE,
    *,
    data_config: Mapping[str, Any] | None = None,
    blur_sigma: float | None = None,
    blur_kernel: int | None = None,
    name: str = "neutral",
) -> tuple[Float[Tensor, "_ channel height width"], bool]:
    """The baseline image(s) for ``images``, and whether they depend on the image.

    Returns a ``[1, C, H, W]`` batch for image-independent baselines (computed once, shared by every image)
    and a ``[batch, C, H, W]`` batch otherwise, in the dtype and device of ``images``.

    Args:
        images: Normalised images.
        baseline: A name from :data:`BASELINES` or a normalised image ``[C, H, W]`` / ``[1 or batch, C, H, W]``.
        data_config: The model's timm data config (mean/std), needed by ``"black"``.
        blur_sigma: Blur sigma in pixels (default ``side / 16``).
        blur_kernel: Blur kernel size (default: +-3 sigma, see :func:`blur_kernel_size`).
        name: The argument's name in error messages.

    Example:
        >>> x = torch.rand(2, 3, 16, 16)
        >>> base, per_image = baseline_images(x, "image_mean")
        >>> tuple(base.shape), per_image, torch.allclose(base[:, :, 0, 0], x.mean((2, 3)))
        ((2, 3, 16, 16), True, True)
    """
    shape = tuple(images.shape[1:])
    baseline = check_baseline(baseline, name)
    if isinstance(baseline, Tensor):
        b = baseline[None] if baseline.ndim == 3 else baseline
        if tuple(b.shape[1:]) != shape or b.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"{name}: expected an image tensor [{', '.join(map(str, shape))}], [1, ...] or "
                f"[{images.shape[0]}, ...] matching images, got shape {tuple(baseline.shape)}"
            )
        return b.to(device=images.device, dtype=images.dtype), b.shape[0] > 1
    if baseline == "zeros":
        return torch.zeros((1, *shape), device=images.device, dtype=images.dtype), False
    if baseline == "black":
        norm = normalization(data_config)
        if norm is None:
            raise ValueError(f"{name}: 'black' needs the model's data config (mean/std); use 'zeros' or an image tensor")
        mean, std = norm
        black = (-mean / std).expand(1, *shape)
        return black.to(device=images.device, dtype=images.dtype), False
    if baseline == "image_mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone(), True
    side = min(shape[1:])
    sigma = side / 16 if blur_sigma is None else check_positive_number(blur_sigma, "blur_sigma")
    kernel = blur_kernel_size(sigma, side) if blur_kernel is None else blur_kernel
    work = torch.promote_types(images.dtype, torch.float32)  # half-precision blur would round the kernel
    return gaussian_blur(images.to(work), kernel, float(sigma)).to(images.dtype), True


# ------------------------------------------------------------------------------------------------------ maps
def upsample_map(
    saliency: Float[Tensor, "batch map_h map_w"],
    size: tuple[int, int],
    mode: str = DEFAULT_UPSAMPLE,
) -> Float[Tensor, "batch height width"]:
    """Resize a batch of saliency maps to ``size`` = (height, width).

    ``"bilinear"`` uses ``align_corners=False`` (as Chefer et al.'s ``interpolate(scale_factor=16, mode='bilinear')``);
    ``"nearest"`` uses pixel-centre nearest neighbours (``nearest-exact``), so an integer scale repeats every
    map cell as a constant block. A map already at ``size`` is returned unchanged (as a new floating tensor).

    Example:
        >>> upsample_map(torch.tensor([[[1.0, 2.0]]]), (2, 4), mode="nearest")
        tensor([[[1., 1., 2., 2.],
                 [1., 1., 2., 2.]]])
    """
    check_choice(mode, UPSAMPLE_MODES, "mode")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(is_int(s) and s > 0 for s in size):
        raise ValueError(f"size: expected (height, width) with two positive ints, got {size!r}")
    if saliency.ndim != 3:
        raise ValueError(f"saliency: expected shape [batch, map_h, map_w], got {tuple(saliency.shape)}")
    out = saliency if saliency.is_floating_point() else saliency.float()
    if tuple(out.shape[-2:]) == tuple(size):
        return out.clone()
    torch_mode = "nearest-exact" if mode == "nearest" else "bilinear"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(out[:, None], size=tuple(size), mode=torch_mode, **kwargs)[:, 0]

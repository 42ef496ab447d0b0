"""The shared interface of every attribution method: :class:`AttributionMethod`, :class:`AttributionMaps` and the
registry (:func:`get_method`, :func:`available_methods`, :func:`register_method`).

A method is built once for a model (``get_method("rollout", model)``) and then explains any number of image
batches with :meth:`AttributionMethod.attribute`. Every method returns maps at both resolutions:

* ``patch_map [batch grid_h grid_w]``: one value per patch token (row-major grid from the model's patch size);
* ``pixel_map [batch height width]``: one value per input pixel.

Each method has a *native* resolution. Patch-native methods (attention, Grad-CAM, occlusion, AtMan, CAAP) are
upsampled to pixels with :func:`vit_patching.images.upsample_map` (``upsample`` option,
:data:`vit_patching.images.DEFAULT_UPSAMPLE` = bilinear by default, the metrics' own rule); pixel-native methods (Integrated Gradients, SmoothGrad, RISE) are summed over each patch.

Example:
    >>> from vit_patching.attribution import get_method
    >>> maps = get_method("rollout", model).attribute(images)
    >>> maps.patch_map.shape, maps.pixel_map.shape
    (torch.Size([2, 4, 4]), torch.Size([2, 32, 32]))
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import time
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_patching.checks import check_batch_size, check_bool, check_choice, check_finite
from vit_patching.images import DEFAULT_UPSAMPLE, UPSAMPLE_MODES, upsample_map
from vit_patching.maps import AttributionMaps  # the result type lives below patching/ and attribution/
from vit_patching.model import HookedViT, check_scores

logger = logging.getLogger(__name__)

__all__ = [
    "AttributionMaps",
    "AttributionMethod",
    "available_methods",
    "get_method",
    "image_seeds",
    "patch_sums",
    "register_method",
]

# Shapes of targets are checked by hand (``[batch]``), so the error names the argument.
Target = int | Tensor | None


# ----------------------------------------------------------------------------------------------------- helpers
def image_seeds(images: Float[Tensor, "batch channel height width"], seed: int) -> list[int]:
    """One 63-bit seed per image from ``seed`` and the image's bytes.

    Random methods (SmoothGrad noise, the random baseline) draw from these, so an image gets the same map
    whatever batch, chunk or process it is explained in.

    Example:
        >>> x = torch.zeros(2, 3, 4, 4); x[1] += 1
        >>> a, b = image_seeds(x, 0); a != b, image_seeds(x[1:], 0) == [b]
        (True, True)
    """
    out = []
    data = images.detach().to(device="cpu", dtype=torch.float32).contiguous()
    for img in data:
        h = hashlib.blake2b(img.numpy().tobytes(), digest_size=8, key=str(int(seed)).encode())
        out.append(int.from_bytes(h.digest(), "little") >> 1)
    return out


def patch_sums(
    pixel_map: Float[Tensor, "batch height width"], patch_size: tuple[int, int]
) -> Float[Tensor, "batch grid_h grid_w"]:
    """Sum a pixel map over each ``patch_h x patch_w`` patch (pixels past the last whole patch are dropped).

    Example:
        >>> patch_sums(torch.ones(1, 4, 6), (2, 3))
        tensor([[[6., 6.],
                 [6., 6.]]])
    """
    ph, pw = patch_size
    b, h, w = pixel_map.shape
    gh, gw = h // ph, w // pw
    cropped = pixel_map[:, : gh * ph, : gw * pw]
    return cropped.reshape(b, gh, ph, gw, pw).sum(dim=(2, 4))


# ------------------------------------------------------------------------------------------------------- base
class AttributionMethod:
    """Base class of all attribution methods (captum-style: build once, call :meth:`attribute` per batch).

    Subclasses set :attr:`name`, :attr:`native` (``"patch"`` or ``"pixel"``) and :attr:`rows_per_image` and
    implement :meth:`_attribute`, which receives a chunk of images with resolved targets and returns maps at the
    native resolution. :meth:`attribute` does the validation, target resolution, chunking, timing and the
    conversion to the other resolution.

    Args:
        model: a :class:`~vit_patching.model.HookedViT` with a classification head, in eval mode.
        upsample: how patch-native maps become ``pixel_map``: ``"bilinear"`` (default,
            :data:`~vit_patching.images.DEFAULT_UPSAMPLE`, the metrics' rule) or ``"nearest"``.

    Example:
        >>> class Ones(AttributionMethod):
        ...     name, native = "ones", "patch"
        ...     def _attribute(self, images, target, batch_size):
        ...         return images.new_ones(images.shape[0], *self.model.grid_size_for(images))
        >>> Ones(model).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name: ClassVar[str] = "base"
    native: ClassVar[str] = "patch"
    #: Forward rows one image costs, used to pick how many images go into one chunk of ``batch_size`` rows.
    rows_per_image: int = 1
    default_batch_size: ClassVar[int] = 64

    def __init__(self, model: HookedViT, *, upsample: str = DEFAULT_UPSAMPLE) -> None:
        self.model = check_scores(model)
        self.upsample = check_choice(upsample, UPSAMPLE_MODES, "upsample")

    # -------------------------------------------------------------------------------------------- public
    @property
    def settings(self) -> dict[str, Any]:
        """The method's options, native resolution and resolution conversion (recorded with every result)."""
        conversion = f"upsample_{self.upsample}" if self.native == "patch" else "sum_per_patch"
        return {"method": self.name, "native": self.native, "conversion": conversion, **self.options()}

    def options(self) -> dict[str, Any]:
        """Method-specific options (override)."""
        return {}

    def attribute(
        self,
        images: Float[Tensor, "batch channel height width"],
        target: Target = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> AttributionMaps:
        """Explain ``target`` for every image.

        Args:
            images: normalised images on the model's device, at the model's input size.
            target: class per image (an int for all, or ``[batch]``); ``None`` = the model's top-1 prediction.
            batch_size: forward-pass rows (images x perturbations / noise samples / suppressed tokens) per pass;
                default :attr:`default_batch_size`.
            progress: show a tqdm bar over the images.

        Returns:
            :class:`AttributionMaps` (maps on the CPU, float32).

        Example:
            >>> maps = get_method("gradcam", model).attribute(images, target=3, batch_size=16)
        """
        model = self.model
        model.check_images(images)
        if images.device != model.device:
            raise ValueError(f"images: expected a tensor on the model's device {model.device}, got {images.device}")
        if model.training:
            raise ValueError("model: expected eval mode (call model.eval() first), got training=True")
        bs = check_batch_size(self.default_batch_size if batch_size is None else batch_size)
        check_bool(progress, "progress")
        self.check_inputs(images)
        images = images.to(model.dtype)
        start = time.perf_counter()
        tgt = self._resolve_target(images, target, bs)
        per_chunk = max(1, bs // max(1, self.rows_per_image_for(images)))
        parts = []
        with tqdm(total=images.shape[0], desc=self.name, unit="img", disable=not progress, leave=False) as bar:
            for s in range(0, images.shape[0], per_chunk):
                chunk = images[s : s + per_chunk]
                parts.append(self._attribute(chunk, tgt[s : s + per_chunk], bs).detach().float().cpu())
                bar.update(chunk.shape[0])
        native = check_finite(torch.cat(parts), f"{self.name} map")  # rows are images: the error names them
        patch, pixel = self._both_resolutions(native, images)
        seconds = time.perf_counter() - start
        logger.debug("%s: %d images in %.3f s", self.name, images.shape[0], seconds)
        return AttributionMaps(patch, pixel, tgt.cpu(), self.name, self.settings, seconds)

    __call__ = attribute

    # ---------------------------------------------------------------------------------------- subclass API
    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        """Native-resolution maps ``[chunk, grid_h, grid_w]`` or ``[chunk, H, W]`` for one chunk of images."""
        raise NotImplementedError

    def check_inputs(self, images: Tensor) -> None:
        """Method-specific checks of the images before any forward pass (override; raise naming the argument)."""

    def rows_per_image_for(self, images: Tensor) -> int:
        """Forward rows per image for this input size (override when it depends on the grid)."""
        return self.rows_per_image

    # -------------------------------------------------------------------------------------------- helpers
    def _block_index(self, layer: int) -> int:
        """Validate a block index (negative counts from the end) and return it in ``[0, n_layers)``."""
        L = self.model.cfg.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not -L <= layer < L:
            raise ValueError(f"layer: expected a block index in [{-L}, {L}), got {layer!r}")
        return layer % L

    def _resolve_target(self, images: Tensor, target: Target, batch_size: int) -> Tensor:
        batch = images.shape[0]
        if target is None:
            with torch.no_grad():
                logits = torch.cat([self.model(images[i : i + batch_size]) for i in range(0, batch, batch_size)])
            # the argmax of NaN logits is an arbitrary class: refuse it rather than explain it
            return check_finite(logits, "logits (of the images, for the target class)").argmax(dim=-1).to(images.device)
        return self.model.check_target(target, batch).to(images.device)

    def _both_resolutions(self, native: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        h, w = images.shape[-2:]
        grid = self.model.grid_size_for(images)
        if self.native == "patch":
            if tuple(native.shape[1:]) != grid:
                raise RuntimeError(
                    f"{type(self).__name__}._attribute: expected patch maps [chunk, {grid[0]}, {grid[1]}], "
                    f"got shape {tuple(native.shape)}"
                )
            return native, upsample_map(native, (h, w), mode=self.upsample)
        if tuple(native.shape[1:]) != (h, w):
            raise RuntimeError(
                f"{type(self).__name__}._attribute: expected pixel maps [chunk, {h}, {w}], got shape {tuple(native.shape)}"
            )
        return patch_sums(native, tuple(self.model.cfg.patch_size)), native

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


# --------------------------------------------------------------------------------------------------- registry
# name -> (module, class). Modules are imported on first use, so the registry costs nothing at import.
_BUILTIN: dict[str, tuple[str, str]] = {
    "raw_attention": ("vit_patching.attribution.attention", "RawAttention"),
    "rollout": ("vit_patching.attribution.attention", "Rollout"),
    "gae": ("vit_patching.attribution.attention", "GradientAttention"),
    "gradcam": ("vit_patching.attribution.gradients", "GradCAM"),
    "integrated_gradients": ("vit_patching.attribution.gradients", "IntegratedGradients"),
    "smoothgrad": ("vit_patching.attribution.gradients", "SmoothGrad"),
    "occlusion": ("vit_patching.attribution.perturbation", "Occlusion"),
    "rise": ("vit_patching.attribution.perturbation", "RISE"),
    "atman": ("vit_patching.attribution.perturbation", "AtMan"),
    "caap": ("vit_patching.attribution.caap", "CAAPMethod"),
    "caap_noising": ("vit_patching.attribution.caap", "CAAPNoising"),
    "caap_shapley": ("vit_patching.attribution.caap", "CAAPShapley"),
    "random": ("vit_patching.attribution.sanity", "RandomMap"),
    "center": ("vit_patching.attribution.sanity", "CenterGaussian"),
}
_USER: dict[str, type[AttributionMethod]] = {}


def available_methods(include_registered: bool = True) -> list[str]:
    """Names accepted by :func:`get_method`, built-in methods first in a fixed order.

    Args:
        include_registered: Also list methods added with :func:`register_method` (default True).

    Example:
        >>> available_methods()[:3], len(available_methods(include_registered=False))
        (['raw_attention', 'rollout', 'gae'], 14)
    """
    return list(_BUILTIN) + ([n for n in _USER if n not in _BUILTIN] if include_registered else [])


def register_method(name: str, cls: type[AttributionMethod]) -> None:
    """Register a user method class under ``name`` (it must subclass :class:`AttributionMethod`).

    Example:
        >>> register_method("ones", Ones)
        >>> get_method("ones", model)
        Ones()
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    if name in _BUILTIN:
        raise ValueError(f"name: {name!r} is a built-in method; choose another name")
    if not (isinstance(cls, type) and issubclass(cls, AttributionMethod)):
        raise TypeError(f"cls: expected a subclass of AttributionMethod, got {cls!r}")
    _USER[name] = cls


def method_class(name: str) -> type[AttributionMethod]:
    """The class registered under ``name``."""
    if name in _USER:
        return _USER[name]
    if name not in _BUILTIN:
        raise ValueError(f"name: expected one of the attribution methods {available_methods()}, got {name!r}")
    module, cls = _BUILTIN[name]
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, model: HookedViT, **options: Any) -> AttributionMethod:
    """Build attribution method ``name`` for ``model``; ``options`` are the method's keyword arguments.

    Args:
        name: one of :func:`available_methods`.
        model: a HookedViT with a classification head.
        **options: method options, e.g. ``n_masks=500`` for ``"rise"``, ``n_steps=64`` for
            ``"integrated_gradients"``; an unknown option raises a TypeError naming it.

    Returns:
        The method; call :meth:`AttributionMethod.attribute` on image batches.

    Example:
        >>> rise = get_method("rise", model, n_masks=500, seed=0)
        >>> rise.attribute(images).pixel_map.shape
        torch.Size([2, 32, 32])
    """
    cls = method_class(name)
    try:
        return cls(model, **options)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
            raise TypeError(f"options: {name!r} takes options {allowed}, got {sorted(options)} ({e})") from None
        raise

"""Input handling of :class:`~vit_patching.model.hooked_vit.HookedViT`: token layouts, image checks and
preprocessing, class-index checks.

A mixin, so the methods stay ``HookedViT`` methods; it relies on the model's ``cfg``, ``device``, ``dtype``
and (for class checks) ``_require_head`` from :class:`~vit_patching.model.weights.WeightViews`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import is_int
from .config import ViTConfig
from .positions import TokenLayout


def check_layer(value: int, name: str, n_layers: int) -> int:
    """Check a layer index in ``[-n_layers, n_layers]`` (negative counts from the end); return it non-negative.

    Example:
        >>> check_layer(-1, "stop_at_layer", 4)
        3
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = value + n_layers if value < 0 else value
    if not 0 <= v <= n_layers:
        raise ValueError(f"{name} must be in [-{n_layers}, {n_layers}], got {value}")
    return v


class ImageInputs:
    """Layouts, transforms and input checks of a HookedViT (mixed into :class:`HookedViT`)."""

    cfg: ViTConfig

    @property
    def layout(self) -> TokenLayout:
        """Token layout (prefix labels and patch grid) at the configured image size."""
        return TokenLayout(self.cfg.grid_size, self.cfg.prefix_labels)

    def layout_for(self, images: Tensor) -> TokenLayout:
        """Token layout for an image batch (differs from :attr:`layout` only under ``dynamic_img_size``)."""
        return TokenLayout(self.grid_size_for(images), self.cfg.prefix_labels)

    def grid_size_for(self, images: Tensor) -> tuple[int, int]:
        """Patch grid of an image batch; the grid never comes from the input's last axis alone."""
        self.check_images(images)
        return (images.shape[-2] // self.cfg.patch_size[0], images.shape[-1] // self.cfg.patch_size[1])

    def check_images(self, images: object, name: str = "images") -> None:
        """Raise a clear error unless ``images`` is a float ``[batch, channel, height, width]`` batch this model takes."""
        cfg = self.cfg
        if not isinstance(images, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [batch, {cfg.in_chans}, H, W], got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(
                f"{name} must have shape [batch, {cfg.in_chans}, height, width], got {tuple(images.shape)}"
                + (" (add a batch axis with images[None])" if images.ndim == 3 else "")
            )
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (normalised pixels), got dtype {images.dtype}")
        if images.shape[0] == 0:
            raise ValueError(
                f"{name}: expected a non-empty batch [batch, channel, height, width], got shape {tuple(images.shape)}"
            )
        if images.shape[1] != cfg.in_chans:
            raise ValueError(f"{name} must have {cfg.in_chans} channels on axis 1, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if cfg.dynamic_img_size:
            if h % cfg.patch_size[0] or w % cfg.patch_size[1]:
                raise ValueError(f"{name} height/width must be multiples of the patch size {cfg.patch_size}, got {(h, w)}")
        elif (h, w) != tuple(cfg.img_size):
            raise ValueError(
                f"{name} must be {cfg.img_size[0]}x{cfg.img_size[1]} pixels (the model's img_size), got {h}x{w}; "
                "resize with model.transform or build the timm model with dynamic_img_size=True"
            )
        # Last, after the cheap shape checks: one pass over the values. A NaN/Inf pixel would otherwise spread
        # through attention to every token and surface only as NaN scores far from its cause.
        if images.device.type != "meta" and not bool(torch.isfinite(images).all()):  # meta tensors hold no values
            bad = ~torch.isfinite(images)
            which = bad.flatten(1).any(1).nonzero()[:, 0].tolist()
            raise ValueError(f"{name}: expected finite pixel values, got {int(bad.sum())} NaN/Inf entries in image(s) "
                             f"{which[:5]}{' ...' if len(which) > 5 else ''}")

    @property
    def transform(self) -> Callable:
        """timm eval transform (resize, crop, to-tensor, normalise) from the model's data config."""
        if not self.cfg.data_config:
            raise ValueError("this model has no timm data config (its timm model had no pretrained_cfg)")
        from timm.data import create_transform

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.cfg.data_config.items()}
        return create_transform(**cfg, is_training=False)

    def preprocess(self, images: object) -> Float[Tensor, "batch channel height width"]:
        """Turn PIL images (one or a list) into a normalised batch on the model's device."""
        from PIL import Image

        items = [images] if isinstance(images, Image.Image) else list(images)
        if not items or not all(isinstance(i, Image.Image) for i in items):
            raise TypeError("images must be a PIL.Image or a non-empty sequence of PIL.Images")
        tf = self.transform
        batch = torch.stack([tf(i.convert("RGB") if self.cfg.in_chans == 3 else i) for i in items])
        return batch.to(device=self.device, dtype=self.dtype)

    def check_target(self, target: object, batch: int) -> Tensor | None:
        """Validate a per-image target: ``None``, an int, or an integer tensor ``[batch]`` of class indices.

        Returns:
            ``None`` for ``None``, else a long CPU tensor ``[batch]`` (an int is broadcast to every image).

        Example:
            >>> model.check_target(3, batch=2)
            tensor([3, 3])
        """
        if target is None:
            return None
        if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
            raise TypeError(f"target: expected None, an int or an integer tensor [batch], got {type(target).__name__}")
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"target: expected one class per image, shape [{batch}], got shape {tuple(t.shape)}")
        self.check_classes(t, "target")
        return t.long().cpu()

    def check_classes(self, classes: Tensor, name: str = "target") -> None:
        """Raise a clear error if any class index is out of range."""
        self._require_head()
        if classes.is_floating_point():
            raise TypeError(f"{name} must hold integer class indices, got dtype {classes.dtype}")
        if classes.numel() and (classes.min() < 0 or classes.max() >= self.cfg.n_classes):
            raise ValueError(
                f"{name} must be class indices in [0, {self.cfg.n_classes}), got values in "
                f"[{int(classes.min())}, {int(classes.max())}]"
            )

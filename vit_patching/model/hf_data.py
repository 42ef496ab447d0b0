"""The timm data config (resize, crop, mean/std) that prepares images like a Hugging Face model's image processor.

``model.preprocess`` and ``model.transform`` read ``cfg.data_config`` through timm's ``create_transform``. For a
model converted from Hugging Face the config comes from, in order:

1. the checkpoint's own image processor, when it is on disk (``config._name_or_path`` is a local folder or a
   cached hub checkpoint: ``AutoImageProcessor.from_pretrained(..., local_files_only=True)``; nothing is
   downloaded);
2. else the preprocessing the family's reference checkpoints publish (:data:`HF_FAMILY_DATA`), because the image
   processor classes' own defaults are not those of the checkpoints (``BitImageProcessor()`` normalises with
   CLIP's mean, DINOv2 checkpoints with ImageNet's; ``DeiTImageProcessor()`` with 0.5, DeiT checkpoints with
   ImageNet's).

The input size is always the converted model's ``img_size``: a HookedViT runs at its native size only (DINOv2
checkpoints are 518 px models whose processors crop 224 px and interpolate the position table; here the crop is
``img_size`` and the ``crop_pct`` of the processor is kept).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

_IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
_HALF = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
_OPENAI = dict(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])

# Hugging Face class name -> family; the class is matched exactly (a subclass may change the forward).
HF_CLASSES = {
    "ViTModel": "vit",
    "ViTForImageClassification": "vit",
    "DeiTModel": "deit",
    "DeiTForImageClassification": "deit",
    "DeiTForImageClassificationWithTeacher": "deit",
    "CLIPVisionModel": "clip",
    "CLIPVisionModelWithProjection": "clip",
    "CLIPModel": "clip",
    "SiglipVisionModel": "siglip",
    "SiglipModel": "siglip",
    "Dinov2Model": "dinov2",
    "Dinov2WithRegistersModel": "dinov2",
}

# Per family (the values of HF_CLASSES): the preprocessor_config.json of the reference checkpoints, in timm terms.
# "squash" resizes both sides to img_size / crop_pct, "center" the shorter side, then a centre crop of img_size.
HF_FAMILY_DATA: dict[str, dict[str, Any]] = {
    # google/vit-base-patch16-224: resize to 224 x 224, bilinear, mean/std 0.5
    "vit": dict(**_HALF, interpolation="bilinear", crop_pct=1.0, crop_mode="squash"),
    # facebook/deit-base-(distilled-)patch16-224: resize to 256 x 256, bicubic, centre crop 224, ImageNet mean/std
    "deit": dict(**_IMAGENET, interpolation="bicubic", crop_pct=224 / 256, crop_mode="squash"),
    # openai/clip-vit-base-patch32: shorter side 224, bicubic, centre crop 224, OpenAI mean/std
    "clip": dict(**_OPENAI, interpolation="bicubic", crop_pct=1.0, crop_mode="center"),
    # google/siglip-base-patch16-224: resize to 224 x 224, bicubic, mean/std 0.5
    "siglip": dict(**_HALF, interpolation="bicubic", crop_pct=1.0, crop_mode="squash"),
    # facebook/dinov2-base (and -with-registers): shorter side 256, bicubic, centre crop 224, ImageNet mean/std
    "dinov2": dict(**_IMAGENET, interpolation="bicubic", crop_pct=224 / 256, crop_mode="center"),
}

# PIL resampling codes (Hugging Face's PILImageResampling) -> timm interpolation names.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _size_get(size: Any, key: str) -> int | None:
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def processor_data_config(processor: Any) -> dict[str, Any] | None:
    """A Hugging Face image processor's resize/crop/normalisation in timm data-config terms, or None.

    None when the processor does something a timm eval transform does not (no rescale by 1/255, a resize to
    a longest edge, no resize at all): the caller then falls back to the family's published preprocessing.

    Example:
        >>> from transformers import ViTImageProcessor
        >>> processor_data_config(ViTImageProcessor())["crop_mode"]
        'squash'
    """
    if not getattr(processor, "do_rescale", True) or abs(float(getattr(processor, "rescale_factor", 1 / 255))
                                                        - 1 / 255) > 1e-12:
        return None
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if not getattr(processor, "do_normalize", True):
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    try:  # a PIL resampling code; anything else (a torchvision InterpolationMode, ...) is not mapped
        interpolation = _RESAMPLE.get(int(getattr(processor, "resample", 3)))
    except (TypeError, ValueError):
        interpolation = None
    if mean is None or std is None or interpolation is None or not getattr(processor, "do_resize", True):
        return None
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    crop_h = _size_get(crop, "height") if getattr(processor, "do_center_crop", False) else None
    if _size_get(size, "shortest_edge"):
        resized, mode = _size_get(size, "shortest_edge"), "center"
    elif _size_get(size, "height") and _size_get(size, "height") == _size_get(size, "width"):
        resized, mode = _size_get(size, "height"), "squash"
    else:
        return None
    crop_pct = crop_h / resized if crop_h else 1.0
    return dict(mean=[float(m) for m in mean], std=[float(s) for s in std], interpolation=interpolation,
                crop_pct=crop_pct, crop_mode=mode)


def _local_processor(model: nn.Module) -> Any | None:
    """The checkpoint's image processor if it is on disk (never downloaded), else None."""
    path = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not path:
        return None
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except Exception as err:  # not cached / no processor file: the family defaults apply
        logger.info("no local image processor for %r (%s); using the family's published preprocessing", path, err)
        return None


def hf_data_config(model: nn.Module, img_size: tuple[int, int], family: str | None = None) -> dict[str, Any]:
    """timm data config for a Hugging Face model converted at ``img_size`` (see the module docstring).

    Args:
        model: The Hugging Face model (its ``config._name_or_path`` locates a processor on disk).
        img_size: The converted model's input size ``(height, width)``.
        family: A key of :data:`HF_FAMILY_DATA`; default from the model's class.

    Returns:
        ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode`` (lists, JSON-ready).

    Example:
        >>> from transformers import ViTConfig, ViTModel
        >>> hf = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                         intermediate_size=64, image_size=32, patch_size=8))
        >>> hf_data_config(hf, (32, 32))["input_size"]
        [3, 32, 32]
    """
    if family is None:
        family = HF_CLASSES[type(model).__name__]
    processor = _local_processor(model)
    cfg = processor_data_config(processor) if processor is not None else None
    if cfg is None:
        cfg = {k: (list(v) if isinstance(v, list) else v) for k, v in HF_FAMILY_DATA[family].items()}
    config = getattr(model.config, "vision_config", None) or model.config
    return dict(input_size=[int(config.num_channels), int(img_size[0]), int(img_size[1])], **cfg)

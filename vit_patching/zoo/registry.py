"""Specs of the shipped toy models: name -> timm constructor kwargs, dataset, weight file, model card.

timm is imported inside the functions that need it, so importing this module stays cheap.

Example:
    >>> from vit_patching.zoo.registry import MODEL_SPECS
    >>> MODEL_SPECS["toy-shapes"].dataset
    'shapes'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vit_patching.zoo.datasets import CONJUNCTION_CLASS_NAMES, IMAGE_SIZE, RELATION_CLASS_NAMES, SHAPES_CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from timm.models.vision_transformer import VisionTransformer

__all__ = ["DEFAULT_MODEL", "MODEL_SPECS", "ModelSpec", "WEIGHTS_DIR", "build_timm_model", "get_spec"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "toy-shapes"

#: Input normalisation of every zoo model: (pixels - 0.5) / 0.5, as in ``ToyBatch.images``.
NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one zoo model.

    Attributes:
        name: model name (``load_model(name)``).
        dataset: name of the toy dataset it was trained on (``load_dataset(dataset, ...)``).
        timm_kwargs: keyword arguments of ``timm.models.vision_transformer.VisionTransformer``.
        class_names: name of each output class.
        description: one line for listings.

    Example:
        >>> spec = MODEL_SPECS["toy-conjunction"]
        >>> spec.weights_path.name
        'toy-conjunction.safetensors'
    """

    name: str
    dataset: str
    timm_kwargs: dict[str, Any]
    class_names: tuple[str, ...]
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        """The shipped safetensors file."""
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def card_path(self) -> Path:
        """The shipped model card (markdown)."""
        return WEIGHTS_DIR / f"{self.name}.md"

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm data config: ``resolve_data_config({}, model=m)`` + ``create_transform`` give ``ToyBatch.images``."""
        size = self.timm_kwargs.get("img_size", IMAGE_SIZE)
        return {
            "architecture": "vit_patching_" + self.name.replace("-", "_"),
            "tag": "vit_patching",
            "num_classes": self.timm_kwargs["num_classes"],
            "input_size": (3, size, size),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": NORM_MEAN,
            "std": NORM_STD,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "label_names": list(self.class_names),
        }


_COMMON = dict(img_size=IMAGE_SIZE, patch_size=8, in_chans=3, embed_dim=128, num_heads=4, mlp_ratio=4.0)

MODEL_SPECS: dict[str, ModelSpec] = {
    "toy-shapes": ModelSpec(
        name="toy-shapes",
        dataset="shapes",
        timm_kwargs=dict(_COMMON, depth=4, num_classes=len(SHAPES_CLASS_NAMES), class_token=True, global_pool="token"),
        class_names=SHAPES_CLASS_NAMES,
        description=(
            "ViT (patch 8, 4 layers, width 128, CLS-token pooling) telling which coloured shape (red circle, green "
            "square, blue triangle, yellow plus) is among the distractors; the default zoo model"
        ),
    ),
    "toy-conjunction": ModelSpec(
        name="toy-conjunction",
        dataset="conjunction",
        timm_kwargs=dict(
            _COMMON,
            depth=4,
            num_classes=len(CONJUNCTION_CLASS_NAMES),
            class_token=False,
            reg_tokens=4,
            global_pool="avg",
            fc_norm=True,
        ),
        class_names=CONJUNCTION_CLASS_NAMES,
        description=(
            "ViT (patch 8, 4 layers, width 128, no CLS token, 4 register tokens, average pooling + fc_norm) "
            "telling which pairing of two coloured parts is present (one part alone is uninformative)"
        ),
    ),
    "toy-relation": ModelSpec(
        name="toy-relation",
        dataset="relation",
        # LayerScale (init 0.1) damps each residual branch at initialisation, which helps the 8-block model train
        timm_kwargs=dict(
            _COMMON,
            depth=8,
            num_classes=len(RELATION_CLASS_NAMES),
            class_token=True,
            global_pool="token",
            init_values=0.1,
        ),
        class_names=RELATION_CLASS_NAMES,
        description=(
            "ViT (patch 8, 8 layers, width 128, CLS-token pooling, LayerScale) telling whether the two marked "
            "objects (drawn in the four class hues) have the same colour (one marked object alone is uninformative)"
        ),
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The spec of zoo model ``name``.

    Args:
        name: a key of ``MODEL_SPECS``.

    Returns:
        The model spec.

    Raises:
        ValueError: unknown name (the message lists the available ones).

    Example:
        >>> get_spec("toy-shapes").timm_kwargs["global_pool"]
        'token'
    """
    if name not in MODEL_SPECS:
        raise ValueError(f"name: expected one of the zoo models {sorted(MODEL_SPECS)}, got {name!r}")
    return MODEL_SPECS[name]


def build_timm_model(name: str) -> "VisionTransformer":
    """A freshly initialised (untrained) timm ``VisionTransformer`` for zoo model ``name``, with its data config.

    Args:
        name: a key of ``MODEL_SPECS``.

    Returns:
        The timm model (train mode, random init from the current torch RNG state).

    Example:
        >>> m = build_timm_model("toy-shapes")
        >>> m.pretrained_cfg["mean"]
        (0.5, 0.5, 0.5)
    """
    from timm.models.vision_transformer import VisionTransformer

    spec = get_spec(name)
    model = VisionTransformer(**spec.timm_kwargs)
    model.pretrained_cfg = spec.pretrained_cfg
    return model

"""HookedViT: a TransformerLens-style hooked model converted exactly from timm Vision Transformers."""

from .config import UnsupportedModelError, ViTConfig
from .hooked_vit import HookedViT, check_classifier, check_scores
from .positions import TokenLayout
from .timm_config import config_from_timm

__all__ = ["HookedViT", "check_classifier", "check_scores", "ViTConfig", "TokenLayout", "UnsupportedModelError", "config_from_timm"]

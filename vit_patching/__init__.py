"""vit_patching: mechanistic interpretability for timm Vision Transformers."""
__version__ = "0.1.0"

"""Sparse autoencoders on HookedViTs: SAELens's architectures, its on-disk format, and splicing (``docs/sae.md``).

Example:
    >>> from vit_patching.sae import SAEConfig, make_sae, load_saelens, save_saelens
    >>> sae = make_sae(SAEConfig("topk", d_in=192, d_sae=1536, hook_name="blocks.6.hook_resid_post", k=32))
    >>> with model.saes([sae], use_error_term=True):
    ...     logits, cache = model.run_with_cache(images)
"""

from vit_patching.sae.saelens_format import load_saelens, save_saelens, saelens_cfg
from vit_patching.sae.saes import (
    ARCHITECTURES, SAE, GatedSAE, JumpReLUSAE, SAEConfig, StandardSAE, TopKSAE, make_sae,
)
from vit_patching.sae.splice import SAE_HOOKS, SAESplice, add_sae, remove_sae, reset_saes, saes, spliced_saes
from typing import Any

__all__ = [
    "ARCHITECTURES", "SAE", "SAEConfig", "SAESplice", "SAE_HOOKS", "GatedSAE", "JumpReLUSAE", "StandardSAE",
    "TopKSAE", "add_sae", "load_saelens", "make_sae", "remove_sae", "reset_saes", "saelens_cfg", "save_saelens",
    "saes", "spliced_saes", "evaluate_sae", "fit_sae", "train_sae", "TrainResult", "TrainSettings",
]

# Training and evaluation read zoo data sets and image folders (vit_patching.runs, vit_patching.zoo), and the zoo
# loads its shipped SAEs through this package: loaded on first use, so that vit_patching.sae never imports the zoo.
_LAZY = {"evaluate_sae": "vit_patching.sae.metrics", "fit_sae": "vit_patching.sae.train",
         "train_sae": "vit_patching.sae.train", "TrainResult": "vit_patching.sae.train",
         "TrainSettings": "vit_patching.sae.train"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vit_patching.sae' has no attribute {name!r}")

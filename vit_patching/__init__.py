"""vit_patching: mechanistic interpretability for timm Vision Transformers.

``import vit_patching`` is cheap: torch, timm, transformer_lens and plotly load only when a name that needs
them is first used (PEP 562 lazy attributes).

Example:
    >>> import vit_patching as vp
    >>> model = vp.load_model("toy-shapes")                 # shipped, trained, offline
    >>> batch = vp.load_dataset("shapes", n=4, seed=1)
    >>> attribution = vp.caap(model, batch.images, window=(1, 3))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "HookedViT": "vit_patching.model",
    "ViTConfig": "vit_patching.model",
    "TokenLayout": "vit_patching.model",
    "UnsupportedModelError": "vit_patching.model",
    "Site": "vit_patching.patching",
    "PatchSpec": "vit_patching.patching",
    "PatchingResult": "vit_patching.patching",
    "run_patch_spec": "vit_patching.patching",
    "layer_sweep": "vit_patching.patching",
    "latent_sweep": "vit_patching.patching",
    "patch_heads": "vit_patching.patching",
    "path_patch": "vit_patching.patching",
    "direct_path_patch": "vit_patching.patching",
    "get_method": "vit_patching.attribution",
    "available_methods": "vit_patching.attribution",
    "caap": "vit_patching.patching.caap",  # the function (the package attribute is the submodule)
    "Attribution": "vit_patching.patching",
    "select_window": "vit_patching.patching",
    "atp_layer_sweep": "vit_patching.circuits",
    "atp_heads": "vit_patching.circuits",
    "atp_latents": "vit_patching.circuits",
    "feature_eap": "vit_patching.circuits",
    "eap": "vit_patching.circuits",
    "eap_ig": "vit_patching.circuits",
    "select_circuit": "vit_patching.circuits",
    "evaluate_circuit": "vit_patching.circuits",
    "Readout": "vit_patching.readouts",
    "ClassifierHead": "vit_patching.readouts",
    "ZeroShotHead": "vit_patching.readouts",
    "LinearProbe": "vit_patching.readouts",
    "EmbeddingSimilarity": "vit_patching.readouts",
    "LatentReadout": "vit_patching.readouts",
    "SAEConfig": "vit_patching.sae",
    "make_sae": "vit_patching.sae",
    "load_saelens": "vit_patching.sae",
    "save_saelens": "vit_patching.sae",
    "load_model": "vit_patching.zoo",
    "load_timm_model": "vit_patching.zoo",
    "load_dataset": "vit_patching.zoo",
    "available_models": "vit_patching.zoo",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vit_patching' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""Readouts: what turns a model's final representation into the class scores every experiment reads.

``model.with_readout(readout)`` returns a model (sharing the weights) whose ``hook_logits`` are the readout's
scores, so every experiment, attribution method, metric, figure and the CLI run unchanged on headless and
projection-head models (CLIP, SigLIP, DINOv2). See ``docs/families.md``, section "Readouts".

Example:
    >>> from vit_patching.readouts import ZeroShotHead
    >>> scored = proj.with_readout(ZeroShotHead(torch.randn(3, 16), logit_scale=100.0))  # a CLIP-style tower
    >>> scored.readout.n_classes
    3
"""

from ..model.readout import ClassifierHead, CosineReadout, ModuleReadout, Readout
from ..model.readout_attach import current_readout, with_readout
from .latent import LatentReadout
from .probe import LinearProbe, model_fingerprint, probe_features
from .zero_shot import EmbeddingSimilarity, ZeroShotHead

__all__ = [
    "ClassifierHead", "CosineReadout", "EmbeddingSimilarity", "LatentReadout", "LinearProbe", "ModuleReadout", "Readout",
    "ZeroShotHead", "current_readout", "model_fingerprint", "probe_features", "with_readout",
]

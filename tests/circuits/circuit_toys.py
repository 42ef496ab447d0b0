"""Tiny random HookedViTs and image pairs for the circuit tests, and a check that no hook is left attached."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.patching import target_logit  # noqa: E402

CLASSES = torch.tensor([1, 2])


def tiny(depth: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs):
    """A random HookedViT: img 32, patch 8 (4x4 grid + CLS = 17 positions), width 32, 2 heads."""
    return make_pair(depth=depth, seed=seed, **kwargs)[1].to(dtype)


def pair(batch: int = 2, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, corrupted) random images."""
    return images(batch, 32, 32, seed=1).to(dtype), images(batch, 32, 32, seed=2).to(dtype)


def metric(classes: torch.Tensor = CLASSES):
    """Each image's class logit (linear in the logits)."""
    return target_logit(classes)


def no_hooks_left(model) -> bool:
    """True if no HookPoint of the model (switched on or off) has a forward or backward hook."""
    for hp in model.hook_points():
        if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks or hp._backward_pre_hooks:
            return False
    return True

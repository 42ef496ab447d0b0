"""Tiny random HookedViTs, image pairs and reference (TransformerLens / one-forward-per-cell) computations
shared by the patching-experiment tests."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformer_lens.hook_points import HookPoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.patching import target_logit  # noqa: E402

CLASSES = torch.tensor([1, 2])


def tiny(depth: int = 3, seed: int = 0, **kwargs):
    """A random HookedViT: img 32, patch 8 (4x4 grid + CLS = 17 positions), width 32, 2 heads."""
    return make_pair(depth=depth, seed=seed, **kwargs)[1]


def pair(batch: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, corrupted) random images."""
    return images(batch, size, size, seed=1), images(batch, size, size, seed=2)


def metric(classes: torch.Tensor = CLASSES):
    """Engine metric: each image's class logit."""
    return target_logit(classes)


def tl_metric(m, batch: int):
    """The same metric as TransformerLens calls it: ``fn(logits) -> [batch]``."""
    ids = torch.arange(batch)
    return lambda logits: m(logits, ids)


def hooks_left(model) -> list[str]:
    """Every hook still attached anywhere in ``model``: on every HookPoint module, the gated ones that are not in
    ``hook_dict`` while their flag is off included (TransformerLens fwd/bwd hook handles and PyTorch forward,
    forward-pre and backward hooks), and plain PyTorch hooks on any other module."""
    left = []
    for name, mod in model.named_modules():
        kinds = {
            "forward": mod._forward_hooks, "forward_pre": mod._forward_pre_hooks,
            "backward": mod._backward_hooks, "backward_pre": getattr(mod, "_backward_pre_hooks", {}),
        }
        if isinstance(mod, HookPoint):
            kinds.update(fwd_handles=mod.fwd_hooks, bwd_handles=mod.bwd_hooks)
        left += [f"{name or '<model>'}:{kind}" for kind, hooks in kinds.items() if hooks]
    return left


def no_hooks_left(model) -> bool:
    """True when no hook of any kind is left on any module of ``model`` (see :func:`hooks_left`)."""
    return not hooks_left(model)


@torch.no_grad()
def naive_patch(model, target, source_cache, m, hook: str, index: tuple) -> torch.Tensor:
    """One full forward of the target images with ``act[:, *index] = source[:, *index]`` on ``hook``."""
    def fn(act, hook):
        act = act.clone()
        act[(slice(None),) + index] = source_cache[hook.name][(slice(None),) + index]
        return act

    logits = model.run_with_hooks(target, fwd_hooks=[(hook, fn)])
    return m(logits, torch.arange(target.shape[0]))


class TLNames:
    """A HookedViT seen under TransformerLens-4 bridge names for the per-head inputs.

    TransformerLens's ``get_act_patch_direct_path`` hooks ``blocks.{l}.attn.hook_q_input``; HookedViT keeps
    HookedTransformer's ``blocks.{l}.hook_q_input``. Only those names are translated; everything else
    (config, weights, caches, forwards) is the model's own.
    """

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run_with_hooks(self, *args, fwd_hooks=(), **kwargs):
        hooks = [(n.replace(".attn.hook_", ".hook_") if n.endswith("_input") else n, f) for n, f in fwd_hooks]
        return self._model.run_with_hooks(*args, fwd_hooks=hooks, **kwargs)

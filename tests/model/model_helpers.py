"""Tiny random timm ViTs and reference computations shared by the HookedViT tests."""
from __future__ import annotations

import timm
import torch
from torch import nn

from vit_patching.model import HookedViT

# Small enough for ms forwards on a shared CPU, big enough for 2 heads and a 4x4 patch grid.
TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=10)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a non-default random value, in place.

    timm initialises norm weights to 1, biases to 0, LayerScale gamma to ``init_values`` and sometimes the
    head to 0; those defaults hide mapping errors (a swapped weight/bias or a dropped gamma changes nothing).
    Matrices get ``1/sqrt(fan_in)`` so attention patterns are far from uniform.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                val = 0.5 + torch.rand(p.shape, generator=g)
            elif p.ndim >= 2 and not name.endswith(("token", "pos_embed")):
                val = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
            elif "norm" in name and name.endswith("weight"):
                val = 1 + 0.3 * torch.randn(p.shape, generator=g)
            else:  # biases, class/dist/register tokens, position embeddings
                val = 0.3 * torch.randn(p.shape, generator=g)
            p.copy_(val.to(p.dtype))
    return model


def make_timm(name: str = "vit_tiny_patch16_224", seed: int = 0, **kwargs) -> nn.Module:
    """A randomised timm model in eval mode; ``kwargs`` override :data:`TINY`."""
    kw = dict(TINY)
    kw.update(kwargs)
    return randomize_(timm.create_model(name, pretrained=False, **kw), seed).eval()


def make_pair(name: str = "vit_tiny_patch16_224", seed: int = 0, **kwargs) -> tuple[nn.Module, HookedViT]:
    """(timm model, converted HookedViT)."""
    m = make_timm(name, seed, **kwargs)
    return m, HookedViT.from_timm(m)


def images(batch: int = 2, height: int = 32, width: int = 32, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


@torch.no_grad()
def timm_block_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """timm logits and the output of every ``blocks[i]`` (forward hooks on timm's own modules)."""
    outs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda mod, inp, out: outs.append(out.detach().clone())) for b in model.blocks]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, outs


def all_gates_on(model: HookedViT, attn_in: bool = False) -> HookedViT:
    """Enable every gated hook point (``use_attn_in`` and ``use_split_qkv_input`` are alternatives)."""
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    if attn_in:
        model.set_use_attn_in(True)
    else:
        model.set_use_split_qkv_input(True)
    return model

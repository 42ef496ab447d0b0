"""Tiny ViTs for the attribution tests: random ones, and a hand-crafted one that reads a single patch."""
from __future__ import annotations

import timm
import torch

from vit_patching.model import HookedViT

GRID = 4
PATCH = 8
REGION = (1, 2)  # the one patch the crafted model reads (row, col)


def tiny_timm(seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random timm ViT (img 32, patch 8 -> 4x4 grid, 2 layers, width 32) with weights away from their defaults."""
    kw = dict(img_size=32, patch_size=PATCH, depth=2, embed_dim=32, num_heads=2, num_classes=5)
    kw.update(kwargs)
    torch.manual_seed(seed)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim >= 2 and not name.endswith(("token", "pos_embed")):
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("norm.weight") else 0.0))
    return m


def tiny_model(seed: int = 0, **kwargs) -> HookedViT:
    return HookedViT.from_timm(tiny_timm(seed, **kwargs))


def tiny_images(batch: int = 2, seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2)


def region_reading_timm(region: tuple[int, int] = REGION) -> torch.nn.Module:
    """A 1-block CLS ViT whose logits depend only on the pixels of patch ``region`` (4x4 grid of 8x8 patches).

    Residual features (width 16): 0 = mean pixel value of the patch, 1/2 = +-a marker on the region's token (from
    the position embedding), 3/4 = +-a marker on the CLS token, 8/9 = +-a constant on every patch (keeps the
    LayerNorm scale away from eps), 6 = the output slot. The one head's CLS query reads the CLS marker and its
    keys read the region marker, so CLS attends (softmax weight ~ 1 - 1e-8) to the region's token; the value
    reads that token's content and marker and writes slot 6; the MLP is zero; the head reads slot 6
    (class 0: +, class 1: -, biased to 0 for zero content). Every other patch reaches the logits only through attention weights ~1e-8.
    """
    d, a = 16, 4.0
    m = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=GRID * PATCH, patch_size=PATCH, depth=1, embed_dim=d,
        num_heads=1, mlp_ratio=1.0, num_classes=2,
    ).eval()
    j = 1 + region[0] * GRID + region[1]  # sequence position of the region's token
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for norm in (m.blocks[0].norm1, m.blocks[0].norm2, m.norm):
            norm.weight.fill_(1.0)
        m.patch_embed.proj.weight[0] = 1.0 / (3 * PATCH * PATCH)  # feature 0: mean pixel value
        m.patch_embed.proj.bias[8], m.patch_embed.proj.bias[9] = a, -a
        m.cls_token[0, 0, 3], m.cls_token[0, 0, 4] = a, -a
        m.pos_embed[0, j, 1], m.pos_embed[0, j, 2] = a, -a
        attn = m.blocks[0].attn
        W_q, W_k, W_v = attn.qkv.weight.view(3, d, d)
        W_q[0, 3] = 3.3  # query: CLS marker (score to the region ~ 20)
        W_k[0, 1] = 3.3  # key: region marker
        W_v[0, 0], W_v[0, 1] = 1.0, 1.0  # value: content + marker of the attended token
        attn.proj.weight[6, 0] = 1.0  # -> output slot 6
        m.head.weight[0, 6], m.head.weight[1, 6] = 5.0, -5.0
        # Bias: logits 0 when the region shows the neutral (all-zero) content, so probabilities are not saturated.
        o0 = m.forward_head(m.forward_features(torch.zeros(1, 3, GRID * PATCH, GRID * PATCH)), pre_logits=True)[0, 6]
        m.head.bias[0], m.head.bias[1] = -5.0 * o0, 5.0 * o0
    return m


def region_images(batch: int = 3, seed: int = 2, region: tuple[int, int] = REGION) -> torch.Tensor:
    """Random images in [-1, 1] whose region patch is bright (positive evidence for class 0)."""
    x = torch.rand(batch, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    r, c = region
    x[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 0.5 + 0.5 * x[:, :, :PATCH, :PATCH].abs()
    return x

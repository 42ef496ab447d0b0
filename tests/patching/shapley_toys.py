"""Crafted ViTs with known coalition games for the coalition-CAAP tests.

* :func:`additive_model`: a random GAP ViT whose blocks write nothing (attention and MLP outputs zero), pooled
  after a per-token LayerNorm: the logits are a *sum of per-patch terms*, so v(S) - v(empty) = sum of the patches'
  single effects.
* :func:`and_model`: a 1-block CLS ViT whose class-0 logit moves only when patches A and B *both* show content
  (an AND): CLS attends to the two marked tokens, reads the mean of their content, and a GELU unit with a
  threshold between "one shows content" and "both do" (pre-activation -20 / +20) writes the output slot.
"""
from __future__ import annotations

import timm
import torch

from vit_patching.model import HookedViT

GRID, PATCH = 4, 8
A, B = 0, GRID * GRID - 1  # flat patch indices of the two AND patches: opposite corners


def additive_model(seed: int = 0) -> HookedViT:
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=GRID * PATCH, patch_size=PATCH, depth=2,
                          embed_dim=32, num_heads=2, num_classes=5, class_token=False, global_pool="avg",
                          fc_norm=False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5 if p.ndim >= 2 else 3.0))
        for blk in m.blocks:  # blocks write nothing: the residual is the embedding, per token
            for p in (blk.attn.proj.weight, blk.attn.proj.bias, blk.mlp.fc2.weight, blk.mlp.fc2.bias):
                p.zero_()
    return HookedViT.from_timm(m)


def and_images(batch: int = 2, seed: int = 4) -> torch.Tensor:
    """Random images whose patches A and B are all ones (content 1); the zeros neutral has content 0 everywhere."""
    x = torch.rand(batch, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(seed)) - 0.5
    for p in (A, B):
        r, c = divmod(p, GRID)
        x[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 1.0
    return x


def and_model() -> HookedViT:
    d, a = 16, 4.0
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=GRID * PATCH, patch_size=PATCH, depth=1,
                          embed_dim=d, num_heads=1, mlp_ratio=1.0, num_classes=2).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        blk = m.blocks[0]
        for norm in (blk.norm1, blk.norm2, m.norm):
            norm.weight.fill_(1.0)
        m.patch_embed.proj.weight[0] = 1.0 / (3 * PATCH * PATCH)  # slot 0: the patch's mean pixel (content)
        m.patch_embed.proj.bias[9], m.patch_embed.proj.bias[10] = a, -a  # keeps every token's LayerNorm scale
        m.cls_token[0, 0, 3], m.cls_token[0, 0, 4] = a, -a
        for p in (A, B):  # the key marker of the two AND tokens
            m.pos_embed[0, 1 + p, 1], m.pos_embed[0, 1 + p, 2] = a, -a
        W_q, W_k, W_v = blk.attn.qkv.weight.view(3, d, d)
        W_q[0, 3], W_k[0, 1] = 3.8, 3.8  # CLS attends to A and B (score ~20 each, every other token 0)
        W_v[0, 0] = 1.0  # value: content
        blk.attn.proj.weight[5, 0], blk.attn.proj.weight[6, 0] = 1.0, -1.0  # s = mean content of A, B (balanced)
        blk.mlp.fc1.weight[0, 5] = 1.0
        blk.mlp.fc2.weight[7, 0], blk.mlp.fc2.weight[8, 0] = 1.0, -1.0  # h: the AND unit's output (balanced)
        m.head.weight[0, 7], m.head.weight[1, 7] = 5.0, -5.0
        # The threshold: the unit's pre-activation with one and with both patches showing content, measured.
        pre = {}
        hook = blk.mlp.fc1.register_forward_hook(lambda mod, i, o: pre.__setitem__("v", o[:, 0, 0].clone()))
        x = and_images(1)
        one = x.clone()
        one[:, :, -PATCH:, -PATCH:] = 0.0  # B blank
        for k, img in (("both", x), ("one", one)):
            m(img)
            pre[k] = float(pre["v"][0])
        hook.remove()
        scale = 40.0 / (pre["both"] - pre["one"])
        blk.mlp.fc1.weight[0, 5] = scale
        blk.mlp.fc1.bias[0] = -scale * (pre["both"] + pre["one"]) / 2  # -20 with one patch, +20 with both
    return HookedViT.from_timm(m)


@torch.no_grad()
def naive_value(model, images, coalition, window, target, direction="denoising"):
    """v(S) by one full hooked forward per image: the zeros neutral (denoising) or the source (noising) with the
    patches of ``coalition`` pinned over ``window`` to the other run's resid_pre; logit readout."""
    layout = model.layout_for(images)
    neutral = torch.zeros_like(images)
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(*window)]
    pos = [layout.patch_positions()[i] for i in coalition]
    into, frm = (neutral, images) if direction == "denoising" else (images, neutral)
    _, cache = model.run_with_cache(frm, return_cache_object=False)

    def write(act, hook):
        act = act.clone()
        act[:, pos] = cache[hook.name][:, pos]
        return act

    logits = model.run_with_hooks(into, fwd_hooks=[(h, write) for h in hooks])
    v = logits.double().gather(1, target[:, None])[:, 0]
    if direction == "noising":
        return model(images).double().gather(1, target[:, None])[:, 0] - v
    return v

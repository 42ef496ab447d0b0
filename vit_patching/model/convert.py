"""timm ``VisionTransformer`` state dict -> HookedViT weights. Every timm key must be consumed."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import UnsupportedModelError, ViTConfig

# Leftover-key fragments and the timm feature they suggest, for the refusal message.
_FEATURE_HINTS = {
    "attn.norm": "scale_attn_norm",
    "mlp.norm": "scale_mlp_norm",
    "attn_pool": "attention-pool head (global_pool='map')",
    "gate": "gated attention",
    "rope": "rotary position embedding (EVA)",
    "gamma_1": "EVA LayerScale",
    "q_bias": "EVA attention biases",
    "fc1_g": "SwiGLU/GLU MLP",
    "patch_embed.norm": "patch-embedding norm",
}


def convert_timm_state_dict(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map a timm ViT's parameters and buffers to HookedViT parameter names.

    Args:
        model: The timm model the config was read from.
        cfg: Its :class:`ViTConfig`.

    Returns:
        A state dict for :class:`HookedViT` (``strict=True`` loadable).

    Raises:
        UnsupportedModelError: if any timm parameter or buffer is left unconsumed.

    Example:
        >>> import timm
        >>> from vit_patching.model.config import config_from_timm
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
        >>> sd = convert_timm_state_dict(m, config_from_timm(m))
        >>> tuple(sd["blocks.0.attn.w_qkv"].shape)
        (576, 192)
    """
    src = {k: v.detach() for k, v in model.state_dict().items()}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in src:
            raise UnsupportedModelError(f"expected timm key {key!r} is missing")
        used.add(key)
        return src[key].clone()

    h, dm, dh = cfg.n_heads, cfg.d_model, cfg.d_head
    out: dict[str, Tensor] = {}
    w_e = take("patch_embed.proj.weight")
    out["embed.W_E"] = w_e
    # CLIP-style pre_norm has no patch-embedding bias: exactly zero, not a default fill.
    out["embed.b_E"] = take("patch_embed.proj.bias") if cfg.patch_bias else torch.zeros(dm, dtype=w_e.dtype)
    if cfg.has_cls:
        out["embed.cls_token"] = take("cls_token").reshape(dm)
    if cfg.has_dist:
        out["embed.dist_token"] = take("dist_token").reshape(dm)
    if cfg.n_registers:
        out["embed.reg_tokens"] = take("reg_token").reshape(cfg.n_registers, dm)
    if cfg.has_pos_embed:
        out["pos_embed.W_pos"] = take("pos_embed").reshape(cfg.n_pos_embed, dm)
    else:
        out["pos_embed.W_pos"] = torch.zeros(cfg.n_pos_embed, dm, dtype=w_e.dtype)
    if cfg.pre_norm:
        out["ln_pre.w"], out["ln_pre.b"] = take("norm_pre.weight"), take("norm_pre.bias")

    for i in range(cfg.n_layers):
        p, q = f"blocks.{i}.", f"blocks.{i}."
        out[q + "ln1.w"], out[q + "ln1.b"] = take(p + "norm1.weight"), take(p + "norm1.bias")
        out[q + "ln2.w"], out[q + "ln2.b"] = take(p + "norm2.weight"), take(p + "norm2.bias")
        w_qkv = take(p + "attn.qkv.weight")
        out[q + "attn.w_qkv"] = w_qkv
        out[q + "attn.b_qkv"] = (
            take(p + "attn.qkv.bias") if p + "attn.qkv.bias" in src else torch.zeros(3 * h * dh, dtype=w_qkv.dtype)
        )
        if cfg.qk_norm:
            for nm in ("q_norm", "k_norm"):
                out[q + f"attn.{nm}.w"] = take(p + f"attn.{nm}.weight")
                out[q + f"attn.{nm}.b"] = take(p + f"attn.{nm}.bias")
        w_o = take(p + "attn.proj.weight")
        b_o = take(p + "attn.proj.bias") if p + "attn.proj.bias" in src else torch.zeros(dm, dtype=w_o.dtype)
        w_fc2 = take(p + "mlp.fc2.weight")
        # proj_bias=False drops the attention-proj and MLP biases: exactly zero, as for qkv_bias=False.
        b_out = take(p + "mlp.fc2.bias") if p + "mlp.fc2.bias" in src else torch.zeros(dm, dtype=w_fc2.dtype)
        # LayerScale stays a separate gamma (applied after the projection, as timm) so that the forward rounds
        # exactly as timm's; W_O / W_out fold it in on access.
        if cfg.layer_scale:
            out[q + "attn.ls_gamma"], out[q + "mlp.ls_gamma"] = take(p + "ls1.gamma"), take(p + "ls2.gamma")
        out[q + "attn.w_proj"], out[q + "attn.b_proj"] = w_o, b_o
        out[q + "mlp.w_fc1"] = take(p + "mlp.fc1.weight")
        out[q + "mlp.b_in"] = (
            take(p + "mlp.fc1.bias") if p + "mlp.fc1.bias" in src else torch.zeros(cfg.d_mlp, dtype=w_fc2.dtype)
        )
        out[q + "mlp.w_fc2"], out[q + "mlp.b_fc2"] = w_fc2, b_out

    if cfg.final_norm:
        out["ln_final.w"], out["ln_final.b"] = take("norm.weight"), take("norm.bias")
    if cfg.fc_norm:
        out["fc_norm.w"], out["fc_norm.b"] = take("fc_norm.weight"), take("fc_norm.bias")
    if cfg.n_classes:
        out["head.w_head"], out["head.b_H"] = take("head.weight"), take("head.bias")
        if cfg.has_dist:
            out["head.w_head_dist"] = take("head_dist.weight")
            out["head.b_H_dist"] = take("head_dist.bias")

    left = sorted(set(src) - used)
    if left:
        hints = sorted({f for frag, f in _FEATURE_HINTS.items() if any(frag in k for k in left)})
        raise UnsupportedModelError(
            f"timm weights not consumed by the conversion: {left[:12]}{' ...' if len(left) > 12 else ''}"
            + (f" (they suggest: {', '.join(hints)})" if hints else "")
            + "; refusing to convert rather than drop them"
        )
    return out

"""timm ``VisionTransformer`` state dict -> HookedViT weights. Every timm key must be consumed."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import UnsupportedModelError, ViTConfig
from .eva import eva_block_weights, is_eva, rope_tables
from .parallel import parallel_block_weights

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
        >>> from vit_patching.model.timm_config import config_from_timm
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

    def norm(dst: str, key: str) -> None:
        """A LayerNorm's weight and bias, or an RmsNorm's weight (it has no bias)."""
        out[dst + ".w"] = take(key + ".weight")
        if cfg.norm_kind == "LN":
            out[dst + ".b"] = take(key + ".bias")

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
    if cfg.embed_norm:
        norm("embed.ln", "patch_embed.norm")
    if cfg.pre_norm:
        norm("ln_pre", "norm_pre")

    eva = is_eva(model)
    tables = rope_tables(model, cfg) if cfg.rope else None
    if tables is not None:  # learned rope frequencies (rope_type="mixed") live on in the per-block tables
        for key in [k for k in src if k.startswith("rope.")]:
            take(key)
    for i in range(cfg.n_layers):
        p, q = f"blocks.{i}.", f"blocks.{i}."
        if cfg.parallel_attn_mlp:  # ParallelScalingBlock: one in_norm, fused in_proj, two out projections
            norm(q + "ln1", p + "in_norm")
            if cfg.qk_norm:
                norm(q + "attn.q_norm", p + "q_norm")
                norm(q + "attn.k_norm", p + "k_norm")
            out.update({q + k: v for k, v in parallel_block_weights(take, src, i, cfg).items()})
            continue
        norm(q + "ln1", p + "norm1")
        norm(q + "ln2", p + "norm2")
        if eva:  # fused or separate q/k/v, EVA's q/v-only biases, grouped K/V; gamma_1 folded into proj
            ew = eva_block_weights(model, cfg, take, src, i)
            out[q + "attn.w_qkv"], out[q + "attn.b_qkv"] = ew["attn.w_qkv"], ew["attn.b_qkv"]
        else:
            w_qkv = take(p + "attn.qkv.weight")
            out[q + "attn.w_qkv"] = w_qkv
            out[q + "attn.b_qkv"] = (
                take(p + "attn.qkv.bias") if p + "attn.qkv.bias" in src else torch.zeros(3 * h * dh, dtype=w_qkv.dtype)
            )
        if tables is not None:
            out[q + "attn.rope_table"] = tables[i]
        if cfg.qk_norm:
            for nm in ("q_norm", "k_norm"):
                norm(q + f"attn.{nm}", p + f"attn.{nm}")
        if cfg.attn_norm:
            norm(q + "attn.ln", p + "attn.norm")
        if eva:
            w_o, b_o = ew["attn.w_proj"], ew["attn.b_proj"]
        else:
            w_o = take(p + "attn.proj.weight")
            b_o = take(p + "attn.proj.bias") if p + "attn.proj.bias" in src else torch.zeros(dm, dtype=w_o.dtype)
        w_fc2 = take(p + "mlp.fc2.weight")
        # proj_bias=False drops the attention-proj and MLP biases: exactly zero, as for qkv_bias=False.
        b_out = take(p + "mlp.fc2.bias") if p + "mlp.fc2.bias" in src else torch.zeros(dm, dtype=w_fc2.dtype)
        # timm LayerScale (ls1/ls2) stays a separate gamma, applied after the projection as timm does, so the
        # forward rounds exactly as timm's; W_O / W_out fold it in on access. Eva's gamma_1/gamma_2 fold here.
        if cfg.layer_scale:
            out[q + "attn.ls_gamma"], out[q + "mlp.ls_gamma"] = take(p + "ls1.gamma"), take(p + "ls2.gamma")
        if eva and ew["gamma_2"] is not None:  # Eva's LayerScale on the MLP branch
            g = ew["gamma_2"]
            w_fc2, b_out = w_fc2 * g[:, None], b_out * g
        out[q + "attn.w_proj"], out[q + "attn.b_proj"] = w_o, b_o
        if cfg.gated_mlp:
            _gated_mlp(out, take, src, p + "mlp.", q + "mlp.", model.blocks[i].mlp, cfg.d_mlp)
        else:
            out[q + "mlp.w_fc1"] = take(p + "mlp.fc1.weight")
            out[q + "mlp.b_in"] = (
                take(p + "mlp.fc1.bias") if p + "mlp.fc1.bias" in src else torch.zeros(cfg.d_mlp, dtype=w_fc2.dtype)
            )
        if cfg.mlp_norm:
            norm(q + "mlp.ln", p + "mlp.norm")
        out[q + "mlp.w_fc2"], out[q + "mlp.b_fc2"] = w_fc2, b_out

    if cfg.final_norm:
        norm("ln_final", "norm")
    if cfg.pool_n_heads:
        _attn_pool(out, take, src, norm, dm)
    if cfg.fc_norm:
        norm("fc_norm", "fc_norm")
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


def _opt(take, src: dict[str, Tensor], key: str, n: int, like: Tensor) -> Tensor:
    """An optional bias: timm's tensor, or exact zeros where the layer has none."""
    return take(key) if key in src else torch.zeros(n, dtype=like.dtype)


def _gated_mlp(out: dict, take, src: dict[str, Tensor], p: str, q: str, mlp: nn.Module, d_mlp: int) -> None:
    """GluMlp / SwiGLUPacked (one fused fc1, halves split by ``gate_last``) or SwiGLU (fc1_g and fc1_x)."""
    if p + "fc1_g.weight" in src:  # SwiGLU
        w_gate, w_lin = take(p + "fc1_g.weight"), take(p + "fc1_x.weight")
        b_gate = _opt(take, src, p + "fc1_g.bias", d_mlp, w_gate)
        b_lin = _opt(take, src, p + "fc1_x.bias", d_mlp, w_lin)
    else:  # GluMlp: x1, x2 = fc1(x).chunk(2); x1 * act(x2) if gate_last else act(x1) * x2
        w = take(p + "fc1.weight")
        b = _opt(take, src, p + "fc1.bias", 2 * d_mlp, w)
        (w1, w2), (b1, b2) = w.chunk(2, dim=0), b.chunk(2, dim=0)
        if mlp.gate_last:
            w_lin, b_lin, w_gate, b_gate = w1, b1, w2, b2
        else:
            w_gate, b_gate, w_lin, b_lin = w1, b1, w2, b2
    out[q + "w_gate"], out[q + "b_gate"] = w_gate.contiguous(), b_gate.contiguous()
    out[q + "w_fc1"], out[q + "b_in"] = w_lin.contiguous(), b_lin.contiguous()


def _attn_pool(out: dict, take, src: dict[str, Tensor], norm, dm: int) -> None:
    """timm ``AttentionPoolLatent``: latent query, q and fused kv projections, out proj, norm + MLP readout."""
    p = "attn_pool."
    out["attn_pool.latent"] = take(p + "latent").reshape(dm)
    w_q = take(p + "q.weight")
    out["attn_pool.w_q"], out["attn_pool.b_q"] = w_q, _opt(take, src, p + "q.bias", dm, w_q)
    w_kv = take(p + "kv.weight")
    out["attn_pool.w_kv"], out["attn_pool.b_kv"] = w_kv, _opt(take, src, p + "kv.bias", 2 * dm, w_kv)
    w_o = take(p + "proj.weight")
    out["attn_pool.w_proj"], out["attn_pool.b_O"] = w_o, _opt(take, src, p + "proj.bias", dm, w_o)
    norm("attn_pool.ln", p + "norm")
    w1 = take(p + "mlp.fc1.weight")
    out["attn_pool.mlp.w_fc1"] = w1
    out["attn_pool.mlp.b_in"] = _opt(take, src, p + "mlp.fc1.bias", w1.shape[0], w1)
    w2 = take(p + "mlp.fc2.weight")
    out["attn_pool.mlp.w_fc2"], out["attn_pool.mlp.b_fc2"] = w2, _opt(take, src, p + "mlp.fc2.bias", dm, w2)

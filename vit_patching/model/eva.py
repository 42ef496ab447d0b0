"""timm's ``Eva`` family (EVA02, DINOv3, Perception Encoder, ``vit_*_rope_*``, Sapiens2): config and weights.

An ``Eva`` model is a pre-LN ViT with, depending on the variant, rotary position embeddings (RoPE) on the
patch tokens, LayerScale (``gamma_1``/``gamma_2``), SwiGLU / GLU MLPs with an optional sub-LN, RmsNorm,
q/k norms, grouped-query attention and an attention-pool head. It converts to the same :class:`HookedViT`
as a ``VisionTransformer``:

* RoPE: timm computes the sin/cos table from the patch grid (and, for ``rope_type="mixed"``, from learned
  per-layer frequencies). The table for the model's ``img_size`` is computed once with timm's own rope module
  (in eval mode) and stored per block as ``blocks.{i}.attn.rope_table``; the hooked model therefore takes that
  image size only (``dynamic_img_size`` is switched off and logged). Following TransformerLens,
  ``attn.hook_q``/``hook_k`` are before the rotation and ``attn.hook_rot_q``/``hook_rot_k`` after it.
* Grouped-query attention (``num_kv_heads < num_heads``): timm repeats each K/V head for its group of query
  heads; the conversion repeats the K/V weights the same way, so the forward pass is identical and
  ``hook_k``/``hook_v`` have one (repeated) entry per query head.
* LayerScale gammas fold into ``W_O``/``W_out`` exactly as for ``VisionTransformer``.

Refused (``UnsupportedModelError``): ``EvaBlockPostNorm`` (EVA02-enormous), gated attention, patch dropout
in training mode, MRoPE.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import UnsupportedModelError, ViTConfig

logger = logging.getLogger(__name__)


def is_eva(model: nn.Module) -> bool:
    """True for an instance of timm's ``timm.models.eva.Eva``."""
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def eva_config_fields(model: nn.Module) -> dict[str, Any]:
    """The attention/block part of a :class:`ViTConfig` for an ``Eva`` model, refusing what is not exact.

    Returns the keyword arguments that differ from a ``VisionTransformer`` reading (``rope``,
    ``rope_half``, ``eva_fused_rope``...); :func:`~vit_patching.model.timm_config.config_from_timm` does the rest.
    """
    from timm.layers.attention import AttentionRope
    from timm.models.eva import Eva, EvaAttention, EvaBlock

    if type(model) is not Eva:
        raise UnsupportedModelError(f"unsupported Eva subclass {type(model).__name__}")
    if model.patch_drop is not None and model.training:
        raise UnsupportedModelError("patch dropout in training mode is not supported")
    rope = model.rope
    for i, blk in enumerate(model.blocks):
        if type(blk) is not EvaBlock:
            raise UnsupportedModelError(f"blocks.{i} is {type(blk).__name__}; only timm's pre-LN EvaBlock is supported")
        attn = blk.attn
        if type(attn) not in (EvaAttention, AttentionRope):
            raise UnsupportedModelError(f"blocks.{i}.attn is {type(attn).__name__}; expected EvaAttention/AttentionRope")
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"blocks.{i}.attn: gated attention is not supported")
        if attn.proj.out_features != model.embed_dim or attn.head_dim * attn.num_heads != model.embed_dim:
            raise UnsupportedModelError(f"blocks.{i}.attn: attention width != embed_dim is not supported")
        if rope is not None and attn.num_prefix_tokens != model.num_prefix_tokens:
            raise UnsupportedModelError(f"blocks.{i}.attn: RoPE prefix count differs from the model's prefix tokens")
    rope_kind = ""
    if rope is not None:
        name = type(rope).__name__
        if name not in ("RotaryEmbeddingCat", "RotaryEmbeddingMixed", "RotaryEmbeddingDinoV3"):
            raise UnsupportedModelError(f"rotary embedding {name} is not supported (Cat, Mixed and DinoV3 are)")
        rope_kind = "mixed" if getattr(model, "rope_mixed", False) else "axial"
        if model.dynamic_img_size:
            logger.info(
                "%s: RoPE table computed for img_size %s only; the converted model does not take other sizes",
                type(model).__name__, tuple(model.patch_embed.img_size),
            )
    return dict(rope=rope_kind, rope_half=bool(getattr(model.blocks[0].attn, "rotate_half", False)) if rope else False)


@torch.no_grad()
def rope_tables(model: nn.Module, cfg: ViTConfig) -> list[Tensor]:
    """Per-block RoPE tables ``[n_patches, 1 or head, 2 * d_head]`` (sin then cos), computed by timm's module.

    The rope module is copied and put in eval mode first, so neither the timm model's state nor a training
    mode coordinate jitter can change the table.
    """
    rope = copy.deepcopy(model.rope).eval()
    grid = tuple(cfg.grid_size)
    emb = rope.get_embed() if getattr(rope, "feat_shape", None) is not None else rope.get_embed(shape=list(grid))
    n = cfg.n_patches
    if cfg.rope == "mixed":  # [depth, head, N, 2*d_head] -> per block [N, head, 2*d_head]
        if tuple(emb.shape) != (cfg.n_layers, cfg.n_heads, n, 2 * cfg.d_head):
            raise UnsupportedModelError(f"unexpected mixed RoPE table shape {tuple(emb.shape)}")
        return [emb[i].transpose(0, 1).contiguous() for i in range(cfg.n_layers)]
    if tuple(emb.shape) != (n, 2 * cfg.d_head):
        raise UnsupportedModelError(f"unexpected RoPE table shape {tuple(emb.shape)} for {n} patches")
    return [emb[:, None, :].clone() for _ in range(cfg.n_layers)]


def eva_block_weights(model: nn.Module, cfg: ViTConfig, take, src: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    """Attention weights and LayerScale gammas of ``blocks.{i}`` of an ``Eva``, in HookedViT names.

    Returns ``attn.w_qkv``, ``attn.b_qkv``, ``attn.w_proj``, ``attn.b_proj`` (``gamma_1`` folded in) and the
    ``gamma_2`` to fold into the MLP output (or ``None``).
    """
    p = f"blocks.{i}.attn."
    attn = model.blocks[i].attn
    h, dh, dm = cfg.n_heads, cfg.d_head, cfg.d_model
    zeros = torch.zeros(h * dh, dtype=src[p + "proj.weight"].dtype)

    def opt(key: str) -> Tensor:
        return take(key) if key in src else zeros

    if p + "qkv.weight" in src:
        w_qkv = take(p + "qkv.weight")
        if p + "qkv.bias" in src:
            b_qkv = take(p + "qkv.bias")
        else:  # EvaAttention: q_bias and v_bias parameters, k_bias a zero non-persistent buffer
            b_qkv = torch.cat([opt(p + "q_bias"), zeros, opt(p + "v_bias")])
    else:  # separate projections; grouped-query K/V repeated per query head, as timm's repeat_interleave
        groups = h // getattr(attn, "num_kv_heads", h)
        ws, bs = [], []
        for j, nm in enumerate(("q_proj", "k_proj", "v_proj")):
            w = take(p + nm + ".weight")
            b = take(p + nm + ".bias") if p + nm + ".bias" in src else torch.zeros(w.shape[0], dtype=w.dtype)
            if j:
                w = w.view(-1, dh, dm).repeat_interleave(groups, dim=0).reshape(h * dh, dm)
                b = b.view(-1, dh).repeat_interleave(groups, dim=0).reshape(h * dh)
            ws.append(w)
            bs.append(b)
        w_qkv, b_qkv = torch.cat(ws), torch.cat(bs)
    w_o = take(p + "proj.weight")
    b_o = take(p + "proj.bias") if p + "proj.bias" in src else torch.zeros(dm, dtype=w_o.dtype)
    g1 = f"blocks.{i}.gamma_1"
    if g1 in src:
        g = take(g1)
        w_o, b_o = w_o * g[:, None], b_o * g
    g2 = f"blocks.{i}.gamma_2"
    return {
        "attn.w_qkv": w_qkv,
        "attn.b_qkv": b_qkv,
        "attn.w_proj": w_o,
        "attn.b_proj": b_o,
        "gamma_2": take(g2) if g2 in src else None,
    }

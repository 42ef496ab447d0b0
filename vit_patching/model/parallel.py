"""timm's ``ParallelScalingBlock`` (ViT-22B style, ``vit_*_xp_*``): attention and MLP read one norm in parallel.

``resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln1(resid_pre))`` (TransformerLens's
``parallel_attn_mlp``). timm fuses the MLP ``fc1`` and the q/k/v projections into one ``in_proj``; the
conversion splits it, so the hooked block has the usual ``attn``/``mlp`` submodules and hook points except
``ln2`` and ``hook_resid_mid``, which a parallel block does not have.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .components import TransformerBlock
from .config import UnsupportedModelError, ViTConfig


def is_parallel_block(block: nn.Module) -> bool:
    from timm.models.vision_transformer import ParallelScalingBlock

    return type(block) is ParallelScalingBlock


def parallel_block_fields(block: nn.Module, i: int, d_model: int) -> dict[str, Any]:
    """Sizes, activation and norms of one ``ParallelScalingBlock``, refusing what HookedViT does not build."""
    from timm.layers import LayerScale

    if block.out_proj is not None:
        raise UnsupportedModelError(f"blocks.{i}: ParallelScalingBlock with fuse_out_proj is not supported")
    if not isinstance(block.ls, (nn.Identity, LayerScale)):
        raise UnsupportedModelError(f"blocks.{i}.ls: unsupported LayerScale {type(block.ls).__name__}")
    if block.num_heads * block.head_dim != d_model:
        raise UnsupportedModelError(f"blocks.{i}: attention width != embed_dim is not supported")
    return dict(
        n_heads=block.num_heads,
        d_head=block.head_dim,
        d_mlp=block.in_split[0],
        act=block.mlp_act,
        norms=[block.in_norm],
        qk_norms=[] if isinstance(block.q_norm, nn.Identity) else [block.q_norm, block.k_norm],
    )


def parallel_block_weights(take, src: dict[str, Tensor], i: int, cfg: ViTConfig) -> dict[str, Tensor]:
    """HookedViT weights of ``blocks.{i}`` (a ``ParallelScalingBlock``): ``in_proj`` split into fc1 and q/k/v,
    LayerScale folded into both output projections."""
    p = f"blocks.{i}."
    dm, dmlp = cfg.d_model, cfg.d_mlp
    w_in = take(p + "in_proj.weight")
    if p + "in_proj.bias" in src:
        b_in = take(p + "in_proj.bias")
    else:  # qkv_bias=False: no q/k/v biases, a separate mlp_bias
        b_in = torch.cat([take(p + "mlp_bias"), torch.zeros(3 * dm, dtype=w_in.dtype)])
    w_o, w_fc2 = take(p + "attn_out_proj.weight"), take(p + "mlp_out_proj.weight")
    zeros = torch.zeros(dm, dtype=w_o.dtype)
    b_o = take(p + "attn_out_proj.bias") if p + "attn_out_proj.bias" in src else zeros
    b_out = take(p + "mlp_out_proj.bias") if p + "mlp_out_proj.bias" in src else zeros
    if p + "ls.gamma" in src:  # ls(attn + mlp) = ls(attn) + ls(mlp): folds into both projections
        g = take(p + "ls.gamma")
        w_o, b_o, w_fc2, b_out = w_o * g[:, None], b_o * g, w_fc2 * g[:, None], b_out * g
    return {
        "attn.w_qkv": w_in[dmlp:].contiguous(),
        "attn.b_qkv": b_in[dmlp:].contiguous(),
        "attn.w_proj": w_o,
        "attn.b_proj": b_o,
        "mlp.w_fc1": w_in[:dmlp].contiguous(),
        "mlp.b_in": b_in[:dmlp].contiguous(),
        "mlp.w_fc2": w_fc2,
        "mlp.b_fc2": b_out,
    }


class ParallelBlock(TransformerBlock):
    """Parallel attention + MLP block: ``resid_post = resid_pre + attn_out + mlp_out``, both reading ``ln1``."""

    def __init__(self, cfg: ViTConfig, index: int):
        super().__init__(cfg, index)
        del self.ln2  # the MLP reads ln1's output
        del self.hook_resid_mid  # there is no residual stream between attention and MLP

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        if cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in:
            raise ValueError(
                "use_split_qkv_input, use_attn_in and use_hook_mlp_in are not available for parallel blocks"
                " (ParallelScalingBlock); switch them off"
            )
        resid = self.hook_resid_pre(resid)
        normed = self.ln1(resid)
        attn_out = self.hook_attn_out(self.attn(normed))
        mlp_out = self.hook_mlp_out(self.mlp(normed))
        return self.hook_resid_post(resid + attn_out + mlp_out)

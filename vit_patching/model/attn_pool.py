"""timm's ``AttentionPoolLatent`` (``global_pool="map"``, SigLIP) as a hooked HookedViT component."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .components import MLP, LayerNorm, is_hooked
from .config import ViTConfig


class AttentionPool(nn.Module):
    """One learned latent query attends over the final tokens; then ``out + mlp(ln(out))`` is the pooled vector.

    Equals timm's ``AttentionPoolLatent`` with ``latent_len=1`` (what ``global_pool="map"`` builds). The latent
    is a single query position, so ``hook_q``/``hook_z`` have a ``pos`` axis of length 1 and the pattern has one
    query row. The unhooked path runs ``scaled_dot_product_attention`` as timm does; a hook on
    ``hook_attn_scores`` or ``hook_pattern`` switches to the explicit softmax.

    The pooled vector is a non-linear function of the tokens (softmax over the keys, then a norm and an MLP),
    so there is no exact per-component logit decomposition through it: ``head_contributions`` refuses it.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dm = cfg.d_model
        self.n_heads = cfg.pool_n_heads
        self.d_head = dm // self.n_heads
        self.latent = nn.Parameter(torch.zeros(dm))
        self.w_q = nn.Parameter(torch.zeros(dm, dm))
        self.b_q = nn.Parameter(torch.zeros(dm))
        self.w_kv = nn.Parameter(torch.zeros(2 * dm, dm))
        self.b_kv = nn.Parameter(torch.zeros(2 * dm))
        self.w_proj = nn.Parameter(torch.zeros(dm, dm))
        self.b_O = nn.Parameter(torch.zeros(dm))
        self.ln = LayerNorm(dm, cfg.eps, rms=cfg.norm_kind == "RMS")
        # The pool's MLP is timm's plain Mlp (never gated, no sub-norm), with its own width.
        self.mlp = MLP(dataclasses.replace(cfg, d_mlp=cfg.pool_d_mlp, gated_mlp=False, mlp_norm=False, layer_scale=False))
        self.scale = self.d_head**-0.5
        self.hook_q = HookPoint()  # [batch 1 head d_head]
        self.hook_k = HookPoint()  # [batch pos head d_head]
        self.hook_v = HookPoint()  # [batch pos head d_head]
        self.hook_attn_scores = HookPoint()  # [batch head 1 pos]
        self.hook_pattern = HookPoint()  # [batch head 1 pos]
        self.hook_z = HookPoint()  # [batch 1 head d_head]
        self.hook_attn_out = HookPoint()  # [batch 1 d_model]
        self.hook_mlp_out = HookPoint()  # [batch 1 d_model]

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return self.w_proj.T.unflatten(0, (self.n_heads, self.d_head))

    def forward(self, tokens: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        b, p, _ = tokens.shape
        h, dh = self.n_heads, self.d_head
        q = F.linear(self.latent, self.w_q, self.b_q).view(1, 1, h, dh).expand(b, -1, -1, -1)
        if is_hooked(self.hook_q):
            q = q.clone()  # a real tensor, so hooks may write into it in place
        q = self.hook_q(q)
        k, v = F.linear(tokens, self.w_kv, self.b_kv).view(b, p, 2, h, dh).unbind(2)
        k, v = self.hook_k(k), self.hook_v(v)
        if self.cfg.use_fused_attn and not is_hooked(self.hook_attn_scores, self.hook_pattern):
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        else:
            scores = self.hook_attn_scores((q.transpose(1, 2) * self.scale) @ k.permute(0, 2, 3, 1))
            z = self.hook_pattern(scores.softmax(dim=-1)) @ v.transpose(1, 2)
        z = self.hook_z(z.transpose(1, 2))
        out = self.hook_attn_out(F.linear(z.flatten(2), self.w_proj, self.b_O))
        out = out + self.hook_mlp_out(self.mlp(self.ln(out)))
        return out[:, 0]

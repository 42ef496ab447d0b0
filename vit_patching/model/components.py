"""HookedViT building blocks, each with its TransformerLens-named HookPoints.

Weights are exposed in TransformerLens's right-multiplying convention (``W_Q [head d_model d_head]``,
``W_in [d_model d_mlp]``) as views of parameters kept in timm's layout, with timm's LayerScale folded into ``W_O``/``b_O`` and ``W_out``/``b_out`` so that ``hook_attn_out`` and
``hook_mlp_out`` are exactly what is added to the residual stream.

LayerScale (DeiT-III, DINOv2): the parameters stay timm's own (``w_proj``/``b_proj``/``ls_gamma``,
``w_fc2``/``b_fc2``/``ls_gamma``) and the forward multiplies by gamma after the projection, as timm does, so the
unhooked forward is bit-identical to timm's. ``W_O``/``b_O``/``W_out``/``b_out`` are then the folded products,
computed on access: new tensors, not views (an in-place write to them does not reach the model; call
``HookedViT.process_weights_(fold_layer_scale=True)`` first to fold gamma in and get writable views back).

Fast paths: a LayerNorm with no hook on ``hook_scale``/``hook_normalized`` runs ``F.layer_norm``; attention
with no hook on ``hook_attn_scores``/``hook_pattern`` (and ``use_fused_attn``) runs
``F.scaled_dot_product_attention``. Hooks on ``q``/``k``/``v``/``z`` fire on both paths. Every hook's return
value replaces the activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .config import ViTConfig


def is_hooked(*points: HookPoint) -> bool:
    """True if any forward, forward-pre or backward hook is attached to one of ``points``.

    Plain PyTorch ``register_forward_pre_hook`` counts too: such a hook may replace the activation, so the
    explicit path that materialises it must run.
    """
    return any(
        p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks for p in points
    )


def _act(x: Tensor, name: str) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x * torch.sigmoid(1.702 * x)  # quick_gelu, as timm and OpenAI CLIP


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with ``hook_scale`` and ``hook_normalized``.

    After ``fold_ln`` the affine parameters are folded into the next linear map and this module only
    normalises (TransformerLens's ``LNPre``): ``w``/``b`` are then ``None``.

    With ``rms=True`` it is timm's ``RmsNorm`` instead: no centring, ``scale = sqrt(mean(x^2) + eps)``, and a
    weight but no bias (``b`` is ``None``), as TransformerLens's ``RMSNorm``.
    """

    def __init__(self, length: int, eps: float, rms: bool = False):
        super().__init__()
        self.length = length
        self.eps = eps
        self.rms = rms
        self.w: nn.Parameter | None = nn.Parameter(torch.ones(length))
        self.b: nn.Parameter | None = None if rms else nn.Parameter(torch.zeros(length))
        self.hook_scale = HookPoint()  # [... 1]
        self.hook_normalized = HookPoint()  # [... length]

    @property
    def folded(self) -> bool:
        return self.w is None

    def remove_affine(self) -> None:
        """Drop ``w``/``b`` (after folding them elsewhere): the module becomes a pure normalisation."""
        del self.w, self.b
        self.w = None
        self.b = None

    def forward(self, x: Float[Tensor, "... length"]) -> Float[Tensor, "... length"]:
        if self.rms:
            return self._rms(x)
        if not is_hooked(self.hook_scale, self.hook_normalized):
            return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        if self.w is None:
            return x
        return x * self.w + self.b

    def _rms(self, x: Tensor) -> Tensor:
        if not is_hooked(self.hook_scale, self.hook_normalized):
            # timm's rms_norm, op for op (x * rsqrt(mean(x^2) + eps) * w)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return x if self.w is None else x * self.w
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return x if self.w is None else x * self.w


class Embed(nn.Module):
    """Conv patch embedding plus the prefix tokens (CLS, DIST, registers), as full-``pos`` rows."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        ph, pw = cfg.patch_size
        self.W_E = nn.Parameter(torch.zeros(cfg.d_model, cfg.in_chans, ph, pw))
        self.b_E = nn.Parameter(torch.zeros(cfg.d_model))
        self.cls_token = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.has_cls else None
        self.dist_token = nn.Parameter(torch.zeros(cfg.d_model)) if cfg.has_dist else None
        self.reg_tokens = nn.Parameter(torch.zeros(cfg.n_registers, cfg.d_model)) if cfg.n_registers else None
        if cfg.embed_norm:  # timm embed_norm_layer: normalises the patch tokens only, before the prefix
            self.ln = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")

    def prefix(self) -> Float[Tensor, "n_prefix d_model"]:
        parts = [t[None] for t in (self.cls_token, self.dist_token) if t is not None]
        if self.reg_tokens is not None:
            parts.append(self.reg_tokens)
        if not parts:
            return self.W_E.new_zeros(0, self.cfg.d_model)
        return torch.cat(parts, dim=0)

    def forward(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        x = F.conv2d(images, self.W_E, self.b_E, stride=self.cfg.patch_size)
        x = x.flatten(2).transpose(1, 2)  # row-major patches, as timm
        if self.cfg.embed_norm:
            x = self.ln(x)
        if self.cfg.n_prefix:
            x = torch.cat([self.prefix()[None].expand(x.shape[0], -1, -1), x], dim=1)
        return x


class PosEmbed(nn.Module):
    """Learned absolute position embedding (zero rows for prefix tokens under ``no_embed_class``)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_pos_embed, cfg.d_model))

    def table(self, grid_size: tuple[int, int]) -> Float[Tensor, "pos d_model"]:
        """Position rows for every token of an input with this patch grid."""
        cfg = self.cfg
        w = self.W_pos
        if tuple(grid_size) != cfg.grid_size:
            from timm.layers import resample_abs_pos_embed

            w = resample_abs_pos_embed(
                w[None],
                new_size=list(grid_size),
                old_size=list(cfg.grid_size),
                num_prefix_tokens=0 if cfg.no_embed_class else cfg.n_prefix,
            )[0]
        if cfg.no_embed_class and cfg.n_prefix:
            w = torch.cat([w.new_zeros(cfg.n_prefix, cfg.d_model), w], dim=0)
        return w


class Attention(nn.Module):
    """Multi-head self-attention with per-head weights and TransformerLens hook points."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        h, dm, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        # Stored in timm's fused (out, in) layout so the unhooked forward runs the same kernels as timm;
        # the TransformerLens-convention tensors below are views (in-place writes reach these parameters).
        self.w_qkv = nn.Parameter(torch.zeros(3 * h * dh, dm))
        self.b_qkv = nn.Parameter(torch.zeros(3 * h * dh))
        self.w_proj = nn.Parameter(torch.zeros(dm, h * dh))
        self.b_proj = nn.Parameter(torch.zeros(dm))
        # timm's LayerScale gamma, kept apart so the forward rounds as timm does (see the module docstring).
        self.ls_gamma: nn.Parameter | None = nn.Parameter(torch.ones(dm)) if cfg.layer_scale else None
        if cfg.qk_norm:
            self.q_norm = LayerNorm(dh, cfg.eps_qk, rms=cfg.norm_kind == "RMS")
            self.k_norm = LayerNorm(dh, cfg.eps_qk, rms=cfg.norm_kind == "RMS")
        self.scale = dh**-0.5
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()
        if cfg.attn_norm:  # scale_attn_norm: a norm over the concatenated heads, between z and W_O
            self.hook_z_pre_norm = HookPoint()  # [batch pos head d_head], pattern @ v before the norm
            self.ln = LayerNorm(h * dh, cfg.eps, rms=cfg.norm_kind == "RMS")
        if cfg.rope:  # timm Eva RoPE: a fixed sin|cos table for the patch tokens (prefix tokens are not rotated)
            width = cfg.n_heads if cfg.rope == "mixed" else 1
            self.register_buffer("rope_table", torch.zeros(cfg.n_patches, width, 2 * dh))
            self.hook_rot_q = HookPoint()  # [batch pos head d_head], q after the rotation
            self.hook_rot_k = HookPoint()  # [batch pos head d_head], k after the rotation

    def _w(self, j: int) -> Tensor:
        h, dh, dm = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model
        return self.w_qkv.view(3, h, dh, dm)[j].transpose(1, 2)

    def _b(self, j: int) -> Tensor:
        return self.b_qkv.view(3, self.cfg.n_heads, self.cfg.d_head)[j]

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._w(0)

    @property
    def W_K(self) -> Float[Tensor, "head d_model d_head"]:
        return self._w(1)

    @property
    def W_V(self) -> Float[Tensor, "head d_model d_head"]:
        return self._w(2)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self._b(0)

    @property
    def b_K(self) -> Float[Tensor, "head d_head"]:
        return self._b(1)

    @property
    def b_V(self) -> Float[Tensor, "head d_head"]:
        return self._b(2)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """Output weights, LayerScale folded in: a view of ``w_proj`` without LayerScale, else a new tensor."""
        w = self.w_proj if self.ls_gamma is None else self.w_proj * self.ls_gamma[:, None]
        return w.T.unflatten(0, (self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        """Output bias written to the residual stream (``b_proj``, times gamma under LayerScale)."""
        return self.b_proj if self.ls_gamma is None else self.b_proj * self.ls_gamma

    def forward(
        self,
        q_in: Float[Tensor, "batch pos ..."],
        k_in: Float[Tensor, "batch pos ..."] | None = None,
        v_in: Float[Tensor, "batch pos ..."] | None = None,
        *,
        n_queries: int | None = None,
    ) -> Float[Tensor, "batch query d_model"]:
        """Attention output of every token, or with ``n_queries`` of the first ``n_queries`` tokens only (every
        token is still a key and a value; ``query = n_queries``). ``n_queries`` needs the shared input and at most
        ``n_prefix`` queries: RoPE leaves prefix tokens unrotated, so their queries need no rotation table."""
        cfg = self.cfg
        if k_in is None and n_queries is not None:  # queries of the leading tokens, keys/values of all
            b, p = q_in.shape[:2]
            d = cfg.n_heads * cfg.d_head  # w_qkv rows: [q | k | v], each head-major as timm's fused layout
            q = F.linear(q_in[:, :n_queries], self.w_qkv[:d], self.b_qkv[:d]).view(b, n_queries, cfg.n_heads, -1)
            k, v = F.linear(q_in, self.w_qkv[d:], self.b_qkv[d:]).view(b, p, 2, cfg.n_heads, cfg.d_head).unbind(2)
        elif k_in is None:  # shared (layer-normed) input: one fused matmul, as timm
            b, p = q_in.shape[:2]
            q, k, v = F.linear(q_in, self.w_qkv, self.b_qkv).view(b, p, 3, cfg.n_heads, cfg.d_head).unbind(2)
        elif n_queries is not None:
            raise ValueError("n_queries: expected None with per-head q/k/v inputs (use_split_qkv_input, "
                             f"use_attn_in), got {n_queries}")
        else:  # per-head inputs [batch pos head d_model]
            q = torch.einsum("bphd,hde->bphe", q_in, self.W_Q) + self.b_Q
            k = torch.einsum("bphd,hde->bphe", k_in, self.W_K) + self.b_K
            v = torch.einsum("bphd,hde->bphe", v_in, self.W_V) + self.b_V
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cfg.rope:  # hook_q/hook_k before the rotation, hook_rot_q/hook_rot_k after (TransformerLens)
            q = q if n_queries is not None else self._rotate(q)  # only prefix queries: never rotated
            q, k = self.hook_rot_q(q), self.hook_rot_k(self._rotate(k))
        # Not fused for the readout's few queries: SDPA's CPU kernel then splits the keys across threads, so its
        # rounding would depend on the thread count (a 1-process run would differ from torchrun's 1-thread ranks).
        if cfg.use_fused_attn and n_queries is None and not is_hooked(self.hook_attn_scores, self.hook_pattern):
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            z = z.transpose(1, 2)
        else:
            scores = (q.transpose(1, 2) * self.scale) @ k.permute(0, 2, 3, 1)  # [b h q k], as timm
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = (pattern @ v.transpose(1, 2)).transpose(1, 2)
        if cfg.attn_norm:  # hook_z stays what W_O reads, so head results still sum to the attention output
            z = self.ln(self.hook_z_pre_norm(z).flatten(2)).unflatten(2, (cfg.n_heads, cfg.d_head))
        z = self.hook_z(z)
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        out = F.linear(z.flatten(2), self.w_proj, self.b_proj)
        return out if self.ls_gamma is None else out * self.ls_gamma  # timm's LayerScale, same rounding


    def _rotate(self, x: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head d_head"]:
        """timm's ``apply_rot_embed_cat`` on the patch tokens: ``x * cos + rot(x) * sin``."""
        n = self.cfg.n_prefix
        if x.shape[1] - n != self.rope_table.shape[0]:
            raise ValueError(f"RoPE table covers {self.rope_table.shape[0]} patches, got {x.shape[1] - n} tokens")
        sin, cos = self.rope_table.chunk(2, dim=-1)
        t = x[:, n:]
        if self.cfg.rope_half:  # [x0 x1 x2 x3] -> [-x2 -x3 x0 x1]
            t1, t2 = t.chunk(2, dim=-1)
            rot = torch.cat([-t2, t1], dim=-1)
        else:  # interleaved pairs: [x0 x1 x2 x3] -> [-x1 x0 -x3 x2]
            rot = torch.stack([-t[..., 1::2], t[..., ::2]], dim=-1).reshape(t.shape)
        return torch.cat([x[:, :n], (t * cos + rot * sin).to(x.dtype)], dim=1)


class MLP(nn.Module):
    """fc1 -> activation -> fc2, with ``hook_pre`` and ``hook_post``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        # timm (out, in) layout; W_in / W_out are TransformerLens-convention views.
        self.w_fc1 = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.w_fc2 = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_fc2 = nn.Parameter(torch.zeros(cfg.d_model))
        self.ls_gamma: nn.Parameter | None = nn.Parameter(torch.ones(cfg.d_model)) if cfg.layer_scale else None
        self.hook_pre = HookPoint()  # [batch pos d_mlp]
        self.hook_post = HookPoint()  # [batch pos d_mlp], what W_out reads (after the sub-norm if any)
        if cfg.mlp_norm:  # scale_mlp_norm, as TransformerLens's SoLU-LN: hook_mid -> ln -> hook_post
            self.hook_mid = HookPoint()  # [batch pos d_mlp], the activation before the norm
            self.ln = LayerNorm(cfg.d_mlp, cfg.eps, rms=cfg.norm_kind == "RMS")

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.w_fc1.T

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        """Output weights, LayerScale folded in: a view of ``w_fc2`` without LayerScale, else a new tensor."""
        return (self.w_fc2 if self.ls_gamma is None else self.w_fc2 * self.ls_gamma[:, None]).T

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        """Output bias written to the residual stream (``b_fc2``, times gamma under LayerScale)."""
        return self.b_fc2 if self.ls_gamma is None else self.b_fc2 * self.ls_gamma

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(F.linear(x, self.w_fc1, self.b_in))
        post = _act(pre, self.cfg.act_fn)
        if self.cfg.mlp_norm:
            post = self.ln(self.hook_mid(post))
        post = self.hook_post(post)
        out = F.linear(post, self.w_fc2, self.b_fc2)
        return out if self.ls_gamma is None else out * self.ls_gamma


class GatedMLP(MLP):
    """GLU / SwiGLU MLP (TransformerLens's gated MLP): ``act(x W_gate + b_gate) * (x W_in + b_in)`` -> ``W_out``.

    Hooks: ``hook_pre`` (gate pre-activation), ``hook_pre_linear`` (the linear path), ``hook_post`` (their
    product; after the sub-norm ``ln`` when the model has one, with ``hook_mid`` before it).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.w_gate = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.hook_pre_linear = HookPoint()  # [batch pos d_mlp]

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.w_gate.T

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(F.linear(x, self.w_gate, self.b_gate))
        pre_linear = self.hook_pre_linear(F.linear(x, self.w_fc1, self.b_in))
        post = _act(pre, self.cfg.act_fn) * pre_linear
        if self.cfg.mlp_norm:
            post = self.ln(self.hook_mid(post))
        post = self.hook_post(post)
        out = F.linear(post, self.w_fc2, self.b_fc2)
        return out if self.ls_gamma is None else out * self.ls_gamma


class TransformerBlock(nn.Module):
    """Pre-LN block: ``resid_mid = resid_pre + attn(ln1(.))``, ``resid_post = resid_mid + mlp(ln2(.))``."""

    def __init__(self, cfg: ViTConfig, index: int):
        super().__init__()
        self.cfg = cfg
        self.index = index
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")
        self.mlp = GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)
        for name in (
            "hook_resid_pre", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input",
            "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "hook_resid_post",
        ):  # fmt: skip
            setattr(self, name, HookPoint())

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"], *, n_out: int | None = None
    ) -> Float[Tensor, "batch out d_model"]:
        """The block's output residual; with ``n_out``, of the first ``n_out`` tokens only (``out = n_out``): the
        other tokens are read as keys and values but get no query, projection or MLP. Used for the last block
        when the head reads only CLS (:meth:`HookedViT.forward` ``readout_only``); every hook after
        ``hook_resid_pre`` then sees ``n_out`` tokens."""
        cfg = self.cfg
        resid = self.hook_resid_pre(resid)
        if n_out is not None:
            if cfg.use_split_qkv_input or cfg.use_attn_in:
                raise ValueError("n_out: expected None while use_split_qkv_input or use_attn_in is on (their hooks "
                                 f"read every token), got {n_out}")
            attn_out = self.attn(self.ln1(resid), n_queries=n_out)
            resid = resid[:, :n_out]
        elif cfg.use_split_qkv_input or cfg.use_attn_in:
            per_head = resid[:, :, None, :].expand(-1, -1, cfg.n_heads, -1)
            if cfg.use_attn_in:  # fires first, so it also feeds the q/k/v forks when both are on
                per_head = self.hook_attn_in(per_head.clone())
            if cfg.use_split_qkv_input:
                qkv_in = [hp(per_head.clone()) for hp in (self.hook_q_input, self.hook_k_input, self.hook_v_input)]
                # One LN1 call over the stacked q/k/v inputs, so its hooks fire once with every value.
                normed = self.ln1(torch.stack(qkv_in, dim=2))  # [batch pos 3 head d_model]
                attn_out = self.attn(*normed.unbind(2))
            else:
                normed = self.ln1(per_head)  # [batch pos head d_model], as TransformerLens
                attn_out = self.attn(normed, normed, normed)
        else:
            attn_out = self.attn(self.ln1(resid))
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(resid + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)


class Head(nn.Module):
    """Classifier head ``W_H [d_model n_classes]`` (and the distillation head of distilled DeiT)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.w_head = nn.Parameter(torch.zeros(cfg.n_classes, cfg.d_model))
        self.b_H = nn.Parameter(torch.zeros(cfg.n_classes))
        if cfg.has_dist:
            self.w_head_dist = nn.Parameter(torch.zeros(cfg.n_classes, cfg.d_model))
            self.b_H_dist = nn.Parameter(torch.zeros(cfg.n_classes))

    @property
    def W_H(self) -> Float[Tensor, "d_model n_classes"]:
        return self.w_head.T

    @property
    def W_H_dist(self) -> Float[Tensor, "d_model n_classes"]:
        return self.w_head_dist.T

    def forward(self, pooled: Tensor, pooled_dist: Tensor | None = None) -> Tensor:
        logits = F.linear(pooled, self.w_head, self.b_H)
        if pooled_dist is not None:  # distilled DeiT at eval: mean of the two heads
            logits = (logits + F.linear(pooled_dist, self.w_head_dist, self.b_H_dist)) / 2
        return logits

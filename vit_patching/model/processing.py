"""TransformerLens-style weight processing of a :class:`~vit_patching.model.hooked_vit.HookedViT` in place:
folding LayerNorms, LayerScale and value biases, centring writing weights (logits unchanged).

Functions of the model (``HookedViT.process_weights_`` calls :func:`process_weights`); they rely on its ``cfg``,
``blocks``, ``embed``, ``pos_embed``, ``head``, ``fc_norm``/``ln_final`` and ``setup``. This module does not import
``hooked_vit`` (which imports it), so the model is typed as an ``nn.Module``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_bool
from .components import LayerNorm
from .config import UnsupportedModelError, ViTConfig


def process_weights(
    model: nn.Module,
    *,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    fold_value_biases: bool = False,
    fold_layer_scale: bool = False,
) -> None:
    """Apply TransformerLens-style weight processing to ``model`` (a HookedViT) in place; logits are unchanged.

    Args:
        model: The HookedViT to process (``HookedViT.process_weights_`` passes itself).
        fold_ln: Fold LayerNorm affine weights into Q/K/V, MLP input and the head. The LNs then only
            normalise (``cfg.normalization_type == "LNPre"``); ``ln_pre`` (CLIP) and ``qk_norm`` stay.
        center_writing_weights: Remove the mean over ``d_model`` from everything written to the residual
            stream. Needs every reader of the residual to be a LayerNorm.
        fold_value_biases: ``b_O += sum_h b_V[h] @ W_O[h]`` and ``b_V = 0`` (pattern rows sum to 1).
        fold_layer_scale: Multiply LayerScale's gamma into ``w_proj``/``b_proj`` and ``w_fc2``/``b_fc2``
            (``cfg.layer_scale`` becomes False), so ``W_O``/``b_O``/``W_out``/``b_out`` are writable views again.
            The model then equals timm to float rounding instead of bit for bit. Implied by
            ``center_writing_weights`` and ``fold_value_biases``, which write to those weights.

    Example:
        >>> process_weights(model, fold_layer_scale=True); model.cfg.layer_scale
        False
    """
    for flag, value in (("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights),
                        ("fold_value_biases", fold_value_biases), ("fold_layer_scale", fold_layer_scale)):  # fmt: skip
        check_bool(value, flag)
    if model._modules.get("readout") is not None:  # in-place edits would reach the model it shares weights with
        raise ValueError("process_weights_: expected a model without a readout (it shares its weights with the "
                         "model it was made from); process that model first, then attach the readout")
    if fold_value_biases and model.cfg.attn_norm:
        raise UnsupportedModelError("fold_value_biases: b_V does not pass linearly through scale_attn_norm to W_O")
    _check_processing(model.cfg, fold_ln, center_writing_weights)
    with torch.no_grad():
        if fold_layer_scale or center_writing_weights or fold_value_biases:
            _fold_layer_scale(model)
        if fold_ln:
            _fold_ln(model)
        if center_writing_weights:
            _center_writing_weights(model)
        if fold_value_biases:
            for b in model.blocks:
                b.attn.b_proj.add_(torch.einsum("he,hed->d", b.attn.b_V, b.attn.W_O))
                b.attn.b_V.zero_()
    model.setup()


def _fold_layer_scale(model: nn.Module) -> None:
    """Fold every LayerScale gamma into its output projection (exact per-channel scaling, new rounding)."""
    for b in model.blocks:
        for module, w, bias in ((b.attn, b.attn.w_proj, b.attn.b_proj), (b.mlp, b.mlp.w_fc2, b.mlp.b_fc2)):
            if module.ls_gamma is not None:
                w.mul_(module.ls_gamma[:, None])
                bias.mul_(module.ls_gamma)
                del module.ls_gamma
                module.ls_gamma = None
    model.cfg.layer_scale = False


def _check_processing(cfg: ViTConfig, fold_ln: bool, center_writing_weights: bool) -> None:
    """Refuse inexact processing before any weight is touched (no half-processed model on error)."""
    if fold_ln:
        if cfg.normalization_type in ("LNPre", "RMSPre"):
            raise ValueError("LayerNorms are already folded")
        if cfg.parallel_attn_mlp:
            raise UnsupportedModelError("fold_ln is not implemented for parallel attention/MLP blocks")
        if cfg.global_pool in ("max", "avgmax") and cfg.final_norm:
            raise UnsupportedModelError(
                f"cannot fold the per-token final norm through global_pool={cfg.global_pool!r} (not linear)"
            )
    if center_writing_weights:
        if cfg.norm_kind == "RMS":
            raise UnsupportedModelError("center_writing_weights needs LayerNorm readers; RmsNorm does not centre")
        if not (cfg.final_norm or cfg.fc_norm):
            raise UnsupportedModelError("center_writing_weights needs a final norm or fc_norm reading the residual")
        if cfg.fc_norm and cfg.global_pool in ("max", "avgmax"):
            raise UnsupportedModelError(
                f"center_writing_weights does not commute with global_pool={cfg.global_pool!r}"
            )


def _fold_ln(model: nn.Module) -> None:
    cfg = model.cfg
    for b in model.blocks:
        w, bb = b.ln1.w, b.ln1.b
        for n in "QKV":
            W = getattr(b.attn, f"W_{n}")
            if bb is not None:  # RmsNorm has no bias
                getattr(b.attn, f"b_{n}").add_(torch.einsum("d,hde->he", bb, W))
            W.mul_(w[None, :, None])
        b.ln1.remove_affine()
        for wn, bn in (("W_in", "b_in"), ("W_gate", "b_gate")) if cfg.gated_mlp else (("W_in", "b_in"),):
            W = getattr(b.mlp, wn)
            if b.ln2.b is not None:
                getattr(b.mlp, bn).add_(b.ln2.b @ W)
            W.mul_(b.ln2.w[:, None])
        b.ln2.remove_affine()
    final = head_norm(model)
    if final is not None:
        for wn, bn in (("W_H", "b_H"), ("W_H_dist", "b_H_dist")):
            if hasattr(model.head, wn):
                W = getattr(model.head, wn)
                if final.b is not None:
                    getattr(model.head, bn).add_(final.b @ W)
                W.mul_(final.w[:, None])
        final.remove_affine()
    cfg.normalization_type = "RMSPre" if cfg.norm_kind == "RMS" else "LNPre"


def head_norm(model: nn.Module) -> LayerNorm | None:
    """The norm that ``fold_ln`` folds into the head: ``fc_norm``, else the per-token final norm."""
    cfg = model.cfg
    if not cfg.n_classes or cfg.global_pool == "map":  # the attention pool, not the head, reads ln_final
        return None
    return model.fc_norm if cfg.fc_norm else (model.ln_final if cfg.final_norm else None)


def _center_writing_weights(model: nn.Module) -> None:
    cfg = model.cfg

    def center(t: Tensor) -> None:
        t.sub_(t.mean(-1, keepdim=True))

    if not cfg.pre_norm:
        # With CLIP's ln_pre the residual starts as ln_pre's output (normalised * w + b), which no weight
        # change can centre; only the block writes are centred then. Logits are unchanged either way.
        center(model.embed.W_E.permute(1, 2, 3, 0))
        center(model.embed.b_E.view(1, -1))
        for t in (model.embed.cls_token, model.embed.dist_token, model.embed.reg_tokens):
            if t is not None:
                center(t.view(-1, cfg.d_model))
        center(model.pos_embed.W_pos)
    for b in model.blocks:
        center(b.attn.W_O)  # views: LayerScale was folded first
        center(b.attn.b_proj.view(1, -1))
        center(b.mlp.W_out)
        center(b.mlp.b_fc2.view(1, -1))

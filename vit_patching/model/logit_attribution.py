"""Direct logit attribution through a ViT classifier end: final norm / pooling / ``fc_norm`` / head; the logit lens.

TransformerLens's ``apply_ln_to_stack`` divides by ``ln_final.hook_scale`` per token, which is right for a
per-token final norm read at one position but wrong for ViTs with average pooling followed by ``fc_norm``
(the scale belongs to the pooled vector) and for distilled DeiT (two tokens, two heads). Here each residual
component is pushed through the *linearised* classifier end, using the cached norm scales, so that the
contributions of all components plus :func:`head_bias` add up to the logits exactly.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache

from ..hook_names import get_act_name
from .hooked_vit import HookedViT


def _cached(cache: ActivationCache, name: str) -> Tensor:
    try:
        return cache[name]
    except KeyError:
        raise KeyError(f"the cache lacks {name!r}: run run_with_cache without a names_filter that drops it") from None


def _pool(model: HookedViT, x: Tensor) -> Tensor:
    """Linear pooling of ``[..., pos, d_model]`` -> ``[..., n_read, d_model]`` (n_read = 2 for distilled)."""
    cfg = model.cfg
    if cfg.has_dist:
        return x[..., 0:2, :]
    if cfg.global_pool == "token":
        return x[..., 0:1, :]
    if cfg.global_pool == "avg":
        tokens = x if cfg.pool_include_prefix else x[..., cfg.n_prefix :, :]
        return tokens.mean(dim=-2, keepdim=True)
    raise ValueError(f"global_pool={cfg.global_pool!r} is not linear: no exact logit attribution exists")


def _head_weights(model: HookedViT) -> list[tuple[Tensor, Tensor]]:
    head = model.head
    pairs = [(head.W_H, head.b_H)]
    if model.cfg.has_dist:
        pairs.append((head.W_H_dist, head.b_H_dist))
    return pairs


def head_contributions(
    model: HookedViT,
    cache: ActivationCache,
    stack: Float[Tensor, "component batch pos d_model"],
) -> Float[Tensor, "component batch n_classes"]:
    """Logit contribution of each residual component (e.g. from ``cache.decompose_resid()``).

    Args:
        model: The HookedViT the cache came from.
        cache: Its ``ActivationCache`` (needs ``ln_final.hook_scale`` or ``fc_norm.hook_scale``).
        stack: Components that sum to the final residual stream ``[component, batch, pos, d_model]``.

    Returns:
        ``[component, batch, n_classes]``; ``contributions.sum(0) + head_bias(model, cache)`` equals the logits.

    Example:
        >>> logits, cache = model.run_with_cache(images)
        >>> parts, labels = cache.decompose_resid(return_labels=True)
        >>> contrib = head_contributions(model, cache, parts)   # [component, batch, n_classes]
    """
    cfg = model.cfg
    model._require_head()
    if stack.ndim != 4 or stack.shape[-1] != cfg.d_model:
        raise ValueError(f"stack must be [component, batch, pos, {cfg.d_model}], got {tuple(stack.shape)}")
    if cfg.final_norm:  # per-token LN before pooling: linear given the cached per-token scale
        scale = _cached(cache, "ln_final.hook_scale")
        x = (stack - stack.mean(-1, keepdim=True) if cfg.norm_kind == "LN" else stack) / scale
        x = _pool(model, x)
        if not model.ln_final.folded:
            x = x * model.ln_final.w
    else:
        x = _pool(model, stack)
        if cfg.fc_norm:
            scale = _cached(cache, "fc_norm.hook_scale")[:, None, :]  # [batch, 1, 1] for the pooled vector
            x = (x - x.mean(-1, keepdim=True) if cfg.norm_kind == "LN" else x) / scale
            if not model.fc_norm.folded:
                x = x * model.fc_norm.w
    pairs = _head_weights(model)
    out = sum(x[..., r, :] @ W for r, (W, _) in enumerate(pairs))
    return out / len(pairs)


def head_bias(model: HookedViT, cache: ActivationCache) -> Float[Tensor, "batch n_classes"]:
    """The part of the logits that no residual component carries (norm bias and head bias)."""
    cfg = model.cfg
    model._require_head()
    batch = _cached(cache, "hook_pooled").shape[0]
    norm = model.ln_final if cfg.final_norm else (model.fc_norm if cfg.fc_norm else None)
    total = 0.0
    for W, b in _head_weights(model):
        total = total + b + (norm.b @ W if norm is not None and norm.b is not None else 0.0)
    bias = total / len(_head_weights(model))
    return torch.as_tensor(bias).expand(batch, cfg.n_classes)


def logit_lens(model: HookedViT, cache: ActivationCache) -> Float[Tensor, "layer_plus_one batch n_classes"]:
    """The logit lens: the model's own readout applied to the residual stream after each number of blocks.

    Row ``l`` is what the classifier would output if the network stopped after ``l`` blocks: the residual
    entering block ``l`` (``blocks.{l}.hook_resid_pre``; row ``n_layers`` is the last block's output) goes
    through the final norm with its *own* statistics, the pooling, ``fc_norm`` and the head, exactly as
    ``model(resid, start_at_layer=n_layers)`` computes them. It equals a timm model truncated to its first
    ``l`` blocks, so it is defined for every pooling (``avg`` pooling reads the mean of the pooled tokens,
    CLS pooling the CLS stream, an attention pool runs on the whole residual). On a CLS-pooled model with a
    per-token final norm it equals TransformerLens's
    ``cache.accumulated_resid(apply_ln=True, pos_slice=0) @ model.W_U + model.b_U`` (which recomputes the norm
    for each layer); that recipe does not know ``fc_norm``, average or attention pooling, or distilled heads.

    Args:
        model: The HookedViT the cache came from.
        cache: Its ``ActivationCache`` with every ``blocks.{l}.hook_resid_pre`` and the last ``hook_resid_post``.

    Returns:
        ``[n_layers + 1, batch, n_classes]``; the last row equals the logits.

    Raises:
        ValueError: the model has no classifier head (it outputs pooled features: no class scores to read).
        KeyError: the cache lacks a residual stream it needs.

    Example:
        >>> logits, cache = model.run_with_cache(images)
        >>> lens = logit_lens(model, cache)                 # [n_layers + 1, batch, n_classes]
        >>> torch.allclose(lens[-1], logits, atol=1e-5)
        True
    """
    model._require_head()
    L = model.cfg.n_layers
    names = [get_act_name("resid_pre", l) for l in range(L)] + [get_act_name("resid_post", L - 1)]
    resids = [_cached(cache, name) for name in names]  # all looked up before any compute
    return torch.stack([model(r, start_at_layer=L) for r in resids])

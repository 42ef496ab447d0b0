"""Direct logit attribution through a ViT classifier end: final norm / pooling / ``fc_norm`` / head / readout;
the logit lens.

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
from .readout import Readout
from .hooked_vit import HookedViT, check_scores


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


def _normed_tokens(model: HookedViT, cache: ActivationCache, stack: Tensor) -> Tensor:
    """The final per-token norm, linearised with its cached scale (the stack itself without one)."""
    if not model.cfg.final_norm:
        return stack
    scale = _cached(cache, "ln_final.hook_scale")
    x = (stack - stack.mean(-1, keepdim=True) if model.cfg.norm_kind == "LN" else stack) / scale
    return x if model.ln_final.folded else x * model.ln_final.w


def _pooled(model: HookedViT, cache: ActivationCache, stack: Tensor) -> Tensor:
    """Final norm / pooling / ``fc_norm``, linearised: ``[component, batch, n_read, d_model]``."""
    cfg = model.cfg
    if cfg.final_norm:  # per-token LN before pooling: linear given the cached per-token scale
        return _pool(model, _normed_tokens(model, cache, stack))
    x = _pool(model, stack)
    if cfg.fc_norm:
        scale = _cached(cache, "fc_norm.hook_scale")[:, None, :]  # [batch, 1, 1] for the pooled vector
        x = (x - x.mean(-1, keepdim=True) if cfg.norm_kind == "LN" else x) / scale
        if not model.fc_norm.folded:
            x = x * model.fc_norm.w
    return x


def _readout(model: HookedViT) -> tuple[Readout, Tensor, Tensor] | None:
    """The attached linear readout and its ``(W, b)``; ``None`` for the model's own head."""
    readout = model._modules.get("readout")
    if readout is None or readout.reads == "head":
        return None
    lin = readout.linear_map()
    if lin is None:
        raise ValueError(f"the readout ({readout.describe()}) is not linear: no exact logit attribution exists")
    return readout, lin[0], lin[1]


def _projection(model: HookedViT) -> bool:
    return getattr(model, "head", None) is not None and model.cfg.head_kind == "projection"


def _frozen_scale(readout: Readout, cache: ActivationCache) -> Tensor | float:
    """The readout's per-image normalisation ``[batch, 1]``, frozen at its cached value (1 without one)."""
    return _cached(cache, "readout.hook_scale") if getattr(readout, "normalize", False) else 1.0


def head_contributions(
    model: HookedViT,
    cache: ActivationCache,
    stack: Float[Tensor, "component batch pos d_model"],
) -> Float[Tensor, "component batch n_classes"]:
    """Logit contribution of each residual component (e.g. from ``cache.decompose_resid()``).

    With a linear readout attached (``ZeroShotHead``, ``EmbeddingSimilarity``, ``LinearProbe``, an
    ``nn.Linear``) the contributions are to its scores, through the projection head if any; a normalising
    readout's per-image norm is frozen at ``readout.hook_scale``, as the final LayerNorm's scale is.

    Args:
        model: The HookedViT the cache came from.
        cache: Its ``ActivationCache`` (needs ``ln_final.hook_scale`` or ``fc_norm.hook_scale``, and
            ``readout.hook_scale`` for a normalising readout).
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
    linear = _readout(model)
    if linear is None:
        x = _pooled(model, cache, stack)
        pairs = _head_weights(model)
        out = sum(x[..., r, :] @ W for r, (W, _) in enumerate(pairs))
        return out / len(pairs)
    readout, W, _ = linear
    if readout.reads == "tokens":
        feats = readout.select(_normed_tokens(model, cache, stack))
    else:
        feats = _pooled(model, cache, stack).mean(-2)  # distilled DeiT without heads: mean of CLS and DIST
        if _projection(model):
            feats = feats @ model.head.W_H
    return (feats @ W) / _frozen_scale(readout, cache)


def head_bias(model: HookedViT, cache: ActivationCache) -> Float[Tensor, "batch n_classes"]:
    """The part of the logits that no residual component carries (norm bias, head and readout bias)."""
    cfg = model.cfg
    model._require_head()
    batch = _cached(cache, "hook_pooled" if "hook_pooled" in cache.cache_dict else "ln_final.hook_scale").shape[0]
    linear = _readout(model)
    if linear is not None and linear[0].reads == "tokens":
        norm = model.ln_final if cfg.final_norm else None
    else:
        norm = model.ln_final if cfg.final_norm else (model.fc_norm if cfg.fc_norm else None)
    has_b = norm is not None and norm.b is not None
    if linear is None:
        total = 0.0
        for W, b in _head_weights(model):
            total = total + b + (norm.b @ W if has_b else 0.0)
        bias = total / len(_head_weights(model))
        return torch.as_tensor(bias).expand(batch, cfg.n_classes)
    readout, W, b = linear
    nb = norm.b if has_b else torch.zeros(cfg.d_model, device=model.device, dtype=model.dtype)
    if readout.reads == "tokens":  # the same bias on every token: select reads it as a feature vector
        feats = readout.select(nb.expand(cfg.n_prefix + 1, cfg.d_model))
    else:
        feats = nb @ model.head.W_H + model.head.b_H if _projection(model) else nb
    return ((feats @ W) / _frozen_scale(readout, cache) + b).expand(batch, cfg.n_classes)


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

    With a readout attached (``model.with_readout``: a zero-shot head, a probe) each row is that readout's
    scores; a headless or projection-head model without one is refused (it outputs features, not scores).

    Raises:
        ValueError: the model gives no class scores (no classifier head and no readout).
        KeyError: the cache lacks a residual stream it needs.

    Example:
        >>> logits, cache = model.run_with_cache(images)
        >>> lens = logit_lens(model, cache)                 # [n_layers + 1, batch, n_classes]
        >>> torch.allclose(lens[-1], logits, atol=1e-5)
        True
    """
    check_scores(model)
    L = model.cfg.n_layers
    names = [get_act_name("resid_pre", l) for l in range(L)] + [get_act_name("resid_post", L - 1)]
    resids = [_cached(cache, name) for name in names]  # all looked up before any compute
    return torch.stack([model(r, start_at_layer=L) for r in resids])

"""Attention-based attribution: raw attention, attention rollout and gradient-weighted attention (Chefer et al.).

All three read one *query* row of an attention-derived ``[pos, pos]`` matrix and keep its patch columns. The
query is the token(s) the classifier reads (:func:`readout_query`):

* CLS-pooled models (``global_pool="token"``): the CLS row (the usual choice);
* distilled DeiT: the mean of the CLS and DIST rows (its logits average the two heads);
* average / max pooled models without a CLS token (e.g. ``toy-conjunction``): the **mean over the pooled
  token rows** (the patch rows, plus the prefix rows if ``pool_include_prefix``). For average pooling this is
  exact: the pooled feature is the mean of those tokens, so its attention-flow is the mean of their rows. For
  max pooling it is the same average, a stated approximation.

Example:
    >>> from vit_patching.attribution import get_method
    >>> get_method("gae", model).attribute(images).patch_map.shape
    torch.Size([2, 4, 4])
"""
from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.attribution.base import AttributionMethod
from vit_patching.hook_names import get_act_name
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT

__all__ = ["GradientAttention", "RawAttention", "Rollout", "readout_query"]


def readout_query(model: HookedViT, n_pos: int) -> tuple[Float[Tensor, "pos"], str]:
    """Weights over token rows that the classifier reads, and a description for the settings.

    Args:
        model: a HookedViT.
        n_pos: sequence length (prefix + patches).

    Returns:
        ``(weights [pos], description)``; the weights sum to 1.

    Example:
        >>> w, how = readout_query(model, 17)   # a CLS model with a 4x4 grid
        >>> w[0].item(), how
        (1.0, 'CLS row')
    """
    cfg = model.cfg
    w = torch.zeros(n_pos)
    if cfg.has_dist:
        w[:2] = 0.5
        return w, "mean of CLS and DIST rows (distilled head)"
    if cfg.global_pool == "token":
        w[0] = 1.0
        return w, "CLS row"
    if cfg.global_pool == "":
        raise ValueError("model: global_pool='' classifies every token separately; attention maps need a pooled readout")
    lo = 0 if cfg.pool_include_prefix else cfg.n_prefix
    w[lo:] = 1.0 / (n_pos - lo)
    rows = "all token rows" if cfg.pool_include_prefix else "patch-token rows"
    return w, f"mean of {rows} ({cfg.global_pool} pooling, no CLS readout)"


class _AttentionMethod(AttributionMethod):
    """Shared plumbing: patterns of every layer, the readout query, and reading the patch columns."""

    native = "patch"

    def _patterns_cache(self, images: Tensor) -> list[Tensor]:
        names = [get_act_name("pattern", l) for l in range(self.model.cfg.n_layers)]
        with torch.no_grad():
            _, cache = self.model.run_with_cache(images, names_filter=lambda n: n in names, return_cache_object=False)
        return [cache[n] for n in names]

    def _read(self, matrix: Float[Tensor, "batch pos pos"], images: Tensor) -> Tensor:
        """Query-weighted rows of ``matrix``, patch columns, on the grid."""
        layout = self.model.layout_for(images)
        q, _ = readout_query(self.model, layout.n_pos)
        row = torch.einsum("q,bqk->bk", q.to(matrix), matrix)
        return layout.to_grid(row)

    def options(self) -> dict[str, Any]:
        return {"query": readout_query(self.model, self.model.layout.n_pos)[1]}


class RawAttention(_AttentionMethod):
    """Raw attention: the head-mean attention pattern of one layer (default the last), query row(s) -> patches.

    Cost: one forward pass per image.

    Args:
        model: a HookedViT with a classification head.
        layer: block whose pattern is read (negative counts from the end; default -1).
        upsample: patch -> pixel rule (see :class:`AttributionMethod`).

    Example:
        >>> RawAttention(model).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "raw_attention"

    def __init__(self, model: HookedViT, *, layer: int = -1, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self.layer = self._block_index(layer)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "layer": self.layer, "head_fusion": "mean"}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        name = get_act_name("pattern", self.layer)
        with torch.no_grad():
            _, cache = self.model.run_with_cache(images, names_filter=lambda n: n == name, return_cache_object=False)
        return self._read(cache[name].mean(dim=1), images)


class Rollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema, 2020): ``R = Â_{L-1} ... Â_0`` with ``Â_l = 0.5 mean_h A_l + 0.5 I``.

    Head-mean fusion, no discarding (the paper's method; vit-explain's max/min fusion and ``discard_ratio`` are
    variants). The map is the query row(s) of ``R``, patch columns. Class-agnostic. One forward pass per image.

    Example:
        >>> Rollout(model).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "rollout"

    def options(self) -> dict[str, Any]:
        return {**super().options(), "head_fusion": "mean", "residual": 0.5}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        patterns = self._patterns_cache(images)
        eye = torch.eye(patterns[0].shape[-1], dtype=patterns[0].dtype, device=images.device)
        rollout = eye.expand(images.shape[0], -1, -1)
        for a in patterns:  # layer order: R <- Â_l R
            rollout = (0.5 * a.mean(dim=1) + 0.5 * eye) @ rollout
        return self._read(rollout, images)


class GradientAttention(_AttentionMethod):
    """Gradient-weighted attention rollout, "generic attention explainability" (Chefer et al., ICCV 2021; GAE).

    ``R = I``; for every block in forward order ``Ā = mean_h (∇A_h ⊙ A_h)^+`` and ``R <- R + Ā R``; the map is the
    query row(s) of ``R``, patch columns. ``∇A`` is the gradient of the target logit with respect to the
    post-softmax pattern. One forward and one backward pass per image.

    The map is the same on a model and on its ``fold_ln`` / ``center_writing_weights`` twin, but **not** after
    ``fold_value_biases``: pattern rows sum to 1, so moving ``b_V`` into ``b_O`` leaves the logits unchanged while
    shifting row ``q`` of ``∇A`` by the constant ``(∂y_c/∂z_q) · b_V``, which the ReLU does not cancel. This
    follows the reference (gradients at the post-softmax pattern of timm's ViT, value bias inside ``v``); run GAE
    on a model converted without ``fold_value_biases`` (the default) to match it.

    Args:
        model: a HookedViT with a classification head.
        upsample: patch -> pixel rule.

    Example:
        >>> GradientAttention(model).attribute(images, target=0).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "gae"

    def options(self) -> dict[str, Any]:
        return {**super().options(), "head_fusion": "mean of positive grad*attention", "score": "logit"}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        model = self.model
        patterns: list[Tensor] = []

        def keep(pattern: Tensor, hook: Any) -> Tensor:
            patterns.append(pattern)
            return pattern

        names = [get_act_name("pattern", l) for l in range(model.cfg.n_layers)]
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # so activations need grad even with frozen weights
            logits = model.run_with_hooks(x, fwd_hooks=[(n, keep) for n in names])
            score = logits.gather(1, target[:, None]).sum()
            grads = torch.autograd.grad(score, patterns)
        with torch.no_grad():
            n_pos = patterns[0].shape[-1]
            rel = torch.eye(n_pos, dtype=patterns[0].dtype, device=images.device).repeat(images.shape[0], 1, 1)
            for a, g in zip(patterns, grads):
                cam = (g * a).clamp(min=0).mean(dim=1)
                rel = rel + cam @ rel
            return self._read(rel, images)

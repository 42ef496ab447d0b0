"""Training objectives of the four trainable architectures: top-k, BatchTopK, ReLU + L1 and JumpReLU + L0.

Each ``objective(sae, x_local, x_global)`` returns the per-batch *sum* of the per-token loss over ``x_local`` (the
tokens this rank trains on) and their latents; the trainer divides by the global batch size, so gradients summed
over ranks equal one process's gradient of the batch mean. ``x_global`` is the whole batch (every rank holds it):
BatchTopK picks its threshold from it, so a sharded run keeps the same latents as one process.

* ``topk``: ``||x - x_hat||^2`` with :class:`~vit_patching.sae.saes.TopKSAE`'s encoder.
* ``batchtopk`` (Bussmann et al. 2024): the ``k * batch`` largest ReLU pre-activations of the whole batch are kept.
  A running threshold (the mean, with rate ``0.01``, of the smallest kept activation of each batch, as SAELens's
  ``BatchTopKTrainingSAE``) is kept; the trained SAE is saved as a JumpReLU SAE with that threshold for every
  latent (SAELens does the same on save).
* ``relu``: ``||x - x_hat||^2 + l1_coefficient * sum_i z_i ||W_dec[i]||`` (SAELens's standard SAE).
* ``jumprelu`` (Rajamanoharan et al. 2024): ``||x - x_hat||^2 + l0_coefficient * sum_i H(h_i - theta_i)``, the
  step's and the JumpReLU's threshold gradients given by the rectangle-kernel straight-through estimator with
  bandwidth ``bandwidth`` (SAELens's and overcomplete's choice); ``theta`` is kept >= ``MIN_THRESHOLD``.

Example:
    >>> sae = make_sae(SAEConfig("topk", d_in=8, d_sae=16, k=2))
    >>> loss, latents = topk_objective(sae, torch.randn(4, 8))
    >>> int((latents != 0).sum(-1).max()) <= 2
    True
"""
from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.sae.saes import SAE

__all__ = ["BATCHTOPK_THRESHOLD_RATE", "MIN_THRESHOLD", "OBJECTIVES", "batchtopk_objective", "jumprelu_objective",
           "relu_objective", "topk_objective"]

BATCHTOPK_THRESHOLD_RATE = 0.01  # SAELens's topk_threshold_lr
MIN_THRESHOLD = 1e-4  # JumpReLU thresholds are clamped here after each step (a threshold <= 0 is a plain ReLU)


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``h * (h > theta)``; d/dh as the forward's mask, d/dtheta = -(theta / eps) * rect((h - theta) / eps)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(h, theta)
        ctx.eps = eps
        return h * (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        h, theta = ctx.saved_tensors
        grad_h = grad * (h > theta).to(h.dtype)
        grad_theta = -(theta / ctx.eps) * _rectangle((h - theta) / ctx.eps) * grad
        return grad_h, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """``H(h - theta)``; no gradient to h, d/dtheta = -(1 / eps) * rect((h - theta) / eps)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(h, theta)
        ctx.eps = eps
        return (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        h, theta = ctx.saved_tensors
        grad_theta = -(1.0 / ctx.eps) * _rectangle((h - theta) / ctx.eps) * grad
        return torch.zeros_like(h), grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


def _mse_sum(sae: SAE, x: Tensor, latents: Tensor) -> Tensor:
    return (sae.decode(latents) - x).pow(2).sum()


def topk_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None,
                   **_: Any) -> tuple[Tensor, Tensor]:
    """Sum over tokens of the squared reconstruction error, top-k latents."""
    latents = sae.encode(x)
    return _mse_sum(sae, x, latents), latents


def batchtopk_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None, *, k: int,
                        state: dict[str, Tensor], **_: Any) -> tuple[Tensor, Tensor]:
    """Keep the ``k * len(x_global)`` largest ReLU pre-activations of the global batch; update the running threshold
    ``state["threshold"]`` (a 0-dim tensor, NaN before the first batch)."""
    x_global = x if x_global is None else x_global
    with torch.no_grad():
        acts = torch.relu(sae.hidden_pre(sae.process_input(x_global))).flatten()
        n_keep = min(k * x_global.shape[0], acts.numel())
        kept = torch.topk(acts, n_keep, sorted=False).values
        cut = kept.min()
        positive = kept[kept > 0]
        if positive.numel():
            smallest = positive.min()
            old = state["threshold"]
            state["threshold"] = smallest if torch.isnan(old) else (
                (1 - BATCHTOPK_THRESHOLD_RATE) * old + BATCHTOPK_THRESHOLD_RATE * smallest)
    h = torch.relu(sae.hidden_pre(sae.process_input(x)))
    latents = h * ((h >= cut) & (h > 0)).to(h.dtype)
    return _mse_sum(sae, x, latents), latents


def relu_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None, *,
                   l1_coefficient: float, **_: Any) -> tuple[Tensor, Tensor]:
    """Squared error plus ``l1_coefficient * sum_i z_i ||W_dec[i]||`` (SAELens's standard SAE)."""
    latents = sae.encode(x)
    sparsity = (latents * sae.W_dec.norm(dim=-1)).sum()
    return _mse_sum(sae, x, latents) + l1_coefficient * sparsity, latents


def jumprelu_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None, *,
                       l0_coefficient: float, bandwidth: float, **_: Any) -> tuple[Tensor, Tensor]:
    """Squared error plus ``l0_coefficient * L0`` with straight-through threshold gradients."""
    h = sae.hidden_pre(sae.process_input(x))
    latents = _JumpReLU.apply(torch.relu(h), sae.threshold, bandwidth)
    l0 = _Step.apply(h, sae.threshold, bandwidth).sum()
    return _mse_sum(sae, x, latents) + l0_coefficient * l0, latents


OBJECTIVES = {"topk": topk_objective, "batchtopk": batchtopk_objective, "relu": relu_objective,
              "jumprelu": jumprelu_objective}

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

``topk`` and ``batchtopk`` take an optional ``aux`` (:class:`AuxK`): Gao et al. 2024's auxiliary loss, in which the
``k_aux`` largest pre-activations among the *dead* latents (through ReLU, every other latent 0) reconstruct the main
reconstruction's error ``e = x - x_hat`` (no gradient through ``e``): ``e_hat = z_aux @ W_dec`` (no ``b_dec``: the
error has no bias to fit) and the term is ``coefficient * sum_t ||e_t - e_hat_t||^2 / sum_t ||e_t - mean(e)||^2``
over the batch, the normalised MSE of OpenAI's reference code. Without ``aux`` the objectives compute exactly what
they computed before it existed.

Example:
    >>> sae = make_sae(SAEConfig("topk", d_in=8, d_sae=16, k=2))
    >>> loss, latents = topk_objective(sae, torch.randn(4, 8))
    >>> int((latents != 0).sum(-1).max()) <= 2
    True
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_patching.sae.saes import SAE

__all__ = ["BATCHTOPK_THRESHOLD_RATE", "MIN_THRESHOLD", "OBJECTIVES", "AuxK", "auxk_error_sum",
           "batchtopk_objective", "jumprelu_objective", "relu_objective", "topk_objective"]

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


def _no_reduce(t: Tensor) -> Tensor:
    return t


@dataclass
class AuxK:
    """What the AuxK term of one batch needs besides the batch.

    Attributes:
        dead: ``[d_sae]``, the latents counted dead (no firing in the last ``dead_tokens_threshold`` tokens).
        k_aux: Dead latents kept per token (fewer when fewer are dead).
        coefficient: The term's weight (Gao et al.: 1/32).
        n_tokens: Tokens of the whole batch (every rank's): the objectives return sums, the trainer divides by it.
        reduce: Sums a tensor over the ranks (the identity for one process), so the normalisation is the whole
            batch's on every rank.
    """

    dead: Bool[Tensor, " d_sae"]
    k_aux: int
    coefficient: float
    n_tokens: int
    reduce: Callable[[Tensor], Tensor] = _no_reduce


def auxk_error_sum(sae: SAE, error: Float[Tensor, "n d_in"], hidden_pre: Float[Tensor, "n d_sae"],
                   dead: Bool[Tensor, " d_sae"], k_aux: int) -> Tensor:
    """``sum_t ||e_t - e_hat_t||^2``: ``e_hat_t = z_t @ W_dec`` with ``z_t`` the ``min(k_aux, #dead)`` largest
    pre-activations of token ``t`` among the dead latents, through ReLU, every other latent 0.

    Example:
        >>> sae = make_sae(SAEConfig("topk", d_in=8, d_sae=16, k=2))
        >>> dead = torch.zeros(16, dtype=torch.bool)
        >>> float(auxk_error_sum(sae, torch.ones(3, 8), torch.randn(3, 16), dead, 4))  # nothing dead: ||e||^2
        24.0
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return error.pow(2).sum()
    masked = hidden_pre.masked_fill(~dead, float("-inf"))
    top = torch.topk(masked, k=min(k_aux, n_dead), dim=-1)
    z = torch.zeros_like(hidden_pre).scatter(-1, top.indices, torch.relu(top.values))
    return (error - z @ sae.W_dec).pow(2).sum()


def _auxk_term(sae: SAE, x: Tensor, x_hat: Tensor, hidden_pre: Tensor, aux: AuxK) -> Tensor:
    """The AuxK term as a sum over ``x``'s tokens: ``coefficient * n_tokens * sum_local / sum_batch ||e - mean e||^2``
    (divided by ``n_tokens`` and summed over ranks: the normalised MSE of the whole batch)."""
    error = (x - x_hat).detach()
    with torch.no_grad():  # sum ||e - mean e||^2 = sum ||e||^2 - ||sum e||^2 / n, over every rank's tokens (float64)
        sums = aux.reduce(torch.cat([error.double().sum(0), error.double().pow(2).sum().reshape(1)]))
        variance = (sums[-1] - sums[:-1].pow(2).sum() / aux.n_tokens).clamp_min(1e-30).to(x.dtype)
    if not bool(aux.dead.any()):
        return x.new_zeros(())
    return aux.coefficient * aux.n_tokens * auxk_error_sum(sae, error, hidden_pre, aux.dead, aux.k_aux) / variance


def topk_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None, *,
                   aux: AuxK | None = None, **_: Any) -> tuple[Tensor, Tensor]:
    """Sum over tokens of the squared reconstruction error, top-k latents (plus the AuxK term with ``aux``)."""
    if aux is None:
        latents = sae.encode(x)
        return _mse_sum(sae, x, latents), latents
    hidden_pre = sae.hidden_pre(sae.process_input(x))  # what encode computes, kept for the dead latents
    latents = sae.activation(hidden_pre, x)
    x_hat = sae.decode(latents)
    return (x_hat - x).pow(2).sum() + _auxk_term(sae, x, x_hat, hidden_pre, aux), latents


def batchtopk_objective(sae: SAE, x: Float[Tensor, "n d_in"], x_global: Tensor | None = None, *, k: int,
                        state: dict[str, Tensor], aux: AuxK | None = None, **_: Any) -> tuple[Tensor, Tensor]:
    """Keep the ``k * len(x_global)`` largest ReLU pre-activations of the global batch; update the running threshold
    ``state["threshold"]`` (a 0-dim tensor, NaN before the first batch). Plus the AuxK term with ``aux``."""
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
    hidden_pre = sae.hidden_pre(sae.process_input(x))
    h = torch.relu(hidden_pre)
    latents = h * ((h >= cut) & (h > 0)).to(h.dtype)
    if aux is None:
        return _mse_sum(sae, x, latents), latents
    x_hat = sae.decode(latents)
    return (x_hat - x).pow(2).sum() + _auxk_term(sae, x, x_hat, hidden_pre, aux), latents


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

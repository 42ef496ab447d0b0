"""The direct effect of SAE latents on the readout's classes: each latent's decoder direction pushed through the
classifier end linearly, as direct logit attribution does (:mod:`vit_patching.model.logit_attribution`).

What is computed, exactly: for an SAE at a hook that writes the residual stream (``blocks.{l}.hook_resid_pre``,
``hook_resid_mid``, ``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``), latent ``k`` at activation 1 adds
its decoder direction ``d_k = W_dec[k]`` (divided by ``||W_dec[k]||`` for a top-k SAE with
``rescale_acts_by_decoder_norm``, as its ``decode`` does) to the activation at the chosen tokens. Its *direct
effect* is what that addition changes in the scores through the residual stream's skip connections alone, with
every later block's reading of it ignored and the final norm's (and a normalising readout's) per-image scale
frozen at its value on the image: ``head_contributions`` of a stack holding ``d_k`` at those tokens. For a
CLS-pooled classifier with a final LayerNorm that is ``(d_k - mean(d_k)) / scale_CLS * w_ln @ W_H``, i.e.
``W_dec[k] @ W_U`` under the frozen scale (the LayerNorm's centring and weight included). For an SAE at the last
block's ``hook_resid_post`` there are no later blocks, so with the frozen scale the direct effect is the exact
change of the scores when ``d_k`` is added (tested); at an earlier hook it is the direct path only.

Example:
    >>> effect = latent_direct_effect(model, sae, images, latents=[3, 7])     # [latent, batch, n_classes]
    >>> effect.mean(1).topk(3).indices                                          # the classes each latent pushes up
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vit_patching.checks import check_batch_size, check_indices, is_int
from vit_patching.hook_names import site_suffix
from vit_patching.model import HookedViT
from vit_patching.model.hooked_vit import check_scores
from vit_patching.model.logit_attribution import head_contributions
from vit_patching.sae.saes import SAE
from vit_patching.sae.views import resolve_splice

__all__ = ["RESIDUAL_WRITES", "decoder_directions", "latent_direct_effect"]

#: Hook suffixes whose activation is added to (or is) the residual stream: a decoder direction there has a direct path.
RESIDUAL_WRITES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
# Elements of one [latent, batch, pos, d_model] stack pushed through the classifier end at once (memory bound).
_STACK_BUDGET = 1 << 24
# The per-image scales the linearised classifier end freezes (those the model has).
_SCALES = ("ln_final.hook_scale", "fc_norm.hook_scale", "readout.hook_scale")


def decoder_directions(sae: nn.Module, latents: Sequence[int]) -> Float[Tensor, "latent d_in"]:
    """What latent ``k`` at activation 1 adds to the activation: ``W_dec[k]`` (``/ ||W_dec[k]||`` with top-k's
    ``rescale_acts_by_decoder_norm``).

    Raises:
        ValueError: an SAE whose decoder is not one fixed direction per latent (a run-time normalisation, which
            ``decode`` undoes with the last input's statistics, or ``hook_z`` reshaping).
        TypeError: a module without a ``W_dec [d_sae, d_in]`` tensor.

    Example:
        >>> decoder_directions(sae, [0, 1]).shape
        torch.Size([2, 32])
    """
    cfg = getattr(sae, "cfg", None)
    if isinstance(sae, SAE):
        if cfg.normalize_activations not in ("none", "expected_average_only_in") or cfg.reshape_activations != "none":
            raise ValueError(
                "sae: expected an SAE whose decode adds one fixed direction per latent (normalize_activations 'none' "
                "or 'expected_average_only_in', reshape_activations 'none'), got normalize_activations="
                f"{cfg.normalize_activations!r}, reshape_activations={cfg.reshape_activations!r}")
    W = getattr(sae, "W_dec", None)
    if not isinstance(W, Tensor) or W.ndim != 2:
        raise TypeError(f"sae: expected a decoder matrix W_dec [d_sae, d_in], got {type(sae).__name__} without one")
    rows = W.detach()[list(latents)]
    if getattr(cfg, "rescale_acts_by_decoder_norm", False):
        rows = rows / rows.norm(dim=-1, keepdim=True)  # decode divides each latent by its decoder row norm
    return rows


def _check_linear_end(model: HookedViT) -> None:
    """Refuse, before any forward pass, a classifier end that is not linear once the norm scales are frozen (the
    cases ``head_contributions`` refuses after one)."""
    readout = model.readout
    if readout is not None and readout.reads != "head" and readout.linear_map() is None:
        raise ValueError(f"model: expected a linear readout (once its scale is frozen), got {readout.describe()}: "
                         "no direct effect exists")
    pooled = readout is None or readout.reads != "tokens"  # a probe on the tokens does not pool
    if pooled and not model.cfg.has_dist and model.cfg.global_pool not in ("token", "avg"):
        raise ValueError(f"model: expected CLS or average pooling (linear), got global_pool="
                         f"{model.cfg.global_pool!r}: no direct effect exists")


@torch.no_grad()
def latent_direct_effect(
    model: HookedViT,
    sae: nn.Module,
    images: Float[Tensor, "batch channel height width"],
    *,
    latents: int | Sequence[int] | None = None,
    positions: int | str = "all",
    batch_size: int = 32,
) -> Float[Tensor, "latent batch n_classes"]:
    """Direct effect of each latent (at activation 1) on every class score, per image (module docstring).

    Args:
        model: A HookedViT that outputs class scores (a classifier head or a linear readout).
        sae: An SAE at a residual-stream hook (:data:`RESIDUAL_WRITES`) of width ``d_model``.
        images: Normalised images; each gives the frozen per-image norm scales.
        latents: The latents (default: all ``d_sae``).
        positions: ``"all"`` (the direction at every token the SAE reads) or one token index it reads
            (``0``: CLS).
        batch_size: Images per forward pass.

    Returns:
        ``[latent, batch, n_classes]``: the change of each score along the direct path.

    Raises:
        ValueError: a model without class scores, an SAE at another hook, a token the SAE does not read, a
            non-linear classifier end (attention pooling, a non-linear readout), before any forward pass.

    Example:
        >>> effect = latent_direct_effect(model, sae, images, latents=[3], positions=0)
        >>> effect.shape                                     # [1, batch, n_classes]
    """
    check_scores(model)
    hook, splice_positions, _ = resolve_splice(model, sae)
    if site_suffix(hook) not in RESIDUAL_WRITES:
        raise ValueError(f"sae: expected an SAE at a hook that writes the residual stream (blocks.L.{{"
                         f"{', '.join(RESIDUAL_WRITES)}}}), got one at {hook!r}: its decoder direction has no direct "
                         f"path to the readout")
    W = getattr(sae, "W_dec", None)
    if not isinstance(W, Tensor) or W.ndim != 2:
        raise TypeError(f"sae: expected a decoder matrix W_dec [d_sae, d_in], got {type(sae).__name__} without one")
    directions = decoder_directions(sae, check_indices(latents, W.shape[0], "latents", "latent"))
    if directions.shape[-1] != model.cfg.d_model:
        raise ValueError(f"sae: expected d_in = d_model = {model.cfg.d_model}, got {directions.shape[-1]}")
    if images.ndim != 4:
        raise ValueError(f"images: expected normalised images [batch, C, H, W], got {tuple(images.shape)}")
    batch_size = check_batch_size(batch_size)
    _check_linear_end(model)
    n_pos, n_prefix = model.cfg.n_pos, model.cfg.n_prefix
    read = {"all": range(n_pos), "patches": range(n_prefix, n_pos), "cls": range(0, 1)}[splice_positions]
    if positions == "all":
        tokens = list(read)
    elif is_int(positions) and positions in read:
        tokens = [positions]
    else:
        raise ValueError(f"positions: expected 'all' or a token index the SAE reads ({read.start} to {read.stop - 1}), "
                         f"got {positions!r}")
    names = [n for n in _SCALES if n in model.hook_dict]
    directions = directions.to(device=model.device, dtype=model.dtype)
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].to(device=model.device, dtype=model.dtype)
        _, cache = model.run_with_cache(x, names_filter=names)
        per = max(1, _STACK_BUDGET // (x.shape[0] * n_pos * model.cfg.d_model))
        parts = []
        for j in range(0, directions.shape[0], per):
            d = directions[j:j + per]
            stack = torch.zeros(d.shape[0], x.shape[0], n_pos, model.cfg.d_model, device=d.device, dtype=d.dtype)
            stack[:, :, tokens] = d[:, None, None]
            parts.append(head_contributions(model, cache, stack))
        out.append(torch.cat(parts))
    return torch.cat(out, dim=1)

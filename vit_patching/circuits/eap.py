"""Edge attribution patching (EAP, Syed et al. 2023) and EAP with integrated gradients (EAP-IG, Hanna et al.
2024) over the ViT graph of :class:`~vit_patching.circuits.graph.Graph`.

The score of edge ``u -> v`` estimates how much the metric changes when only ``v``'s input from ``u`` is
switched from its corrupted to its clean value (denoising)::

    score(u -> v) = sum_pos (out_u(clean) - out_u(corrupted)) . dm / d in_v

with the gradient taken in the corrupted run (EAP), or averaged over ``steps`` runs whose block-0 input is
interpolated between the corrupted and the clean embedding, ``alpha = k / steps`` for ``k = 1..steps``
(EAP-IG, a right Riemann sum). A head's output is ``z[:, :, h] @ W_O[h]`` (its bias ``b_O`` is the same in
every run, so it carries no difference); a receiver's input is its per-head ``hook_q_input`` /
``hook_k_input`` / ``hook_v_input``, ``hook_mlp_in``, or the last block's ``hook_resid_post`` for the logits.

Every edge score comes from one clean forward, one corrupted forward and ``1`` (EAP) or ``steps`` (EAP-IG)
forward + backward passes.
"""

from __future__ import annotations


import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_bool, check_positive_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching.engine import result_dtype

from .common import Metric, check_pair, forward_backward, resolve_metric
from .graph import EdgeScores, Graph
from .interventions import Ablation, ablated_run_gradients, ablation_values, resolve_ablation, sender_hooks

__all__ = ["EDGE_FLAGS", "eap", "eap_ig", "receiver_hooks", "sender_hooks", "sender_outputs", "stack_receivers"]

#: Model flags that expose every receiver input as its own hook.
EDGE_FLAGS = {"use_split_qkv_input": True, "use_hook_mlp_in": True}


def receiver_hooks(model: HookedViT) -> list[str]:
    """Hooks holding every receiver's input (per-head q/k/v inputs, MLP inputs, the final residual)."""
    L = model.cfg.n_layers
    return [get_act_name(n, l) for l in range(L) for n in ("q_input", "k_input", "v_input", "mlp_in")] + [
        get_act_name("resid_post", L - 1)
    ]


def head_outputs(model: HookedViT, z: Float[Tensor, "batch pos head d_head"], layer: int) -> Float[Tensor, "batch pos head d_model"]:
    """Each head's write to the residual stream (without ``b_O``): ``z[:, :, h] @ W_O[layer, h]``."""
    return torch.einsum("bphe,hed->bphd", z, model.blocks[layer].attn.W_O)


def sender_outputs(model: HookedViT, cache: dict[str, Tensor]) -> Float[Tensor, "batch pos sender d_model"]:
    """Every sender's output stacked in :class:`Graph` sender order, from a cache of :func:`sender_hooks`.

    Example:
        >>> _, cache = model.run_with_cache(images, names_filter=lambda n: n in sender_hooks(model))
        >>> sender_outputs(model, cache).shape[2] == len(Graph.of(model).senders)
        True
    """
    parts = [cache[get_act_name("resid_pre", 0)][:, :, None]]
    for l in range(model.cfg.n_layers):
        parts.append(head_outputs(model, cache[get_act_name("z", l)], l))
        parts.append(cache[get_act_name("mlp_out", l)][:, :, None])
    return torch.cat(parts, dim=2)


def stack_receivers(model: HookedViT, values: dict[str, Tensor]) -> Float[Tensor, "batch pos receiver d_model"]:
    """Receiver inputs (or their gradients) stacked in :class:`Graph` receiver order."""
    L = model.cfg.n_layers
    parts = []
    for l in range(L):
        qkv = torch.stack([values[get_act_name(n, l)] for n in ("q_input", "k_input", "v_input")], dim=3)
        parts.append(qkv.flatten(2, 3))  # [b, pos, head * 3, d]: L{l}H{h}.q, .k, .v
        parts.append(values[get_act_name("mlp_in", l)][:, :, None])
    parts.append(values[get_act_name("resid_post", L - 1)][:, :, None])
    return torch.cat(parts, dim=2)


def _edge_scores(model: HookedViT, clean: Tensor, corrupted: Tensor, metric: Metric | str, steps: int | None,
                 by_pos: bool, ablation: str | Ablation = "corrupted", reference: Tensor | None = None) -> EdgeScores:
    check_pair(model, clean, corrupted)
    check_bool(by_pos, "by_pos")
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    graph = Graph.of(model)
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)
    with model.flags(**EDGE_FLAGS):
        with torch.no_grad():
            clean_logits, clean_cache = model.run_with_cache(
                clean, names_filter=lambda n: n in s_hooks, return_cache_object=False)
            corr_logits, corr_cache = model.run_with_cache(
                corrupted, names_filter=lambda n: n in s_hooks, return_cache_object=False)
        fn, name = resolve_metric(metric, clean_logits, corr_logits)
        abl_cache = ablation_values(model, abl, clean, corrupted, corrupted_cache=corr_cache)
        with torch.no_grad():
            delta = sender_outputs(model, clean_cache) - sender_outputs(model, abl_cache)  # [b pos S d]
        if steps is None:
            _, grads = ablated_run_gradients(model, corrupted, abl_cache, r_hooks, fn)
            grad = stack_receivers(model, grads)
        else:
            e0 = get_act_name("resid_pre", 0)
            grad = torch.zeros(*delta.shape[:2], len(graph.receivers), delta.shape[-1], device=delta.device,
                               dtype=delta.dtype)
            for k in range(1, steps + 1):
                resid = abl_cache[e0] + (k / steps) * (clean_cache[e0] - abl_cache[e0])
                _, _, grads = forward_backward(model, resid, r_hooks, fn, start_layer=0)
                grad += stack_receivers(model, grads) / steps
    dtype = result_dtype(delta.dtype)  # float64 models keep float64 scores
    per_image = torch.einsum("bpsd,bprd->srb", delta, grad).to(dtype).cpu()
    nan = torch.tensor(float("nan"), dtype=dtype)
    per_image = torch.where(graph.mask[..., None], per_image, nan)
    pos_scores = None
    if by_pos:
        pos_scores = torch.einsum("bpsd,bprd->srp", delta, grad).to(dtype).cpu() / clean.shape[0]
        pos_scores = torch.where(graph.mask[..., None], pos_scores, nan)
    ids = torch.arange(clean.shape[0], device=clean_logits.device)
    return EdgeScores(
        graph, per_image.mean(-1), per_image, fn(clean_logits, ids).to(dtype).cpu(),
        fn(corr_logits, ids).to(dtype).cpu(),
        name, "eap" if steps is None else "eap-ig", pos_scores, {"steps": steps, "ablation": abl.kind},
    )


def eap(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    by_pos: bool = False,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> EdgeScores:
    """Edge attribution patching: ``(clean_u - corrupted_u) . dm/d in_v`` in the corrupted run, every edge.

    Args:
        model: A HookedViT (its flags are restored afterwards).
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable ``metric(logits, image_index) -> [rows]`` or ``"logit_diff"`` / ``"logit"`` /
            ``"prob"``.
        by_pos: Also keep the scores per token position (``EdgeScores.by_pos``, mean over images).
        ablation: What an ablated edge carries: a name from
            :data:`~vit_patching.circuits.interventions.ABLATIONS` or an
            :class:`~vit_patching.circuits.interventions.Ablation`. The score uses ``clean_u - ablated_u`` and the
            gradient of the ablated run (:func:`~vit_patching.circuits.interventions.ablated_run_gradients`; the
            corrupted run for ``"corrupted"``).
        reference: Reference images for ``mean`` / ``mean_positional`` / ``resample`` / ``optimal``.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` (summed over positions, per image and mean).

    Example:
        >>> scores = eap(model, clean, corrupted, "logit_diff")
        >>> [(u, v) for u, v, _ in scores.top(2)]     # the two edges with the largest |score|
    """
    return _edge_scores(model, clean, corrupted, metric, None, by_pos, ablation, reference)


def eap_ig(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    steps: int = 5,
    by_pos: bool = False,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> EdgeScores:
    """EAP-IG: EAP with the gradient averaged over ``steps`` interpolations from the corrupted to the clean
    embedding (``alpha = k / steps``, ``k = 1..steps``).

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        steps: Interpolation steps (forward + backward passes).
        by_pos: Also keep the scores per token position.
        ablation: As :func:`eap`; the interpolation runs from the ablated embedding (block-0 input) to the clean
            one, everything downstream computed by the model.
        reference: Reference images, as :func:`eap`.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="eap-ig"``.

    Example:
        >>> scores = eap_ig(model, clean, corrupted, "logit_diff", steps=5)
    """
    return _edge_scores(model, clean, corrupted, metric, check_positive_int(steps, "steps"), by_pos, ablation,
                        reference)

"""More edge scorers over the graph of :class:`~vit_patching.circuits.graph.Graph`, beside
:func:`~vit_patching.circuits.eap.eap` and :func:`~vit_patching.circuits.eap.eap_ig` (docs/circuits_bench.md
has the formulas side by side). ``Delta_u = out_u(clean) - out_u(ablated)`` is a sender's change under the
chosen :class:`~vit_patching.circuits.interventions.Ablation` (the corrupted run by default); ``in_v`` is
receiver ``v``'s input; sums run over token positions.

* :func:`eap_ig_activations` (EAP-IG on activations): the gradient is integrated along the path between
  ablated and clean *activations at the sender's stage* instead of the input::

      score(u -> v) = Delta_u . 1/K sum_{k=1..K} dm/d in_v [clean run, stage(u) outputs = ablated + k/K Delta]

  where ``stage(u)`` is the embedding, all heads of ``u``'s block (together), or ``u``'s MLP; everything else
  is computed by the model from the clean images. Summed over the receivers ``v`` it is the right Riemann sum of
  ``m(clean) - m(stage ablated)`` along the straight path (integrated gradients at that stage). The EAP-IG
  library's ``EAP-IG-activations`` (used by MIB) runs the same interpolations but averages each receiver's
  gradient over the runs of *every* stage; here an edge uses only its sender's stage.
* :func:`information_flow_routes` (IFR, Ferrando & Voita 2024): no gradients, one clean forward. At position
  ``p`` receiver ``v`` reads ``y = in_v[p] = sum_u out_u[p] + b`` (``b``: the constant biases). Each part's
  proximity is ``prox(c, y) = max(||y||_1 - ||y - c||_1, 0)`` and its importance
  ``prox(out_u[p], y) / (sum_{u'} prox(out_u'[p], y) + prox(b, y))``; the edge score is
  ``sum_p w_v[p] importance_p(u -> v)`` with position weights ``w_v``: a head's key and value inputs weight
  position ``p`` by the attention it receives, ``1/P sum_i A_h[i, p]``; queries and MLPs weigh every position
  ``1/P``; the logits weigh the class token 1 (``global_pool="token"``) or every position ``1/P``.
  Scores are in ``[0, 1]`` and the importances of one receiver's parts sum to 1 at each position. (The EAP-IG
  library's IFR, used by MIB, weighs every position equally and has no bias part.)
* :func:`atp_graddrop` (AtP* GradDrop, Kramar et al. 2024): EAP recomputed ``L`` times, the ``l``-th with every
  gradient path through block ``l`` cut (its ``hook_attn_out`` and ``hook_mlp_out`` detached in the backward
  pass; the forward is unchanged); the score is the mean magnitude::

      score(u -> v) = 1/(L - 1) sum_{l=0..L-1} |Delta_u . dm^{(-l)}/d in_v|

  per image (then the mean over images). Cutting ``v``'s own block gives 0 (hence ``L - 1``); cutting a block
  before ``v`` changes nothing. A large score flags an edge whose effect may cancel in plain EAP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_choice, check_positive_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching.engine import result_dtype

from .common import METRIC_NAMES, Metric, check_pair, resolve_metric
from .eap import EDGE_FLAGS, receiver_hooks, sender_outputs, stack_receivers
from .graph import EdgeScores, Graph
from .interventions import Ablation, ablated_run_gradients, ablation_values, resolve_ablation, sender_hooks

__all__ = ["atp_graddrop", "eap_ig_activations", "information_flow_routes"]


def _check_metric(metric: Any) -> None:
    """A metric name is checked before any forward pass (callables are taken as they are)."""
    if not callable(metric):
        check_choice(metric, METRIC_NAMES, "metric")


def _baselines(model: HookedViT, clean: Tensor, corrupted: Tensor, metric: Metric | str,
               hooks: list[str]) -> tuple[Tensor, dict, Tensor, dict, Callable, str]:
    with torch.no_grad():
        cl, cc = model.run_with_cache(clean, names_filter=lambda n: n in hooks, return_cache_object=False)
        xl, xc = model.run_with_cache(corrupted, names_filter=lambda n: n in hooks, return_cache_object=False)
    fn, name = resolve_metric(metric, cl, xl)
    return cl, cc, xl, xc, fn, name


def _result(graph: Graph, per_image: Tensor, fn: Callable, clean_logits: Tensor, corr_logits: Tensor, name: str,
            method: str, options: dict[str, Any]) -> EdgeScores:
    dtype = result_dtype(per_image.dtype)
    # detached: scores that require grad would keep every pass's autograd graph alive
    per_image = torch.where(graph.mask[..., None], per_image.detach().to(dtype).cpu(),
                            torch.tensor(float("nan"), dtype=dtype))
    ids = torch.arange(clean_logits.shape[0], device=clean_logits.device)
    return EdgeScores(graph, per_image.mean(-1), per_image, fn(clean_logits, ids).to(dtype).cpu(),
                      fn(corr_logits, ids).to(dtype).cpu(), name, method, None, options)


def eap_ig_activations(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    steps: int = 5,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> EdgeScores:
    """EAP-IG on activations: each sender stage's output interpolated between ablated and clean (module
    docstring), ``steps`` forward + backward passes per stage (``1 + 2 L`` stages).

    Args:
        model: A HookedViT (its flags are restored afterwards).
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable ``metric(logits, image_index) -> [rows]`` or ``"logit_diff"`` / ``"logit"`` /
            ``"prob"``.
        steps: Interpolation points ``alpha = k / steps``, ``k = 1..steps``.
        ablation: A name from :data:`~vit_patching.circuits.interventions.ABLATIONS` or an ``Ablation``.
        reference: Reference images for the ablations that use them.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="eap-ig-activations"``.

    Example:
        >>> scores = eap_ig_activations(model, clean, corrupted, "logit_diff", steps=5, ablation="mean")
    """
    check_pair(model, clean, corrupted)
    _check_metric(metric)
    steps = check_positive_int(steps, "steps")
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    graph = Graph.of(model)
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)
    with model.flags(**EDGE_FLAGS):
        cl, cc, xl, xc, fn, name = _baselines(model, clean, corrupted, metric, s_hooks)
        av = ablation_values(model, abl, clean, corrupted, corrupted_cache=xc)
        delta = sender_outputs(model, cc) - sender_outputs(model, av)  # [b pos S d]
        per_image = torch.zeros(len(graph.senders), len(graph.receivers), clean.shape[0], dtype=delta.dtype,
                                device=delta.device)
        H = model.cfg.n_heads
        # Stage hook -> the sender columns whose outputs it holds.
        stages = [(s_hooks[0], [0])] + [
            (h, list(range(1 + (l // 2) * (H + 1), 1 + (l // 2) * (H + 1) + H)) if h.endswith("hook_z")
             else [1 + (l // 2) * (H + 1) + H]) for l, h in enumerate(s_hooks[1:])]
        for hook, cols in stages:
            for k in range(1, steps + 1):
                point = av[hook] + (k / steps) * (cc[hook] - av[hook])

                def interpolate(act: Tensor, hook: Any, point: Tensor = point) -> Tensor:
                    # A leaf that asks for gradients, so receivers downstream of a replaced embedding have one.
                    return point.to(act.dtype).detach().clone().requires_grad_(True)

                g = stack_receivers(model, _gradients(model, clean, [(hook, interpolate)], r_hooks, fn))
                per_image[cols] += torch.einsum("bpsd,bprd->srb", delta[:, :, cols], g) / steps
    return _result(graph, per_image, fn, cl, xl, name, "eap-ig-activations", {"steps": steps, "ablation": abl.kind})


def _gradients(model: HookedViT, images: Tensor, patches: list, hooks: list[str], fn: Metric) -> dict[str, Tensor]:
    """Metric gradients at ``hooks`` in the run of ``images`` with ``patches`` (forward hooks) attached."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    x = images.detach().clone().requires_grad_(True)  # gradients flow even when the weights are frozen
    with torch.enable_grad(), model.hooks(fwd_hooks=patches + [(n, keep) for n in hooks]):
        logits = model(x)
        total = fn(logits, torch.arange(x.shape[0], device=logits.device)).sum()
        grads = torch.autograd.grad(total, [acts[n] for n in hooks], allow_unused=True)
    return {n: torch.zeros_like(acts[n]) if g is None else g.detach() for n, g in zip(hooks, grads)}


def atp_graddrop(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> EdgeScores:
    """AtP* GradDrop at edge level: the mean over blocks of |EAP with the gradient through one block cut|,
    ``L`` forward + backward passes (module docstring). Needs at least 2 blocks.

    Args:
        model: A HookedViT with ``n_layers >= 2``.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        ablation: As :func:`~vit_patching.circuits.eap.eap` (gradients in the ablated run).
        reference: Reference images for the ablations that use them.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="atp-graddrop"`` (non-negative scores).

    Example:
        >>> scores = atp_graddrop(model, clean, corrupted, "logit_diff")
        >>> bool((scores.scores.nan_to_num() >= 0).all())
        True
    """
    check_pair(model, clean, corrupted)
    _check_metric(metric)
    L = model.cfg.n_layers
    if L < 2:
        raise ValueError(f"model: expected at least 2 blocks for GradDrop (mean over L - 1 blocks), got {L}")
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    graph = Graph.of(model)
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)

    def cut(act: Tensor, hook: Any) -> Tensor:
        return act.detach()

    with model.flags(**EDGE_FLAGS):
        cl, cc, xl, xc, fn, name = _baselines(model, clean, corrupted, metric, s_hooks)
        av = ablation_values(model, abl, clean, corrupted, corrupted_cache=xc)
        delta = sender_outputs(model, cc) - sender_outputs(model, av)
        total = torch.zeros(len(graph.senders), len(graph.receivers), clean.shape[0], dtype=delta.dtype,
                            device=delta.device)
        for l in range(L):
            drops = [(get_act_name("attn_out", l), cut), (get_act_name("mlp_out", l), cut)]
            _, g = ablated_run_gradients(model, corrupted, av, r_hooks, fn, extra_hooks=drops)
            total += torch.einsum("bpsd,bprd->srb", delta, stack_receivers(model, g)).abs()
    return _result(graph, total / (L - 1), fn, cl, xl, name, "atp-graddrop", {"ablation": abl.kind})


def information_flow_routes(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
) -> EdgeScores:
    """Information flow routes (IFR) at edge level: attention-weighted L1 proximity of each sender's output to
    the receiver input it is part of, one clean forward, no gradients (module docstring).

    ``corrupted`` and ``metric`` only fill ``EdgeScores.clean_score`` / ``corrupted_score`` (so every scorer
    is called the same way); the scores depend on the clean images alone.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="ifr"``, scores in ``[0, 1]``.

    Example:
        >>> scores = information_flow_routes(model, clean, corrupted)
        >>> scores.top(3)
    """
    check_pair(model, clean, corrupted)
    _check_metric(metric)
    graph = Graph.of(model)
    L = model.cfg.n_layers
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)
    patterns = [get_act_name("pattern", l) for l in range(L)]
    with model.flags(**EDGE_FLAGS):
        cl, cc, xl, _, fn, name = _baselines(model, clean, corrupted, metric, s_hooks + r_hooks + patterns)
        with torch.no_grad():
            out = sender_outputs(model, cc)  # [b pos S d]
            y = stack_receivers(model, cc)  # [b pos R d]
            y_norm = y.abs().sum(-1)  # [b pos R]
            # One sender at a time: [b pos S R d] at once would not fit for a ViT-S/16.
            prox = torch.stack([(y_norm - (y - out[:, :, s, None]).abs().sum(-1)).clamp(min=0)
                                for s in range(out.shape[2])], dim=2)  # [b pos S R]
            prox = prox * graph.mask.to(prox.device, prox.dtype)  # [b pos S R]: only upstream senders are parts
            bias = y - torch.einsum("bpsd,sr->bprd", out, graph.mask.to(out.device, out.dtype))
            prox_b = (y_norm - (y - bias).abs().sum(-1)).clamp(min=0)  # [b pos R]
            importance = prox / (prox.sum(2) + prox_b)[:, :, None].clamp(min=torch.finfo(prox.dtype).tiny)
            weights = _position_weights(model, cc, patterns, graph, y.shape[1])  # [b pos R]
            per_image = torch.einsum("bpsr,bpr->srb", importance, weights)
    return _result(graph, per_image, fn, cl, xl, name, "ifr", {})


def _position_weights(model: HookedViT, cache: dict[str, Tensor], patterns: list[str], graph: Graph,
                      n_pos: int) -> Tensor:
    """IFR position weights per receiver ``[batch pos receiver]`` (module docstring)."""
    ref = cache[patterns[0]]
    w = torch.full((ref.shape[0], n_pos, len(graph.receivers)), 1.0 / n_pos, dtype=ref.dtype, device=ref.device)
    r_of = {r: i for i, r in enumerate(graph.receivers)}
    for l, p in enumerate(patterns):
        received = cache[p].mean(2)  # [b head key]: attention each key position receives, mean over queries
        for h in range(model.cfg.n_heads):
            for c in "kv":
                w[:, :, r_of[f"L{l}H{h}.{c}"]] = received[:, h]
    if model.cfg.global_pool == "token":
        w[:, :, r_of["logits"]] = 0.0
        w[:, 0, r_of["logits"]] = 1.0  # the classifier reads the class token only
    return w

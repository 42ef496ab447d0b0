"""Neuron-level circuits: MLP neurons (``hook_post``, what ``W_out`` reads) and head dimensions (``hook_z``, what
``W_O`` reads), scored by attribution patching and evaluated by patching every neuron outside the circuit.

For a neuron with clean activation ``a`` and replacement ``a'`` (the chosen
:class:`~vit_patching.circuits.interventions.Ablation`; ``"optimal"`` only for head dimensions' ``hook_z``)::

    score = sum_pos (a - a') . dm/da      (gradient in the clean run)

the first-order estimate of ``m(clean) - m(clean with that neuron ablated)``. The scores of one MLP's neurons sum
to the AtP estimate of ablating its whole output (``mlp_out = post @ W_out + b_out`` is linear in ``post``), those
of a head's dimensions to the estimate of ablating the head (``z @ W_O``).

:func:`evaluate_neurons` runs the clean images with every neuron *outside* the kept set replaced by its
ablated value at once (node patching: upstream changes do not reach a replaced neuron), one forward per circuit
and image chunk.

Example:
    >>> ns = neuron_scores(model, clean, corrupted, "logit_diff")
    >>> keep = select_neurons(ns, top_n=100)
    >>> evaluate_neurons(model, [keep], clean, corrupted, "logit_diff").faithfulness
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_patching.checks import check_batch_size, is_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching.engine import result_dtype

from .common import Metric, check_pair, forward_backward, resolve_metric
from .interventions import Ablation, ablation_values, resolve_ablation

__all__ = ["NeuronCircuit", "NeuronEvaluation", "NeuronScores", "evaluate_neurons", "neuron_scores",
           "select_neurons"]


@dataclass
class NeuronScores:
    """AtP scores of every MLP neuron and head dimension (mean over images), and per image.

    Attributes:
        mlp: ``[layer, d_mlp]``.
        head: ``[layer, head, d_head]``.
        mlp_per_image: ``[layer, d_mlp, batch]``.
        head_per_image: ``[layer, head, d_head, batch]``.
        metric: Metric name.
        ablation: The intervention's name.
    """

    mlp: Float[Tensor, "layer d_mlp"]
    head: Float[Tensor, "layer head d_head"]
    mlp_per_image: Float[Tensor, "layer d_mlp batch"]
    head_per_image: Float[Tensor, "layer head d_head batch"]
    metric: str
    ablation: str


@dataclass
class NeuronCircuit:
    """Kept neurons: ``mlp[l, i]`` True keeps MLP neuron ``i`` of block ``l``; ``head[l, h, e]`` head dimension."""

    mlp: Bool[Tensor, "layer d_mlp"]
    head: Bool[Tensor, "layer head d_head"]

    @property
    def n_neurons(self) -> int:
        return int(self.mlp.sum()) + int(self.head.sum())


@dataclass
class NeuronEvaluation:
    """Metric per neuron circuit and image ``values [circuit, batch]``, the clean and empty (all ablated)
    baselines, and the faithfulness ``(m(circuit) - m(empty)) / (m(clean) - m(empty))`` of image means."""

    circuits: list[NeuronCircuit]
    values: Float[Tensor, "circuit batch"]
    clean_score: Float[Tensor, " batch"]
    empty_score: Float[Tensor, " batch"]
    metric: str
    ablation: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def faithfulness(self) -> Float[Tensor, " circuit"]:
        empty = self.empty_score.mean()
        return (self.values.mean(-1) - empty) / (self.clean_score.mean() - empty)


def _hooks(model: HookedViT) -> tuple[list[str], list[str]]:
    L = model.cfg.n_layers
    return [get_act_name("post", l) for l in range(L)], [get_act_name("z", l) for l in range(L)]


def _values(model: HookedViT, abl: Ablation, clean: Tensor, corrupted: Tensor) -> dict[str, Tensor]:
    post, z = _hooks(model)
    if abl.kind == "optimal":
        raise ValueError("ablation: 'optimal' constants are fitted per graph node, not per MLP neuron; expected "
                         "'corrupted', 'zero', 'mean', 'mean_positional' or 'resample', got 'optimal'")
    return ablation_values(model, abl, clean, corrupted, hooks=post + z)


def neuron_scores(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> NeuronScores:
    """AtP score of every MLP neuron and head dimension (module docstring): one clean forward + backward.

    Example:
        >>> ns = neuron_scores(model, clean, corrupted, "logit_diff", ablation="mean")
        >>> ns.mlp.shape == (model.cfg.n_layers, model.cfg.d_mlp)
        True
    """
    check_pair(model, clean, corrupted)
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    if abl.kind == "optimal":
        _values(model, abl, clean, corrupted)  # raises before any compute
    with torch.no_grad():
        clean_logits, corr_logits = model(clean), model(corrupted)
    fn, name = resolve_metric(metric, clean_logits, corr_logits)
    vals = _values(model, abl, clean, corrupted)
    post, z = _hooks(model)
    _, acts, grads = forward_backward(model, clean, post + z, fn)
    dtype = result_dtype(clean_logits.dtype)
    mlp = torch.stack([((acts[h] - vals[h]) * grads[h]).sum(1) for h in post]).movedim(1, -1).to(dtype).cpu()
    head = torch.stack([((acts[h] - vals[h]) * grads[h]).sum(1) for h in z]).movedim(1, -1).to(dtype).cpu()
    return NeuronScores(mlp.mean(-1), head.mean(-1), mlp, head, name, abl.kind)


def select_neurons(scores: NeuronScores, *, top_n: int, absolute: bool = True) -> NeuronCircuit:
    """The ``top_n`` neurons (MLP neurons and head dimensions ranked together) by |score| (or signed score).

    Example:
        >>> select_neurons(ns, top_n=50).n_neurons
        50
    """
    if not isinstance(scores, NeuronScores):
        raise TypeError(f"scores: expected NeuronScores (from neuron_scores), got {type(scores).__name__}")
    if not is_int(top_n) or top_n < 0:
        raise ValueError(f"top_n: expected a non-negative int (neurons to keep), got {top_n!r}")
    flat = torch.cat([scores.mlp.reshape(-1), scores.head.reshape(-1)])
    key = (flat.abs() if absolute else flat).nan_to_num(nan=-torch.inf)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(key, descending=True, stable=True)[:top_n]] = True
    n_mlp = scores.mlp.numel()
    return NeuronCircuit(keep[:n_mlp].view_as(scores.mlp), keep[n_mlp:].view_as(scores.head))


@torch.no_grad()
def evaluate_neurons(
    model: HookedViT,
    circuits: Sequence[NeuronCircuit],
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
    batch_size: int = 64,
) -> NeuronEvaluation:
    """Metric of the clean run with every neuron outside each circuit replaced by its ablated value.

    Example:
        >>> ev = evaluate_neurons(model, [select_neurons(ns, top_n=k) for k in (10, 100)], clean, corrupted)
        >>> ev.faithfulness
    """
    check_pair(model, clean, corrupted)
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    check_batch_size(batch_size)
    circuits = list(circuits)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for c in circuits:
        if not isinstance(c, NeuronCircuit) or c.mlp.shape != (L, model.cfg.d_mlp) or \
                c.head.shape != (L, H, model.cfg.d_head):
            raise ValueError(f"circuits: expected NeuronCircuit objects of this model's sizes, got {c!r}")
    if abl.kind == "optimal":
        _values(model, abl, clean, corrupted)  # raises before any compute
    clean_logits, corr_logits = model(clean), model(corrupted)
    fn, name = resolve_metric(metric, clean_logits, corr_logits)
    vals = _values(model, abl, clean, corrupted)
    post, z = _hooks(model)
    empty = NeuronCircuit(torch.zeros(L, model.cfg.d_mlp, dtype=torch.bool), torch.zeros(L, H, model.cfg.d_head,
                                                                                          dtype=torch.bool))
    all_c = circuits + [empty]
    batch = clean.shape[0]
    rows = [(c, b) for c in range(len(all_c)) for b in range(batch)]
    values = torch.empty(len(all_c), batch, dtype=result_dtype(clean_logits.dtype))
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        cid, img = [c for c, _ in part], torch.tensor([b for _, b in part], device=clean.device)
        masks = {h: torch.stack([all_c[c].mlp[l] for c in cid]) for l, h in enumerate(post)}
        masks.update({h: torch.stack([all_c[c].head[l] for c in cid]) for l, h in enumerate(z)})

        def patch(act: Tensor, hook: Any) -> Tensor:
            keep = masks[hook.name].to(act.device)[:, None]  # [rows, 1, neurons...]: every position alike
            return torch.where(keep, act, vals[hook.name][img].to(act.dtype))

        with model.hooks(fwd_hooks=[(h, patch) for h in post + z]):
            logits = model(clean[img])
        values[torch.tensor(cid), img.cpu()] = fn(logits, img).to(values.dtype).cpu()
    ids = torch.arange(batch, device=clean_logits.device)
    return NeuronEvaluation(circuits, values[:-1], fn(clean_logits, ids).to(values.dtype).cpu(), values[-1], name,
                            abl.kind)

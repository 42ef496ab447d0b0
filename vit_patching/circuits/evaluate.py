"""Circuit evaluation: run the clean images with every edge *outside* the circuit patched to its corrupted (or
mean) value, and measure how much of the clean behaviour the circuit keeps.

Receiver ``v``'s input is the sum of its upstream senders' outputs (plus constant biases). In the evaluation
run it is::

    in_v = in_v(clean) + sum_{u -> v in circuit} (out_u(run) - out_u(clean))
                       + sum_{u -> v not in circuit} (out_u(ablated) - out_u(clean))

where ``out_u(run)`` is sender ``u``'s output in the evaluation run itself (it changes when ``u``'s own inputs
are patched). This is computed stage by stage, in forward order (the heads of block 0, MLP 0, the heads of
block 1, ...): each stage is one batched forward of the engine's
:func:`~vit_patching.patching.run_interventions` that writes the stage's receiver inputs and records its
senders' outputs, so the next stage's inputs are known. The last stage writes the final residual and gives the
logits. All circuits and images are rows of the same passes. Each stage pass stops after its block, and a chunk
of rows skips the stages before its first ablated edge (their outputs are the clean run's), which makes one
circuit per edge (:func:`~vit_patching.circuits.exact.exact_edge_scores`) affordable.

Removing one edge ``u -> v`` from the full graph equals
``path_patch(senders=[u], receivers=[v], freeze=("heads", "mlps"), direction="noising")``; with ``path_patch``'s
default ``freeze=("heads",)`` the two differ wherever an MLP lies between ``u`` and ``v``.

``out_u(ablated)`` is what :class:`~vit_patching.circuits.interventions.Ablation` gives (the corrupted run by
default; zero, mean, mean per position, resampled or optimal constants).

Faithfulness = ``(m(circuit) - m(empty)) / (m(clean) - m(empty))`` of the image-mean metric: 1 for the full
graph (the clean run), 0 for the empty circuit (the corrupted run, or the run with every node ablated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_patching.checks import check_batch_size, check_finite, is_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching import Intervention, run_interventions
from vit_patching.patching.engine import result_dtype

from .common import Metric, check_pair, resolve_metric
from .eap import EDGE_FLAGS, head_outputs, receiver_hooks, sender_hooks, sender_outputs, stack_receivers
from .graph import Circuit, EdgeScores, Graph, select_circuit
from .interventions import ABLATIONS, Ablation, ablation_values, resolve_ablation

__all__ = ["ABLATIONS", "CircuitEvaluation", "evaluate_circuit", "faithfulness_curve", "run_circuits"]



@dataclass
class CircuitEvaluation:
    """Metric of each evaluated circuit, the baselines and the faithfulness (float64 for a float64 model, else
    float32).

    Attributes:
        circuits: The circuits, in order.
        values: Metric per circuit and image ``[circuit, batch]``.
        clean_score: Clean-run metric per image ``[batch]``.
        corrupted_score: Corrupted-run metric per image ``[batch]``.
        empty_score: Metric with every edge ablated ``[batch]`` (= corrupted for ``ablation="corrupted"``).
        metric: Metric name.
        ablation: The intervention's name (:data:`~vit_patching.circuits.interventions.ABLATIONS`).
        n_forwards: Forward passes run.

    Example:
        >>> ev = evaluate_circuit(model, circuit, clean, corrupted)
        >>> float(ev.faithfulness[0])
    """

    circuits: list[Circuit]
    values: Float[Tensor, "circuit batch"]
    clean_score: Float[Tensor, " batch"]
    corrupted_score: Float[Tensor, " batch"]
    empty_score: Float[Tensor, " batch"]
    metric: str
    ablation: str
    n_forwards: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def faithfulness(self) -> Float[Tensor, " circuit"]:
        """``(mean m(circuit) - mean m(empty)) / (mean m(clean) - mean m(empty))`` per circuit."""
        empty = self.empty_score.mean()
        return (self.values.mean(-1) - empty) / (self.clean_score.mean() - empty)

    @property
    def sizes(self) -> list[int]:
        """Edges per circuit."""
        return [c.n_edges for c in self.circuits]

    def plot(self, title: str = "faithfulness vs circuit size"):
        """Faithfulness against the number of edges (Plotly figure)."""
        from vit_patching.plotting.curves import faithfulness_vs_size  # plotly: loaded on the first figure

        return faithfulness_vs_size(self.sizes, self.faithfulness.tolist(), ablation=self.ablation,
                                    metric=self.metric, title=title)

    def __repr__(self) -> str:
        f = ", ".join(f"{v:.3f}" for v in self.faithfulness.tolist()[:6])
        return f"CircuitEvaluation(circuits={len(self.circuits)}, sizes={self.sizes[:6]}, faithfulness=[{f}])"


def _masks(circuits: Sequence[Circuit], graph: Graph) -> Bool[Tensor, "circuit sender receiver"]:
    if not circuits:
        raise ValueError("circuit: expected at least one Circuit, got an empty list")
    for c in circuits:
        if not isinstance(c, Circuit):
            raise TypeError(f"circuit: expected Circuit objects, got {type(c).__name__}")
        if c.graph.senders != graph.senders or c.graph.receivers != graph.receivers:
            raise ValueError("circuit: its graph is not the model's graph (another model?)")
    return torch.stack([c.mask for c in circuits])


@torch.no_grad()
def run_circuits(
    model: HookedViT,
    masks: Bool[Tensor, "circuit sender receiver"],
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],
    metric: Metric,
    *,
    ablation: str | Ablation = "corrupted",
    batch_size: int = 64,
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> tuple[Float[Tensor, "circuit batch"], Tensor, Tensor, int]:
    """Metric of the clean run with the edges outside each mask ablated; returns
    ``(values [circuit, batch], clean_logits, corrupted_logits, n_forwards)``.

    Example:
        >>> values, *_ = run_circuits(model, graph.mask[None], clean, corrupted, fn)   # the full graph
    """
    abl = resolve_ablation(ablation, reference)
    check_batch_size(batch_size)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    graph = Graph.of(model)
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)
    prefix = [get_act_name("resid_pre", l) for l in range(L)]
    clean_hooks = set(s_hooks + r_hooks + prefix)
    with model.flags(**EDGE_FLAGS):
        clean_logits, cc = model.run_with_cache(
            clean, names_filter=lambda n: n in clean_hooks, return_cache_object=False)
        corr_logits, xc = model.run_with_cache(corrupted, names_filter=lambda n: n in s_hooks,
                                               return_cache_object=False)
        out_clean = sender_outputs(model, cc)  # [b pos S d]
        out_abl = sender_outputs(model, ablation_values(model, abl, clean, corrupted, corrupted_cache=xc))
        in_clean = stack_receivers(model, cc)  # [b pos R d]
        d_abl = out_abl - out_clean
        n_c, batch = masks.shape[0], clean.shape[0]
        rows_all = [(c, b) for c in range(n_c) for b in range(batch)]
        act_dtype = out_clean.dtype  # the buffers below mix with activations: in the model's dtype
        values = torch.empty(n_c, batch, dtype=result_dtype(act_dtype))
        n_forwards = 0
        # Receiver columns and sender columns per stage.
        r_of = {r: i for i, r in enumerate(graph.receivers)}
        s_of = {s: i for i, s in enumerate(graph.senders)}
        for start in range(0, len(rows_all), batch_size):
            part = rows_all[start : start + batch_size]
            cid = torch.tensor([c for c, _ in part])
            img = torch.tensor([b for _, b in part], device=clean.device)
            keep = masks[cid] & graph.mask  # [n S R]; only upstream senders feed a receiver
            m = keep.to(clean.device, act_dtype)
            ablate = (graph.mask & ~keep).to(clean.device, act_dtype)
            # out(run) - out(clean)
            d_cur = torch.zeros(len(part), *out_clean.shape[1:], device=clean.device, dtype=act_dtype)

            d_abl_rows = d_abl[img]
            changed = False  # no stage of this chunk differs from the clean run yet

            def inputs(r_cols: list[int]) -> Tensor:
                return in_clean[:, :, r_cols][img] + torch.einsum("nsr,npsd->nprd", m[:, :, r_cols], d_cur) + \
                    torch.einsum("nsr,npsd->nprd", ablate[:, :, r_cols], d_abl_rows)

            all_rows = torch.arange(len(part), device=clean.device)
            for l in range(L):
                base = cc[prefix[l]][img]
                # Each stage pass stops after block l: only its z / mlp_out are read from it.
                cols = [r_of[f"L{l}H{h}.{c}"] for h in range(H) for c in "qkv"]
                # Until some edge into a stage is ablated, every input is the clean one and so is every output:
                # d_cur stays exactly 0 and the stage is skipped (exact per-edge rows start at their edge).
                changed = changed or bool(ablate[:, :, cols].any())
                if changed:
                    qkv = inputs(cols).unflatten(2, (H, 3))  # [n pos H 3 d]
                    ivs = [Intervention(get_act_name(n, l), all_rows, (), qkv[:, :, :, j])
                           for j, n in enumerate(("q_input", "k_input", "v_input"))]
                    _, rec = run_interventions(model, base, ivs, start_layer=l, stop_layer=l + 1,
                                               record=[get_act_name("z", l)])
                    heads = [s_of[f"L{l}H{h}"] for h in range(H)]
                    d_cur[:, :, heads] = head_outputs(model, rec[get_act_name("z", l)], l) - \
                        out_clean[:, :, heads][img]
                    n_forwards += 1
                changed = changed or bool(ablate[:, :, r_of[f"MLP{l}"]].any())
                if changed:
                    mlp_in = inputs([r_of[f"MLP{l}"]])[:, :, 0]
                    ivs = [Intervention(get_act_name("mlp_in", l), all_rows, (), mlp_in)]
                    _, rec = run_interventions(model, base, ivs, start_layer=l, stop_layer=l + 1,
                                               record=[get_act_name("mlp_out", l)])
                    s = s_of[f"MLP{l}"]
                    d_cur[:, :, s] = rec[get_act_name("mlp_out", l)] - out_clean[:, :, s][img]
                    n_forwards += 1
            final = inputs([r_of["logits"]])[:, :, 0]
            ivs = [Intervention(get_act_name("resid_post", L - 1), all_rows, (), final)]
            logits, _ = run_interventions(model, cc[prefix[L - 1]][img], ivs, start_layer=L - 1)
            n_forwards += 1
            values[cid, img.cpu()] = metric(logits, img).to(values.dtype).cpu()
    check_finite(values.T, "circuit scores (the clean run with the edges outside the circuit ablated)")  # per image
    return values, clean_logits, corr_logits, n_forwards


def evaluate_circuit(
    model: HookedViT,
    circuit: Circuit | Sequence[Circuit],
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    ablation: str | Ablation = "corrupted",
    batch_size: int = 64,
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> CircuitEvaluation:
    """Faithfulness of one or several circuits: the clean run with every other edge ablated.

    Args:
        model: A HookedViT.
        circuit: A :class:`~vit_patching.circuits.graph.Circuit` or a list of them (rows of the same passes).
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape (the ablated values, and the default reference set of ``mean`` /
            ``mean_positional`` / ``optimal``).
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        ablation: What an ablated edge carries: a name from
            :data:`~vit_patching.circuits.interventions.ABLATIONS` (``"corrupted"``: each image's corrupted value,
            the default; ``"zero"``, ``"mean"``, ``"mean_positional"``, ``"resample"``, ``"optimal"``) or an
            :class:`~vit_patching.circuits.interventions.Ablation`.
        batch_size: Rows (circuit x image) per forward pass.
        reference: Reference images for ``mean`` / ``mean_positional`` / ``resample`` / ``optimal`` (None: the
            corrupted images; for ``resample`` the clean images).

    Returns:
        :class:`CircuitEvaluation`.

    Raises:
        ValueError: mismatched images, an empty list, a circuit of another model's graph, a bad ablation.

    Example:
        >>> ev = evaluate_circuit(model, select_circuit(scores, top_n=30), clean, corrupted)
        >>> ev.faithfulness.shape                      # one value per circuit: 0 = corrupted, 1 = clean
        torch.Size([1])
    """
    check_pair(model, clean, corrupted)
    circuits = [circuit] if isinstance(circuit, Circuit) else list(circuit)
    graph = Graph.of(model)
    masks = _masks(circuits, graph)
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    check_batch_size(batch_size)
    with torch.no_grad():
        clean_logits, corr_logits = model(clean), model(corrupted)
    fn, name = resolve_metric(metric, clean_logits, corr_logits)
    empty = torch.zeros_like(graph.mask)[None]
    values, clean_logits, corr_logits, n = run_circuits(
        model, torch.cat([masks, empty]), clean, corrupted, fn, ablation=abl, batch_size=batch_size)
    ids = torch.arange(clean.shape[0], device=clean_logits.device)
    return CircuitEvaluation(
        circuits, values[:-1], fn(clean_logits, ids).to(values.dtype).cpu(),
        fn(corr_logits, ids).to(values.dtype).cpu(),
        values[-1], name, abl.kind, n,
    )


def faithfulness_curve(
    model: HookedViT,
    scores: EdgeScores,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    sizes: Sequence[int] | None = None,
    prune: bool = True,
    ablation: str | Ablation = "corrupted",
    batch_size: int = 64,
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> CircuitEvaluation:
    """Faithfulness of the top-``n`` circuits for each ``n`` in ``sizes`` (default: about 10 sizes, log-spaced).

    Example:
        >>> curve = faithfulness_curve(model, eap(model, clean, corrupted), clean, corrupted, sizes=[5, 20, 80])
        >>> fig = curve.plot()
    """
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores: expected EdgeScores (from eap / eap_ig), got {type(scores).__name__}")
    n_edges = int(scores.graph.mask.sum())
    if sizes is None:
        sizes = sorted({int(round(float(x))) for x in torch.logspace(0, math.log10(max(n_edges, 1)), 10)})
    sizes = list(sizes)
    if not sizes or any(not is_int(n) or n < 0 for n in sizes):
        raise ValueError(f"sizes: expected a non-empty list of non-negative ints (edges per circuit), got {sizes!r}")
    circuits = [select_circuit(scores, top_n=n, prune=prune) for n in sizes]
    ev = evaluate_circuit(model, circuits, clean, corrupted, metric, ablation=ablation, batch_size=batch_size,
                          reference=reference)
    ev.options["top_n"] = sizes
    return ev

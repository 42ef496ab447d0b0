"""Exact per-edge patching as a scorer: the reference the first-order scorers are judged against.

The exact score of edge ``u -> v`` is the metric the clean run loses when that edge alone is ablated (every
other edge of the full graph kept), the image mean of::

    exact(u -> v) = m(clean) - m(clean with only u -> v ablated)

computed by :func:`~vit_patching.circuits.evaluate.run_circuits` (the circuit evaluation's own edge patching):
one circuit per edge, the full graph minus that edge, all circuits and images as rows of the same passes.
With ``ablation="corrupted"`` (the default) the ablated edge carries the corrupted run's value, so this equals
``path_patch(senders=[u], receivers=[v], freeze=("heads", "mlps"), direction="noising")`` with the sign flipped.

Sign: positive = the edge supports the metric (removing it lowers the metric), the sign of this package's
:func:`~vit_patching.circuits.eap.eap` (``(out_u(clean) - out_u(ablated)) . dm/d in_v``, the first-order
estimate of the same difference). The EAP-IG library and MIB write the score as ``m(ablated) - m(clean)``,
the opposite sign; ranking by ``|score|`` (``select_circuit``, ``edge_auroc``) is the same either way.

Cost: ``n_edges x batch`` rows, each through ``2 L + 1`` stage passes of :func:`run_circuits` (a stage upstream
of the ablated edge is skipped: nothing has changed there yet). Graphs above ``max_edges`` are refused before any
compute with the number of row passes it would take.

Example:
    >>> exact = exact_edge_scores(model, clean, corrupted, "logit_diff")
    >>> select_circuit(exact, top_n=20)               # the 20 edges whose removal costs the most
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_batch_size, check_positive_int
from vit_patching.model import HookedViT

from .common import Metric, check_pair, resolve_metric
from .evaluate import run_circuits
from .graph import EdgeScores, Graph
from .interventions import Ablation, resolve_ablation

__all__ = ["exact_edge_scores", "exact_edge_cost"]


def exact_edge_cost(model: HookedViT, batch: int) -> int:
    """Row passes :func:`exact_edge_scores` runs at most: ``n_edges * batch * (2 L + 1)`` (one row = one image
    through one stage pass, a forward of about one block).

    Example:
        >>> exact_edge_cost(load_model("toy-shapes"), 4)        # 479 edges x 4 images x 9 stages
        17244
    """
    check_positive_int(batch, "batch")
    n_edges = int(Graph.of(model).mask.sum())
    return n_edges * batch * (2 * model.cfg.n_layers + 1)


def exact_edge_scores(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
    batch_size: int = 64,
    max_edges: int = 2000,
) -> EdgeScores:
    """Exact per-edge effects: ``m(clean) - m(clean with only that edge ablated)`` for every edge, image mean.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable ``metric(logits, image_index) -> [rows]`` or ``"logit_diff"`` / ``"logit"`` /
            ``"prob"``.
        ablation: What the removed edge carries (a name from
            :data:`~vit_patching.circuits.interventions.ABLATIONS` or an
            :class:`~vit_patching.circuits.interventions.Ablation`), as in ``evaluate_circuit``.
        reference: Reference images for ``mean`` / ``mean_positional`` / ``resample`` / ``optimal``.
        batch_size: Rows (edge x image) per forward pass.
        max_edges: Refuse graphs with more edges than this (the cost grows with ``edges x batch x layers``).

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="exact"``: ``per_image[s, r, b]`` the
        metric image ``b`` loses without edge ``s -> r``, ``scores`` their mean (NaN off the graph);
        ``options["n_forwards"]``: the stage passes run.

    Raises:
        ValueError: a graph with more than ``max_edges`` edges (with the cost it would take), mismatched images,
            a bad ablation or batch size; all before any forward pass.

    Example:
        >>> from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs
        >>> model, pairs = known_circuit_model(), known_circuit_pairs(4)
        >>> exact = exact_edge_scores(model, pairs.clean, pairs.corrupted, pairs.metric())
        >>> sorted((u, v) for u, v, _ in exact.top(4)) == sorted(KNOWN_EDGES)
        True
    """
    check_pair(model, clean, corrupted)
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    check_batch_size(batch_size)
    check_positive_int(max_edges, "max_edges")
    graph = Graph.of(model)
    s_idx, r_idx = graph.mask.nonzero(as_tuple=True)  # sender-major edge order
    n_edges = int(s_idx.numel())
    if n_edges > max_edges:
        raise ValueError(
            f"max_edges: expected a graph of at most {max_edges} edges for exact per-edge patching, got "
            f"{n_edges} edges; it would take {exact_edge_cost(model, clean.shape[0]):,} row passes "
            f"({n_edges} edges x {clean.shape[0]} images x {2 * model.cfg.n_layers + 1} stages, each about one "
            f"block's forward): raise max_edges to run it anyway, or use an estimate (eap, eap_ig)")
    # One circuit per edge: the full graph minus that edge. Ordered by receiver so that the edges of one chunk
    # of rows share their first changed stage and run_circuits skips the stages before it.
    order = torch.argsort(r_idx, stable=True)
    masks = graph.mask[None].repeat(n_edges, 1, 1)
    masks[torch.arange(n_edges), s_idx[order], r_idx[order]] = False
    with torch.no_grad():
        clean_logits, corr_logits = model(clean), model(corrupted)
    fn, name = resolve_metric(metric, clean_logits, corr_logits)
    values, clean_logits, corr_logits, n = run_circuits(
        model, masks, clean, corrupted, fn, ablation=abl, batch_size=batch_size)
    ids = torch.arange(clean.shape[0], device=clean_logits.device)
    clean_score = fn(clean_logits, ids).to(values.dtype).cpu()
    per_image = torch.full((*graph.mask.shape, clean.shape[0]), float("nan"), dtype=values.dtype)
    per_image[s_idx[order], r_idx[order]] = clean_score[None] - values
    return EdgeScores(
        graph, per_image.mean(-1), per_image, clean_score, fn(corr_logits, ids).to(values.dtype).cpu(), name,
        "exact", None, {"ablation": abl.kind, "n_forwards": n},
    )

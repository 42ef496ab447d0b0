"""Edge scores from node-level attribution patching: the circuit a node-level AtP ranking implies.

Node-level AtP scores each sender ``u`` (``embed``, a head, an MLP) by patching its whole output, corrupted to
clean: ``(out_u(clean) - out_u(corrupted)) . dm/d out_u``, summed over positions, the gradient taken in the
corrupted run (``atp_heads(sites="z")`` for heads, ``atp_layer_sweep(sites="mlp_out")`` summed over positions
for MLPs). ``out_u`` reaches the metric only through the inputs of the receivers after it, so
``dm/d out_u = sum_v dm/d in_v`` and the node score is the sum of the node's EAP edge scores:
``node(u) = sum_v eap(u -> v)``. That is how it is computed here (one EAP pass), and the test checks it against
``atp_heads`` / ``atp_layer_sweep``.

A node-level method selects nodes; the edges of its circuit are those between selected nodes. Ranking every
edge ``u -> v`` by ``min(|node(u)|, |node(component(v))|)`` (``logits`` always selected) makes the top edges
exactly the edges among the top nodes, so node-level AtP can be compared with edge scorers on the same
faithfulness curve and AUROC.

Example:
    >>> scores = atp_node_edges(model, clean, corrupted, "logit_diff")
    >>> scores.options["node_scores"]["L0H0"]
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.model import HookedViT

from .common import Metric
from .eap import eap
from .graph import EdgeScores, component

__all__ = ["atp_node_edges"]


def atp_node_edges(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
) -> EdgeScores:
    """Edge scores implied by node-level AtP: ``min(|node(u)|, |node(component(v))|)`` with
    ``node(u) = sum_v eap(u -> v)`` (node(logits) = inf).

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.

    Returns:
        :class:`~vit_patching.circuits.graph.EdgeScores` with ``method="atp-nodes"``: ``scores`` from the
        image-mean node scores (the ranking a node-level method uses; not the mean of ``per_image``),
        ``per_image`` from each image's node scores, both non-negative; ``options["node_scores"]``: the
        image-mean signed AtP score of every sender.

    Example:
        >>> scores = atp_node_edges(model, clean, corrupted)
        >>> select_circuit(scores, top_n=20).nodes          # the top nodes and the edges among them
    """
    edge = eap(model, clean, corrupted, metric)
    graph = edge.graph
    node = edge.per_image.nan_to_num(0.0).sum(1)  # [sender, batch]: sum over receivers
    mean_node = node.mean(-1)
    # each receiver's component as a row of the node scores; the logits (last row) are always selected
    ids = {s: i for i, s in enumerate(graph.senders)}
    comp = [ids.get(component(r), len(graph.senders)) for r in graph.receivers]

    def min_rule(n: Tensor) -> Tensor:  # [sender, ...] -> [sender, receiver, ...]
        a = n.abs()
        rows = torch.cat([a, torch.full_like(a[:1], float("inf"))])[comp]
        out = torch.minimum(a[:, None], rows[None])
        mask = graph.mask.reshape(graph.mask.shape + (1,) * (n.ndim - 1))
        return torch.where(mask, out, torch.full_like(out, float("nan")))

    return EdgeScores(graph, min_rule(mean_node), min_rule(node), edge.clean_score, edge.corrupted_score,
                      edge.metric, "atp-nodes", None, {"node_scores": dict(zip(graph.senders, mean_node.tolist()))})

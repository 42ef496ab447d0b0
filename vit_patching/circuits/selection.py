"""Node-level circuits from edge scores: score each node (the embedding, a head, an MLP), keep the top nodes and
every edge between them.

A node's score is the sum of its outgoing edge scores, ``score(u) = sum_v score(u -> v)``. For the gradient
scorers this is the node's own attribution: ``out_u`` reaches the metric only through the receivers it feeds, so
``sum_v Delta_u . dm/d in_v = Delta_u . dm/d out_u``, the AtP estimate of patching ``u``'s output (for a head,
:func:`~vit_patching.circuits.atp.atp_heads` at ``z``; for an MLP, ``atp_layer_sweep`` at ``mlp_out`` summed over
positions). Nodes are ranked by ``|score(u)|``.

Example:
    >>> circuit = select_nodes(eap(model, clean, corrupted), top_n=5)
    >>> circuit.nodes
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_bool, is_int

from .graph import Circuit, EdgeScores, component

__all__ = ["node_scores", "select_nodes"]


def node_scores(scores: EdgeScores) -> Float[Tensor, " sender"]:
    """Each sender's score: the sum of its outgoing edge scores (mean over images), in graph sender order.

    Example:
        >>> dict(zip(scores.graph.senders, node_scores(scores).tolist()))["L1H0"]
    """
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores: expected EdgeScores (from eap / eap_ig / ...), got {type(scores).__name__}")
    return torch.where(scores.graph.mask, scores.scores, torch.zeros_like(scores.scores)).sum(1)


def select_nodes(scores: EdgeScores, *, top_n: int, absolute: bool = True, prune: bool = True) -> Circuit:
    """The circuit of the ``top_n`` nodes by |node score| (signed with ``absolute=False``): every edge whose
    sender is kept and whose receiver belongs to a kept node or is ``"logits"``.

    Args:
        scores: Edge scores.
        top_n: Nodes to keep (the embedding counts as a node; ``"logits"`` is always kept).
        absolute: Rank by |score| (default) or by signed score.
        prune: Drop edges into nodes with no path to the logits.

    Returns:
        A :class:`~vit_patching.circuits.graph.Circuit`.

    Example:
        >>> select_nodes(scores, top_n=3).nodes[-1]
        'logits'
    """
    vals = node_scores(scores)
    check_bool(absolute, "absolute")
    check_bool(prune, "prune")
    if not is_int(top_n) or top_n < 0:
        raise ValueError(f"top_n: expected a non-negative int (nodes to keep), got {top_n!r}")
    graph = scores.graph
    key = (vals.abs() if absolute else vals).nan_to_num(nan=-torch.inf)
    order = torch.argsort(key, descending=True, stable=True)[:top_n].tolist()
    kept = {graph.senders[i] for i in order} | {"logits"}
    s_keep = torch.tensor([s in kept for s in graph.senders])
    r_keep = torch.tensor([component(r) in kept for r in graph.receivers])
    circuit = Circuit(graph, graph.mask & s_keep[:, None] & r_keep[None, :], scores.scores)
    return circuit.pruned() if prune else circuit

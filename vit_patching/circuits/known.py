"""Scoring a scorer against a known circuit: the AUROC of edge scores for the known edges.

The model of :mod:`vit_patching.zoo.known_circuit` has a circuit that is known exactly (a proof and a test),
so how well a scorer ranks its edges is a measurement, not an opinion.

Example:
    >>> from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs
    >>> model, pairs = known_circuit_model(), known_circuit_pairs(8)
    >>> edge_auroc(eap(model, pairs.clean, pairs.corrupted, pairs.metric()), KNOWN_EDGES)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vit_patching.checks import check_bool

from .graph import EdgeScores

__all__ = ["edge_auroc"]


def edge_auroc(scores: EdgeScores, known_edges: Sequence[tuple[str, str]], *, absolute: bool = True) -> float:
    """Area under the ROC curve of the edges' scores for telling the known edges from the others.

    The probability that a known edge scores higher than an edge outside the known set, ties counting one
    half (the Mann-Whitney form of the AUROC): 1 = every known edge ranks above every other edge, 0 = every
    known edge ranks below, 0.5 = no better than chance (or all scores equal). Edges are ranked by ``|score|``
    (``absolute=False``: by the signed score), as :func:`~vit_patching.circuits.graph.select_circuit` ranks them.

    Args:
        scores: Edge scores (:func:`~vit_patching.circuits.eap.eap`, ``eap_ig``, ...).
        known_edges: The known circuit, ``(sender, receiver)`` edges of ``scores.graph``.
        absolute: Rank by ``|score|`` (default) or by the signed score.

    Returns:
        The AUROC in ``[0, 1]``.

    Raises:
        TypeError: ``scores`` is not an ``EdgeScores``.
        ValueError: an unknown or non-edge name, no known edge or no other edge, a NaN score on an edge.

    Example:
        >>> pairs = known_circuit_pairs(8, seed=0)
        >>> round(edge_auroc(eap(known_circuit_model(), pairs.clean, pairs.corrupted, pairs.metric()), KNOWN_EDGES), 3)
        0.976
    """
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores: expected EdgeScores (from eap / eap_ig), got {type(scores).__name__}")
    check_bool(absolute, "absolute")
    graph = scores.graph
    known = graph.index(list(known_edges), "known_edges")
    n_known, n_edges = int(known.sum()), int(graph.mask.sum())
    if n_known == 0 or n_known == n_edges:
        raise ValueError(f"known_edges: expected between 1 and {n_edges - 1} edges of the graph "
                         f"(both classes are needed for an AUROC), got {n_known}")
    vals = scores.scores.double()
    vals = vals.abs() if absolute else vals
    if torch.isnan(vals[graph.mask]).any():
        raise ValueError("scores: NaN score on an edge of the graph; expected finite scores on every edge")
    pos, neg = vals[known], vals[graph.mask & ~known]
    wins = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(wins / (pos.numel() * neg.numel()))

"""The ViT computational graph for edge-level circuits: nodes, edges, edge scores and circuit selection.

* **Senders** (a node's output, written to the residual stream): ``"embed"`` (patch and prefix tokens, i.e.
  block 0's input), ``"L{l}H{h}"`` (one head's output ``z @ W_O``), ``"MLP{l}"``.
* **Receivers** (a node's input, read from the residual stream): ``"L{l}H{h}.q"`` / ``.k`` / ``.v`` (one
  head's query, key and value input), ``"MLP{l}"`` (``hook_mlp_in``), ``"logits"`` (the last block's output,
  read by the final norm and the classifier).
* **Edges**: every sender -> receiver pair where the sender writes before the receiver reads. The input of a
  receiver is the sum of its upstream senders' outputs (plus constant biases), which is what makes an edge
  patchable on its own.

The names are those of :class:`vit_patching.patching.Node`. Removing one edge ``(u, v)`` from the full graph
(:func:`~vit_patching.circuits.evaluate.evaluate_circuit`) equals
``path_patch(senders=[u], receivers=[v], freeze=("heads", "mlps"), direction="noising")``: the clean run with
only ``v``'s input from ``u`` corrupted. ``path_patch``'s defaults measure something else: ``freeze=("heads",)``
lets ``u``'s change also reach ``v`` through the MLPs in between, and ``direction="denoising"`` patches the clean
edge into the corrupted run.

Example:
    >>> g = Graph.of(load_model("toy-shapes"))          # 4 blocks x 4 heads
    >>> g.senders[:3], g.receivers[-2:], len(g.edges)
    (['embed', 'L0H0', 'L0H1'], ['MLP3', 'logits'], 479)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from vit_patching.checks import check_bool, check_finite_number, check_positive_number, is_int
from vit_patching.model import HookedViT
from vit_patching.patching import Node, all_senders

__all__ = ["Circuit", "EdgeScores", "Graph", "component", "select_circuit"]


def component(receiver: str) -> str:
    """The node a receiver input belongs to: ``"L2H1.q" -> "L2H1"``, ``"MLP2" -> "MLP2"``.

    Example:
        >>> component("L2H1.k"), component("logits")
        ('L2H1', 'logits')
    """
    return receiver.split(".")[0]


@dataclass(frozen=True)
class Graph:
    """Senders, receivers and the edge mask of a model's graph.

    Attributes:
        n_layers: Blocks.
        n_heads: Heads per block.
        senders: Sender names in forward order.
        receivers: Receiver names in forward order.
        mask: ``mask[s, r]`` is True where sender ``s`` writes before receiver ``r`` reads ``[sender, receiver]``.
    """

    n_layers: int
    n_heads: int
    senders: list[str]
    receivers: list[str]
    mask: Bool[Tensor, "sender receiver"]

    @classmethod
    def of(cls, model: HookedViT) -> "Graph":
        """The full graph of ``model`` (every head and MLP).

        Example:
            >>> Graph.of(model).receivers[:3]
            ['L0H0.q', 'L0H0.k', 'L0H0.v']
        """
        L, H = model.cfg.n_layers, model.cfg.n_heads
        senders = all_senders(model)
        receivers = [r for l in range(L) for r in [f"L{l}H{h}.{c}" for h in range(H) for c in "qkv"] + [f"MLP{l}"]]
        receivers.append("logits")
        mask = torch.tensor([[Node.parse(s).write_stage() < Node.parse(r).read_stage() for r in receivers]
                             for s in senders])
        return cls(L, H, senders, receivers, mask)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge ``(sender, receiver)`` in sender-major order."""
        return [(self.senders[s], self.receivers[r]) for s, r in self.mask.nonzero().tolist()]

    def index(self, edges: Sequence[tuple[str, str]], name: str = "edges") -> Bool[Tensor, "sender receiver"]:
        """A ``[sender, receiver]`` mask of ``edges``; unknown names or non-edges raise a ValueError naming ``name``."""
        s_id = {s: i for i, s in enumerate(self.senders)}
        r_id = {r: i for i, r in enumerate(self.receivers)}
        out = torch.zeros_like(self.mask)
        for e in edges:
            if not (isinstance(e, (tuple, list)) and len(e) == 2):
                raise ValueError(f"{name}: expected (sender, receiver) pairs, got {e!r}")
            u, v = e
            if u not in s_id:
                raise ValueError(f"{name}: unknown sender {u!r}; expected one of {self.senders}")
            if v not in r_id:
                raise ValueError(f"{name}: unknown receiver {v!r}; expected one of {self.receivers}")
            if not self.mask[s_id[u], r_id[v]]:
                raise ValueError(f"{name}: {u!r} -> {v!r} is not an edge ({u!r} does not write before {v!r} reads)")
            out[s_id[u], r_id[v]] = True
        return out


@dataclass
class EdgeScores:
    """Attribution scores of every edge of a :class:`Graph` (float64 for a float64 model, else float32).

    Attributes:
        graph: The graph.
        scores: Mean over images of each edge's score ``[sender, receiver]`` (NaN where there is no edge).
        per_image: Scores per image ``[sender, receiver, batch]`` (None for data-set runs, which keep the sum
            over images: :func:`~vit_patching.circuits.dataset.score_edges_dataset`).
        clean_score: Clean-run metric per image ``[batch]``.
        corrupted_score: Corrupted-run metric per image ``[batch]``.
        metric: Metric name.
        method: ``"eap"`` or ``"eap-ig"``.
        by_pos: Scores per token position (mean over images) ``[sender, receiver, pos]``, when asked for.
        options: Settings (steps, ...).

    Example:
        >>> scores.top(3)           # [(sender, receiver, score), ...] by |score|
    """

    graph: Graph
    scores: Float[Tensor, "sender receiver"]
    per_image: Float[Tensor, "sender receiver batch"] | None
    clean_score: Float[Tensor, " batch"]
    corrupted_score: Float[Tensor, " batch"]
    metric: str
    method: str
    by_pos: Float[Tensor, "sender receiver pos"] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int | None = None, *, absolute: bool = True) -> list[tuple[str, str, float]]:
        """Edges by decreasing |score| (``absolute=False``: by decreasing score), the first ``n`` (default all)."""
        s, r = self.graph.mask.nonzero(as_tuple=True)
        vals = self.scores[s, r]
        order = torch.argsort(vals.abs() if absolute else vals, descending=True, stable=True)
        order = order if n is None else order[:n]
        return [(self.graph.senders[int(s[i])], self.graph.receivers[int(r[i])], float(vals[i])) for i in order]

    def to_dataframe(self):
        """One row per edge: sender, receiver, score."""
        import pandas as pd

        return pd.DataFrame(self.top(), columns=["sender", "receiver", "score"])

    def __repr__(self) -> str:
        return (f"EdgeScores(method={self.method!r}, edges={int(self.graph.mask.sum())}, "
                f"batch={self.clean_score.shape[-1]}, metric={self.metric!r})")


@dataclass
class Circuit:
    """A set of edges of a :class:`Graph`, with the scores they were chosen by.

    Attributes:
        graph: The graph.
        mask: ``[sender, receiver]`` True for the circuit's edges.
        scores: The edge scores used for the selection (or None).

    Example:
        >>> circuit = select_circuit(scores, top_n=10)
        >>> circuit.edges[:2], circuit.nodes[:3]
    """

    graph: Graph
    mask: Bool[Tensor, "sender receiver"]
    scores: Float[Tensor, "sender receiver"] | None = None

    @classmethod
    def from_edges(cls, graph: Graph, edges: Sequence[tuple[str, str]]) -> "Circuit":
        """A circuit of the listed ``(sender, receiver)`` edges.

        Example:
            >>> Circuit.from_edges(Graph.of(model), [("L3H0", "logits")]).n_edges
            1
        """
        return cls(graph, graph.index(edges))

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(self.graph.senders[s], self.graph.receivers[r]) for s, r in self.mask.nonzero().tolist()]

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    @property
    def nodes(self) -> list[str]:
        """Components touched by an edge (senders and the components of receivers), in graph order."""
        used = {u for u, _ in self.edges} | {component(v) for _, v in self.edges}
        order = self.graph.senders + ["logits"]
        return [n for n in order if n in used]

    def pruned(self) -> "Circuit":
        """Drop edges whose receiver's component has no path (inside the circuit) to the logits.

        Example:
            >>> Circuit.from_edges(g, [("embed", "L0H0.q")]).pruned().n_edges      # L0H0 reaches nothing
            0
        """
        mask = self.mask.clone()
        comps = [component(r) for r in self.graph.receivers]
        while True:
            reach = {"logits"}
            for s in reversed(range(len(self.graph.senders))):  # senders in forward order: reverse = topological
                if any(mask[s, r] and comps[r] in reach for r in range(len(comps))):
                    reach.add(self.graph.senders[s])
            keep = torch.tensor([c in reach for c in comps])
            new = mask & keep[None, :]
            if torch.equal(new, mask):
                return Circuit(self.graph, new, self.scores)
            mask = new

    def __repr__(self) -> str:
        return f"Circuit(edges={self.n_edges}, nodes={len(self.nodes)})"


def select_circuit(
    scores: EdgeScores,
    *,
    top_n: int | None = None,
    threshold: float | None = None,
    absolute: bool = True,
    prune: bool = True,
) -> Circuit:
    """Choose a circuit: the ``top_n`` edges, or every edge with score above ``threshold``; then prune.

    Args:
        scores: Edge scores (:func:`~vit_patching.circuits.eap.eap`).
        top_n: Keep this many edges (exactly one of ``top_n`` / ``threshold``).
        threshold: Keep edges whose |score| (or score, with ``absolute=False``) is at least this.
        absolute: Rank by |score| (default) or by signed score.
        prune: Drop edges into components that have no path to the logits (repeatedly).

    Returns:
        A :class:`Circuit`.

    Raises:
        ValueError: both or neither of ``top_n``/``threshold``, or a bad value.

    Example:
        >>> circuit = select_circuit(scores, top_n=20)
        >>> circuit.n_edges <= 20
        True
    """
    if not isinstance(scores, EdgeScores):
        raise TypeError(f"scores: expected EdgeScores (from eap / eap_ig), got {type(scores).__name__}")
    check_bool(absolute, "absolute")
    check_bool(prune, "prune")
    if (top_n is None) == (threshold is None):
        raise ValueError(f"top_n, threshold: expected exactly one of them, got top_n={top_n!r}, threshold={threshold!r}")
    graph = scores.graph
    vals = scores.scores.abs() if absolute else scores.scores
    vals = torch.where(graph.mask, vals.nan_to_num(nan=-math.inf), torch.full_like(vals, -math.inf))
    if top_n is not None:
        if not is_int(top_n) or top_n < 0:
            raise ValueError(f"top_n: expected a non-negative int (edges to keep), got {top_n!r}")
        order = torch.argsort(vals.reshape(-1), descending=True, stable=True)[:top_n]
        mask = torch.zeros(vals.numel(), dtype=torch.bool)
        mask[order] = True
        mask = mask.view_as(vals) & graph.mask
    else:
        t = check_positive_number(threshold, "threshold", allow_zero=True) if absolute else \
            check_finite_number(threshold, "threshold")  # NaN would keep no edge, silently
        mask = (vals >= t) & graph.mask
    circuit = Circuit(graph, mask, scores.scores)
    return circuit.pruned() if prune else circuit

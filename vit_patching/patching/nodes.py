"""Nodes of the path-patching graph: parsing ``"L2H1.q"``-style strings, the hooks a node writes or reads,
and which senders write before which receivers read.

Senders (their output): ``"embed"`` (block 0's input), ``"L2H1"`` (head 1 of block 2), ``"L2"`` (every head of
block 2 together), ``"MLP2"``. Receivers (their input): ``"L3H0"`` (the head's q, k and v inputs),
``"L3H0.q"`` / ``".k"`` / ``".v"`` / ``".qk"`` ... (some of them), ``"L3"`` (every head's inputs), ``"MLP3"``,
``"logits"`` (the final residual). A tuple of nodes is a *set* patched together.

Example:
    >>> Node.parse("L2H1.q")
    Node(kind='head', layer=2, head=1, inputs='q')
    >>> receiver_hooks(Node.parse("L2H1.qk"), n_layers=4)
    [('blocks.2.hook_q_input', 1), ('blocks.2.hook_k_input', 1)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT

from .engine import Site

__all__ = [
    "Node", "NodeSet", "all_heads", "all_senders", "node_set_label", "parse_node_sets", "qkv_flags",
    "receiver_hooks", "sender_sites", "upstream",
]

_SENDER_KINDS = ("embed", "head", "attn", "mlp")
_RECEIVER_KINDS = ("head", "attn", "mlp", "logits")
_NODE_RE = re.compile(r"^(?:L(?P<layer>\d+)(?:H(?P<head>\d+))?(?:\.(?P<inputs>[qkv]{1,3}))?|MLP(?P<mlp>\d+))$")


@dataclass(frozen=True)
class Node:
    """A component of the path graph.

    Attributes:
        kind: ``"embed"``, ``"head"``, ``"attn"`` (all heads of a block), ``"mlp"`` or ``"logits"``.
        layer: Block index (``None`` for embed/logits).
        head: Head index (``kind == "head"``).
        inputs: For head/attn receivers, which inputs are patched: a subset of ``"qkv"``.

    Example:
        >>> Node.parse("L2H1.q")
        Node(kind='head', layer=2, head=1, inputs='q')
        >>> Node.parse("MLP0").label
        'MLP0'
    """

    kind: str
    layer: int | None = None
    head: int | None = None
    inputs: str = "qkv"

    @classmethod
    def parse(cls, node: "str | Node", name: str = "node") -> "Node":
        """Parse ``"embed"``, ``"logits"``, ``"L2H1"``, ``"L2H1.qk"``, ``"L2"``, ``"MLP2"`` (or pass a Node)."""
        if isinstance(node, Node):
            return node
        if not isinstance(node, str):
            raise TypeError(f"{name}: expected a node string like 'L2H1' or a Node, got {type(node).__name__}")
        if node in ("embed", "logits"):
            return cls(node)
        if node == "resid_final":
            return cls("logits")
        m = _NODE_RE.match(node)
        if m is None:
            raise ValueError(
                f"{name}: expected 'embed', 'logits', 'L<layer>H<head>[.q|k|v...]', 'L<layer>[.q|k|v...]' or "
                f"'MLP<layer>', got {node!r}"
            )
        if m["mlp"] is not None:
            return cls("mlp", int(m["mlp"]))
        inputs = m["inputs"] or "qkv"
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"{name}: expected distinct input letters (q, k, v), got {node!r}")
        inputs = "".join(c for c in "qkv" if c in inputs)
        layer = int(m["layer"])
        return cls("attn", layer, None, inputs) if m["head"] is None else cls("head", layer, int(m["head"]), inputs)

    @property
    def label(self) -> str:
        if self.kind in ("embed", "logits"):
            return self.kind
        if self.kind == "mlp":
            return f"MLP{self.layer}"
        base = f"L{self.layer}" + ("" if self.head is None else f"H{self.head}")
        return base if self.inputs == "qkv" else f"{base}.{self.inputs}"

    # Residual-stream "time": a writer at stage w is seen by every reader at stage r > w.
    def write_stage(self) -> int:
        return {"embed": 0, "head": 2 * (self.layer or 0) + 1, "attn": 2 * (self.layer or 0) + 1}.get(
            self.kind, 2 * (self.layer or 0) + 2
        )

    def read_stage(self) -> int:
        if self.kind == "logits":
            return 1 << 30  # after every block
        return 2 * self.layer + (1 if self.kind in ("head", "attn") else 2)

    def start_layer(self, n_layers: int) -> int:
        """First block a run patching this node must include."""
        if self.kind == "embed":
            return 0
        return n_layers - 1 if self.kind == "logits" else self.layer


NodeSet = tuple[Node, ...]


def _check_node(node: Node, role: str, model: HookedViT, name: str) -> Node:
    kinds = _SENDER_KINDS if role == "sender" else _RECEIVER_KINDS
    if node.kind not in kinds:
        raise ValueError(f"{name}: expected {role}s of kind {list(kinds)}, got {node.label!r} (a {node.kind} node)")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if node.layer is not None and not 0 <= node.layer < L:
        raise ValueError(f"{name}: expected layers in [0, {L}), got {node.layer} in {node.label!r}")
    if node.head is not None and not 0 <= node.head < H:
        raise ValueError(f"{name}: expected heads in [0, {H}), got {node.head} in {node.label!r}")
    if role == "sender" and node.inputs != "qkv":
        raise ValueError(
            f"{name}: expected a sender without an input suffix (a sender is patched at its output), got {node.label!r}"
        )
    return node


def parse_node_sets(nodes: Any, role: str, model: HookedViT, name: str) -> list[NodeSet]:
    """Parse a list whose items are nodes or tuples/lists of nodes (a set patched together)."""
    if isinstance(nodes, (str, Node)):
        nodes = [nodes]
    items = list(nodes)
    if not items:
        raise ValueError(f"{name}: expected at least one {role}, got {nodes!r}")
    out = []
    for item in items:
        group = [item] if isinstance(item, (str, Node)) else list(item)
        if not group:
            raise ValueError(f"{name}: expected non-empty {role} sets, got an empty one in {items!r}")
        parsed = tuple(_check_node(Node.parse(n, name), role, model, name) for n in group)
        if role == "receiver" and len(parsed) > 1 and any(n.kind == "logits" for n in parsed):
            raise ValueError(
                f"{name}: expected 'logits' (the final residual) alone in its receiver set, "
                f"got {node_set_label(parsed)!r}"
            )
        out.append(parsed)
    return out


def all_senders(model: HookedViT, *, embed: bool = True, mlps: bool = True) -> list[str]:
    """Every sender in forward order: ``embed``, then per block its heads ``L{l}H{h}`` and ``MLP{l}``.

    Example:
        >>> all_senders(model)[:3]
        ['embed', 'L0H0', 'L0H1']
    """
    out = ["embed"] if embed else []
    for l in range(model.cfg.n_layers):
        out += [f"L{l}H{h}" for h in range(model.cfg.n_heads)]
        if mlps:
            out.append(f"MLP{l}")
    return out


def all_heads(model: HookedViT, *, inputs: str = "qkv", layers: Sequence[int] | None = None) -> list[str]:
    """Every head as a node string (``inputs`` selects the receiver inputs, e.g. ``"q"``).

    Example:
        >>> all_heads(model, inputs="q", layers=[1])
        ['L1H0.q', 'L1H1.q']
    """
    suffix = "" if inputs == "qkv" else f".{inputs}"
    return [f"L{l}H{h}{suffix}" for l in (layers if layers is not None else range(model.cfg.n_layers))
            for h in range(model.cfg.n_heads)]


def sender_sites(node: Node) -> tuple[Site, ...]:
    """The engine sites that hold a sender's output (patched from the source run)."""
    if node.kind == "embed":
        return (Site(get_act_name("resid_pre", 0)),)
    if node.kind == "mlp":
        return (Site(get_act_name("mlp_out", node.layer)),)
    return (Site(get_act_name("z", node.layer), head=node.head),)


def receiver_hooks(node: Node, n_layers: int) -> list[tuple[str, int | None]]:
    """``(hook, head or None for all)`` that hold a receiver's input."""
    if node.kind == "mlp":
        return [(get_act_name("mlp_in", node.layer), None)]
    if node.kind == "logits":
        return [(get_act_name("resid_post", n_layers - 1), None)]
    return [(get_act_name(f"{c}_input", node.layer), node.head) for c in node.inputs]


def qkv_flags(receiver_sets: list[NodeSet]) -> dict[str, bool]:
    """The :meth:`HookedViT.flags` that switch on the receivers' input hooks (split q/k/v inputs, mlp_in)."""
    kinds = {n.kind for s in receiver_sets for n in s}
    flags = {}
    if kinds & {"head", "attn"}:
        flags["use_split_qkv_input"] = True
        flags["use_attn_in"] = False
    if "mlp" in kinds:
        flags["use_hook_mlp_in"] = True
    return flags


def upstream(senders: NodeSet, receivers: NodeSet) -> bool:
    """Whether any sender writes to the residual stream before any receiver reads it."""
    return any(s.write_stage() < r.read_stage() for s in senders for r in receivers)


def node_set_label(nodes: NodeSet) -> str:
    """``"L1H0+L1H1"``: the label of a node set."""
    return "+".join(n.label for n in nodes)

"""Path patching: the effect of a sender's output on the metric *through* chosen receivers only.

Nodes are written as strings (or :class:`Node`):

* senders (their output): ``"embed"`` (the embedding, i.e. block 0's input), ``"L2H1"`` (head 1 of block 2),
  ``"L2"`` (every head of block 2 together), ``"MLP2"``;
* receivers (their input): ``"L3H0"`` (the head's q, k and v inputs), ``"L3H0.q"`` / ``".k"`` / ``".v"`` /
  ``".qk"`` ... (some of them), ``"L3"`` (every head's inputs), ``"MLP3"``, ``"logits"`` (the final residual).

A tuple of nodes is a *set* patched together (one sender row or one receiver column).

Two algorithms, both batched through the engine's :func:`~vit_patching.patching.engine.run_interventions`:

* :func:`path_patch` — freeze-and-recompute (Wang et al. 2022, IOI, appendix B). Run 1: the target run with
  the senders' outputs patched from the source run and every other attention head's output (``hook_z``)
  frozen at its target-run value (MLPs recomputed unless ``freeze`` includes ``"mlps"``); the receivers' inputs
  are recorded. Run 2: the target run with only the receivers' inputs set to those recorded values. For the
  ``"logits"`` receiver run 1's output is the answer. All senders x images are rows of run 1; all (sender,
  receiver) pairs x images are rows of run 2.
* :func:`direct_path_patch` — TransformerLens's ``get_act_patch_direct_path``: the sender's source-minus-target
  write (``(z_src - z_tgt)[:, :, h] @ W_O[h]`` for a head) is *added* to the receiver's input
  (``hook_q_input`` ...), and nothing else changes.

Pairs where no sender writes before a receiver reads (e.g. a receiver in an earlier block) are not run and
hold NaN. With every head and MLP frozen, :func:`path_patch` equals :func:`direct_path_patch`. For a receiver
set spanning several blocks the two differ by design: run 2 *sets* each receiver's input to its run-1 value
(so an earlier receiver's change does not reach a later one), the direct path *adds* to each input (so it
does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._experiment import (
    check_batch_size,
    check_choice,
    check_inputs,
    layout_options,
    resolve_metric,
    source_target,
)
from .engine import Intervention, PatchSpec, Site, _compile, cache_for, row_chunks, run_interventions
from .metrics import Metric
from .results import PatchingResult

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
            raise TypeError(f"{name} must be a node string like 'L2H1' or a Node, got {type(node).__name__}")
        if node in ("embed", "logits"):
            return cls(node)
        if node == "resid_final":
            return cls("logits")
        m = _NODE_RE.match(node)
        if m is None:
            raise ValueError(
                f"{name} must be 'embed', 'logits', 'L<layer>H<head>[.q|k|v...]', 'L<layer>[.q|k|v...]' or "
                f"'MLP<layer>', got {node!r}"
            )
        if m["mlp"] is not None:
            return cls("mlp", int(m["mlp"]))
        inputs = m["inputs"] or "qkv"
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"{name}: inputs must not repeat letters, got {node!r}")
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


def _check_node(node: Node, role: str, model: Any, name: str) -> Node:
    kinds = _SENDER_KINDS if role == "sender" else _RECEIVER_KINDS
    if node.kind not in kinds:
        raise ValueError(f"{name}: {node.label!r} cannot be a {role}; {role}s are of kind {list(kinds)}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if node.layer is not None and not 0 <= node.layer < L:
        raise ValueError(f"{name}: layer of {node.label!r} must be in [0, {L}), got {node.layer}")
    if node.head is not None and not 0 <= node.head < H:
        raise ValueError(f"{name}: head of {node.label!r} must be in [0, {H}), got {node.head}")
    if role == "sender" and node.inputs != "qkv":
        raise ValueError(f"{name}: a sender is patched at its output; drop the input suffix of {node.label!r}")
    return node


def parse_node_sets(nodes: Any, role: str, model: Any, name: str) -> list[NodeSet]:
    """Parse a list whose items are nodes or tuples/lists of nodes (a set patched together)."""
    if isinstance(nodes, (str, Node)):
        nodes = [nodes]
    items = list(nodes)
    if not items:
        raise ValueError(f"{name} must list at least one {role}")
    out = []
    for item in items:
        group = [item] if isinstance(item, (str, Node)) else list(item)
        if not group:
            raise ValueError(f"{name}: an empty {role} set was given")
        parsed = tuple(_check_node(Node.parse(n, name), role, model, name) for n in group)
        if role == "receiver" and len(parsed) > 1 and any(n.kind == "logits" for n in parsed):
            raise ValueError(f"{name}: 'logits' (the final residual) cannot share a receiver set with other nodes")
        out.append(parsed)
    return out


def all_senders(model: Any, *, embed: bool = True, mlps: bool = True) -> list[str]:
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


def all_heads(model: Any, *, inputs: str = "qkv", layers: Sequence[int] | None = None) -> list[str]:
    """Every head as a node string (``inputs`` selects the receiver inputs, e.g. ``"q"``).

    Example:
        >>> all_heads(model, inputs="q", layers=[1])
        ['L1H0.q', 'L1H1.q']
    """
    suffix = "" if inputs == "qkv" else f".{inputs}"
    return [f"L{l}H{h}{suffix}" for l in (layers if layers is not None else range(model.cfg.n_layers))
            for h in range(model.cfg.n_heads)]


def _sender_sites(node: Node) -> tuple[Site, ...]:
    if node.kind == "embed":
        return (Site("blocks.0.hook_resid_pre"),)
    if node.kind == "mlp":
        return (Site(f"blocks.{node.layer}.hook_mlp_out"),)
    return (Site(f"blocks.{node.layer}.attn.hook_z", head=node.head),)


def _receiver_hooks(node: Node, n_layers: int) -> list[tuple[str, int | None]]:
    """(hook, head or None for all) that hold a receiver's input."""
    if node.kind == "mlp":
        return [(f"blocks.{node.layer}.hook_mlp_in", None)]
    if node.kind == "logits":
        return [(f"blocks.{n_layers - 1}.hook_resid_post", None)]
    return [(f"blocks.{node.layer}.hook_{c}_input", node.head) for c in node.inputs]


def _flags(receiver_sets: list[NodeSet]) -> dict[str, bool]:
    kinds = {n.kind for s in receiver_sets for n in s}
    flags = {}
    if kinds & {"head", "attn"}:
        flags["use_split_qkv_input"] = True
        flags["use_attn_in"] = False
    if "mlp" in kinds:
        flags["use_hook_mlp_in"] = True
    return flags


def _upstream(senders: NodeSet, receivers: NodeSet) -> bool:
    return any(s.write_stage() < r.read_stage() for s in senders for r in receivers)


def _label(nodes: NodeSet) -> str:
    return "+".join(n.label for n in nodes)


def _write_groups(entries: list[tuple[str, int | None, int, Any]], device: torch.device, add: bool,
                  values_of: Any) -> list[Intervention]:
    """Group ``(hook, head, row, key)`` writes by (hook, all heads?) into vectorised interventions.

    ``values_of(hook, keys, heads)`` returns the values of those writes stacked on axis 0 (``heads`` is None
    when every head, or a head-less hook, is written).
    """
    groups: dict[tuple[str, bool], list[tuple[int, int | None, Any]]] = {}
    for hook, head, row, key in entries:
        groups.setdefault((hook, head is None), []).append((row, head, key))
    out = []
    for (hook, every), items in groups.items():
        rows = torch.tensor([r for r, _, _ in items], device=device)
        keys = [k for _, _, k in items]
        heads = None if every else torch.tensor([h for _, h, _ in items], device=device)
        index = () if every else (None, heads)
        out.append(Intervention(hook, rows, index, values_of(hook, keys, heads), add=add))
    return out


def _prepare(model: Any, clean: Tensor, corrupted: Tensor, pixels: Tensor | None, senders: Any, receivers: Any,
             direction: str, batch_size: int) -> tuple[Any, list[NodeSet], list[NodeSet]]:
    layout = check_inputs(model, clean, corrupted, pixels)
    check_choice(direction, ("denoising", "noising"), "direction")
    check_batch_size(batch_size)
    sender_sets = parse_node_sets(all_senders(model) if senders is None else senders, "sender", model, "senders")
    receiver_sets = parse_node_sets(receivers, "receiver", model, "receivers")
    return layout, sender_sets, receiver_sets


def _result(values: Tensor, sender_sets: list[NodeSet], receiver_sets: list[NodeSet], source_score: Tensor,
            target_score: Tensor, metric_name: str, direction: str, kind: str, layout: Any, pixels: Tensor | None,
            n_forwards: int, options: dict[str, Any]) -> PatchingResult:
    opts = layout_options(layout, pixels)
    opts.update(senders=[[n.label for n in s] for s in sender_sets],
                receivers=[[n.label for n in r] for r in receiver_sets], **options)
    return PatchingResult(
        values=values,
        axes=("sender", "receiver"),
        labels={"sender": [_label(s) for s in sender_sets], "receiver": [_label(r) for r in receiver_sets]},
        target_score=target_score.float().cpu(),
        source_score=source_score.float().cpu(),
        metric=metric_name,
        direction=direction,
        kind=kind,
        options=opts,
        n_forwards=n_forwards,
    )


def _caches(model: Any, source: Tensor, target: Tensor, source_hooks: list[str], target_hooks: list[str],
            metric: Metric | str, direction: str) -> tuple[dict, dict, Tensor, Tensor, Metric, str]:
    prefix = [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]
    source_logits, source_cache = cache_for(model, source, source_hooks)
    target_logits, target_cache = cache_for(model, target, prefix + target_hooks)
    clean_logits, corrupted_logits = (
        (source_logits, target_logits) if direction == "denoising" else (target_logits, source_logits)
    )
    fn, name = resolve_metric(metric, clean_logits, corrupted_logits)
    return source_cache, target_cache, source_logits, target_logits, fn, name


def path_patch(
    model: Any,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    senders: Any = None,
    receivers: Any = ("logits",),
    freeze: str | Sequence[str] = ("heads",),
    direction: str = "denoising",
    batch_size: int = 128,
    progress: bool = True,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Freeze-and-recompute path patching from every sender (set) to every receiver (set), batched.

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"`` (see ``layer_sweep``).
        senders: Sender nodes or node sets (default :func:`all_senders`: embed, every head, every MLP).
        receivers: Receiver nodes or node sets; each is one column of the result (default the logits).
        freeze: What stays at its target-run value in run 1 besides the senders' own change: ``"heads"``
            (every other head's ``z``, as in the IOI paper) and/or ``"mlps"`` (every MLP output); ``()``
            freezes nothing (then a sender -> ``logits`` path is plain patching of the sender).
        direction: ``"denoising"`` (clean senders into the corrupted run) or ``"noising"`` (IOI's convention:
            corrupted senders into the clean run).
        batch_size: Rows per forward pass (run 1: sender x image; run 2: sender x receiver x image). Run 1
            keeps the receivers' inputs of its rows: ``[batch_size, pos, head, d_model]`` per q/k/v input hook,
            so lower it for large models.
        progress: Show a tqdm bar.
        pixels: Optional display images (kept in ``options`` for figures).

    Returns:
        :class:`PatchingResult` with axes ``("sender", "receiver")``; pairs where no sender writes before the
        receivers read are NaN.

    Raises:
        ValueError: bad node strings, layers/heads out of range, 'logits' mixed into a receiver set,
            unknown ``freeze`` entries, mismatched clean/corrupted.

    Example:
        >>> res = path_patch(model, clean, corrupted, "logit_diff", receivers=["L3H0.q", "L3H0.k", "logits"])
        >>> res.labels["receiver"], res.mean().shape
        (['L3H0.q', 'L3H0.k', 'logits'], torch.Size([25, 3]))
    """
    layout, sender_sets, receiver_sets = _prepare(
        model, clean, corrupted, pixels, senders, receivers, direction, batch_size
    )
    freeze_names = [freeze] if isinstance(freeze, str) else list(freeze)
    for f in freeze_names:
        check_choice(f, ("heads", "mlps"), "freeze")
    L = model.cfg.n_layers
    frozen = ([f"blocks.{l}.attn.hook_z" for l in range(L)] if "heads" in freeze_names else []) + (
        [f"blocks.{l}.hook_mlp_out" for l in range(L)] if "mlps" in freeze_names else []
    )
    sender_spec = PatchSpec([tuple(s for n in group for s in _sender_sites(n)) for group in sender_sets])
    n_s, n_r = len(sender_sets), len(receiver_sets)
    valid = [[_upstream(s, r) for r in receiver_sets] for s in sender_sets]
    logit_cols = [j for j, r in enumerate(receiver_sets) if r[0].kind == "logits"]
    input_cols = [j for j in range(n_r) if j not in logit_cols]
    sender_start = [min(n.start_layer(L) for n in s) for s in sender_sets]
    receiver_start = [min(n.start_layer(L) for n in r) for r in receiver_sets]

    with model.flags(**_flags(receiver_sets)):
        source, target = source_target(direction, clean, corrupted)
        source_cache, target_cache, source_logits, target_logits, fn, metric_name = _caches(
            model, source, target, sender_spec.hooks, frozen, metric, direction
        )
        batch = clean.shape[0]
        values = torch.full((n_s, n_r, batch), float("nan"))
        device = target_logits.device
        # Run-1 rows (sender, image), senders ordered by the block they start at.
        order = sorted(range(n_s), key=lambda s: sender_start[s])
        rows1 = (torch.tensor(order)[:, None] * batch + torch.arange(batch)).reshape(-1)
        n_forwards = 0
        for chunk in row_chunks(len(rows1), batch_size, progress=progress, desc="path patching"):
            r1 = rows1[chunk]
            s_ids, img_ids = r1 // batch, r1 % batch
            start = sender_start[int(s_ids[0])]
            imgs = img_ids.to(device)
            all_rows = torch.arange(len(r1), device=device)
            ivs = [Intervention(h, all_rows, (), target_cache[h][imgs]) for h in frozen
                   if int(h.split(".")[1]) >= start]
            ivs += _compile(sender_spec, s_ids.tolist(), img_ids, source_cache, device)  # after the freezes
            record = sorted({h for j in input_cols for n in receiver_sets[j] for h, _ in _receiver_hooks(n, L)
                             if int(h.split(".")[1]) >= start})
            logits1, recorded = run_interventions(
                model, target_cache[f"blocks.{start}.hook_resid_pre"][imgs], ivs, start_layer=start, record=record
            )
            n_forwards += 1
            score1 = fn(logits1, imgs).float().cpu()
            for j in logit_cols:
                ok = torch.tensor([valid[int(s)][j] for s in s_ids])
                values[s_ids[ok], j, img_ids[ok]] = score1[ok]
            # Run-2 rows (run-1 row, receiver set) for the pairs that can carry an effect.
            pairs = [(i, j) for i in range(len(r1)) for j in input_cols if valid[int(s_ids[i])][j]]
            for local, cols, score2 in _receiver_runs(model, pairs, recorded, receiver_sets, receiver_start,
                                                     img_ids, target_cache, fn, batch_size):
                n_forwards += 1
                values[s_ids[local], cols, img_ids[local]] = score2
        ids = torch.arange(batch, device=device)
        source_score, target_score = fn(source_logits, ids), fn(target_logits, ids)
    return _result(values, sender_sets, receiver_sets, source_score, target_score, metric_name, direction,
                   "path_patch", layout, pixels, n_forwards, {"freeze": freeze_names, "batch_size": batch_size})


def _receiver_runs(model: Any, pairs: list[tuple[int, int]], recorded: dict[str, Tensor],
                   receiver_sets: list[NodeSet], receiver_start: list[int], img_ids: Tensor,
                   target_cache: dict[str, Tensor], fn: Metric, batch_size: int):
    """Run 2 of path patching for one run-1 chunk: the target run with only the receivers' inputs set to
    their recorded run-1 values; yields ``(run-1 rows, receiver columns, metric)`` per forward pass."""
    L = model.cfg.n_layers
    device = next(iter(target_cache.values())).device
    pairs = sorted(pairs, key=lambda p: receiver_start[p[1]])  # later receivers start later

    def recorded_values(hook: str, keys: list[int], heads: Tensor | None) -> Tensor:
        idx = torch.tensor(keys, device=device)
        return recorded[hook][idx] if heads is None else recorded[hook][idx, :, heads]

    for sub in row_chunks(len(pairs), batch_size):
        part = [pairs[k] for k in sub.tolist()]
        start = receiver_start[part[0][1]]
        local = torch.tensor([i for i, _ in part])
        entries = [(h, head, k, i) for k, (i, j) in enumerate(part) for n in receiver_sets[j]
                   for h, head in _receiver_hooks(n, L)]
        imgs = img_ids[local].to(device)
        logits, _ = run_interventions(model, target_cache[f"blocks.{start}.hook_resid_pre"][imgs],
                                      _write_groups(entries, device, False, recorded_values), start_layer=start)
        yield local, torch.tensor([j for _, j in part]), fn(logits, imgs).float().cpu()


def _sender_delta(node: Node, imgs: Tensor, source_cache: dict, target_cache: dict, model: Any) -> Tensor:
    """A sender's source-minus-target write to the residual stream, ``[rows, pos, d_model]``."""
    if node.kind == "embed":
        h = "blocks.0.hook_resid_pre"
        return source_cache[h][imgs] - target_cache[h][imgs]
    if node.kind == "mlp":
        h = f"blocks.{node.layer}.hook_mlp_out"
        return source_cache[h][imgs] - target_cache[h][imgs]
    h = f"blocks.{node.layer}.attn.hook_z"
    dz = source_cache[h][imgs] - target_cache[h][imgs]  # [rows pos head d_head]
    W_O = model.blocks[node.layer].attn.W_O  # [head d_head d_model]
    if node.head is None:
        return torch.einsum("bphe,hed->bpd", dz, W_O)
    return dz[:, :, node.head] @ W_O[node.head]


def direct_path_patch(
    model: Any,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    senders: Any = None,
    receivers: Any = None,
    direction: str = "denoising",
    batch_size: int = 128,
    progress: bool = True,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
) -> PatchingResult:
    """Direct-path patching: add each sender's source-minus-target write to each receiver's input only.

    The batched form of TransformerLens's ``get_act_patch_direct_path``: for a head sender ``(l, h)`` and a
    receiver head's q input, ``(z_src - z_tgt)[:, :, h] @ W_O[l, h]`` is added at every position to that head's
    ``hook_q_input`` (``model.flags(use_split_qkv_input=True)`` is set for the run); every other component reads
    the unchanged target run. MLP senders add ``mlp_out_src - mlp_out_tgt``, ``embed`` the block-0 input
    difference; MLP receivers take it at ``hook_mlp_in``, ``logits`` at the last block's ``hook_resid_post``.
    Within a set, each receiver gets the sum over the senders that write before it reads.

    Args:
        model: A HookedViT.
        clean, corrupted: Image pair ``[batch, C, H, W]``.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        senders: Sender nodes or sets (default :func:`all_senders`).
        receivers: Receiver nodes or sets (default every head's q/k/v inputs, then ``logits``).
        direction: ``"denoising"`` or ``"noising"``.
        batch_size: Rows (sender x receiver x image) per forward pass.
        progress: Show a tqdm bar.
        pixels: Optional display images (kept in ``options``).

    Returns:
        :class:`PatchingResult` with axes ``("sender", "receiver")``, NaN where the sender is not upstream.

    Example:
        >>> res = direct_path_patch(model, clean, corrupted, senders=["L0H1"], receivers=all_heads(model, inputs="q"))
        >>> res.mean()[0, :2]             # receivers in block 0 read before L0H1 writes
        tensor([nan, nan])
    """
    if receivers is None:
        receivers = all_heads(model) + ["logits"]
    layout, sender_sets, receiver_sets = _prepare(
        model, clean, corrupted, pixels, senders, receivers, direction, batch_size
    )
    L = model.cfg.n_layers
    source_hooks = sorted({s.hook for group in sender_sets for n in group for s in _sender_sites(n)})
    pairs = [(s, r) for s in range(len(sender_sets)) for r in range(len(receiver_sets))
             if _upstream(sender_sets[s], receiver_sets[r])]
    receiver_start = [min(n.start_layer(L) for n in r) for r in receiver_sets]
    pairs.sort(key=lambda p: receiver_start[p[1]])
    batch = clean.shape[0]
    rows = [(s, r, b) for s, r in pairs for b in range(batch)]
    values = torch.full((len(sender_sets), len(receiver_sets), batch), float("nan"))

    with model.flags(**_flags(receiver_sets)):
        source, target = source_target(direction, clean, corrupted)
        source_cache, target_cache, source_logits, target_logits, fn, metric_name = _caches(
            model, source, target, source_hooks, source_hooks, metric, direction
        )
        device = target_logits.device
        n_forwards = 0
        for chunk in row_chunks(len(rows), batch_size, progress=progress, desc="direct path patching"):
            part = [rows[k] for k in chunk.tolist()]
            start = receiver_start[part[0][1]]
            imgs = torch.tensor([b for _, _, b in part], device=device)
            entries = []
            for k, (s, r, b) in enumerate(part):
                for rn in receiver_sets[r]:
                    ups = tuple(n for n in sender_sets[s] if n.write_stage() < rn.read_stage())
                    if ups:
                        entries += [(h, head, k, (ups, b)) for h, head in _receiver_hooks(rn, L)]

            def delta_values(hook: str, keys: list[tuple[NodeSet, int]], heads: Tensor | None) -> Tensor:
                out = torch.empty(len(keys), *target_cache[f"blocks.{start}.hook_resid_pre"].shape[1:], device=device)
                for ups in dict.fromkeys(u for u, _ in keys):  # one batched delta per distinct sender subset
                    sel = [i for i, (u, _) in enumerate(keys) if u == ups]
                    img = torch.tensor([keys[i][1] for i in sel], device=device)
                    out[sel] = sum(_sender_delta(n, img, source_cache, target_cache, model) for n in ups)
                if heads is None and hook.endswith("_input"):  # every head of the block gets the same write
                    out = out[:, :, None, :].expand(-1, -1, model.cfg.n_heads, -1)
                return out

            ivs = _write_groups(entries, device, True, delta_values)
            logits, _ = run_interventions(
                model, target_cache[f"blocks.{start}.hook_resid_pre"][imgs], ivs, start_layer=start
            )
            n_forwards += 1
            score = fn(logits, imgs).float().cpu()
            for k, (s, r, b) in enumerate(part):
                values[s, r, b] = score[k]
        ids = torch.arange(batch, device=device)
        source_score, target_score = fn(source_logits, ids), fn(target_logits, ids)
    return _result(values, sender_sets, receiver_sets, source_score, target_score, metric_name, direction,
                   "direct_path", layout, pixels, n_forwards, {"batch_size": batch_size})

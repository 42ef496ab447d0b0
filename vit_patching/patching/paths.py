"""Path patching: the effect of a sender's output on the metric *through* chosen receivers only.

Nodes are written as strings (or :class:`~vit_patching.patching.nodes.Node`; see :mod:`.nodes`): senders
``"embed"``, ``"L2H1"``, ``"L2"``, ``"MLP2"``; receivers ``"L3H0"``, ``"L3H0.q"``, ``"L3"``, ``"MLP3"``,
``"logits"``. A tuple of nodes is a *set* patched together (one sender row or one receiver column).

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

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_choice
from vit_patching.hook_names import get_act_name, hook_layer, site_axes
from vit_patching.model import HookedViT, TokenLayout

from .experiment import DIRECTIONS, CachedRuns, cache_runs, check_inputs, layout_options
from .engine import Intervention, PatchSpec, compile_spec, result_dtype, row_chunks, run_interventions
from .memory import check_memory_args, hook_elements, resolve_batch_size
from .metrics import Metric
from .nodes import (  # noqa: F401  (Node, all_heads, all_senders: re-exported, their historical home)
    Node,
    NodeSet,
    all_heads,
    all_senders,
    node_set_label,
    parse_node_sets,
    qkv_flags,
    receiver_hooks,
    sender_sites,
    upstream,
)
from .results import PatchingResult

__all__ = ["Node", "all_heads", "all_senders", "direct_path_patch", "path_patch"]


def _write_groups(entries: list[tuple[str, int | None, int, Any]], device: torch.device, add: bool,
                  values_of: Callable[[str, list[Any], Tensor | None], Tensor]) -> list[Intervention]:
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


def _prepare(model: HookedViT, clean: Tensor, corrupted: Tensor, pixels: Tensor | None, senders: Any,
             receivers: Any, direction: str, batch_size: int | str,
             max_memory: int | None) -> tuple[TokenLayout, list[NodeSet], list[NodeSet]]:
    """Every argument check of both algorithms, before any forward pass."""
    layout = check_inputs(model, clean, corrupted, pixels)
    check_choice(direction, DIRECTIONS, "direction")
    check_memory_args(batch_size, max_memory)
    sender_sets = parse_node_sets(all_senders(model) if senders is None else senders, "sender", model, "senders")
    receiver_sets = parse_node_sets(receivers, "receiver", model, "receivers")
    if model.cfg.parallel_attn_mlp:
        # A parallel block's attention and MLP both read one norm of resid_pre: there is no separate q/k/v or
        # MLP input to write a receiver's path into, and head l does not feed MLP l, so only logits can receive.
        inner = sorted({n.kind for group in receiver_sets for n in group} - {"logits"})
        if inner:
            raise ValueError(
                "receivers: expected only 'logits' on a model with parallel attention/MLP blocks "
                f"(ParallelScalingBlock, cfg.parallel_attn_mlp), got {', '.join(inner)} receivers; their inputs "
                "share one norm with no split input hooks"
            )
    return layout, sender_sets, receiver_sets


def _path_memory(model: HookedViT, n_pos: int, batch: int, cached: list[str], sender_sets: list[NodeSet],
                 receiver_sets: list[NodeSet], *, frozen: Sequence[str] = (), recorded: Sequence[str] = (),
                 write_copies: int = 1) -> dict[str, int]:
    """What path patching holds, for :func:`~vit_patching.patching.memory.resolve_batch_size`.

    Once: the cached runs (``cached``: hooks held per image, the target's residual entering every block
    included). Per row, besides one block: the start residual; the frozen activations' target values and the
    senders' source values written in run 1; the receivers' inputs run 1 records (``recorded``, the whole
    activation per row: ``[pos, head, d_model]`` for a q/k/v input) and keeps while run 2 runs; the widest
    receiver set's writes (``write_copies`` of them: the direct path adds, so it holds the sum too); the q/k/v
    inputs split per head, which the forward materialises when heads receive; one copied activation; the logits.
    """
    cfg = model.cfg

    def el(hook: str, index: tuple[Any, ...] = ()) -> int:
        return hook_elements(cfg, hook, n_pos, index)

    heads = any(n.kind in ("head", "attn") for r in receiver_sets for n in r)
    split = 3 * n_pos * cfg.n_heads * cfg.d_model if heads else 0
    senders = max(sum(el(s.hook, s.index()) for n in group for s in sender_sites(n)) for group in sender_sets)
    writes = max(sum(el(h, () if head is None else (None, head)) for n in r for h, head in receiver_hooks(n, cfg.n_layers))
                 for r in receiver_sets)
    widest = max([el(h) for h in (*frozen, *recorded)] + [n_pos * cfg.d_model])
    per_row = (n_pos * cfg.d_model + sum(el(h) for h in frozen) + senders + sum(el(h) for h in recorded)
               + write_copies * writes + split + widest + cfg.n_classes)
    return {"held_elements": batch * sum(el(h) for h in cached), "extra_elements_per_row": per_row}


def _result(values: Tensor, sender_sets: list[NodeSet], receiver_sets: list[NodeSet], runs: CachedRuns,
            direction: str, kind: str, layout: TokenLayout, pixels: Tensor | None, n_forwards: int,
            options: dict[str, Any]) -> PatchingResult:
    opts = layout_options(layout, pixels)
    opts.update(senders=[[n.label for n in s] for s in sender_sets],
                receivers=[[n.label for n in r] for r in receiver_sets], **options)
    ids = torch.arange(values.shape[-1], device=runs.target_logits.device)
    return PatchingResult(
        values=values,
        axes=("sender", "receiver"),
        labels={"sender": [node_set_label(s) for s in sender_sets],
                "receiver": [node_set_label(r) for r in receiver_sets]},
        target_score=runs.metric(runs.target_logits, ids).to(values.dtype).cpu(),
        source_score=runs.metric(runs.source_logits, ids).to(values.dtype).cpu(),
        metric=runs.metric_name,
        direction=direction,
        kind=kind,
        options=opts,
        n_forwards=n_forwards,
    )


def path_patch(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    senders: Any = None,
    receivers: Any = ("logits",),
    freeze: str | Sequence[str] = ("heads",),
    direction: str = "denoising",
    batch_size: int | str = 128,
    max_memory: int | None = None,
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
            so lower it for large models, or pass ``"auto"``: as many rows as fit ``max_memory``, counting the
            cached runs and those recorded inputs (see :mod:`~vit_patching.patching.memory`).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar.
        pixels: Optional display images (kept in ``options`` for figures).

    Returns:
        :class:`PatchingResult` with axes ``("sender", "receiver")``; pairs where no sender writes before the
        receivers read are NaN.

    Raises:
        ValueError: bad node strings, layers/heads out of range, 'logits' mixed into a receiver set,
            unknown ``freeze`` entries, mismatched clean/corrupted, head/attn/MLP receivers on a model with
            parallel attention/MLP blocks (only ``"logits"`` can receive there).

    Example:
        >>> res = path_patch(model, clean, corrupted, "logit_diff", receivers=["L3H0.q", "L3H0.k", "logits"])
        >>> res.labels["receiver"], res.mean().shape
        (['L3H0.q', 'L3H0.k', 'logits'], torch.Size([25, 3]))
    """
    layout, sender_sets, receiver_sets = _prepare(
        model, clean, corrupted, pixels, senders, receivers, direction, batch_size, max_memory
    )
    freeze_names = list(dict.fromkeys([freeze] if isinstance(freeze, str) else list(freeze)))
    for f in freeze_names:
        check_choice(f, ("heads", "mlps"), "freeze")
    L = model.cfg.n_layers
    frozen = ([get_act_name("z", l) for l in range(L)] if "heads" in freeze_names else []) + (
        [get_act_name("mlp_out", l) for l in range(L)] if "mlps" in freeze_names else []
    )
    sender_spec = PatchSpec([tuple(s for n in group for s in sender_sites(n)) for group in sender_sets])
    n_s, n_r = len(sender_sets), len(receiver_sets)
    valid = [[upstream(s, r) for r in receiver_sets] for s in sender_sets]
    logit_cols = [j for j, r in enumerate(receiver_sets) if r[0].kind == "logits"]
    input_cols = [j for j in range(n_r) if j not in logit_cols]
    sender_start = [min(n.start_layer(L) for n in s) for s in sender_sets]
    receiver_start = [min(n.start_layer(L) for n in r) for r in receiver_sets]
    prefix = [get_act_name("resid_pre", l) for l in range(L)]
    recorded = sorted({h for j in input_cols for n in receiver_sets[j] for h, _ in receiver_hooks(n, L)})
    batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory, n_pos=layout.n_pos, **_path_memory(
        model, layout.n_pos, clean.shape[0], [*prefix, *sender_spec.hooks, *frozen], sender_sets, receiver_sets,
        frozen=frozen, recorded=recorded,
    ))

    with model.flags(**qkv_flags(receiver_sets)):
        runs = cache_runs(model, metric, clean, corrupted, direction=direction, source_hooks=sender_spec.hooks,
                          target_hooks=frozen)
        batch = clean.shape[0]
        dtype = result_dtype(runs.target_logits.dtype)
        values = torch.full((n_s, n_r, batch), float("nan"), dtype=dtype)
        device = runs.target_logits.device
        # Run-1 rows (sender, image), senders ordered by the block they start at.
        order = sorted(range(n_s), key=lambda s: sender_start[s])
        rows1 = (torch.tensor(order)[:, None] * batch + torch.arange(batch)).reshape(-1)
        n_forwards = 0
        for chunk in row_chunks(len(rows1), batch_size, progress=progress, desc="path patching"):
            r1 = rows1[chunk]
            s_ids, img_ids = r1 // batch, r1 % batch
            start = sender_start[int(s_ids[0])]  # the chunk's earliest sender: nothing changes before it
            imgs = img_ids.to(device)
            all_rows = torch.arange(len(r1), device=device)
            ivs = [Intervention(h, all_rows, (), runs.target_cache[h][imgs]) for h in frozen if hook_layer(h) >= start]
            ivs += compile_spec(sender_spec, s_ids.tolist(), img_ids, runs.source_cache, device)  # after the freezes
            record = sorted({h for j in input_cols for n in receiver_sets[j] for h, _ in receiver_hooks(n, L)
                             if hook_layer(h) >= start})
            logits1, recorded = run_interventions(
                model, runs.target_cache[get_act_name("resid_pre", start)][imgs], ivs, start_layer=start, record=record
            )
            n_forwards += 1
            score1 = runs.metric(logits1, imgs).to(dtype).cpu()
            for j in logit_cols:
                ok = torch.tensor([valid[int(s)][j] for s in s_ids])
                values[s_ids[ok], j, img_ids[ok]] = score1[ok]
            # Run-2 rows (run-1 row, receiver set) for the pairs that can carry an effect.
            pairs = [(i, j) for i in range(len(r1)) for j in input_cols if valid[int(s_ids[i])][j]]
            for local, cols, score2 in _receiver_runs(model, pairs, recorded, start, receiver_sets, receiver_start,
                                                     img_ids, runs, batch_size):
                n_forwards += 1
                values[s_ids[local], cols, img_ids[local]] = score2.to(dtype)
        return _result(values, sender_sets, receiver_sets, runs, direction, "path_patch", layout, pixels, n_forwards,
                       {"freeze": freeze_names, "batch_size": batch_size})


def _receiver_runs(model: HookedViT, pairs: list[tuple[int, int]], recorded: dict[str, Tensor], run1_start: int,
                   receiver_sets: list[NodeSet], receiver_start: list[int], img_ids: Tensor, runs: CachedRuns,
                   batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Run 2 of path patching for one run-1 chunk: the target run with only the receivers' inputs set to
    their recorded run-1 values; yields ``(run-1 rows, receiver columns, metric)`` per forward pass.

    Receivers in blocks before ``run1_start`` (the run-1 chunk's first block) were not recorded: no sender of
    the chunk writes before they read, so their run-1 input *is* the target run's, and run 2 leaves them be.
    (Which receivers fall before it depends on how ``batch_size`` chunks the senders; the result does not.)
    """
    L = model.cfg.n_layers
    device = runs.target_logits.device
    pairs = sorted(pairs, key=lambda p: receiver_start[p[1]])  # later receivers start later

    def recorded_values(hook: str, keys: list[int], heads: Tensor | None) -> Tensor:
        idx = torch.tensor(keys, device=device)
        return recorded[hook][idx] if heads is None else recorded[hook][idx, :, heads]

    for sub in row_chunks(len(pairs), batch_size):
        part = [pairs[k] for k in sub.tolist()]
        start = receiver_start[part[0][1]]
        local = torch.tensor([i for i, _ in part])
        entries = [(h, head, k, i) for k, (i, j) in enumerate(part) for n in receiver_sets[j]
                   for h, head in receiver_hooks(n, L) if hook_layer(h) >= run1_start]
        imgs = img_ids[local].to(device)
        logits, _ = run_interventions(model, runs.target_cache[get_act_name("resid_pre", start)][imgs],
                                      _write_groups(entries, device, False, recorded_values), start_layer=start)
        yield local, torch.tensor([j for _, j in part]), runs.metric(logits, imgs).cpu()


def _sender_delta(node: Node, imgs: Tensor, runs: CachedRuns, model: HookedViT) -> Tensor:
    """A sender's source-minus-target write to the residual stream, ``[rows, pos, d_model]``, in the model's
    dtype."""
    src, tgt = runs.source_cache, runs.target_cache
    if node.kind in ("embed", "mlp"):
        h = sender_sites(node)[0].hook  # block 0's input / the MLP's output: already a residual write
        return src[h][imgs] - tgt[h][imgs]
    h = get_act_name("z", node.layer)
    dz = src[h][imgs] - tgt[h][imgs]  # [rows pos head d_head]
    W_O = model.blocks[node.layer].attn.W_O  # [head d_head d_model]
    if node.head is None:
        return torch.einsum("bphe,hed->bpd", dz, W_O)
    return dz[:, :, node.head] @ W_O[node.head]


def direct_path_patch(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    senders: Any = None,
    receivers: Any = None,
    direction: str = "denoising",
    batch_size: int | str = 128,
    max_memory: int | None = None,
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
        batch_size: Rows (sender x receiver x image) per forward pass, or ``"auto"``: as many as fit
            ``max_memory``, counting the cached runs and each row's writes (see :mod:`~vit_patching.patching.memory`).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar.
        pixels: Optional display images (kept in ``options``).

    Returns:
        :class:`PatchingResult` with axes ``("sender", "receiver")``, NaN where the sender is not upstream.

    Raises:
        ValueError: as :func:`path_patch`; on parallel attention/MLP blocks pass ``receivers=["logits"]`` (the
            default receivers include every head's inputs, which those blocks do not have separately).

    Example:
        >>> res = direct_path_patch(model, clean, corrupted, senders=["L0H1"], receivers=all_heads(model, inputs="q"))
        >>> res.mean()[0, :2]             # receivers in block 0 read before L0H1 writes
        tensor([nan, nan])
    """
    if receivers is None:
        receivers = all_heads(model) + ["logits"]
    layout, sender_sets, receiver_sets = _prepare(
        model, clean, corrupted, pixels, senders, receivers, direction, batch_size, max_memory
    )
    L = model.cfg.n_layers
    source_hooks = sorted({s.hook for group in sender_sets for n in group for s in sender_sites(n)})
    prefix = [get_act_name("resid_pre", l) for l in range(L)]  # both runs cache the senders' hooks
    batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory, n_pos=layout.n_pos, **_path_memory(
        model, layout.n_pos, clean.shape[0], [*prefix, *source_hooks, *source_hooks], sender_sets, receiver_sets,
        write_copies=2,
    ))
    pairs = [(s, r) for s in range(len(sender_sets)) for r in range(len(receiver_sets))
             if upstream(sender_sets[s], receiver_sets[r])]
    receiver_start = [min(n.start_layer(L) for n in r) for r in receiver_sets]
    pairs.sort(key=lambda p: receiver_start[p[1]])
    batch = clean.shape[0]
    rows = [(s, r, b) for s, r in pairs for b in range(batch)]

    with model.flags(**qkv_flags(receiver_sets)):
        runs = cache_runs(model, metric, clean, corrupted, direction=direction, source_hooks=source_hooks,
                          target_hooks=source_hooks)
        device, act_dtype = runs.target_logits.device, runs.target_cache[source_hooks[0]].dtype
        dtype = result_dtype(runs.target_logits.dtype)
        values = torch.full((len(sender_sets), len(receiver_sets), batch), float("nan"), dtype=dtype)
        d_resid = runs.target_cache[get_act_name("resid_pre", 0)].shape[1:]  # [pos, d_model]
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
                        entries += [(h, head, k, (ups, b)) for h, head in receiver_hooks(rn, L)]

            def delta_values(hook: str, keys: list[tuple[NodeSet, int]], heads: Tensor | None) -> Tensor:
                # In the activations' dtype: a float32 buffer would round a float64 model's deltas.
                out = torch.empty(len(keys), *d_resid, device=device, dtype=act_dtype)
                for ups in dict.fromkeys(u for u, _ in keys):  # one batched delta per distinct sender subset
                    sel = [i for i, (u, _) in enumerate(keys) if u == ups]
                    img = torch.tensor([keys[i][1] for i in sel], device=device)
                    out[sel] = sum(_sender_delta(n, img, runs, model) for n in ups)
                if heads is None and "head" in site_axes(hook):  # every head of the block gets the same write
                    out = out[:, :, None, :].expand(-1, -1, model.cfg.n_heads, -1)
                return out

            ivs = _write_groups(entries, device, True, delta_values)
            logits, _ = run_interventions(
                model, runs.target_cache[get_act_name("resid_pre", start)][imgs], ivs, start_layer=start
            )
            n_forwards += 1
            score = runs.metric(logits, imgs).to(dtype).cpu()
            for k, (s, r, b) in enumerate(part):
                values[s, r, b] = score[k]
        return _result(values, sender_sets, receiver_sets, runs, direction, "direct_path", layout, pixels,
                       n_forwards, {"batch_size": batch_size})

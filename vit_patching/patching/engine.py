"""The batched patching engine shared by every experiment (sweeps, heads, paths, CAAP).

Two layers:

* :func:`run_interventions` — the primitive. One forward pass over a batch of *rows*, starting from a cached
  residual stream at ``start_layer`` (or from images), with vectorised writes
  (:class:`Intervention`: hook, rows, index, values) and optional recording of hook values per row.
* :func:`run_patch_spec` — experiments as data. A :class:`PatchSpec` lists *variants*; each variant is a set of
  :class:`Site` s patched together. Every (variant, image) pair becomes one row; rows are processed in chunks of
  at most ``batch_size``, each chunk one forward that starts from the target run's cached prefix at the earliest
  layer any variant touches. Values come from the *source* run's cache, written into the *target* run.

Where things live: this module runs (:func:`run_interventions`, :func:`run_patch_spec`, :class:`PatchRun`,
:func:`compile_spec` — a chunk of spec rows as interventions —, :func:`cache_for`, :func:`row_chunks`);
:mod:`vit_patching.patching.spec` holds the data (:class:`Site`, :class:`PatchSpec`, :class:`Intervention`,
:func:`variant_start`) and the memory count (:func:`spec_row_elements`, :func:`spec_memory`), re-exported here.

Conventions: **denoising** = source is the clean run, target the corrupted run (how much does patching restore?);
**noising** = source corrupted, target clean (how much does patching break?). The engine is the same; the
experiment functions name the convention in their results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_patching.checks import check_batch_size, check_finite
from vit_patching.hook_names import get_act_name, hook_layer, site_suffix, split_sae_name
from vit_patching.model import HookedViT, check_scores

from .memory import check_memory_args, resolve_batch_size
from .metrics import Metric
from .spec import (  # re-exported: the experiment data types and their memory count live there
    Intervention, PatchSpec, Site, Variant, check_site, hook_axes, site_shape, spec_memory, spec_row_elements,
    variant_start,
)

logger = logging.getLogger(__name__)


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype results are kept in: the model's when it is float64, else float32 (half models' metrics are
    accumulated in float32; float64 models keep their precision)."""
    return torch.promote_types(dtype, torch.float32)


def _write(act: Tensor, iv: Intervention) -> None:
    """``act[rows, *index] = values`` (``+=`` for ``add``), in place on ``act``."""
    idx = (iv.rows,) + tuple(slice(None) if i is None else i for i in iv.index)
    values = iv.values.to(act.dtype)
    act[idx] = act[idx] + values if iv.add else values


#: Hooks whose activation is a fresh tensor that only the forward pass holds (the block's input, its residual
#: sums): with ``run_interventions(..., inplace=True)`` they are written in place instead of copied first.
#: Not q/k/v, z or the split inputs: those are views of shared buffers (the fused qkv output, one expanded input).
INPLACE_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")



def row_chunks(n_rows: int, batch_size: int, *, progress: bool = False, desc: str = "patching") -> Iterable[Tensor]:
    """Consecutive row-index chunks of at most ``batch_size`` rows, with an optional tqdm bar.

    Example:
        >>> [c.tolist() for c in row_chunks(5, 2)]
        [[0, 1], [2, 3], [4]]
    """
    check_batch_size(batch_size)
    n_chunks = math.ceil(n_rows / batch_size)
    for c in tqdm(range(n_chunks), desc=desc, disable=not progress, leave=False):
        yield torch.arange(c * batch_size, min((c + 1) * batch_size, n_rows))


def run_interventions(
    model: HookedViT,
    start_input: Tensor,
    interventions: Sequence[Intervention] = (),
    *,
    start_layer: int | None = None,
    record: Sequence[str] = (),
    inplace: bool = False,
    stop_layer: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass with vectorised writes, starting from images or a cached residual.

    Args:
        model: A HookedViT.
        start_input: Images ``[rows, C, H, W]`` (``start_layer=None``) or the residual stream entering block
            ``start_layer`` ``[rows, pos, d_model]``.
        interventions: Writes applied when their hook fires (several on one hook are applied in order).
        start_layer: Block to start at.
        record: Hook names whose (post-intervention) values to return, per row.
        inplace: The caller owns ``start_input`` (it may be overwritten) and records nothing: writes to the
            residual hooks (:data:`INPLACE_SUFFIXES`) then skip the copy of the whole activation they otherwise
            make. Same values either way; other hooks are always copied once before their writes.
        stop_layer: Stop before this block (``HookedViT.forward``'s ``stop_at_layer``); the output is then the
            residual entering it. For runs that only need recorded hooks of earlier blocks.

    The last block computes only the tokens the head reads (``HookedViT.forward(readout_only=True)``) unless a
    hook of this run, or one already attached, sits after its ``hook_resid_pre`` or the pooling reads every token
    (:meth:`HookedViT.readout_only_blockers`): the logits agree with the full forward to float32 rounding.

    Returns:
        ``(output, recorded)`` — logits ``[rows, n_classes]`` (with ``stop_layer``: the residual entering that
        block) and ``{hook: activation}``.

    Example:
        >>> iv = Intervention("blocks.1.hook_resid_pre", torch.tensor([0]), (torch.tensor([3]),), values)
        >>> logits, _ = run_interventions(model, resid1, [iv], start_layer=1)
    """
    by_hook: dict[str, list[Intervention]] = {}
    for iv in interventions:
        by_hook.setdefault(iv.hook, []).append(iv)
    recorded: dict[str, Tensor] = {}
    fired: set[str] = set()

    if inplace and record:
        raise ValueError(f"inplace: expected False when recording hooks (a recorded activation may be written "
                         f"later), got True with record={list(record)}")

    def make_hook(name: str) -> Callable:
        ivs = by_hook.get(name, [])
        copy = not (inplace and site_suffix(name) in INPLACE_SUFFIXES)

        def hook_fn(act: Tensor, hook: Any) -> Tensor:
            fired.add(name)
            if ivs:
                act = act.clone() if copy else act  # one copy per hook call, however many writes
                for iv in ivs:
                    _write(act, iv)
            if name in record:
                recorded[name] = act.detach()
            return act

        return hook_fn

    names = sorted(set(by_hook) | set(record))
    # Only the logits are returned: when no hook of this run reads the last block's tokens, that block computes
    # just the head's tokens (HookedViT.forward readout_only; same logits to float32 rounding, ~1/L less work).
    readout_only = stop_layer is None and not model.readout_only_blockers(names)
    with torch.no_grad():
        out = model.run_with_hooks(
            start_input, fwd_hooks=[(n, make_hook(n)) for n in names], start_at_layer=start_layer,
            stop_at_layer=stop_layer, readout_only=readout_only,
        )
    missing = set(names) - fired
    if missing:  # a write that silently did nothing would corrupt every result downstream
        raise RuntimeError(f"hooks never fired (before start_layer={start_layer}?): {sorted(missing)}")
    return out, recorded




@dataclass
class PatchRun:
    """Raw output of :func:`run_patch_spec`.

    Attributes:
        values: Metric per variant and image ``[variant, batch]`` (``[variant, batch, *extra]`` for a metric
            that returns more than one value per row).
        target_score: Unpatched target-run metric per image ``[batch, *extra]``.
        source_score: Unpatched source-run metric per image ``[batch, *extra]``.
        n_forwards: Patched forward passes run (chunks).
        start_layer: Block the patched runs started at (``None``: from images).
    """

    values: Float[Tensor, "variant batch *extra"]
    target_score: Float[Tensor, "batch *extra"]
    source_score: Float[Tensor, "batch *extra"]
    n_forwards: int
    start_layer: int | None
    info: dict[str, Any] = field(default_factory=dict)


def cache_for(model: HookedViT, images: Tensor, hooks: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the named activations of one run (only those hooks are cached)."""
    names = sorted(set(hooks))
    with torch.no_grad():
        logits, cache = model.run_with_cache(images, names_filter=lambda n: n in names, return_cache_object=False)
    return logits, cache


def check_image_batch(model: HookedViT, images: Any, name: str) -> None:
    """Refuse, before any compute, images the model does not take, an empty batch, and NaN/Inf pixels
    (:meth:`HookedViT.check_images`, the one image check; named here for the engine's callers).

    Example:
        >>> check_image_batch(model, torch.zeros(0, 3, 32, 32), "clean")
        Traceback (most recent call last):
        ...
        ValueError: clean: expected a non-empty batch [batch, channel, height, width], got shape (0, 3, 32, 32)
    """
    model.check_images(images, name)


def run_patch_spec(
    model: HookedViT,
    spec: PatchSpec,
    metric: Metric,
    *,
    target: Tensor | None = None,
    source: Tensor | None = None,
    target_cache: dict[str, Tensor] | None = None,
    source_cache: dict[str, Tensor] | None = None,
    target_logits: Tensor | None = None,
    source_logits: Tensor | None = None,
    batch_size: int | str = 64,
    max_memory: int | None = None,
    progress: bool = True,
) -> PatchRun:
    """Run every (variant, image) pair of ``spec``, batched, from the target run's cached prefix.

    Args:
        model: A HookedViT (eval-mode function; no dropout).
        spec: The variants to run.
        metric: ``metric(logits [rows, n_classes], image_index [rows]) -> [rows, *extra]``; most metrics return
            one value per row, an identity-like metric may keep every class (``extra = (n_classes,)``).
        target: Target images ``[batch, C, H, W]`` (the run that is patched into). Optional if
            ``target_cache`` holds the residual entering the start layer and ``target_logits`` are given.
        source: Source images (where patched values come from). Optional if ``source_cache`` has every hook.
        target_cache, source_cache: Precomputed activations ``{hook: [batch, ...]}`` to reuse.
        target_logits, source_logits: Precomputed unpatched logits for the baselines.
        batch_size: Rows (variant x image) per forward pass, or ``"auto"`` (from the free memory, see
            :mod:`~vit_patching.patching.memory`; the caches this call computes and :func:`spec_row_elements`
            per row are counted).
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar.

    Returns:
        :class:`PatchRun` with ``values [variant, batch, *extra]`` and the unpatched baselines.

    Example:
        >>> spec = PatchSpec([(Site("blocks.2.hook_resid_pre", pos=p),) for p in range(model.cfg.n_pos)])
        >>> run = run_patch_spec(model, spec, metric, target=corrupted, source=clean, batch_size=128)
    """
    check_scores(model)
    check_memory_args(batch_size, max_memory)
    for arg, images in (("target", target), ("source", source)):
        if images is not None:
            check_image_batch(model, images, arg)
    start = spec.start_layer()
    L = model.cfg.n_layers
    for h in spec.hooks:
        if h not in model.hook_dict:
            sae = split_sae_name(h)
            why = f" (no SAE spliced at {sae[0]!r}: model.add_sae)" if sae else ""
            raise ValueError(f"spec: expected hooks of this model, got unknown or switched-off hook {h!r}{why}")
        layer = hook_layer(h)
        if layer is not None and layer >= L:
            raise ValueError(f"spec: expected hooks in the model's {L} layers, got {h!r}")
    # Validate every site's index against the model once, before any work.
    n_pos = None
    if target is not None:
        n_pos = model.layout_for(target).n_pos
    elif source is not None:
        n_pos = model.layout_for(source).n_pos
    else:
        n_pos = model.cfg.n_pos
    for v in spec.variants:
        for s in v:
            check_site(model, s, n_pos)
    if batch_size == "auto":  # rows per forward from the budget, counting the caches this call will compute
        batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory, n_pos=n_pos, **spec_memory(
            model, spec, n_pos=n_pos, target=target, source=source, target_cache=target_cache,
            source_cache=source_cache, target_logits=target_logits,
        ))

    # Rows run variant-major, variants sorted by the block they start at; a chunk starts at its first row's
    # block (the earliest it needs), so a layer sweep's late layers skip the early blocks.
    starts = [variant_start(v) for v in spec.variants]
    order = sorted(range(len(starts)), key=lambda v: -1 if starts[v] is None else starts[v])
    chunk_starts = None if target is None and target_logits is None else _chunk_starts(
        [starts[v] for v in order], target.shape[0] if target is not None else target_logits.shape[0], batch_size
    )
    need_target = sorted({get_act_name("resid_pre", s) for s in chunk_starts or [start] if s is not None})
    if target_cache is None or any(h not in target_cache for h in need_target) or target_logits is None:
        if target is None:
            if target_cache is not None and target_logits is not None and (
                start is not None and get_act_name("resid_pre", start) in target_cache
            ):  # a caller's cache with only the spec-wide prefix: every chunk starts there
                chunk_starts = [start] * len(chunk_starts)
            else:
                raise ValueError("target: expected target images, as target_cache/target_logits do not cover the "
                                 "residual entering the start layer, got None")
        else:
            target_logits, target_cache = cache_for(model, target, need_target)
    if source_cache is None or any(h not in source_cache for h in spec.hooks) or source_logits is None:
        if source is None:
            raise ValueError("source: expected source images, as source_cache/source_logits do not cover the spec's "
                             "hooks, got None")
        source_logits, source_cache = cache_for(model, source, spec.hooks)
    batch = target_logits.shape[0]
    if source_logits.shape[0] != batch:
        raise ValueError(f"source: expected the target's batch size {batch}, got {source_logits.shape[0]}")
    for h in spec.hooks:
        if source_cache[h].shape[0] != batch:
            raise ValueError(f"source_cache: expected batch {batch} for {h!r}, got {source_cache[h].shape[0]}")
    if target is not None and source is not None and target.shape[-2:] != source.shape[-2:]:
        raise ValueError(f"source: expected the target's image size {tuple(target.shape)}, got {tuple(source.shape)}")

    # A NaN weight or input poisons every patched run: refuse it once, here, naming the images (batch rows).
    check_finite(target_logits, "target logits (the unpatched run patched into)")
    check_finite(source_logits, "source logits (the unpatched run patched from)")
    image_ids = torch.arange(batch, device=target_logits.device)
    target_score = check_finite(metric(target_logits, image_ids), "target scores (the metric of the target run)")
    source_score = check_finite(metric(source_logits, image_ids), "source scores (the metric of the source run)")

    n_rows = len(spec.variants) * batch
    n_chunks = math.ceil(n_rows / batch_size)
    uniform = _UniformSpec.build(spec)  # None unless every variant has the same hooks and index pattern
    chunks: list[Tensor] = []  # kept on the device until the end: no host sync between chunks
    dtype = result_dtype(target_logits.dtype)

    row_order = (torch.tensor(order)[:, None] * batch + torch.arange(batch)).reshape(-1)
    for c in tqdm(range(n_chunks), desc="patching", disable=not progress, leave=False):
        rows = row_order[c * batch_size : (c + 1) * batch_size]
        var_ids, img_ids = rows // batch, rows % batch
        chunk_start = chunk_starts[c]
        if chunk_start is None:
            base = target[img_ids.to(target.device)]
        else:
            prefix = target_cache[get_act_name("resid_pre", chunk_start)]
            base = prefix[img_ids.to(prefix.device)]
        if uniform is not None:
            ivs = uniform.compile(var_ids, img_ids, source_cache, base.device)
        else:
            ivs = compile_spec(spec, var_ids.tolist(), img_ids, source_cache, base.device)
        # base is this chunk's own gather: residual writes may go in place (no copy of [rows, pos, d_model]).
        logits, _ = run_interventions(model, base, ivs, start_layer=chunk_start, inplace=True)
        chunks.append(metric(logits, img_ids.to(logits.device)).to(dtype))
    values = torch.cat(chunks).cpu()
    values = torch.empty_like(values).index_copy_(0, row_order, values)  # back to variant-major row order
    values = values.view(len(spec.variants), batch, *values.shape[1:])
    check_finite(values.transpose(0, 1), "patched scores")  # batch first: the error names images, not rows
    return PatchRun(
        values=values,
        target_score=target_score.to(dtype).cpu(),
        source_score=source_score.to(dtype).cpu(),
        n_forwards=n_chunks,
        start_layer=start,
        info={"chunk_start_layers": chunk_starts},
    )


def _chunk_starts(sorted_starts: list[int | None], batch: int, batch_size: int) -> list[int | None]:
    """Start block of each chunk of the variant-major rows: that of the chunk's first (earliest) variant."""
    n_rows = len(sorted_starts) * batch
    return [sorted_starts[r // batch] for r in range(0, n_rows, batch_size)]


def compile_spec(
    spec: PatchSpec, var_ids: list[int], img_ids: Tensor, source_cache: dict[str, Tensor], device: torch.device
) -> list[Intervention]:
    """One chunk's writes as :class:`Intervention` s: row ``r`` runs variant ``var_ids[r]`` of ``spec`` on image
    ``img_ids[r]``; writes are grouped by (hook, which axes are indexed) and their source values gathered at once.
    """
    groups: dict[tuple[str, tuple[bool, ...]], tuple[list[int], list[int], list[list[int]]]] = {}
    for r, v in enumerate(var_ids):
        img = int(img_ids[r])
        for s in spec.variants[v]:
            idx = s.index()
            key = (s.hook, tuple(i is None for i in idx))
            rows, imgs, cols = groups.setdefault(key, ([], [], [[] for _ in idx]))
            rows.append(r)
            imgs.append(img)
            for k, i in enumerate(idx):
                if i is not None:
                    cols[k].append(i)
    out = []
    for (hook, is_all), (rows, imgs, cols) in groups.items():
        index = tuple(None if a else torch.tensor(cols[k], device=device) for k, a in enumerate(is_all))
        src = source_cache[hook]
        src_idx = (torch.tensor(imgs, device=src.device),) + tuple(
            slice(None) if i is None else i.to(src.device) for i in index
        )
        out.append(Intervention(hook, torch.tensor(rows, device=device), index, src[src_idx].to(device)))
    return out


@dataclass
class _UniformSpec:
    """A spec whose variants all write the same hooks with the same index pattern, only at other indices.

    (E.g. CAAP: variant ``i`` = the resid_pre of every window layer at position ``i``.) Its indices are stacked
    once into tensors, so a chunk's writes are gathered with a few tensor ops instead of a Python loop over rows.

    Attributes:
        groups: ``(hook, which index axes are None, cols [variant, slots, n_indexed_axes])`` per hook and pattern.
    """

    groups: list[tuple[str, tuple[bool, ...], Tensor]]

    @classmethod
    def build(cls, spec: PatchSpec) -> "_UniformSpec | None":
        def key(v: Variant) -> list[tuple[str, tuple[bool, ...]]]:
            return sorted((s.hook, tuple(i is None for i in s.index())) for s in v)

        first = key(spec.variants[0])
        if any(key(v) != first for v in spec.variants[1:]):
            return None
        patterns = sorted(set(first))
        cols = {p: [] for p in patterns}
        for v in spec.variants:
            per: dict[tuple[str, tuple[bool, ...]], list[list[int]]] = {p: [] for p in patterns}
            for s in v:
                idx = s.index()
                per[(s.hook, tuple(i is None for i in idx))].append([i for i in idx if i is not None])
            for p in patterns:
                cols[p].append(per[p])
        return cls([(h, none, torch.tensor(cols[(h, none)], dtype=torch.long)) for h, none in patterns])

    def compile(
        self, var_ids: Tensor, img_ids: Tensor, source_cache: dict[str, Tensor], device: torch.device
    ) -> list[Intervention]:
        out = []
        for hook, is_none, cols in self.groups:
            src = source_cache[hook]
            c = cols[var_ids.cpu()].to(src.device)  # [rows, slots, n_indexed]; gathered on the host, one small copy
            n_slots = c.shape[1]
            rows = torch.arange(len(var_ids), device=src.device).repeat_interleave(n_slots)
            imgs = img_ids.to(src.device).repeat_interleave(n_slots)
            flat = c.reshape(c.shape[0] * n_slots, c.shape[-1])  # explicit: 0 indexed axes is legal
            index, k = [], 0
            for none in is_none:
                index.append(None if none else flat[:, k])
                k += not none
            src_idx = (imgs,) + tuple(slice(None) if i is None else i for i in index)
            out.append(Intervention(
                hook, rows.to(device), tuple(None if i is None else i.to(device) for i in index), src[src_idx].to(device)
            ))
        return out

"""What a patching experiment is made of, as data, and what it costs in memory.

* :class:`Site` — one activation slice (hook, position, head); a *variant* (:data:`Variant`) is a tuple of sites
  patched together; a :class:`PatchSpec` lists the variants of an experiment.
* :class:`Intervention` — one vectorised write ``act[rows, *index] = values`` on a hook, what
  :func:`~vit_patching.patching.engine.run_interventions` applies.
* :func:`spec_row_elements` / :func:`spec_memory` — what a :func:`~vit_patching.patching.engine.run_patch_spec`
  call holds, for ``batch_size="auto"`` (:func:`~vit_patching.patching.memory.resolve_batch_size`).

Running lives in :mod:`vit_patching.patching.engine` (which re-exports every name here), including compiling a
chunk of spec rows into interventions (:func:`~vit_patching.patching.engine.compile_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from vit_patching.hook_names import hook_layer, site_axes
from vit_patching.model import HookedViT

from .memory import hook_elements

__all__ = [
    "Intervention", "PatchSpec", "Site", "Variant", "hook_axes", "spec_memory", "spec_row_elements", "variant_start",
]


def hook_axes(hook: str) -> tuple[str, ...]:
    """Index axes (after batch) a :class:`Site` on ``hook`` may address (:func:`vit_patching.hook_names.site_axes`)."""
    return site_axes(hook)


@dataclass(frozen=True)
class Site:
    """One activation slice to overwrite.

    Attributes:
        hook: Full hook name, e.g. ``"blocks.3.hook_resid_pre"`` or ``"blocks.2.attn.hook_z"``.
        pos: Token position (``None`` = every position). For ``hook_pattern``/``hook_attn_scores`` this is the
            query (destination) position.
        head: Head index for per-head hooks (``None`` = every head).

    Example:
        >>> Site("blocks.1.hook_resid_pre", pos=5)
        >>> Site("blocks.0.attn.hook_z", head=2)          # head 2, all positions
    """

    hook: str
    pos: int | None = None
    head: int | None = None

    def index(self) -> tuple[int | None, ...]:
        axes = hook_axes(self.hook)
        if self.head is not None and "head" not in axes:
            raise ValueError(f"head: expected None, {self.hook!r} has no head axis, got {self.head!r}")
        return tuple(self.pos if a == "pos" else self.head for a in axes)


Variant = tuple[Site, ...]


@dataclass
class PatchSpec:
    """A list of patch variants (each a set of sites patched together), with optional labels.

    Example:
        >>> from vit_patching.hook_names import get_act_name
        >>> spec = PatchSpec([(Site(get_act_name("resid_pre", l), pos=p),) for l in range(4) for p in range(65)])
    """

    variants: list[Variant]
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        self.variants = [tuple(v) if not isinstance(v, Site) else (v,) for v in self.variants]
        if not self.variants:
            raise ValueError("variants: expected at least one variant, got []")
        if self.labels is not None and len(self.labels) != len(self.variants):
            raise ValueError(f"labels: expected one per variant ({len(self.variants)}), got {len(self.labels)}")

    @property
    def hooks(self) -> list[str]:
        return sorted({s.hook for v in self.variants for s in v})

    def start_layer(self) -> int | None:
        """Earliest block any site touches (``None`` if a site is in the embedding: start from images)."""
        return variant_start(tuple(Site(h) for h in self.hooks))


@dataclass
class Intervention:
    """A vectorised write: ``act[rows, *index] = values`` on one hook (``None`` index entries mean 'all').

    With ``add=True`` the values are added instead (``act[rows, *index] += values``), as direct-path patching
    adds a sender's write to a receiver's input.
    """

    hook: str
    rows: Int[Tensor, "n"]
    index: tuple[Tensor | None, ...]
    values: Tensor
    add: bool = False


def variant_start(variant: Variant) -> int | None:
    """Earliest block a variant's sites touch (``None`` if one is in the embedding)."""
    layers = [hook_layer(s.hook) for s in variant]
    return None if any(l is None for l in layers) else min(layers)

def spec_row_elements(model: HookedViT, spec: PatchSpec, n_pos: int | None = None) -> int:
    """Elements a chunk of :func:`run_patch_spec` keeps per row besides one block's activations: the gathered
    start residual, the values of the widest variant, one copy of the widest written activation (a write
    clones it) and the row's logits.

    Example:
        >>> spec_row_elements(model, PatchSpec([Site("blocks.1.hook_resid_pre", pos=3)]))  # doctest: +SKIP
        4424
    """
    cfg = model.cfg
    n = cfg.n_pos if n_pos is None else n_pos
    values = max(sum(hook_elements(cfg, s.hook, n, s.index()) for s in v) for v in spec.variants)
    clone = max(hook_elements(cfg, h, n) for h in spec.hooks)
    return n * cfg.d_model + values + clone + cfg.n_classes


def spec_memory(
    model: HookedViT,
    spec: PatchSpec,
    *,
    n_pos: int | None = None,
    batch: int | None = None,
    target: Tensor | None = None,
    source: Tensor | None = None,
    target_cache: dict[str, Tensor] | None = None,
    source_cache: dict[str, Tensor] | None = None,
    target_logits: Tensor | None = None,
    target_layers: int | None = None,
) -> dict[str, int]:
    """``held_elements`` / ``extra_elements_per_row`` of a :func:`run_patch_spec` call (for
    :func:`~vit_patching.patching.memory.resolve_batch_size`): the source run's cache of the spec's hooks and the
    target run's residual at each start block, unless the caller's caches hold them, and :func:`spec_row_elements`.

    ``target_layers``: residuals the target cache holds (default: one per distinct variant start block).
    """
    cfg = model.cfg
    n = cfg.n_pos if n_pos is None else n_pos
    if batch is None:
        for x in (target, source, target_logits):
            if x is not None:
                batch = x.shape[0]
                break
        else:
            batch = next(iter((source_cache or target_cache or {}).values())).shape[0]
    held = 0
    if source_cache is None or any(h not in source_cache for h in spec.hooks):
        held += batch * sum(hook_elements(cfg, h, n) for h in spec.hooks)
    if target_cache is None or target_layers is not None:
        n_starts = len({variant_start(v) for v in spec.variants}) if target_layers is None else target_layers
        held += batch * n_starts * n * cfg.d_model
    return {"held_elements": held, "extra_elements_per_row": spec_row_elements(model, spec, n)}

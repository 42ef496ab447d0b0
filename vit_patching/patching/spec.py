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

import math
from dataclasses import dataclass

from jaxtyping import Int
from torch import Tensor

from vit_patching.hook_names import SAE_LATENT_HOOKS, hook_layer, site_axes, split_sae_name
from vit_patching.model import HookedViT
from vit_patching.sae.sites import get_splice, latent_width, token_span

from .memory import hook_shape

__all__ = [
    "Intervention", "PatchSpec", "Site", "Variant", "check_site", "hook_axes", "site_shape", "spec_memory",
    "spec_row_elements", "variant_start",
]


def hook_axes(hook: str) -> tuple[str, ...]:
    """Index axes (after batch) a :class:`Site` on ``hook`` may address (:func:`vit_patching.hook_names.site_axes`)."""
    return site_axes(hook)


@dataclass(frozen=True, repr=False)
class Site:
    """One activation slice to overwrite.

    Attributes:
        hook: Full hook name, e.g. ``"blocks.3.hook_resid_pre"``, ``"blocks.2.attn.hook_z"`` or a spliced SAE's
            latents ``"blocks.1.hook_resid_post.sae.hook_sae_acts_post"`` (``hook_names.sae_act_name``).
        pos: Token position (``None`` = every position). For ``hook_pattern``/``hook_attn_scores`` this is the
            query (destination) position; for an SAE hook point, the position on the SAE's ``pos`` axis (the
            model's token position unless the SAE applies to ``"patches"`` or ``"cls"`` only).
        head: Head index for per-head hooks (``None`` = every head).
        latent: Latent index for an SAE's ``hook_sae_acts_post`` / ``hook_sae_acts_pre`` (``None`` = every latent);
            it plays the role a head plays on per-head hooks.

    Example:
        >>> Site("blocks.1.hook_resid_pre", pos=5)
        >>> Site("blocks.0.attn.hook_z", head=2)          # head 2, all positions
        >>> Site("blocks.1.hook_resid_post.sae.hook_sae_acts_post", latent=7)   # latent 7, all positions
    """

    hook: str
    pos: int | None = None
    head: int | None = None
    latent: int | None = None

    def __repr__(self) -> str:  # the latent only when set: sites of other hooks print as they always did
        latent = "" if self.latent is None else f", latent={self.latent!r}"
        return f"Site(hook={self.hook!r}, pos={self.pos!r}, head={self.head!r}{latent})"

    def index(self) -> tuple[int | None, ...]:
        axes = hook_axes(self.hook)
        if self.head is not None and "head" not in axes:
            raise ValueError(f"head: expected None, {self.hook!r} has no head axis, got {self.head!r}")
        if self.latent is not None and "latent" not in axes:
            raise ValueError(f"latent: expected None, {self.hook!r} has no latent axis (only an SAE's "
                             f"hook_sae_acts_post / hook_sae_acts_pre have one), got {self.latent!r}")
        return tuple({"pos": self.pos, "head": self.head, "latent": self.latent}[a] for a in axes)


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


def site_shape(model: HookedViT, hook: str, n_pos: int | None = None) -> tuple[int, ...]:
    """Shape of one row of ``hook``'s activation (no batch axis), the hook points of spliced SAEs included.

    An SAE's latents are ``(tokens it covers, d_sae)``; its other hook points have the spliced hook's shape over
    the tokens it covers (a foreign SAE that states no ``d_sae`` counts ``d_model`` latents, for memory estimates).

    Example:
        >>> site_shape(model, "blocks.1.hook_resid_post.sae.hook_sae_acts_post")  # doctest: +SKIP
        (17, 256)
    """
    n = model.cfg.n_pos if n_pos is None else n_pos
    sae = split_sae_name(hook)
    if sae is None:
        return hook_shape(model.cfg, hook, n)
    base, point = sae
    splice = get_splice(model, base)
    n_sae = token_span(splice, n)[1]
    if point in SAE_LATENT_HOOKS:
        return (n_sae, latent_width(splice) or model.cfg.d_model)
    return hook_shape(model.cfg, base, n_sae)


def _site_elements(model: HookedViT, hook: str, n_pos: int, index: tuple[int | None, ...] = ()) -> int:
    """Elements of one row of ``hook``, or of the slice a site's ``index`` takes (``None`` = the whole axis)."""
    shape = site_shape(model, hook, n_pos)
    return math.prod(d for k, d in enumerate(shape) if k >= len(index) or index[k] is None)


def check_site(model: HookedViT, site: Site, n_pos: int) -> None:
    """Refuse a site whose position, head or latent is out of range for ``model`` (``n_pos`` tokens), before any
    compute, naming the argument."""
    site.index()
    if split_sae_name(site.hook) is None:
        sizes = {"pos": n_pos, "head": model.cfg.n_heads}
    else:  # the SAE's own pos axis (the tokens it covers) and its latent count
        base, point = split_sae_name(site.hook)
        splice = get_splice(model, base)
        flat = getattr(getattr(splice.module, "cfg", None), "reshape_activations", "none") == "hook_z"
        if point in SAE_LATENT_HOOKS and len(site_axes(base)) > 1 and not flat:
            raise ValueError(f"hook: expected latents [batch pos d_sae] (an SAE at a per-head hook needs "
                             f"reshape_activations='hook_z'), got an SAE at {base!r} that encodes each head apart")
        sizes = {"pos": token_span(splice, n_pos)[1], "head": model.cfg.n_heads, "latent": latent_width(splice)}
    what = {"pos": "a token position", "head": "a head", "latent": "a latent"}
    for axis, value in (("pos", site.pos), ("head", site.head), ("latent", site.latent)):
        size = sizes.get(axis)
        if value is not None and size is not None and not 0 <= value < size:
            raise ValueError(f"{axis}: expected {what[axis]} in [0, {size}) in {site}, got {value}")


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
    values = max(sum(_site_elements(model, s.hook, n, s.index()) for s in v) for v in spec.variants)
    clone = max(_site_elements(model, h, n) for h in spec.hooks)
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
        held += batch * sum(_site_elements(model, h, n) for h in spec.hooks)
    if target_cache is None or target_layers is not None:
        n_starts = len({variant_start(v) for v in spec.variants}) if target_layers is None else target_layers
        held += batch * n_starts * n * cfg.d_model
    return {"held_elements": held, "extra_elements_per_row": spec_row_elements(model, spec, n)}

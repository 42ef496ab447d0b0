"""Coalition (Shapley) CAAP: each patch's Shapley value in the game of pinning *sets* of patches.

Single-patch CAAP asks what one patch does alone in the neutral context (denoising) or what removing it alone
does (noising). Evidence that only counts together (two objects whose relation is the class) is invisible to
both. Coalition CAAP plays the cooperative game

* denoising: ``v(S)`` = readout of the neutral run with the patches in ``S`` pinned to the source's activations
  over the window (``v(empty)`` = the unpatched neutral run);
* noising: ``v(S)`` = ``readout(source) - readout(source run with the patches in S pinned to the neutral's)``
  (``v(empty) = 0``),

and returns each patch's Shapley value. The estimator samples permutations of the players in antithetic pairs
(a permutation and its reverse); each permutation is one pass over the players, its prefixes are coalitions and
each coalition is one row of the batched engine (:func:`~vit_patching.patching.engine.run_patch_spec`, started
from the cached neutral or source residual at the window's first block, as CAAP is). Every permutation's
marginal contributions telescope to ``v(all) - v(empty)``, so the map of every sample count sums to it (checked
to float rounding; :attr:`ShapleyAttribution.efficiency_gap`). ``n_permutations`` is the cost knob: about
``n_permutations * n_players`` patched rows per image (duplicates run once), against ``n_patches`` for CAAP.

Players are patches, or groups of patches (``groups=k``: k x k blocks of the grid; or a ``[grid_h, grid_w]``
integer tensor of segment labels): a group's Shapley value is shared equally by its patches in the map, so the
map still sums to ``v(all) - v(empty)``.

The same permutations are used for every image of a batch (coalitions are spec variants, and a variant runs on
every image); the standard error per patch comes from the spread of the antithetic pair means.

Example:
    >>> from vit_patching.zoo import load_model, load_dataset
    >>> model = load_model("toy-shapes")
    >>> attr = caap_shapley(model, load_dataset("shapes", n=1, seed=0).images, n_permutations=2)
    >>> attr.map.shape, attr.standard_error.shape
    (torch.Size([1, 8, 8]), torch.Size([1, 8, 8]))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching import images as image_ops
from vit_patching.checks import (
    check_batch_size, check_bool, check_choice, check_finite, check_positive_int, check_positive_number, check_seed,
    check_window,
)
from vit_patching.hook_names import get_act_name
from vit_patching.images import DEFAULT_UPSAMPLE, UPSAMPLE_MODES, upsample_map
from vit_patching.model import HookedViT

from .caap import DEFAULT_READOUT, default_window
from .caap_context import DEFAULT_NEUTRAL, CAAPContext, prepare_caap
from .caap_results import (
    DEFAULT_DIRECTION, DEFAULT_WARN_SHARE, READOUTS, Attribution, caap_map_values, caap_readout, neutral_warnings,
)
from .engine import PatchSpec, Site, run_patch_spec

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PERMUTATIONS", "ShapleyAttribution", "caap_shapley", "coalition_logits", "exact_shapley", "player_groups",
    "shapley_from_values",
]

#: Default number of permutations (4 antithetic pairs).
DEFAULT_PERMUTATIONS = 8
#: Efficiency is checked to this relative tolerance (float64 sums of float32 differences telescope to ~1e-12).
EFFICIENCY_RTOL = 1e-9


# ------------------------------------------------------------------------------------------------- players
def player_groups(grid: tuple[int, int], groups: int | Int[Tensor, "grid_h grid_w"] | None = None) -> list[list[int]]:
    """The players as lists of flat patch indices (row-major): one per patch, k x k blocks, or labelled segments.

    Example:
        >>> player_groups((4, 4), 2)[0]
        [0, 1, 4, 5]
        >>> player_groups((1, 3), torch.tensor([[2, 0, 2]]))
        [[1], [0, 2]]
    """
    gh, gw = grid
    if groups is None:
        return [[i] for i in range(gh * gw)]
    if isinstance(groups, Tensor):
        if groups.shape != (gh, gw) or groups.is_floating_point() or groups.dtype == torch.bool:
            raise ValueError(f"groups: expected an integer label tensor of shape [{gh}, {gw}] (the patch grid), "
                             f"got dtype {groups.dtype} shape {tuple(groups.shape)}")
        flat = groups.reshape(-1).tolist()
        return [[i for i, g in enumerate(flat) if g == label] for label in sorted(set(flat))]
    k = check_positive_int(groups, "groups")
    out = []
    for r0 in range(0, gh, k):
        for c0 in range(0, gw, k):
            out.append([r * gw + c for r in range(r0, min(r0 + k, gh)) for c in range(c0, min(c0 + k, gw))])
    return out


def antithetic_permutations(n_players: int, n_permutations: int, seed: int) -> Int[Tensor, "n_permutations n_players"]:
    """``n_permutations`` (even) permutations of the players: random ones each followed by its reverse.

    Example:
        >>> p = antithetic_permutations(4, 2, seed=0)
        >>> p[1].tolist() == p[0].flip(0).tolist()
        True
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_permutations // 2):
        p = torch.randperm(n_players, generator=g)
        out += [p, p.flip(0)]
    return torch.stack(out)


# ------------------------------------------------------------------------------------------------ estimator
def shapley_from_values(
    values: Float[Tensor, "coalition batch"],
    v_empty: Float[Tensor, " batch"],
    permutations: Int[Tensor, "n_permutations n_players"],
    prefix_rows: Int[Tensor, "n_permutations n_players"],
) -> tuple[Float[Tensor, "batch n_players"], Float[Tensor, "batch n_players"], Float[Tensor, "n_permutations batch"]]:
    """Permutation-sampling Shapley estimate from the coalitions' values.

    Args:
        values: ``v(S)`` of every distinct coalition run.
        v_empty: ``v(empty)`` per image.
        permutations: Player orders, in antithetic pairs (rows ``2m``, ``2m + 1``).
        prefix_rows: ``prefix_rows[p, k]`` = the row of ``values`` holding the coalition of the first ``k + 1``
            players of permutation ``p``.

    Returns:
        ``(phi, standard_error, totals)``: the mean marginal contribution per player, its standard error over
        the antithetic pair means (NaN with one pair), and per permutation the sum of its contributions
        (``v(all) - v(empty)`` up to float rounding).

    Example:
        >>> vals = torch.tensor([[1.0], [3.0], [2.0]])            # v({0}), v({0, 1}), v({1})
        >>> phi, se, tot = shapley_from_values(vals, torch.zeros(1), torch.tensor([[0, 1], [1, 0]]),
        ...                                    torch.tensor([[0, 1], [2, 1]]))
        >>> phi.tolist()
        [[1.0, 2.0]]
    """
    v = values.double()
    n_perm, n_players = permutations.shape
    prefix = v[prefix_rows]  # [perm, k, batch]
    before = torch.cat([v_empty.double().expand(n_perm, 1, -1), prefix[:, :-1]], dim=1)
    marginal = prefix - before  # contribution of the k-th player of each permutation
    contrib = torch.empty_like(marginal)
    contrib.scatter_(1, permutations[:, :, None].expand_as(marginal), marginal)  # [perm, player, batch]
    totals = marginal.sum(dim=1)
    pairs = contrib.view(n_perm // 2, 2, n_players, -1).mean(dim=1)  # antithetic pair means are i.i.d.
    phi = pairs.mean(dim=0).transpose(0, 1)
    n_pairs = pairs.shape[0]
    se = pairs.std(dim=0).transpose(0, 1) / math.sqrt(n_pairs) if n_pairs > 1 else torch.full_like(phi, float("nan"))
    return phi, se, totals


def exact_shapley(values: dict[frozenset[int], float], n_players: int) -> list[float]:
    """Exact Shapley values by enumerating every coalition (for checks on few players).

    Example:
        >>> v = {frozenset(): 0.0, frozenset({0}): 0.0, frozenset({1}): 0.0, frozenset({0, 1}): 1.0}
        >>> exact_shapley(v, 2)
        [0.5, 0.5]
    """
    out = []
    for i in range(n_players):
        total = 0.0
        for s, vs in values.items():
            if i in s:
                continue
            w = math.factorial(len(s)) * math.factorial(n_players - len(s) - 1) / math.factorial(n_players)
            total += w * (values[s | {i}] - vs)
        out.append(total)
    return out


# --------------------------------------------------------------------------------------------- engine rows
def coalition_spec(model: HookedViT, images: Tensor, window: tuple[int, int], site: str,
                   coalitions: Sequence[Sequence[int]], include_prefix: bool = False) -> PatchSpec:
    """One spec variant per coalition (flat patch indices): its patches (and the prefix tokens if asked) at every
    window layer.

    Example:
        >>> coalition_spec(model, images, (0, 1), "resid_pre", [[0, 2]]).variants[0]
        (Site(hook='blocks.0.hook_resid_pre', pos=1, head=None), Site(hook='blocks.0.hook_resid_pre', pos=3, head=None))
    """
    layout = model.layout_for(images)
    positions = layout.patch_positions()
    prefix = list(range(layout.n_prefix)) if include_prefix else []
    hooks = [get_act_name(site, l) for l in range(*window)]
    variants = []
    for c in coalitions:
        if not c:
            raise ValueError("coalitions: expected non-empty coalitions (the empty one is the unpatched run), got []")
        variants.append(tuple(Site(h, pos=p) for h in hooks for p in (*prefix, *(positions[i] for i in sorted(c)))))
    return PatchSpec(variants)


def _ctx_rows(t: Tensor, idx: Tensor | None) -> Tensor:
    return t if idx is None or t.shape[0] == 1 else t[idx.to(t.device)]


def coalition_logits(
    model: HookedViT, ctx: CAAPContext, window: tuple[int, int], coalitions: Sequence[Sequence[int]], *,
    include_prefix: bool = False, image_index: Int[Tensor, " rows"] | None = None, batch_size: int = 64,
    progress: bool = False,
) -> Float[Tensor, "coalition batch n_classes"]:
    """Logits of the patched run of every coalition (flat patch indices) on every image of ``ctx`` (or only
    ``image_index``), in the context's direction, through the engine from the cached residual at ``window[0]``.

    Example:
        >>> ctx = prepare_caap(model, images, starts=[0], layers=[0, 1])
        >>> coalition_logits(model, ctx, (0, 2), [[0], [0, 1]]).shape[:2]
        torch.Size([2, 2])
    """
    start, end = window
    images = ctx.images if image_index is None else ctx.images[image_index.to(ctx.images.device)]
    b = images.shape[0]
    spec = coalition_spec(model, images, window, ctx.site, coalitions, include_prefix)
    keep_all = lambda logits, image_index: logits  # noqa: E731  every class: maps of any class from the same rows
    start_hook = get_act_name("resid_pre", start)
    if ctx.direction == "noising":
        values = {h: _ctx_rows(t, image_index) for h, t in ctx.neutral_cache[start].items()}
        run = run_patch_spec(
            model, spec, keep_all, target_cache={start_hook: _ctx_rows(ctx.source_resid[start], image_index)},
            target_logits=_ctx_rows(ctx.source_logits, image_index),
            source_cache={h: t.expand(b, *t.shape[1:]) for h, t in values.items()},
            source_logits=_ctx_rows(ctx.neutral_logits[start], image_index).expand(b, -1),
            batch_size=batch_size, progress=progress,
        )
    else:
        run = run_patch_spec(
            model, spec, keep_all,
            target_cache={start_hook: _ctx_rows(ctx.neutral_resid[start], image_index).expand(b, -1, -1)},
            target_logits=_ctx_rows(ctx.neutral_logits[start], image_index).expand(b, -1),
            source_cache={h: _ctx_rows(t, image_index) for h, t in ctx.source_cache.items()},
            source_logits=_ctx_rows(ctx.source_logits, image_index), batch_size=batch_size, progress=progress,
        )
    return run.values


# ---------------------------------------------------------------------------------------------------- result
@dataclass(kw_only=True, repr=False, eq=False)
class ShapleyAttribution(Attribution):
    """Coalition CAAP maps: an :class:`~vit_patching.patching.caap_results.Attribution` whose ``map`` is each
    patch's Shapley value (a group's value shared by its patches), in the readout's units.

    ``patched_logits`` are the single-patch runs (every player's singleton coalition is run too), so
    ``single_map`` is plain CAAP's map in the same call. ``for_class`` recomputes the Shapley map of another
    class from the stored coalition logits.

    Attributes:
        standard_error: Standard error of each patch's value ``[batch, grid_h, grid_w]`` over the antithetic pair
            means (NaN with a single pair).
        players: The players, lists of flat patch indices.
        permutations: The sampled player orders ``[n_permutations, n_players]``.
        v_empty: ``v(empty)`` per image; ``v_all``: ``v(all players)`` per image.
        efficiency_gap: Largest ``|sum of a permutation's contributions - (v_all - v_empty)|`` over images and
            permutations, in float64 (the float32 ``map`` sums to ``v_all - v_empty`` to float32 rounding).
        coalition_logits: Logits of every distinct coalition run ``[coalition, batch, n_classes]``.
        prefix_rows: Row of ``coalition_logits`` of each permutation prefix ``[n_permutations, n_players]``.
        single_rows: Row of each player's singleton coalition ``[n_players]``.
    """

    method: str = "caap_shapley"
    standard_error: Float[Tensor, "batch grid_h grid_w"]
    players: list[list[int]] = field(default_factory=list)
    permutations: Int[Tensor, "n_permutations n_players"]
    v_empty: Float[Tensor, " batch"]
    v_all: Float[Tensor, " batch"]
    efficiency_gap: float = 0.0
    coalition_logits: Float[Tensor, "coalition batch n_classes"]
    prefix_rows: Int[Tensor, "n_permutations n_players"]
    single_rows: Int[Tensor, " n_players"]

    @property
    def n_permutations(self) -> int:
        return self.permutations.shape[0]

    @property
    def single_map(self) -> Float[Tensor, "batch grid_h grid_w"]:
        """Plain single-patch CAAP's map of the same runs (the patched readout or, noising, the drop)."""
        return Attribution.for_class(self)

    @classmethod
    def cat(cls, parts: Sequence["ShapleyAttribution"]) -> "ShapleyAttribution":
        raise NotImplementedError("ShapleyAttribution.cat: concatenate the maps (attr.map) instead; coalition "
                                  "rows of different calls use different permutations")

    def for_class(self, target: int | Int[Tensor, " batch"] | None = None, readout: str | None = None
                  ) -> Float[Tensor, "batch grid_h grid_w"]:
        """The Shapley map of another class (or readout) from the same coalition runs, no new forward pass."""
        readout = self.readout if readout is None else readout
        check_choice(readout, READOUTS, "readout")
        t = self.target if target is None else torch.as_tensor(target).expand(self.target.shape[0])
        if bool(((t < 0) | (t >= self.source_logits.shape[-1])).any()):
            raise ValueError(f"target: expected class indices in [0, {self.source_logits.shape[-1]}), got {target!r}")
        values = caap_map_values(self.coalition_logits, t, readout, self.neutral_logits, self.source_logits, self.direction)
        v0 = _v_empty(self.neutral_logits, self.source_logits, t, readout, self.direction)
        phi, _, _ = shapley_from_values(values, v0, self.permutations, self.prefix_rows)
        return _player_map(phi, self.players, self.map.shape).to(self.map.dtype)

    def _title(self, i: int) -> str:
        kind = "noising" if self.direction == "noising" else "denoising"
        return (f"Coalition CAAP ({kind}, {self.n_permutations} permutations) window [{self.window[0]}, "
                f"{self.window[1]}), class {int(self.target[i])}")

    def zmid(self, i: int = 0) -> float:
        """Shapley values are shares of ``v(all) - v(empty)``: colours are centred on 0."""
        return 0.0

    @property
    def value_label(self) -> str:
        return f"Shapley value ({self.readout.removeprefix('delta_')}{' drop' if self.direction == 'noising' else ''})"

    @property
    def score_label(self) -> str:
        return f"coalition CAAP {self.value_label}"


def _v_empty(neutral_logits: Tensor, source_logits: Tensor, target: Tensor, readout: str, direction: str) -> Tensor:
    if direction == "noising":  # nothing removed: no drop
        return torch.zeros(target.shape[0], dtype=torch.float64)
    return caap_readout(neutral_logits, target, readout, neutral_logits).double()


def _player_map(phi: Tensor, players: list[list[int]], shape: tuple[int, ...]) -> Tensor:
    """Per-patch map ``[batch, grid_h, grid_w]`` from per-player values ``[batch, n_players]`` (shared equally)."""
    out = torch.zeros(shape[0], shape[1] * shape[2], dtype=phi.dtype)
    for j, patches in enumerate(players):
        out[:, patches] = phi[:, j : j + 1] / len(patches)
    return out.view(shape)


# ---------------------------------------------------------------------------------------------- entry point
def caap_shapley(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    target: int | Int[Tensor, " batch"] | None = None,
    window: tuple[int, int] | None = None,
    *,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    groups: int | Int[Tensor, "grid_h grid_w"] | None = None,
    seed: int = 0,
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    readout: str = DEFAULT_READOUT,
    include_prefix: bool = False,
    direction: str = DEFAULT_DIRECTION,
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
    warn_share: float = DEFAULT_WARN_SHARE,
    batch_size: int = 64,
    progress: bool = False,
    log_warnings: bool = True,
) -> ShapleyAttribution:
    """Coalition CAAP: each patch's Shapley value in the game of pinning sets of patches over the window.

    Args:
        model: A HookedViT with a classification head (eval mode).
        images: Normalised source images ``[batch, C, H, W]``.
        target: Class to explain (int or ``[batch]``); ``None`` = the prediction.
        window: ``(start, end)``; ``None`` = :func:`~vit_patching.patching.caap.default_window`.
        n_permutations: Sampled permutations, an even number >= 2 (antithetic pairs); the cost knob: about
            ``n_permutations * n_players`` patched rows per image.
        groups: Players: ``None`` = every patch, an int ``k`` = k x k blocks of the grid, or a ``[grid_h, grid_w]``
            integer tensor of segment labels.
        seed: Seed of the permutations.
        neutral, site, readout, include_prefix, direction, reference, blur_sigma, upsample, warn_share: As for
            :func:`~vit_patching.patching.caap.caap`; the game's value is the readout (denoising) or the drop
            ``readout(source) - readout(patched)`` (noising).
        batch_size: Rows (coalition x image) per forward pass.
        progress: Show a tqdm bar.
        log_warnings: Log the neutral-context warnings (``select_window`` collects them and logs each once).

    Returns:
        :class:`ShapleyAttribution` (``map`` = Shapley values, summing per image to ``v_all - v_empty``;
        ``standard_error``; ``single_map`` = plain CAAP of the same call).

    Raises:
        ValueError: A bad argument (named), before any forward pass.
        ArithmeticError: The map does not sum to ``v(all) - v(empty)`` (a broken run; never expected).

    Example:
        >>> attr = caap_shapley(model, images, window=(0, 2), n_permutations=4, groups=2)
        >>> float((attr.map.sum((1, 2)) - (attr.v_all - attr.v_empty)).abs().max()) < 1e-4
        True
    """
    n_permutations = check_positive_int(n_permutations, "n_permutations")
    if n_permutations % 2:
        raise ValueError(f"n_permutations: expected an even number (antithetic pairs), got {n_permutations}")
    seed = check_seed(seed)
    check_choice(readout, READOUTS, "readout")
    check_choice(upsample, UPSAMPLE_MODES, "upsample")
    check_bool(include_prefix, "include_prefix")
    check_bool(log_warnings, "log_warnings")
    check_batch_size(batch_size)
    warn_share = check_positive_number(warn_share, "warn_share", allow_zero=True)
    model.check_images(images)
    start, end = window = check_window(default_window(model.cfg.n_layers) if window is None else window, model.cfg.n_layers)
    grid = model.grid_size_for(images)
    players = player_groups(grid, groups)
    ctx = prepare_caap(
        model, images, starts=[start], layers=range(start, end), target=target, neutral=neutral, site=site,
        reference=reference, blur_sigma=blur_sigma, batch_size=batch_size, direction=direction,
    )
    # Named in CAAP's words before the engine's own check (which says target/source, here neutral/images).
    check_finite(ctx.source_logits, "source logits (the images' own run)")
    check_finite(ctx.neutral_logits[start], "neutral logits (the unpatched neutral run)")
    n_players = len(players)
    perms = antithetic_permutations(n_players, n_permutations, seed)
    # Distinct coalitions (players' patches as sorted tuples): every permutation prefix and every singleton.
    rows: dict[tuple[int, ...], int] = {}
    coalitions: list[list[int]] = []

    def row_of(members: list[int]) -> int:
        key = tuple(sorted(p for j in members for p in players[j]))
        if key not in rows:
            rows[key] = len(coalitions)
            coalitions.append(list(key))
        return rows[key]

    single_rows = torch.tensor([row_of([j]) for j in range(n_players)])
    prefix_rows = torch.tensor([[row_of(p[: k + 1].tolist()) for k in range(n_players)] for p in perms])
    logits = coalition_logits(model, ctx, window, coalitions, include_prefix=include_prefix, batch_size=batch_size,
                              progress=progress)
    b = images.shape[0]
    neutral_logits = ctx.neutral_logits[start].expand(b, -1).float().cpu()
    source_logits = ctx.source_logits.float().cpu()
    tgt = ctx.target
    values = caap_map_values(logits, tgt, readout, neutral_logits, source_logits, ctx.direction)  # [coalition, batch]
    v0 = _v_empty(neutral_logits, source_logits, tgt, readout, ctx.direction)
    phi, se, totals = shapley_from_values(values, v0, perms, prefix_rows)
    v_all = values.double()[prefix_rows[0, -1]]
    gap = float((totals - (v_all - v0)).abs().max())
    scale = float((v_all - v0).abs().max()) + float(values.double().abs().max())
    if gap > EFFICIENCY_RTOL * max(scale, 1.0):  # the telescoping sum is exact up to float64 rounding
        raise ArithmeticError(f"coalition CAAP: a permutation's contributions sum to v(all) - v(empty) only within {gap:.3g}")
    shape = (b, *grid)
    amap = check_finite(_player_map(phi, players, shape).float(), "coalition CAAP map")
    sizes = torch.tensor([len(p) for p in players], dtype=torch.float64)
    se_map = _player_map(se, players, shape).float()  # a group's SE shared like its value (divided by its size)
    options = dict(ctx.options)
    options.update(readout=readout, include_prefix=include_prefix, upsample=upsample, batch_size=batch_size,
                   warn_share=warn_share, n_permutations=n_permutations, seed=seed, n_players=n_players,
                   groups=groups if not isinstance(groups, Tensor) else f"segments[{int(sizes.numel())}]",
                   n_coalitions=len(coalitions))
    singles = logits[single_rows]  # [player, batch, n_classes]: per patch via its player (patches only if no groups)
    patch_player = torch.empty(grid[0] * grid[1], dtype=torch.long)
    for j, patches in enumerate(players):
        patch_player[patches] = j
    p0 = neutral_logits.softmax(-1)
    warns = neutral_warnings(neutral_logits, source_logits, tgt, options["neutral"], warn_share, "", ctx.direction)
    for w in warns if log_warnings else ():
        logger.warning(w)
    n_rows = len(coalitions) * b
    return ShapleyAttribution(
        patch_map=amap,
        pixel_map=upsample_map(amap, tuple(images.shape[-2:]), mode=upsample),
        target=tgt,
        settings=options,
        window=window,
        direction=ctx.direction,
        neutral_score=caap_readout(neutral_logits, tgt, readout, neutral_logits),
        source_score=caap_readout(source_logits, tgt, readout, neutral_logits),
        patched_logits=singles[patch_player].transpose(0, 1).reshape(b, *grid, -1).float(),
        neutral_logits=neutral_logits,
        source_logits=source_logits,
        pixels=image_ops.to_pixels(images, model.cfg.data_config),
        n_forwards=math.ceil(n_rows / batch_size),
        neutral_prediction=p0.argmax(-1),
        neutral_prediction_prob=p0.max(-1).values,
        neutral_target_score=caap_readout(neutral_logits, tgt, readout.removeprefix("delta_"), neutral_logits),
        neutral_target_prob=caap_readout(neutral_logits, tgt, "prob", neutral_logits),
        neutral_choice=list(ctx.neutral_choice),
        warnings=warns,
        standard_error=se_map,
        players=players,
        permutations=perms,
        v_empty=v0.float(),
        v_all=v_all.float(),
        efficiency_gap=gap,
        coalition_logits=logits.float(),
        prefix_rows=prefix_rows,
        single_rows=single_rows,
    )

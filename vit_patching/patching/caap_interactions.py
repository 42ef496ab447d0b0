"""Pairwise patch interactions in the CAAP coalition game: ``v({i, j}) - v({i}) - v({j}) + v(empty)``.

Positive = synergy (the two patches do more together than the sum of what each does alone: evidence that only
counts jointly, e.g. the two objects of a relation); negative = redundancy (either one is enough). ``v`` is the
game of :mod:`vit_patching.patching.caap_shapley` (denoising: the readout of the neutral run with the patches
pinned to the source; noising: the drop of the source run with them pinned to the neutral). The pairs are the
top ``k`` patches of a map per image (by default coalition CAAP's Shapley map); each image's ``k`` singletons
and ``k (k - 1) / 2`` pairs run through the batched engine from the cached residual at the window's first block.

``kind="shapley"`` gives, off the diagonal, the **Shapley interaction index** (Grabisch and Roubens) of each pair
in the game of every patch of the grid: the discrete second derivative
``v(S + i + j) - v(S + i) - v(S + j) + v(S)`` averaged over the coalitions ``S`` of the other patches with weight
``|S|! (n - |S| - 2)! / (n - 1)!``. It is estimated by permutation sampling: in a random order of the other patches
and the pair (as one player), ``S`` is the prefix before the pair; orders come in antithetic pairs (an order and its
reverse, whose prefix is the other patches outside ``S``), with a standard error from the spread of the pair means.
``n_permutations=None`` enumerates every ``S`` instead (exact; grids of at most :data:`MAX_EXACT_PATCHES` patches).
Cost per image: up to ``4 * n_permutations`` patched rows per pair (repeated coalitions run once), besides the
pairwise rows.

Example:
    >>> from vit_patching.patching.caap_shapley import caap_shapley
    >>> attr = caap_shapley(model, images, window=(0, 2), n_permutations=2)
    >>> inter = caap_interactions(model, images, attr, k=3)
    >>> inter.matrix.shape
    torch.Size([2, 3, 3])
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_batch_size, check_choice, check_positive_int, check_seed
from vit_patching.model import HookedViT

from .caap_context import prepare_caap
from .caap_results import Attribution, caap_map_values, caap_readout
from .caap_shapley import coalition_logits

__all__ = ["INTERACTION_KINDS", "Interactions", "MAX_EXACT_PATCHES", "caap_interactions", "shapley_interaction_samples"]

#: ``kind`` of :func:`caap_interactions`.
INTERACTION_KINDS = ("pairwise", "shapley")
#: ``kind="shapley"`` with ``n_permutations=None`` enumerates the ``2 ** (n - 2)`` coalitions of the other patches.
MAX_EXACT_PATCHES = 12


@dataclass
class Interactions:
    """Pairwise interactions of the top patches of each image.

    Attributes:
        patches: Flat (row-major) patch index of each of the ``k`` patches per image ``[batch, k]``.
        matrix: ``v({i, j}) - v({i}) - v({j}) + v(empty)`` ``[batch, k, k]`` (``kind="shapley"``: the Shapley
            interaction index), symmetric; the diagonal holds the main effects ``v({i}) - v(empty)``.
        joint: ``v({i, j}) - v(empty)`` ``[batch, k, k]`` (the pair's joint effect; diagonal = main effects).
        v_empty: ``v(empty)`` per image ``[batch]``.
        grid_size: The patch grid.
        pixels: The images in [0, 1] (for the figure).
        settings: Window, direction, readout, ``kind`` and the CAAP options used.
        standard_error: ``kind="shapley"`` sampled: the index's standard error ``[batch, k, k]`` (NaN with one
            antithetic pair, 0 when enumerated, on the diagonal and for ``kind="pairwise"``).
    """

    patches: Int[Tensor, "batch k"]
    matrix: Float[Tensor, "batch k k"]
    joint: Float[Tensor, "batch k k"]
    v_empty: Float[Tensor, " batch"]
    grid_size: tuple[int, int]
    pixels: Float[Tensor, "batch channel height width"]
    settings: dict[str, Any] = field(default_factory=dict)
    standard_error: Float[Tensor, "batch k k"] | None = None

    def plot(self, i: int = 0, n_pairs: int = 10, title: str | None = None):
        """The ``n_pairs`` strongest pairs of image ``i`` over the image (Plotly figure)."""
        from vit_patching.plotting.interactions import interaction_figure

        if not isinstance(i, int) or not 0 <= i < self.matrix.shape[0]:
            raise ValueError(f"i: expected an image index in [0, {self.matrix.shape[0]}), got {i!r}")
        s = self.settings
        kind = "Shapley interaction index" if s.get("kind") == "shapley" else "interaction"
        default = (f"CAAP patch interactions ({s['direction']}, window [{s['window'][0]}, {s['window'][1]}), "
                   f"{s['readout']}), image {i}")
        return interaction_figure(self.pixels[i], self.grid_size, self.patches[i].tolist(), self.matrix[i],
                                  n_pairs=n_pairs, title=default if title is None else title,
                                  value_label=f"{kind} ({s['readout']})")


def shapley_interaction_samples(
    n_patches: int, i: int, j: int, n_permutations: int | None, seed: int = 0
) -> list[tuple[tuple[int, ...], float]]:
    """Coalitions ``S`` of the patches other than ``i`` and ``j``, with their weights in the Shapley interaction
    index of the pair: sampled as the prefix before the pair in ``n_permutations`` (even) random orders of the other
    patches and the pair, in antithetic pairs (rows ``2m`` and ``2m + 1``: an order and its reverse), each of weight
    ``1 / n_permutations``; or, for ``n_permutations=None``, every ``S`` with weight
    ``|S|! (n - |S| - 2)! / (n - 1)!``.

    Example:
        >>> [(s, round(w, 4)) for s, w in shapley_interaction_samples(3, 0, 2, None)]
        [((), 0.5), ((1,), 0.5)]
        >>> a, b = shapley_interaction_samples(6, 0, 1, 2, seed=0)
        >>> sorted(a[0] + b[0])
        [2, 3, 4, 5]
    """
    others = [p for p in range(n_patches) if p not in (i, j)]
    m = len(others)
    if n_permutations is None:
        out = []
        for size in range(m + 1):
            w = math.factorial(size) * math.factorial(m - size) / math.factorial(m + 1)
            out += [(s, w) for s in itertools.combinations(others, size)]
        return out
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_permutations // 2):
        order = torch.randperm(m + 1, generator=g).tolist()  # m = the pair, merged into one player
        at = order.index(m)
        out.append((tuple(sorted(others[q] for q in order[:at])), 1.0 / n_permutations))
        out.append((tuple(sorted(others[q] for q in order[at + 1 :])), 1.0 / n_permutations))  # the reverse's prefix
    return out


def caap_interactions(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    attribution: Attribution,
    k: int = 5,
    *,
    kind: str = "pairwise",
    n_permutations: int | None = 8,
    seed: int = 0,
    neutral: str | Float[Tensor, "..."] | None = None,
    reference: Float[Tensor, "ref channel height width"] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Interactions:
    """Pairwise interactions of each image's top ``k`` patches of ``attribution`` (CAAP or coalition CAAP), in its
    game: the same window, site, neutral, readout, direction, prefix policy and explained class.

    Args:
        model: The HookedViT the attribution was computed on.
        images: The same images ``[batch, C, H, W]``.
        attribution: A CAAP result (``caap`` or ``caap_shapley``) of these images; its top ``k`` patches are used.
        k: Patches per image (``k (k + 1) / 2`` patched rows per image).
        kind: ``"pairwise"`` (``v({i, j}) - v({i}) - v({j}) + v(empty)``) or ``"shapley"`` (the Shapley interaction
            index of each pair in the game of every patch; the diagonal keeps the main effects).
        n_permutations: ``kind="shapley"``: sampled orders, an even number >= 2 (antithetic pairs), or ``None`` to
            enumerate every coalition of the other patches (exact; at most :data:`MAX_EXACT_PATCHES` patches).
        seed: ``kind="shapley"``: seed of the orders (each image and pair draws from it alike).
        neutral: The neutral, when the attribution's was a tensor (its settings keep only a description);
            ``reference``: the reference images for ``"mean_activations"``.
        batch_size: Rows per forward pass; progress: a tqdm bar.

    Example:
        >>> from vit_patching.patching.caap import caap
        >>> inter = caap_interactions(model, images, caap(model, images, window=(0, 2)), k=2)
        >>> float(inter.matrix[0, 0, 1]) == float(inter.joint[0, 0, 1] - inter.joint[0, 0, 0] - inter.joint[0, 1, 1])
        True
    """
    k = check_positive_int(k, "k")
    check_batch_size(batch_size)
    check_choice(kind, INTERACTION_KINDS, "kind")
    seed = check_seed(seed)
    if kind == "shapley" and n_permutations is not None:
        n_permutations = check_positive_int(n_permutations, "n_permutations")
        if n_permutations % 2:
            raise ValueError(f"n_permutations: expected an even number (antithetic pairs) or None, got {n_permutations}")
    b = images.shape[0]
    if attribution.map.shape[0] != b:
        raise ValueError(f"attribution: expected maps of the {b} images, got {attribution.map.shape[0]}")
    n_patches = attribution.map.shape[1] * attribution.map.shape[2]
    if k > n_patches:
        raise ValueError(f"k: expected at most the {n_patches} patches of the grid, got {k}")
    if kind == "shapley" and n_permutations is None and n_patches > MAX_EXACT_PATCHES:
        raise ValueError(f"n_permutations: None enumerates 2 ** {n_patches - 2} coalitions per pair; expected an even "
                         f"number for the {n_patches} patches of this grid (enumeration: at most {MAX_EXACT_PATCHES})")
    s = attribution.settings
    neutral = s["neutral"] if neutral is None else neutral
    start, end = attribution.window
    ctx = prepare_caap(model, images, starts=[start], layers=range(start, end), target=attribution.target,
                       neutral=neutral, site=s["site"], reference=reference, blur_sigma=s.get("blur_sigma"),
                       batch_size=batch_size, direction=attribution.direction)
    top = torch.sort(attribution.map.flatten(1), dim=1, descending=True, stable=True).indices[:, :k]
    pairs = [(i, j) for i in range(k) for j in range(i, k)]  # i == j: the singleton
    readout = s["readout"]
    neutral_logits = ctx.neutral_logits[start].expand(b, -1).float().cpu()
    source_logits = ctx.source_logits.float().cpu()
    joint = torch.zeros(b, k, k, dtype=torch.float64)
    v_empty = torch.zeros(b, dtype=torch.float64)
    for n in range(b):  # each image has its own top patches: its own spec rows
        idx = torch.tensor([n])
        coal = [sorted({int(top[n, i]), int(top[n, j])}) for i, j in pairs]
        logits = coalition_logits(model, ctx, (start, end), coal, include_prefix=s["include_prefix"], image_index=idx,
                                  batch_size=batch_size, progress=progress)  # [pair, 1, n_classes]
        t = ctx.target[n : n + 1]
        vals = caap_map_values(logits, t, readout, neutral_logits[n : n + 1], source_logits[n : n + 1],
                               ctx.direction)[:, 0].double()
        v0 = 0.0 if ctx.direction == "noising" else float(caap_readout(neutral_logits[n : n + 1], t, readout, neutral_logits[n : n + 1]))
        v_empty[n] = v0
        for (i, j), v in zip(pairs, vals):
            joint[n, i, j] = joint[n, j, i] = v - v0
    main = joint.diagonal(dim1=1, dim2=2)
    matrix = joint - main[:, :, None] - main[:, None, :]
    eye = torch.eye(k, dtype=torch.bool)
    matrix[:, eye] = main
    se = torch.zeros(b, k, k, dtype=torch.float64)
    if kind == "shapley":
        for n in range(b):
            _shapley_index(model, ctx, (start, end), readout, s["include_prefix"], top[n], n, n_patches, n_permutations,
                           seed, float(v_empty[n]), matrix, se, batch_size, progress)
    settings = {"window": (start, end), "direction": attribution.direction, "readout": readout, "site": s["site"],
                "neutral": s["neutral"], "k": k, "include_prefix": s["include_prefix"], "kind": kind,
                "n_permutations": n_permutations if kind == "shapley" else None, "seed": seed}
    return Interactions(top, matrix.float(), joint.float(), v_empty.float(), tuple(attribution.map.shape[1:]),
                        attribution.pixels, settings, se.float())


def _shapley_index(model: HookedViT, ctx: Any, window: tuple[int, int], readout: str, include_prefix: bool,
                   top: Tensor, n: int, n_patches: int, n_permutations: int | None, seed: int, v0: float,
                   matrix: Tensor, se: Tensor, batch_size: int, progress: bool) -> None:
    """Image ``n``'s Shapley interaction index of each pair of ``top`` into ``matrix`` (its SE into ``se``)."""
    k = top.shape[0]
    samples = {}
    rows: dict[tuple[int, ...], int] = {}
    for a in range(k):
        for c in range(a + 1, k):
            i, j = int(top[a]), int(top[c])
            samples[(a, c)] = shapley_interaction_samples(n_patches, i, j, n_permutations, seed)
            for sub, _ in samples[(a, c)]:
                for coal in (sub + (i,), sub + (j,), sub + (i, j)) + ((sub,) if sub else ()):
                    rows.setdefault(tuple(sorted(coal)), len(rows))
    if not rows:
        return
    idx = torch.tensor([n])
    logits = coalition_logits(model, ctx, window, [list(c) for c in rows], include_prefix=include_prefix,
                              image_index=idx, batch_size=batch_size, progress=progress)
    t = ctx.target[n : n + 1]
    neutral_logits = ctx.neutral_logits[window[0]].expand(ctx.images.shape[0], -1).float().cpu()[n : n + 1]
    vals = caap_map_values(logits, t, readout, neutral_logits, ctx.source_logits.float().cpu()[n : n + 1],
                           ctx.direction)[:, 0].double()

    def v(coal: tuple[int, ...]) -> Tensor:
        return torch.tensor(v0, dtype=torch.float64) if not coal else vals[rows[tuple(sorted(coal))]]

    for (a, c), subs in samples.items():
        i, j = int(top[a]), int(top[c])
        d = torch.stack([v(sub + (i, j)) - v(sub + (i,)) - v(sub + (j,)) + v(sub) for sub, _ in subs])
        w = torch.tensor([wt for _, wt in subs], dtype=torch.float64)
        matrix[n, a, c] = matrix[n, c, a] = (w * d).sum()
        if n_permutations is not None:  # antithetic pair means are i.i.d.: their spread gives the standard error
            pairs = d.view(-1, 2).mean(dim=1)
            err = pairs.std() / math.sqrt(pairs.numel()) if pairs.numel() > 1 else torch.tensor(float("nan"))
            se[n, a, c] = se[n, c, a] = err

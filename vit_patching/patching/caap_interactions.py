"""Pairwise patch interactions in the CAAP coalition game: ``v({i, j}) - v({i}) - v({j}) + v(empty)``.

Positive = synergy (the two patches do more together than the sum of what each does alone: evidence that only
counts jointly, e.g. the two objects of a relation); negative = redundancy (either one is enough). ``v`` is the
game of :mod:`vit_patching.patching.caap_shapley` (denoising: the readout of the neutral run with the patches
pinned to the source; noising: the drop of the source run with them pinned to the neutral). The pairs are the
top ``k`` patches of a map per image (by default coalition CAAP's Shapley map); each image's ``k`` singletons
and ``k (k - 1) / 2`` pairs run through the batched engine from the cached residual at the window's first block.

Example:
    >>> from vit_patching.patching.caap_shapley import caap_shapley
    >>> attr = caap_shapley(model, images, window=(0, 2), n_permutations=2)
    >>> inter = caap_interactions(model, images, attr, k=3)
    >>> inter.matrix.shape
    torch.Size([2, 3, 3])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_batch_size, check_positive_int
from vit_patching.model import HookedViT

from .caap_context import prepare_caap
from .caap_results import Attribution, caap_map_values, caap_readout
from .caap_shapley import coalition_logits

__all__ = ["Interactions", "caap_interactions"]


@dataclass
class Interactions:
    """Pairwise interactions of the top patches of each image.

    Attributes:
        patches: Flat (row-major) patch index of each of the ``k`` patches per image ``[batch, k]``.
        matrix: ``v({i, j}) - v({i}) - v({j}) + v(empty)`` ``[batch, k, k]``, symmetric; the diagonal holds the
            main effects ``v({i}) - v(empty)``.
        joint: ``v({i, j}) - v(empty)`` ``[batch, k, k]`` (the pair's joint effect; diagonal = main effects).
        v_empty: ``v(empty)`` per image ``[batch]``.
        grid_size: The patch grid.
        pixels: The images in [0, 1] (for the figure).
        settings: Window, direction, readout and the CAAP options used.
    """

    patches: Int[Tensor, "batch k"]
    matrix: Float[Tensor, "batch k k"]
    joint: Float[Tensor, "batch k k"]
    v_empty: Float[Tensor, " batch"]
    grid_size: tuple[int, int]
    pixels: Float[Tensor, "batch channel height width"]
    settings: dict[str, Any] = field(default_factory=dict)

    def plot(self, i: int = 0, n_pairs: int = 10, title: str | None = None):
        """The ``n_pairs`` strongest pairs of image ``i`` over the image (Plotly figure)."""
        from vit_patching.plotting.interactions import interaction_figure

        if not isinstance(i, int) or not 0 <= i < self.matrix.shape[0]:
            raise ValueError(f"i: expected an image index in [0, {self.matrix.shape[0]}), got {i!r}")
        s = self.settings
        default = (f"CAAP patch interactions ({s['direction']}, window [{s['window'][0]}, {s['window'][1]}), "
                   f"{s['readout']}), image {i}")
        return interaction_figure(self.pixels[i], self.grid_size, self.patches[i].tolist(), self.matrix[i],
                                  n_pairs=n_pairs, title=default if title is None else title,
                                  value_label=f"interaction ({s['readout']})")


def caap_interactions(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    attribution: Attribution,
    k: int = 5,
    *,
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
    b = images.shape[0]
    if attribution.map.shape[0] != b:
        raise ValueError(f"attribution: expected maps of the {b} images, got {attribution.map.shape[0]}")
    n_patches = attribution.map.shape[1] * attribution.map.shape[2]
    if k > n_patches:
        raise ValueError(f"k: expected at most the {n_patches} patches of the grid, got {k}")
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
    settings = {"window": (start, end), "direction": attribution.direction, "readout": readout, "site": s["site"],
                "neutral": s["neutral"], "k": k, "include_prefix": s["include_prefix"]}
    return Interactions(top, matrix.float(), joint.float(), v_empty.float(), tuple(attribution.map.shape[1:]),
                        attribution.pixels, settings)

"""Rendering primitives of the zoo's toy scenes: colours, shape templates, placement, backgrounds, composition.

A scene (``ToyScenes``) is a textured, noisy background plus non-overlapping objects, each a shape from
``SHAPE_NAMES`` filled with one colour inside a pixel-aligned box. This module draws scenes whatever the task;
:mod:`vit_patching.zoo.datasets` samples them per task (which objects are evidence, what the label is). Every
public name here is also importable from ``vit_patching.zoo.datasets``.

Example:
    >>> from vit_patching.zoo.datasets import sample_scenes
    >>> s = sample_scenes("shapes", n=2, seed=0)
    >>> render_scenes(s).shape, bool((object_map(s) >= 0).any())
    (torch.Size([2, 3, 64, 64]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from jaxtyping import Bool, Float, Int64
from torch import Tensor

__all__ = [
    "CLASS_HUES",
    "DISTRACTOR_HUES",
    "GAP",
    "HUE_JITTER",
    "NOISE_STD",
    "PART_HUES",
    "SCENE_TENSOR_FIELDS",
    "SHAPE_NAMES",
    "ToyScenes",
    "cat_scenes",
    "compose",
    "evidence_masks",
    "muted_colours",
    "object_map",
    "place_boxes",
    "render_scenes",
    "sample_background",
    "select_scenes",
    "shape_templates",
    "uniform",
]

GAP = 2  # minimum gap in pixels between the boxes of two objects
NOISE_STD = 0.03  # std of the additive pixel noise

#: All shapes the rasteriser can draw (the first four are the evidence shapes).
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "plus", "ring", "diamond")

#: The four class hues (RGB in [0, 1]): colour of the ``shapes`` class objects and of the ``conjunction`` parts.
CLASS_HUES: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.12, 0.78, 0.18),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
#: Part types of ``conjunction`` (same hues).
PART_HUES = CLASS_HUES
#: Vivid hues that never carry a class: the colours of the vivid distractors.
DISTRACTOR_HUES: dict[str, tuple[float, float, float]] = {
    "magenta": (0.85, 0.15, 0.85),
    "cyan": (0.10, 0.80, 0.85),
    "orange": (1.00, 0.48, 0.05),
}
HUE_JITTER = 0.05  # uniform per-channel jitter of vivid colours


@dataclass
class ToyScenes:
    """The sampled parameters of a batch of scenes (what ``render_scenes`` draws).

    Objects are ordered evidence first, then distractors. Absent slots (distractors that found no free place)
    have ``present == False``. Object boxes are pixel-aligned: object ``j`` of image ``i`` occupies the box of
    side ``size[i, j]`` whose top-left pixel is ``corner[i, j] = (x, y)``. Edit a copy (e.g. with
    ``dataclasses.replace``) and re-render to make counterfactual images.

    Attributes:
        task: task name.
        shape: index into ``SHAPE_NAMES`` per object.
        colour: RGB fill colour in [0, 1] per object.
        corner: (x, y) of the top-left pixel of each object's box.
        size: side of each object's box in pixels.
        present: whether the object is drawn.
        evidence: whether the object is class-defining.
        part_type: for ``conjunction``, ``relation`` and ``captions`` evidence, index into ``PART_HUES`` (its hue); -1
            elsewhere.
        labels: class index per image.
        background: background image in [0, 1] before objects and pixel noise.
        noise: additive pixel noise, applied after composition (then clamped to [0, 1]).
        class_names: name of each class index.
    """

    task: str
    shape: Int64[Tensor, "batch obj"]
    colour: Float[Tensor, "batch obj 3"]
    corner: Int64[Tensor, "batch obj 2"]
    size: Int64[Tensor, "batch obj"]
    present: Bool[Tensor, "batch obj"]
    evidence: Bool[Tensor, "batch obj"]
    part_type: Int64[Tensor, "batch obj"]
    labels: Int64[Tensor, " batch"]
    background: Float[Tensor, "batch channel height width"]
    noise: Float[Tensor, "batch channel height width"]
    class_names: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.labels.shape[0])


SCENE_TENSOR_FIELDS = (
    "shape", "colour", "corner", "size", "present", "evidence", "part_type", "labels", "background", "noise"
)


def shape_templates(size: int) -> Bool[Tensor, "shape size size"]:
    """Footprints of every shape in ``SHAPE_NAMES`` inside a ``size`` x ``size`` pixel box.

    A pixel belongs to a shape when its centre lies (strictly) inside the shape's outline, with the outline
    inscribed in the box: circle (radius ``size/2``), square (the box), triangle (apex at the top centre, base
    = bottom edge), plus (arms one third of the box wide), ring (circle minus the disc of radius 0.55 of it),
    diamond (corners at the edge midpoints).

    Args:
        size: side of the box in pixels.

    Returns:
        One boolean template per shape.

    Example:
        >>> int(shape_templates(4)[SHAPE_NAMES.index("square")].sum())
        16
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive int, got {size!r}")
    return _templates(size).clone()


@lru_cache(maxsize=None)
def _templates(size: int) -> Tensor:
    u = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    dx, dy = u.view(1, -1), u.view(-1, 1)  # x along columns, y along rows (down)
    r = size / 2
    adx, ady = dx.abs(), dy.abs()
    d2 = dx * dx + dy * dy
    in_box = (adx < r) & (ady < r)
    arm = r / 3
    templates = torch.stack(
        [
            d2 < r * r,  # circle
            in_box,  # square
            (ady < r) & (adx < (dy + r) / 2),  # triangle
            in_box & ((adx < arm) | (ady < arm)),  # plus
            (d2 < r * r) & (d2 >= (0.55 * r) ** 2),  # ring
            (adx + ady) < r,  # diamond
        ]
    )
    return templates


def object_map(
    scenes: ToyScenes, objects: str = "all"
) -> Int64[Tensor, "batch height width"]:
    """Index of the object covering each pixel (-1 for background).

    Args:
        scenes: output of ``sample_scenes``.
        objects: which objects to include.

    Returns:
        Object slot index per pixel, or -1.

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> s = sample_scenes("shapes", n=2, seed=0)
        >>> bool(((object_map(s) == 0) == evidence_masks(s)).all())  # slot 0 is the evidence object
        True
    """
    if objects not in ("all", "evidence", "distractors", "none"):
        raise ValueError(f"objects: expected 'all', 'evidence', 'distractors' or 'none', got {objects!r}")
    n = len(scenes)
    height, width = scenes.background.shape[-2:]
    draw = scenes.present.clone()
    if objects == "evidence":
        draw &= scenes.evidence
    elif objects == "distractors":
        draw &= ~scenes.evidence
    elif objects == "none":
        draw &= False
    omap = torch.full((n, height * width), -1, dtype=torch.int64)
    bi, oi = draw.nonzero(as_tuple=True)
    sizes = scenes.size[bi, oi]
    for s in sizes.unique().tolist():
        sel = sizes == s
        bb, oo = bi[sel], oi[sel]
        tmpl = _templates(int(s))[scenes.shape[bb, oo]]  # [k, s, s]
        corner = scenes.corner[bb, oo]
        rows = corner[:, 1].view(-1, 1, 1) + torch.arange(s).view(1, -1, 1)
        cols = corner[:, 0].view(-1, 1, 1) + torch.arange(s).view(1, 1, -1)
        flat = (rows * width + cols).expand_as(tmpl)
        img = bb.view(-1, 1, 1).expand_as(tmpl)
        obj = oo.view(-1, 1, 1).expand_as(tmpl)
        omap[img[tmpl], flat[tmpl]] = obj[tmpl]
    return omap.view(n, height, width)



def uniform(gen: torch.Generator, lo: float, hi: float, *shape: int) -> Float[Tensor, "..."]:
    """Uniform draws in ``[lo, hi)`` of the given shape from ``gen``.

    Example:
        >>> float(uniform(torch.Generator().manual_seed(0), 2.0, 3.0, 4).min()) >= 2.0
        True
    """
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def sample_background(gen: torch.Generator, n: int, size: int) -> Float[Tensor, "batch 3 size size"]:
    """Muted base colour + smooth low-frequency blobs + an oriented grating (all low saturation), in [0, 1].

    Example:
        >>> sample_background(torch.Generator().manual_seed(0), 2, 64).shape
        torch.Size([2, 3, 64, 64])
    """
    grey = uniform(gen, 0.3, 0.7, n, 1, 1, 1)
    tint = uniform(gen, -0.06, 0.06, n, 3, 1, 1)
    blobs = torch.randn(n, 1, 6, 6, generator=gen) * 0.09 + torch.randn(n, 3, 6, 6, generator=gen) * 0.02
    blobs = torch.nn.functional.interpolate(blobs, size=(size, size), mode="bilinear", align_corners=False)
    theta = uniform(gen, 0.0, math.pi, n, 1, 1, 1)
    freq = uniform(gen, 2 * math.pi / 10, 2 * math.pi / 4, n, 1, 1, 1)  # periods 4-10 px
    phase = uniform(gen, 0.0, 2 * math.pi, n, 1, 1, 1)
    amp = uniform(gen, 0.0, 0.06, n, 1, 1, 1)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    grating = amp * torch.sin(freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
    return (grey + tint + blobs + grating).clamp(0.0, 1.0)


def muted_colours(gen: torch.Generator, *shape: int) -> Float[Tensor, "... 3"]:
    """Grey-ish RGB colours of the given shape: random lightness, low saturation (never a vivid hue).

    Example:
        >>> muted_colours(torch.Generator().manual_seed(0), 2, 5).shape
        torch.Size([2, 5, 3])
    """
    level = uniform(gen, 0.1, 0.9, *shape, 1)
    tint = uniform(gen, -0.08, 0.08, *shape, 3)
    return (level + tint).clamp(0.0, 1.0)


def place_boxes(
    gen: torch.Generator, sizes: Int64[Tensor, "batch obj"], image_size: int, n_candidates: int = 24
) -> tuple[Int64[Tensor, "batch obj 2"], Bool[Tensor, "batch obj"]]:
    """Place square boxes one after another, each at the first of ``n_candidates`` random spots ``GAP`` pixels
    clear of the boxes already placed; returns the top-left corners (x, y) and whether each box found a spot.

    Example:
        >>> corners, placed = place_boxes(torch.Generator().manual_seed(0), torch.tensor([[20, 20]]), 64)
        >>> corners.shape, placed.tolist()
        (torch.Size([1, 2, 2]), [[True, True]])
    """
    n, n_obj = sizes.shape
    corners = torch.zeros(n, n_obj, 2, dtype=torch.int64)
    placed = torch.zeros(n, n_obj, dtype=torch.bool)
    for j in range(n_obj):
        span = (image_size - sizes[:, j] + 1).view(-1, 1, 1)  # the box stays inside the image
        cand = (torch.rand(n, n_candidates, 2, generator=gen) * span).long()  # [n, K, 2]
        if j == 0:
            ok = torch.ones(n, n_candidates, dtype=torch.bool)
        else:
            lo_new = cand.unsqueeze(2)  # [n, K, 1, 2]
            hi_new = lo_new + sizes[:, j].view(-1, 1, 1, 1)
            lo_old = corners[:, None, :j, :]  # [n, 1, j, 2]
            hi_old = lo_old + sizes[:, None, :j, None]
            # boxes [lo, hi) clash unless separated by >= GAP pixels along x or along y
            apart = (lo_new >= hi_old + GAP) | (lo_old >= hi_new + GAP)  # [n, K, j, 2]
            clash = ~(apart.any(dim=-1)) & placed[:, None, :j]
            ok = ~clash.any(dim=2)
        first = ok.int().argmax(dim=1)
        corners[:, j] = cand[torch.arange(n), first]
        placed[:, j] = ok.any(dim=1)
    return corners, placed


def cat_scenes(parts: list[ToyScenes]) -> ToyScenes:
    """Concatenate scenes of one task along the batch axis.

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> len(cat_scenes([sample_scenes("shapes", 2, 0), sample_scenes("shapes", 3, 1)]))
        5
    """
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in SCENE_TENSOR_FIELDS}
    return ToyScenes(task=parts[0].task, class_names=parts[0].class_names, **cat)


def select_scenes(scenes: ToyScenes, idx: Int64[Tensor, " k"]) -> ToyScenes:
    """The scenes at indices ``idx``.

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> len(select_scenes(sample_scenes("shapes", 4, 0), torch.tensor([0, 2])))
        2
    """
    sel = {f: getattr(scenes, f)[idx] for f in SCENE_TENSOR_FIELDS}
    return ToyScenes(task=scenes.task, class_names=scenes.class_names, **sel)


def render_scenes(
    scenes: ToyScenes, objects: str = "all", noise: bool = True
) -> Float[Tensor, "batch channel height width"]:
    """Draw scenes: background, then the chosen objects, then pixel noise, clamped to [0, 1].

    Args:
        scenes: output of ``sample_scenes``.
        objects: which objects to draw.
        noise: add the scenes' pixel noise.

    Returns:
        Pixels in [0, 1].

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> s = sample_scenes("shapes", n=2, seed=0)
        >>> render_scenes(s, objects="none", noise=False).shape
        torch.Size([2, 3, 64, 64])
    """
    return compose(scenes, object_map(scenes, objects), noise)


def compose(
    scenes: ToyScenes, omap: Int64[Tensor, "batch height width"], noise: bool
) -> Float[Tensor, "batch channel height width"]:
    """Fill each pixel with the colour of the object ``omap`` puts there (background where -1), add the pixel
    noise if ``noise``, clamp to [0, 1].

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> s = sample_scenes("shapes", 2, 0)
        >>> bool(torch.equal(compose(s, object_map(s), True), render_scenes(s)))
        True
    """
    n, n_obj = scenes.shape.shape
    covered = (omap >= 0).unsqueeze(1)  # [n, 1, H, W]
    idx = omap.clamp(min=0).view(n, 1, -1).expand(-1, 3, -1)  # [n, 3, H*W]
    fill = scenes.colour.transpose(1, 2).gather(2, idx).view_as(scenes.background)
    pixels = torch.where(covered, fill, scenes.background)
    if noise:
        pixels = pixels + scenes.noise
    return pixels.clamp(0.0, 1.0)


def evidence_masks(scenes: ToyScenes) -> Bool[Tensor, "batch height width"]:
    """Union of the footprints of the class-defining objects of each scene.

    Args:
        scenes: output of ``sample_scenes``.

    Returns:
        Boolean mask per scene.

    Example:
        >>> from vit_patching.zoo.datasets import sample_scenes
        >>> s = sample_scenes("conjunction", n=2, seed=0)
        >>> evidence_masks(s).shape
        torch.Size([2, 64, 64])
    """
    return object_map(scenes, "evidence") >= 0

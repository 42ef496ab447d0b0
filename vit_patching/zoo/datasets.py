"""Synthetic localisation benchmarks with exact per-pixel evidence masks.

Two tasks, both rendered procedurally (no files, no network) and deterministic given a seed. Every image is a
textured, noisy background (muted base colour, smooth blobs, an oriented grating, pixel noise) with
non-overlapping objects; the objects are either class-defining *evidence* or *distractors*.

* ``shapes`` (4 classes): one evidence object per image, a ``red circle``, ``green square``, ``blue triangle``
  or ``yellow plus``: the class is carried by its colour and its shape together. Distractors: grey-ish objects
  of every shape (class shapes included) and vivid objects in non-class hues (magenta, cyan, orange), also of
  every shape. Neither kind carries the class. The mask marks exactly the pixels of the evidence object.
* ``conjunction`` (3 classes): two evidence *parts* of different types; a part's type is its hue (red, green,
  blue, yellow), its shape is random. The class is the *pair* of types, grouped by the three perfect matchings
  of the four types: class 0 = {red, green} or {blue, yellow}, class 1 = {red, blue} or {green, yellow},
  class 2 = {red, yellow} or {green, blue}. Every type occurs in every class equally often, so one part alone
  says nothing about the label, and no sum of per-part scores separates the classes (an XOR-like structure):
  the model has to combine two patches. Distractors as in ``shapes``. The mask marks both parts.

Objects never overlap (boxes keep a gap of ``GAP`` pixels), and are drawn with hard edges: every pixel whose
centre lies inside an object's shape takes the object colour, so ``masks`` is exactly the drawn evidence
footprint. Pixel noise is added over the whole image after composition.

Generation is chunked (``CHUNK`` images per chunk, each chunk with its own seed drawn from the master seed),
so the first ``k`` images of ``generate(name, n, seed)`` do not depend on ``n``. ``sample_scenes`` exposes
the scene parameters, which can be edited and re-rendered (``batch_from_scenes``) to build counterfactuals.

Example:
    >>> from vit_patching.zoo.datasets import generate
    >>> batch = generate("shapes", n=8, seed=0)
    >>> batch.images.shape, batch.labels.shape, batch.masks.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8]), torch.Size([8, 64, 64]))
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from jaxtyping import Bool, Float, Int64
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK",
    "generate_sample",
    "CLASS_HUES",
    "CONJUNCTION_CLASS_NAMES",
    "DISTRACTOR_HUES",
    "GAP",
    "HUE_JITTER",
    "IMAGE_SIZE",
    "NOISE_STD",
    "PART_HUES",
    "SHAPE_NAMES",
    "SHAPES_CLASS_NAMES",
    "TASKS",
    "ToyBatch",
    "ToyDataset",
    "ToyScenes",
    "batch_from_scenes",
    "conjunction_label",
    "evidence_masks",
    "generate",
    "object_map",
    "render_scenes",
    "sample_scenes",
    "shape_templates",
]

IMAGE_SIZE = 64
CHUNK = 256
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

#: ``shapes`` class k is shape ``SHAPE_NAMES[k]`` in hue ``list(CLASS_HUES)[k]``.
SHAPES_CLASS_NAMES: tuple[str, ...] = ("red circle", "green square", "blue triangle", "yellow plus")

# pair (a, b) with a < b -> class: the three perfect matchings of K4
_PAIR_CLASS = {(0, 1): 0, (2, 3): 0, (0, 2): 1, (1, 3): 1, (0, 3): 2, (1, 2): 2}
CONJUNCTION_CLASS_NAMES: tuple[str, ...] = (
    "red+green | blue+yellow",
    "red+blue | green+yellow",
    "red+yellow | green+blue",
)
_CLASS_RGB = torch.tensor(list(CLASS_HUES.values()))
_DISTRACTOR_RGB = torch.tensor(list(DISTRACTOR_HUES.values()))


@dataclass(frozen=True)
class _TaskSpec:
    n_evidence: int  # class-defining objects per image
    evidence_size: tuple[int, int]  # box side in pixels (min, max inclusive)
    n_distractors: tuple[int, int]  # attempted distractors (min, max inclusive); some may not fit
    distractor_size: tuple[int, int]
    class_names: tuple[str, ...]
    p_vivid_distractor: float = 0.4  # chance that a distractor is vivid (in a non-class hue) instead of muted


_SPECS: dict[str, _TaskSpec] = {
    "shapes": _TaskSpec(1, (14, 24), (2, 4), (10, 18), SHAPES_CLASS_NAMES),
    "conjunction": _TaskSpec(2, (12, 18), (2, 3), (10, 16), CONJUNCTION_CLASS_NAMES),
}
TASKS: tuple[str, ...] = tuple(_SPECS)


@dataclass
class ToyBatch:
    """A batch of a toy benchmark.

    Attributes:
        images: model input, ``(pixels - 0.5) / 0.5`` (the models' timm ``pretrained_cfg`` normalisation).
        pixels: the rendered images in [0, 1], for display.
        labels: class index per image.
        masks: True on exactly the pixels of the class-defining object(s).
        class_names: name of each class index.

    Example:
        >>> b = generate("conjunction", n=4, seed=1)
        >>> b.class_names[int(b.labels[0])] in CONJUNCTION_CLASS_NAMES
        True
    """

    images: Float[Tensor, "batch channel height width"]
    pixels: Float[Tensor, "batch channel height width"]
    labels: Int64[Tensor, " batch"]
    masks: Bool[Tensor, "batch height width"]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int | slice | Tensor) -> "ToyBatch":
        """Select a sub-batch (always keeps the batch axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return ToyBatch(
            self.images[index], self.pixels[index], self.labels[index], self.masks[index], self.class_names
        )


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
        part_type: for ``conjunction`` evidence, index into ``PART_HUES``; -1 elsewhere.
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


_TENSOR_FIELDS = (
    "shape", "colour", "corner", "size", "present", "evidence", "part_type", "labels", "background", "noise"
)


def _check_task(task: str) -> _TaskSpec:
    if task not in _SPECS:
        raise ValueError(f"task: expected one of {sorted(_SPECS)}, got {task!r}")
    return _SPECS[task]


def _check_n_seed(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")


def conjunction_label(type_a: Int64[Tensor, " batch"], type_b: Int64[Tensor, " batch"]) -> Int64[Tensor, " batch"]:
    """Class of a ``conjunction`` image from the types of its two parts (order does not matter).

    Args:
        type_a: part type index (into ``PART_HUES``) of one part.
        type_b: part type index of the other part; must differ from ``type_a``.

    Returns:
        Class index per image (0, 1 or 2).

    Example:
        >>> conjunction_label(torch.tensor([0, 3]), torch.tensor([1, 1])).tolist()
        [0, 1]
    """
    if bool((type_a == type_b).any()):
        raise ValueError("type_a, type_b: expected two different part types per image, got equal types")
    if bool(((type_a < 0) | (type_a > 3) | (type_b < 0) | (type_b > 3)).any()):
        raise ValueError("type_a, type_b: expected part types in 0..3")
    lo, hi = torch.minimum(type_a, type_b), torch.maximum(type_a, type_b)
    table = torch.full((4, 4), -1, dtype=torch.int64)
    for (a, b), c in _PAIR_CLASS.items():
        table[a, b] = c
    return table[lo, hi]


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


def _uniform(gen: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen)


def _background(gen: torch.Generator, n: int, size: int) -> Tensor:
    """Muted base colour + smooth low-frequency blobs + an oriented grating (all low saturation)."""
    grey = _uniform(gen, 0.3, 0.7, n, 1, 1, 1)
    tint = _uniform(gen, -0.06, 0.06, n, 3, 1, 1)
    blobs = torch.randn(n, 1, 6, 6, generator=gen) * 0.09 + torch.randn(n, 3, 6, 6, generator=gen) * 0.02
    blobs = torch.nn.functional.interpolate(blobs, size=(size, size), mode="bilinear", align_corners=False)
    theta = _uniform(gen, 0.0, math.pi, n, 1, 1, 1)
    freq = _uniform(gen, 2 * math.pi / 10, 2 * math.pi / 4, n, 1, 1, 1)  # periods 4-10 px
    phase = _uniform(gen, 0.0, 2 * math.pi, n, 1, 1, 1)
    amp = _uniform(gen, 0.0, 0.06, n, 1, 1, 1)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    grating = amp * torch.sin(freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
    return (grey + tint + blobs + grating).clamp(0.0, 1.0)


def _muted_colour(gen: torch.Generator, *shape: int) -> Tensor:
    """Grey-ish colours: random lightness, low saturation (never a vivid hue)."""
    level = _uniform(gen, 0.1, 0.9, *shape, 1)
    tint = _uniform(gen, -0.08, 0.08, *shape, 3)
    return (level + tint).clamp(0.0, 1.0)


def _place(gen: torch.Generator, sizes: Tensor, image_size: int, n_candidates: int = 24) -> tuple[Tensor, Tensor]:
    """Sequentially place boxes that keep ``GAP`` pixels apart; returns (corners [n, obj, 2], placed [n, obj])."""
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


def _sample_chunk(task: str, n: int, gen: torch.Generator, image_size: int) -> ToyScenes:
    spec = _SPECS[task]
    n_ev = spec.n_evidence
    n_dis_max = spec.n_distractors[1]
    n_obj = n_ev + n_dis_max

    background = _background(gen, n, image_size)
    noise = torch.randn(n, 3, image_size, image_size, generator=gen) * NOISE_STD
    size = torch.cat(
        [
            torch.randint(spec.evidence_size[0], spec.evidence_size[1] + 1, (n, n_ev), generator=gen),
            torch.randint(spec.distractor_size[0], spec.distractor_size[1] + 1, (n, n_dis_max), generator=gen),
        ],
        dim=1,
    )
    n_dis = torch.randint(spec.n_distractors[0], n_dis_max + 1, (n,), generator=gen)
    wanted = torch.cat(
        [torch.ones(n, n_ev, dtype=torch.bool), torch.arange(n_dis_max).view(1, -1) < n_dis.view(-1, 1)], dim=1
    )
    corner, placed = _place(gen, size, image_size)
    present = wanted & placed
    evidence = torch.zeros(n, n_obj, dtype=torch.bool)
    evidence[:, :n_ev] = True
    # distractors: any shape (class shapes included); muted, or vivid in a non-class hue
    shape = torch.randint(0, len(SHAPE_NAMES), (n, n_obj), generator=gen)
    colour = _muted_colour(gen, n, n_obj)
    vivid = torch.rand(n, n_obj, generator=gen) < spec.p_vivid_distractor
    vivid_hue = torch.randint(0, _DISTRACTOR_RGB.shape[0], (n, n_obj), generator=gen)
    jitter = _uniform(gen, -HUE_JITTER, HUE_JITTER, n, n_obj, 3)
    colour = torch.where(vivid.unsqueeze(-1), (_DISTRACTOR_RGB[vivid_hue] + jitter).clamp(0.0, 1.0), colour)
    part_type = torch.full((n, n_obj), -1, dtype=torch.int64)

    if task == "shapes":
        labels = torch.randint(0, len(SHAPES_CLASS_NAMES), (n,), generator=gen)
        shape[:, 0] = labels
        colour[:, 0] = (_CLASS_RGB[labels] + jitter[:, 0]).clamp(0.0, 1.0)
    else:
        # two different part types, uniform over the 12 ordered pairs
        a = torch.randint(0, 4, (n,), generator=gen)
        b = (a + torch.randint(1, 4, (n,), generator=gen)) % 4
        part_type[:, 0], part_type[:, 1] = a, b
        labels = conjunction_label(a, b)
        colour[:, :2] = (_CLASS_RGB[part_type[:, :2]] + jitter[:, :2]).clamp(0.0, 1.0)
        shape[:, :2] = torch.randint(0, 4, (n, 2), generator=gen)

    return ToyScenes(
        task, shape, colour, corner, size, present, evidence, part_type, labels, background, noise, spec.class_names
    )


def _cat_scenes(parts: list[ToyScenes]) -> ToyScenes:
    cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in _TENSOR_FIELDS}
    return ToyScenes(task=parts[0].task, class_names=parts[0].class_names, **cat)


def _select(scenes: ToyScenes, idx: Tensor) -> ToyScenes:
    sel = {f: getattr(scenes, f)[idx] for f in _TENSOR_FIELDS}
    return ToyScenes(task=scenes.task, class_names=scenes.class_names, **sel)


def _sample_chunk_complete(task: str, n: int, gen: torch.Generator, image_size: int) -> ToyScenes:
    """Sample ``n`` scenes, redrawing (from the same generator) the rare ones whose evidence did not fit."""
    n_ev = _SPECS[task].n_evidence
    scenes = _sample_chunk(task, n, gen, image_size)
    for _ in range(100):
        bad = ~scenes.present[:, :n_ev].all(dim=1)
        if not bool(bad.any()):
            return scenes
        redraw = _sample_chunk(task, int(bad.sum()), gen, image_size)
        keep = (~bad).nonzero().squeeze(1)
        scenes = _cat_scenes([_select(scenes, keep), redraw])
    raise RuntimeError("could not place the evidence objects")  # pragma: no cover - needs absurd sizes


def sample_scenes(
    task: str, n: int, seed: int, *, image_size: int = IMAGE_SIZE, progress: bool = False
) -> ToyScenes:
    """Sample the parameters of ``n`` scenes of ``task`` (deterministic in ``seed``, prefix-stable in ``n``).

    Args:
        task: ``"shapes"`` or ``"conjunction"``.
        n: number of scenes.
        seed: non-negative random seed.
        image_size: side of the square canvas in pixels (the zoo models use 64).
        progress: show a tqdm bar over chunks.

    Returns:
        The sampled scenes.

    Example:
        >>> s = sample_scenes("shapes", n=3, seed=0)
        >>> s.shape[:, 0].tolist() == s.labels.tolist()  # the evidence object's shape is the class
        True
    """
    _check_task(task)
    _check_n_seed(n, seed)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 48:
        raise ValueError(f"image_size: expected an int >= 48, got {image_size!r}")
    master = torch.Generator().manual_seed(seed)
    n_chunks = -(-n // CHUNK)
    chunk_seeds = torch.randint(0, 2**62, (n_chunks,), generator=master).tolist()
    parts = []
    for s in tqdm(chunk_seeds, desc=f"{task} scenes", disable=not progress, leave=False):
        gen = torch.Generator().manual_seed(int(s))
        parts.append(_sample_chunk_complete(task, CHUNK, gen, image_size))
    scenes = _cat_scenes(parts) if len(parts) > 1 else parts[0]
    return _select(scenes, torch.arange(n))


def generate_sample(task: str, index: int, seed: int, *, image_size: int = IMAGE_SIZE) -> ToyBatch:
    """Image ``index`` of ``generate(task, n, seed)`` (any ``n > index``) as a batch of one, rendering only its chunk.

    Equal to ``generate(task, index + 1, seed)[index : index + 1]``, in memory and time of one chunk
    (``CHUNK`` scenes) whatever the index: the chunk seeds are drawn from the master seed as in
    :func:`sample_scenes`, and only the chunk that holds ``index`` is sampled and only that scene rendered.

    Example:
        >>> one = generate_sample("shapes", 300, seed=0)
        >>> bool(torch.equal(one.images[0], generate("shapes", n=301, seed=0).images[300]))
        True
    """
    _check_task(task)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index: expected a non-negative int, got {index!r}")
    _check_n_seed(index + 1, seed)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 48:
        raise ValueError(f"image_size: expected an int >= 48, got {image_size!r}")
    chunk, offset = divmod(index, CHUNK)
    master = torch.Generator().manual_seed(seed)
    chunk_seed = torch.randint(0, 2**62, (chunk + 1,), generator=master)[chunk]  # as sample_scenes draws them
    scenes = _sample_chunk_complete(task, CHUNK, torch.Generator().manual_seed(int(chunk_seed)), image_size)
    return batch_from_scenes(_select(scenes, torch.tensor([offset])))


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
        >>> s = sample_scenes("shapes", n=2, seed=0)
        >>> render_scenes(s, objects="none", noise=False).shape
        torch.Size([2, 3, 64, 64])
    """
    return _render(scenes, object_map(scenes, objects), noise)


def _render(scenes: ToyScenes, omap: Tensor, noise: bool) -> Tensor:
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
        >>> s = sample_scenes("conjunction", n=2, seed=0)
        >>> evidence_masks(s).shape
        torch.Size([2, 64, 64])
    """
    return object_map(scenes, "evidence") >= 0


def generate(
    task: str, n: int, seed: int, *, image_size: int = IMAGE_SIZE, progress: bool = False
) -> ToyBatch:
    """Generate ``n`` images of ``task`` with labels and evidence masks (deterministic in ``seed``).

    Args:
        task: ``"shapes"`` or ``"conjunction"``.
        n: number of images.
        seed: non-negative random seed; the first ``k`` images do not depend on ``n``.
        image_size: side of the square images (the zoo models use 64).
        progress: show a tqdm bar.

    Returns:
        A ``ToyBatch`` with normalised ``images``, ``pixels`` in [0, 1], ``labels`` and ``masks``.

    Example:
        >>> b = generate("shapes", n=4, seed=0)
        >>> bool(torch.allclose(b.images, (b.pixels - 0.5) / 0.5))
        True
    """
    scenes = sample_scenes(task, n, seed, image_size=image_size, progress=progress)
    return batch_from_scenes(scenes)


def batch_from_scenes(scenes: ToyScenes) -> ToyBatch:
    """Render scenes into a ``ToyBatch`` (e.g. after editing them to build counterfactuals).

    Args:
        scenes: output of ``sample_scenes``, possibly edited.

    Returns:
        The rendered batch.

    Example:
        >>> import dataclasses
        >>> s = sample_scenes("shapes", n=2, seed=0)
        >>> s2 = dataclasses.replace(s, shape=s.shape.clone())
        >>> s2.shape[:, 0] = (s.shape[:, 0] + 1) % 4  # change the evidence shape ...
        >>> s2 = dataclasses.replace(s2, labels=s2.shape[:, 0].clone())  # ... and its label
        >>> batch_from_scenes(s2).labels.tolist() == s2.labels.tolist()
        True
    """
    omap = object_map(scenes)
    pixels = _render(scenes, omap, noise=True)
    masks = torch.zeros_like(omap, dtype=torch.bool)
    for j in scenes.evidence.any(dim=0).nonzero().flatten().tolist():
        masks |= (omap == j) & scenes.evidence[:, j].view(-1, 1, 1)
    return ToyBatch(
        images=(pixels - 0.5) / 0.5,
        pixels=pixels,
        labels=scenes.labels.clone(),
        masks=masks,
        class_names=scenes.class_names,
    )


class ToyDataset(Dataset):
    """A fixed, pre-generated sample of a toy task as a torch ``Dataset``.

    Items are ``(image, label)`` or, with ``with_masks=True``, ``(image, label, mask)``.

    Args:
        task: ``"shapes"`` or ``"conjunction"``.
        n: number of images.
        seed: non-negative random seed.
        with_masks: also return the evidence mask.
        image_size: side of the square images.

    Example:
        >>> ds = ToyDataset("shapes", n=10, seed=0)
        >>> image, label = ds[0]
        >>> image.shape, len(ds)
        (torch.Size([3, 64, 64]), 10)
    """

    def __init__(
        self, task: str, n: int, seed: int, *, with_masks: bool = False, image_size: int = IMAGE_SIZE
    ) -> None:
        self.batch = generate(task, n, seed, image_size=image_size)
        self.with_masks = with_masks
        self.class_names = self.batch.class_names

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        b = self.batch
        if self.with_masks:
            return b.images[index], b.labels[index], b.masks[index]
        return b.images[index], b.labels[index]


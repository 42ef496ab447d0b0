"""Image pairs for data-set-scale circuit scoring: (clean, corrupted) batches loaded one chunk at a time.

A :class:`PairSet` is to :func:`~vit_patching.circuits.dataset.score_edges_dataset` what
:class:`~vit_patching.runs.dataset.ImageSet` is to the CAAP data-set runs: it knows its size and a name per pair,
loads pairs ``[s, e)`` as two normalised batches, and gives a key of exactly the inputs read (so an edited image
invalidates exactly the chunk that holds it). Nothing else is held in memory.

* :func:`zoo_pairs`: a shipped toy data set; pair ``i`` is image ``i`` (clean) and the first later image of the
  same generated stream whose label differs (corrupted), so every pair crosses classes and the pairing depends
  on nothing but ``(dataset, seed, i)``.
* :func:`folder_pairs`: two folders of image files, paired by sorted file name position.
* :func:`image_pairs`: any two :class:`~vit_patching.runs.dataset.ImageSet` of the same size.

Example:
    >>> pairs = zoo_pairs("shapes", n=8, seed=0)
    >>> len(pairs), pairs.names[0]
    (8, 'shapes-0000')
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_positive_int, check_seed
from vit_patching.model import HookedViT
from vit_patching.runs.dataset import ImageSet, folder_images
from vit_patching.runs.sharding import digest
from vit_patching.zoo.datasets import generate_range

__all__ = ["LOOKAHEAD", "LoadedPairs", "PairSet", "folder_pairs", "image_pairs", "zoo_pairs"]

#: How far :func:`zoo_pairs` looks ahead in the stream for an image of another class (a data set whose next
#: ``LOOKAHEAD`` images all share one class is refused rather than paired within a class).
LOOKAHEAD = 256


class LoadedPairs(NamedTuple):
    """Pairs ``[s, e)`` ready for the model and the key of exactly the inputs read."""

    clean: Float[Tensor, "batch channel height width"]
    corrupted: Float[Tensor, "batch channel height width"]
    key: str


@dataclass
class PairSet:
    """A sized, chunk-loadable set of (clean, corrupted) image pairs.

    Attributes:
        names: one name per pair.
        load: ``load(model, s, e) -> LoadedPairs``; only pairs ``[s, e)`` are read or generated.
        chunk_key: ``chunk_key(s, e) -> str``, the key of the inputs of pairs ``[s, e)`` as they are now.
        source: a description recorded with the results.
    """

    names: list[str]
    load: Callable[[HookedViT, int, int], LoadedPairs]
    chunk_key: Callable[[int, int], str]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def image_pairs(clean: ImageSet, corrupted: ImageSet) -> PairSet:
    """Pair image ``i`` of ``clean`` with image ``i`` of ``corrupted``.

    Raises:
        ValueError: the two sets differ in size.

    Example:
        >>> len(image_pairs(zoo_images("shapes", 4, seed=0), zoo_images("shapes", 4, seed=1)))
        4
    """
    for value, name in ((clean, "clean"), (corrupted, "corrupted")):
        if not isinstance(value, ImageSet):
            raise TypeError(f"{name}: expected an ImageSet (vit_patching.runs), got {type(value).__name__}")
    if len(clean) != len(corrupted):
        raise ValueError(f"corrupted: expected as many images as clean ({len(clean)}), got {len(corrupted)}")

    def load(model: HookedViT, s: int, e: int) -> LoadedPairs:
        c, x = clean.load(model, s, e), corrupted.load(model, s, e)
        return LoadedPairs(c.images, x.images, digest(c.key, x.key))

    return PairSet(
        names=[f"{a} | {b}" for a, b in zip(clean.names, corrupted.names)], load=load,
        chunk_key=lambda s, e: digest(clean.chunk_key(s, e), corrupted.chunk_key(s, e)),
        source={"clean": clean.source, "corrupted": corrupted.source, "n": len(clean)},
    )


def folder_pairs(clean_folder: str | os.PathLike, corrupted_folder: str | os.PathLike, n: int | None = None) -> PairSet:
    """The image files of two folders paired by position in name order (the first ``n`` of each).

    Example:
        >>> folder_pairs("clean/", "corrupted/").names[0]   # doctest: +SKIP
        'cat.png | dog.png'
    """
    return image_pairs(folder_images(clean_folder, n), folder_images(corrupted_folder, n))


def zoo_pairs(dataset: str, n: int, seed: int = 0) -> PairSet:
    """``n`` cross-class pairs of the shipped toy data set ``dataset`` (module docstring: the pairing rule).

    Raises:
        ValueError: an unknown data set, a bad ``n`` / ``seed``; when loading, an image with no image of another
            class in the next :data:`LOOKAHEAD` images.

    Example:
        >>> pairs = zoo_pairs("shapes", n=4, seed=0)
        >>> pairs.source["pairing"][:30]
        'image i (clean) with the first'
    """
    from vit_patching.zoo import available_datasets

    n = check_positive_int(n, "n")
    seed = check_seed(seed)
    if dataset not in available_datasets():
        raise ValueError(f"dataset: expected one of the zoo datasets {available_datasets()}, got {dataset!r}")

    def generated(s: int, e: int) -> tuple[Tensor, Tensor, str]:
        ahead = 8
        while True:  # render a few images past the chunk; more only when an image needs them
            batch = generate_range(dataset, s, e + ahead, seed)
            labels = batch.labels.long().cpu()
            partner = []
            for i in range(e - s):
                later = (labels[i + 1 :] != labels[i]).nonzero().flatten()
                if later.numel() == 0:
                    break
                partner.append(i + 1 + int(later[0]))
            if len(partner) == e - s:
                break
            if ahead >= LOOKAHEAD:
                raise ValueError(f"dataset: image {s + len(partner)} of {dataset!r} (seed {seed}) has no image of "
                                 f"another class among the next {LOOKAHEAD}; cannot pair it across classes")
            ahead = min(4 * ahead, LOOKAHEAD)
        images = batch.images.cpu()
        clean, corrupted = images[: e - s], images[partner]
        return clean, corrupted, digest(clean, corrupted)

    def load(model: HookedViT, s: int, e: int) -> LoadedPairs:
        clean, corrupted, key = generated(s, e)
        return LoadedPairs(clean.to(device=model.device, dtype=model.dtype),
                           corrupted.to(device=model.device, dtype=model.dtype), key)

    return PairSet(
        names=[f"{dataset}-{i:04d}" for i in range(n)], load=load, chunk_key=lambda s, e: generated(s, e)[2],
        source={"data": f"shipped dataset {dataset!r}", "n": n, "seed": seed,
                "pairing": "image i (clean) with the first later image of another class (corrupted)"},
    )

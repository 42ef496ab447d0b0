"""Image sources for dataset-scale runs: a folder of image files or a shipped toy data set, loaded per chunk.

An :class:`ImageSet` knows its size, a name per image and how to load images ``[s, e)`` as a normalised batch;
nothing else is held in memory, so a run's memory is bounded by the chunk, not by the number of images. Its
per-chunk key covers the raw file bytes (folders) or the generated tensors (shipped sets), so an edited image
invalidates exactly the chunk that holds it. :meth:`ImageSet.load` returns the key of the very bytes it decoded
(each file is read once; the key is not a re-read after the compute), so an image replaced while its chunk was
being computed is detected on the next run. Files are decoded with :func:`vit_patching.files.load_image` (EXIF
orientation applied, 16-bit images scaled), the loader of ``--image`` and of the benchmark.

Example:
    >>> images = zoo_images("shapes", n=8, seed=0)
    >>> len(images), images.names[:2]
    (8, ['shapes-0000', 'shapes-0001'])
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_positive_int
from vit_patching.files import IMAGE_EXTENSIONS, list_image_files, load_image  # IMAGE_EXTENSIONS re-exported
from vit_patching.zoo.datasets import generate_range

from .sharding import digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "LoadedChunk", "folder_images", "zoo_images"]


class LoadedChunk(NamedTuple):
    """Images ``[s, e)`` ready for the model, their labels and the key of exactly the inputs decoded."""

    images: Float[Tensor, "b c h w"]
    labels: Int[Tensor, " b"] | None
    key: str


@dataclass
class ImageSet:
    """A sized, chunk-loadable set of images.

    Attributes:
        names: one name per image (file names, or ``"<dataset>-0000"`` ...).
        load: ``load(model, s, e) -> LoadedChunk`` (images ``[e - s, C, H, W]`` normalised, labels ``[e - s]``
            or ``None``, the key of the inputs read); only images ``[s, e)`` are read or generated.
        chunk_key: ``chunk_key(s, e) -> str``, the key of the inputs of images ``[s, e)`` as they are now.
        source: a description recorded with the results.
    """

    names: list[str]
    load: Callable[["HookedViT", int, int], LoadedChunk]
    chunk_key: Callable[[int, int], str]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def zoo_images(dataset: str, n: int, seed: int = 0) -> ImageSet:
    """The first ``n`` images of the shipped toy data set ``dataset`` (``"shapes"``, ``"conjunction"``), with labels.

    Images are generated per chunk (:func:`vit_patching.zoo.datasets.generate_range`), equal to the images of
    ``load_dataset(dataset, n, seed)``.

    Example:
        >>> zoo_images("shapes", n=4).source["data"]
        "shipped dataset 'shapes'"
    """
    from vit_patching.zoo import available_datasets

    n = check_positive_int(n, "n")
    if dataset not in available_datasets():
        raise ValueError(f"dataset: expected one of the zoo datasets {available_datasets()}, got {dataset!r}")

    def generated(s: int, e: int) -> tuple[Tensor, Tensor, str]:
        batch = generate_range(dataset, s, e, seed)
        images, labels = batch.images.cpu(), batch.labels.long().cpu()
        return images, labels, digest(images, labels)

    def load(model: "HookedViT", s: int, e: int) -> LoadedChunk:
        images, labels, key = generated(s, e)
        return LoadedChunk(images.to(device=model.device, dtype=model.dtype), labels, key)

    return ImageSet(
        names=[f"{dataset}-{i:04d}" for i in range(n)], load=load, chunk_key=lambda s, e: generated(s, e)[2],
        source={"data": f"shipped dataset {dataset!r}", "n": n, "seed": seed},
    )


def folder_images(folder: str | os.PathLike, n: int | None = None) -> ImageSet:
    """Image files of ``folder`` (sorted by name; first ``n``), preprocessed with the model's eval transform.

    Raises:
        ValueError: if ``folder`` is not a folder or holds no image file; when loading, for a file that is not
            a readable image (the message names it).

    Example:
        >>> folder_images("my_images/", n=100).source["preprocessing"]
        "timm eval transform of the model's data config"
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(folder)
    files = list_image_files(path, "images", n)

    def key(s: int, data: list[bytes]) -> str:
        return digest(*[p.name for p in files[s : s + len(data)]], *data)

    def load(model: "HookedViT", s: int, e: int) -> LoadedChunk:
        data, pil = [], []
        for p in files[s:e]:
            try:
                data.append(p.read_bytes())  # read once: these bytes are decoded and hashed
                pil.append(load_image(io.BytesIO(data[-1])))
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
                raise ValueError(f"images: not a readable image file: {str(p)!r} ({err})") from err
        return LoadedChunk(model.preprocess(pil), None, key(s, data))

    return ImageSet(
        names=[p.name for p in files], load=load, chunk_key=lambda s, e: key(s, [p.read_bytes() for p in files[s:e]]),
        source={"data": f"folder {path.name!r}", "n": len(files),
                "preprocessing": "timm eval transform of the model's data config"},
    )

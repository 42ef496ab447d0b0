"""Image sources for dataset-scale runs: a folder of image files or a shipped toy data set, loaded per chunk.

An :class:`ImageSet` knows its size, a name per image and how to load images ``[s, e)`` as a normalised batch;
its per-chunk fingerprint covers the raw file bytes (folders) or the generated tensors (shipped sets), so an
edited image invalidates exactly the chunk that holds it.

Example:
    >>> images = zoo_images("shapes", n=8, seed=0)
    >>> len(images), images.names[:2]
    (8, ['shapes-0000', 'shapes-0001'])
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_positive_int
from vit_patching.files import IMAGE_EXTENSIONS, list_image_files  # IMAGE_EXTENSIONS re-exported

from .sharding import digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "folder_images", "zoo_images"]



@dataclass
class ImageSet:
    """A sized, chunk-loadable set of images.

    Attributes:
        names: one name per image (file names, or ``"<dataset>-0000"`` ...).
        load: ``load(model, s, e) -> (images [e - s, C, H, W] normalised, labels [e - s] or None)``.
        chunk_key: ``chunk_key(s, e) -> str``, a digest of the inputs of images ``[s, e)``.
        source: a description recorded with the results.
    """

    names: list[str]
    load: Callable[["HookedViT", int, int], tuple[Tensor, Tensor | None]]
    chunk_key: Callable[[int, int], str]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def zoo_images(dataset: str, n: int, seed: int = 0) -> ImageSet:
    """The first ``n`` images of the shipped toy data set ``dataset`` (``"shapes"``, ``"conjunction"``), with labels.

    Example:
        >>> zoo_images("shapes", n=4).source["data"]
        "shipped dataset 'shapes'"
    """
    from vit_patching.zoo import load_dataset

    n = check_positive_int(n, "n")
    batch = load_dataset(dataset, n=n, seed=seed)
    images, labels = batch.images.cpu(), batch.labels.long().cpu()

    def load(model: "HookedViT", s: int, e: int) -> tuple[Float[Tensor, "b c h w"], Int[Tensor, " b"]]:
        return images[s:e].to(device=model.device, dtype=model.dtype), labels[s:e]

    return ImageSet(
        names=[f"{dataset}-{i:04d}" for i in range(n)], load=load,
        chunk_key=lambda s, e: digest(images[s:e], labels[s:e]),
        source={"data": f"shipped dataset {dataset!r}", "n": n, "seed": seed},
    )


def folder_images(folder: str | os.PathLike, n: int | None = None) -> ImageSet:
    """Image files of ``folder`` (sorted by name; first ``n``), preprocessed with the model's eval transform.

    Raises:
        ValueError: if ``folder`` is not a folder or holds no image file.

    Example:
        >>> folder_images("my_images/", n=100).source["preprocessing"]
        "timm eval transform of the model's data config"
    """
    path = Path(folder)
    files = list_image_files(path, "images", n)

    def load(model: "HookedViT", s: int, e: int) -> tuple[Float[Tensor, "b c h w"], None]:
        from PIL import Image, UnidentifiedImageError

        pil = []
        for p in files[s:e]:
            try:
                with Image.open(p) as im:
                    pil.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"images: not a readable image file: {str(p)!r} ({err})") from err
        return model.preprocess(pil), None

    return ImageSet(
        names=[p.name for p in files], load=load,
        chunk_key=lambda s, e: digest(*[p.name for p in files[s:e]], *[p.read_bytes() for p in files[s:e]]),
        source={"data": f"folder {path.name!r}", "n": len(files),
                "preprocessing": "timm eval transform of the model's data config"},
    )

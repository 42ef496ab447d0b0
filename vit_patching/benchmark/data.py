"""The images of a benchmark run: the shipped toy data sets or a folder of image files (optional masks).

Example:
    >>> data = zoo_data("toy-shapes", n=4)
    >>> data.images.shape, data.masks.shape
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 64, 64]))
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_patching.checks import check_positive_int, check_seed
from vit_patching.files import IMAGE_EXTENSIONS, list_image_files, load_image, load_mask  # IMAGE_EXTENSIONS re-exported
from vit_patching.images import normalization, to_pixels
from vit_patching.zoo import get_spec, load_dataset

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["IMAGE_EXTENSIONS", "BenchmarkData", "folder_data", "zoo_data"]



@dataclass
class BenchmarkData:
    """The images of a benchmark run, with optional labels and masks, all on the CPU.

    Attributes:
        images: normalised model inputs ``[n, C, H, W]``.
        labels: ground-truth classes ``[n]`` (scored by the perturbation test) or ``None`` (predicted classes).
        masks: evidence masks ``[n, H, W]`` (localisation metrics) or ``None``.
        names: one name per image (file names, or ``"0"``, ``"1"``, ... for generated data).
        pixels: images in [0, 1] for figures, or ``None``.
        source: a description recorded in the outputs (dataset, seed, folder, preprocessing).

    Example:
        >>> len(BenchmarkData(images=torch.zeros(2, 3, 8, 8)))
        2
    """

    images: Float[Tensor, "n channel height width"]
    labels: Int[Tensor, "n"] | None = None
    masks: Bool[Tensor, "n height width"] | None = None
    names: list[str] = field(default_factory=list)
    pixels: Float[Tensor, "n channel height width"] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if not self.names:
            self.names = [str(i) for i in range(n)]
        for name, t in (("labels", self.labels), ("masks", self.masks), ("pixels", self.pixels)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name}: expected {n} entries (one per image), got shape {tuple(t.shape)}")
        if len(self.names) != n:
            raise ValueError(f"names: expected {n} names, got {len(self.names)}")

    def __len__(self) -> int:
        return self.images.shape[0]


def zoo_data(model_name: str, n: int, seed: int = 0) -> BenchmarkData:
    """The shipped toy benchmark of zoo model ``model_name``: ``n`` held-out images with labels and masks.

    Example:
        >>> zoo_data("toy-shapes", n=4).masks.shape
        torch.Size([4, 64, 64])
    """
    spec = get_spec(model_name)
    batch = load_dataset(spec.dataset, n=check_positive_int(n, "n"), seed=check_seed(seed))
    return BenchmarkData(
        images=batch.images, labels=batch.labels.long(), masks=batch.masks.bool(), pixels=batch.pixels,
        source={"data": f"zoo dataset {spec.dataset!r}", "n": n, "seed": seed, "masks": "evidence masks"},
    )


def folder_data(
    model: HookedViT,
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None = None,
    n: int | None = None,
) -> BenchmarkData:
    """Images from a folder (sorted by name), preprocessed with the model's timm eval transform; optional masks.

    Each file is opened, converted and closed before the next one (:func:`vit_patching.files.load_image`: EXIF
    orientation applied, 16-bit greyscale scaled), so any number of files needs one file handle at a time.
    Masks are matched by file stem in ``masks_dir`` (any image format; non-zero in any channel = object) and go
    through the same resize and crop with nearest-neighbour interpolation.

    Raises:
        ValueError: a folder that does not exist or holds no images, a missing mask (naming the argument).

    Example:
        >>> data = folder_data(model, "my_images/", "my_masks/", n=100)  # doctest: +SKIP
    """
    folder = Path(images_dir)
    files = list_image_files(folder, "images_dir", n)
    by_stem = {}
    if masks_dir is not None:
        by_stem = {p.stem: p for p in list_image_files(masks_dir, "masks_dir", allow_empty=True)}
        missing = [p.name for p in files if p.stem not in by_stem]
        if missing:
            raise ValueError(f"masks_dir: expected a mask for every image (same file stem), missing {missing[:5]}")
    # One image at a time: preprocess it, then let it go (a list of open PIL images holds every file open).
    images = torch.cat([model.preprocess(load_image(p)).cpu() for p in files])
    masks = None
    if masks_dir is not None:
        masks = torch.stack([_mask_tensor(model, load_mask(by_stem[p.stem])) for p in files])
    dc = model.cfg.data_config
    pixels = to_pixels(images, dc) if normalization(dc) is not None else None
    return BenchmarkData(
        images=images, masks=masks, names=[p.name for p in files], pixels=pixels,
        source={"data": f"folder {str(folder)!r}", "n": len(files), "masks": str(masks_dir) if masks_dir else "none",
                "preprocessing": "timm eval transform of the model's data config"},
    )


def _mask_tensor(model: HookedViT, mask_image: Any) -> Tensor:
    from timm.data import create_transform

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.cfg.data_config.items()}
    cfg.update(interpolation="nearest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return create_transform(**cfg, is_training=False)(mask_image.convert("RGB"))[0] > 0.5

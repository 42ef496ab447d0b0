"""Sanity baselines that ignore the model: a random map and a centred Gaussian (the "centre bias" reference).

A real method should beat both on faithfulness; on localisation the centred Gaussian measures how much a
benchmark rewards looking at the middle of the image.

Example:
    >>> from vit_patching.attribution import get_method
    >>> get_method("center", model).attribute(images).patch_map[0].argmax().item()  # 4x4 grid: a middle patch
    5
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vit_patching.attribution.base import AttributionMethod, image_seeds
from vit_patching.checks import check_positive_number, check_seed
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT

__all__ = ["CenterGaussian", "RandomMap"]


class RandomMap(AttributionMethod):
    """Uniform random patch scores in [0, 1), seeded per image (from ``seed`` and the image's bytes).

    Example:
        >>> RandomMap(model, seed=1).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "random"
    native = "patch"

    def __init__(self, model: HookedViT, *, seed: int = 0, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self.seed = check_seed(seed)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "distribution": "uniform[0, 1) per patch"}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        grid = self.model.grid_size_for(images)
        maps = [torch.rand(grid, generator=torch.Generator().manual_seed(s)) for s in image_seeds(images, self.seed)]
        return torch.stack(maps)


class CenterGaussian(AttributionMethod):
    """The same isotropic Gaussian bump for every image, centred on the patch grid (σ = ``sigma`` x grid side).

    Example:
        >>> CenterGaussian(model).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "center"
    native = "patch"

    def __init__(self, model: HookedViT, *, sigma: float = 0.25, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self.sigma = check_positive_number(sigma, "sigma")  # a fraction of the grid side

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        gh, gw = self.model.grid_size_for(images)
        r = torch.arange(gh, dtype=torch.float32) - (gh - 1) / 2
        c = torch.arange(gw, dtype=torch.float32) - (gw - 1) / 2
        d2 = (r[:, None] / (self.sigma * gh)) ** 2 + (c[None, :] / (self.sigma * gw)) ** 2
        return torch.exp(-0.5 * d2).expand(images.shape[0], gh, gw)

"""The attribution-maps result type, :class:`AttributionMaps`: what every attribution method returns
(:mod:`vit_patching.attribution`) and what CAAP's :class:`~vit_patching.patching.caap_results.Attribution`
extends. It lives here, below both packages, so that :mod:`vit_patching.patching` never imports
:mod:`vit_patching.attribution`; ``vit_patching.attribution.AttributionMaps`` is the same class.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["AttributionMaps"]


@dataclass
class AttributionMaps:
    """Attribution maps of one method for a batch of images.

    Attributes:
        patch_map: one value per patch ``[batch, grid_h, grid_w]``; higher = more evidence for ``target``.
        pixel_map: one value per pixel ``[batch, height, width]``.
        target: the class explained for each image ``[batch]``.
        method: registry name of the method.
        settings: everything needed to reproduce the maps (options, native resolution, upsampling, ...).
        seconds: wall-clock seconds spent in
            :meth:`AttributionMethod.attribute <vit_patching.attribution.base.AttributionMethod.attribute>`
            (including target resolution).

    Example:
        >>> maps = get_method("raw_attention", model).attribute(images)
        >>> len(maps), maps.method
        (2, 'raw_attention')
    """

    patch_map: Float[Tensor, "batch grid_h grid_w"]
    pixel_map: Float[Tensor, "batch height width"]
    target: Int[Tensor, "batch"]
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        b = self.patch_map.shape[0]
        if self.pixel_map.shape[0] != b or self.target.shape[0] != b:
            raise ValueError(
                f"patch_map, pixel_map, target: expected the same batch size, got {tuple(self.patch_map.shape)}, "
                f"{tuple(self.pixel_map.shape)}, {tuple(self.target.shape)}"
            )

    def __len__(self) -> int:
        return self.patch_map.shape[0]

    @property
    def seconds_per_image(self) -> float:
        """``seconds`` divided by the number of images."""
        return self.seconds / len(self)

    @classmethod
    def cat(cls, parts: Sequence["AttributionMaps"]) -> "AttributionMaps":
        """Concatenate batches of the same method (seconds add up).

        Example:
            >>> both = AttributionMaps.cat([method.attribute(x[:2]), method.attribute(x[2:])])
        """
        if not parts:
            raise ValueError("parts: expected at least one AttributionMaps, got an empty sequence")
        names = {p.method for p in parts}
        if len(names) != 1:
            raise ValueError(f"parts: expected maps of one method, got methods {sorted(names)}")
        return cls(
            patch_map=torch.cat([p.patch_map for p in parts]),
            pixel_map=torch.cat([p.pixel_map for p in parts]),
            target=torch.cat([p.target for p in parts]),
            method=parts[0].method,
            settings=dict(parts[0].settings),
            seconds=sum(p.seconds for p in parts),
        )

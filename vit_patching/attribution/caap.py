"""CAAP behind the common interface: :class:`CAAPMethod` wraps :func:`vit_patching.patching.caap.caap`.

Example:
    >>> from vit_patching.attribution import get_method
    >>> get_method("caap", model, window=(0, 2)).attribute(images).patch_map.shape
    torch.Size([2, 4, 4])
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from vit_patching.attribution.base import AttributionMethod
from vit_patching.checks import check_bool, check_choice, check_window
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT

__all__ = ["CAAPMethod", "CAAPNoising"]


class CAAPMethod(AttributionMethod):
    """CAAP (causal attribution via activation patching) as an :class:`AttributionMethod`.

    Every option is passed to :func:`vit_patching.patching.caap.caap` unchanged; ``window=None`` takes CAAP's
    :func:`~vit_patching.patching.caap.default_window` for the model's depth. The patch map is CAAP's ``map``;
    the pixel map follows this interface's ``upsample`` rule, bilinear by default
    (:data:`vit_patching.images.DEFAULT_UPSAMPLE`), which is also CAAP's own ``pixel_map`` default. Cost: about
    ``N`` patched forward passes per image, started at the window's first block. ``neutral="auto"`` picks the
    neutral per image (see :func:`~vit_patching.patching.caap.caap`).

    Args:
        model: a HookedViT with a classification head.
        window: ``(start, end)`` layer window, or ``None`` for CAAP's default.
        neutral: CAAP neutral context (default CAAP's ``DEFAULT_NEUTRAL``).
        site: patched site (default ``"resid_pre"``).
        readout: ``"logit"``, ``"prob"``, ``"delta_logit"`` or ``"delta_prob"`` (default CAAP's).
        include_prefix: also pin the prefix tokens inside the window.
        direction: ``"denoising"`` (default) or ``"noising"`` (the neutral's patch written into the source run;
            the map is the score drop). The built-in name ``"caap_noising"`` is :class:`CAAPNoising`.
        upsample: patch -> pixel rule.

    Example:
        >>> CAAPMethod(model, window=(0, 2), readout="prob").attribute(images, target=1).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "caap"
    native = "patch"
    default_direction = "denoising"

    def __init__(
        self,
        model: HookedViT,
        *,
        window: tuple[int, int] | None = None,
        neutral: str | Tensor | None = None,
        site: str = "resid_pre",
        readout: str | None = None,
        include_prefix: bool = False,
        direction: str | None = None,
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__(model, upsample=upsample)
        from vit_patching.patching import caap as caap_module

        L = model.cfg.n_layers
        self.window = caap_module.default_window(L) if window is None else check_window(window, L)
        self.neutral = caap_module.DEFAULT_NEUTRAL if neutral is None else neutral
        self.site = site
        self.readout = caap_module.DEFAULT_READOUT if readout is None else readout
        self.include_prefix = include_prefix
        self.direction = self.default_direction if direction is None else direction
        # Validate the options now (a bad option should fail at construction, not at the first batch).
        if not isinstance(self.neutral, Tensor):
            check_choice(self.neutral, caap_module.NEUTRALS, "neutral")
        check_choice(site, list(caap_module.SITES), "site")
        check_choice(self.readout, caap_module.READOUTS, "readout")
        check_bool(include_prefix, "include_prefix")
        check_choice(self.direction, caap_module.DIRECTIONS, "direction")

    def rows_per_image_for(self, images: Tensor) -> int:
        gh, gw = self.model.grid_size_for(images)
        return gh * gw

    def options(self) -> dict[str, Any]:
        neutral = f"tensor{list(self.neutral.shape)}" if isinstance(self.neutral, Tensor) else self.neutral
        return {
            "window": list(self.window), "neutral": neutral, "site": self.site, "readout": self.readout,
            "include_prefix": self.include_prefix, "direction": self.direction,
        }

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        from vit_patching.patching.caap import caap

        attr = caap(
            self.model, images, target, self.window, neutral=self.neutral, site=self.site, readout=self.readout,
            include_prefix=self.include_prefix, direction=self.direction, batch_size=batch_size,
        )
        return attr.map


class CAAPNoising(CAAPMethod):
    """CAAP with ``direction="noising"`` by default: the built-in method ``"caap_noising"``, a separate row of the
    benchmark beside ``"caap"`` (denoising). Same options as :class:`CAAPMethod`.

    Example:
        >>> CAAPNoising(model, window=(0, 2)).options()["direction"]
        'noising'
    """

    name = "caap_noising"
    default_direction = "noising"

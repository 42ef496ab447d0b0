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
from vit_patching.checks import check_bool, check_choice, check_positive_int, check_seed, check_window
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT

__all__ = ["CAAPMethod", "CAAPNoising", "CAAPShapley"]


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


class CAAPShapley(CAAPMethod):
    """Coalition CAAP (:func:`vit_patching.patching.caap_shapley.caap_shapley`): each patch's Shapley value in
    the game of pinning sets of patches, the built-in method ``"caap_shapley"``. The CAAP options of
    :class:`CAAPMethod` (``direction`` too), plus:

    Args:
        n_permutations: Sampled permutations, even (antithetic pairs); cost about ``n_permutations * N`` patched
            rows per image (``N`` players), against ``N`` for ``"caap"``.
        groups: Players: ``None`` = patches, ``k`` = k x k blocks, or a ``[grid_h, grid_w]`` label tensor.
        seed: Seed of the permutations.

    Example:
        >>> CAAPShapley(model, window=(0, 2), n_permutations=2).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "caap_shapley"

    def __init__(self, model: HookedViT, *, n_permutations: int = 8, groups: int | Tensor | None = None, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.n_permutations = check_positive_int(n_permutations, "n_permutations")
        if self.n_permutations % 2:
            raise ValueError(f"n_permutations: expected an even number (antithetic pairs), got {n_permutations}")
        if groups is not None and not isinstance(groups, Tensor):
            check_positive_int(groups, "groups")
        self.groups = groups
        self.seed = check_seed(seed)

    def rows_per_image_for(self, images: Tensor) -> int:
        gh, gw = self.model.grid_size_for(images)
        n = gh * gw if self.groups is None or isinstance(self.groups, Tensor) else (
            -(-gh // self.groups) * -(-gw // self.groups))
        return self.n_permutations * n + n

    def options(self) -> dict[str, Any]:
        groups = f"segments{list(self.groups.shape)}" if isinstance(self.groups, Tensor) else self.groups
        return {**super().options(), "n_permutations": self.n_permutations, "groups": groups, "seed": self.seed}

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        from vit_patching.patching.caap_shapley import caap_shapley

        attr = caap_shapley(
            self.model, images, target, self.window, n_permutations=self.n_permutations, groups=self.groups,
            seed=self.seed, neutral=self.neutral, site=self.site, readout=self.readout,
            include_prefix=self.include_prefix, direction=self.direction, batch_size=batch_size,
        )
        return attr.map

"""Perturbation-based attribution: patch occlusion (captum), RISE and AtMan-style attention suppression.

Occlusion and RISE replace pixels with a **neutral image from the one baseline vocabulary**
(:func:`vit_patching.images.baseline_images`, the builder CAAP's neutral context uses too; default ``"zeros"`` = 0
in normalised space, the dataset-mean colour). Occlusion with CAAP's neutral is CAAP's input-space deletion twin.

Example:
    >>> from vit_patching.attribution import get_method
    >>> get_method("occlusion", model).attribute(images).patch_map.shape
    torch.Size([2, 4, 4])
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from vit_patching.attribution.base import AttributionMethod
from vit_patching.checks import check_choice, check_fraction, check_positive_int, check_seed
from vit_patching.hook_names import get_act_name
from vit_patching.images import DEFAULT_UPSAMPLE, baseline_images, check_baseline, describe_baseline, normalization
from vit_patching.model import HookedViT

__all__ = ["AtMan", "Occlusion", "RISE", "check_neutral", "describe_neutral", "neutral_batch"]


# ----------------------------------------------------------------------------------------------- neutral image
def check_neutral(neutral: Any, name: str = "neutral", *, model: HookedViT | None = None) -> str | Tensor:
    """Validate an image neutral: a :data:`vit_patching.images.BASELINES` name or one normalised image.

    A tensor must be one image ``[C, H, W]`` or ``[1, C, H, W]``: a per-image tensor would not follow the images
    through chunking; use a name such as ``"blur"`` instead. With ``model``, ``"black"`` is refused at once when
    the model has no data config (mean/std) to define black in its input space.

    Example:
        >>> check_neutral("image_mean"), check_neutral(torch.zeros(3, 4, 4)).shape
        ('image_mean', torch.Size([3, 4, 4]))
    """
    neutral = check_baseline(neutral, name, per_image_tensor=False)
    no_config = model is not None and normalization(model.cfg.data_config) is None
    if no_config and isinstance(neutral, str) and neutral == "black":
        raise ValueError(f"{name}: 'black' needs the model's data config (mean/std), got a model without one; use 'zeros'")
    return neutral


def describe_neutral(neutral: str | Tensor) -> str:
    """A short record of the neutral for the settings (:func:`vit_patching.images.describe_baseline`)."""
    return describe_baseline(neutral)


def neutral_batch(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], neutral: str | Tensor
) -> Float[Tensor, "batch channel height width"]:
    """The neutral image for every image of the batch (:func:`vit_patching.images.baseline_images`).

    ``"black"`` reads the model's data config; ``"blur"`` uses sigma ``side / 16``, as CAAP's neutral.

    Example:
        >>> neutral_batch(model, images, "zeros").abs().sum().item()
        0.0
    """
    x0, _ = baseline_images(images, neutral, data_config=model.cfg.data_config)
    return x0.expand_as(images).contiguous()


def row_chunks(n_images: int, n_units: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Chunks of at most ``batch_size`` (image, unit) rows, image-major: ``(image_index, unit_index)`` pairs."""
    total = n_images * n_units
    for s in range(0, total, batch_size):
        flat = torch.arange(s, min(s + batch_size, total))
        yield flat // n_units, flat % n_units


def _check_score(score: Any) -> str:
    return check_choice(score, ("logit", "prob"), "score")


def _score(logits: Tensor, target: Tensor, score: str) -> Tensor:
    if score == "prob":
        logits = logits.softmax(dim=-1)
    return logits.gather(-1, target[:, None])[:, 0]


# -------------------------------------------------------------------------------------------------- occlusion
class Occlusion(AttributionMethod):
    """Patch occlusion: ``A_i = f_c(x) - f_c(x with patch i replaced by the neutral image)`` (captum ``Occlusion``).

    Windows are patch-aligned (``C x p x p``, stride ``p``), one per ViT patch, so the map is exactly one value
    per patch. Cost: ``1 + N`` forward passes per image (``N`` patches).

    Args:
        model: a HookedViT with a classification head.
        neutral: a baseline name (``"zeros"``, ``"black"``, ``"image_mean"``, ``"blur"``) or one image tensor.
        score: ``"logit"`` (default, CAAP's default readout) or ``"prob"``.
        upsample: patch -> pixel rule.

    Example:
        >>> Occlusion(model, neutral="blur").attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "occlusion"
    native = "patch"

    def __init__(
        self, model: HookedViT, *, neutral: str | Tensor = "zeros", score: str = "logit", upsample: str = DEFAULT_UPSAMPLE
    ) -> None:
        super().__init__(model, upsample=upsample)
        self.neutral = check_neutral(neutral, model=model)
        self.score = _check_score(score)
        import captum.attr  # noqa: F401  (imported here so that attribute() timings exclude it)

    def rows_per_image_for(self, images: Tensor) -> int:
        gh, gw = self.model.grid_size_for(images)
        return gh * gw

    def options(self) -> dict[str, Any]:
        return {"neutral": describe_neutral(self.neutral), "score": self.score, "window": "patch", "stride": "patch"}

    def _forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits.softmax(dim=-1) if self.score == "prob" else logits

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        ph, pw = self.model.cfg.patch_size
        gh, gw = self.model.grid_size_for(images)
        c = images.shape[1]
        with torch.no_grad():
            attr = CaptumOcclusion(self._forward).attribute(
                images, sliding_window_shapes=(c, ph, pw), strides=(c, ph, pw),
                baselines=neutral_batch(self.model, images, self.neutral), target=target,
                perturbations_per_eval=max(1, batch_size // images.shape[0]),
            )
        # Every pixel of a patch holds that patch's score drop; average to one value per patch.
        return attr[:, :, : gh * ph, : gw * pw].reshape(images.shape[0], c, gh, ph, gw, pw).mean(dim=(1, 3, 5))


# ------------------------------------------------------------------------------------------------------- RISE
class RISE(AttributionMethod):
    """RISE (Petsiuk et al., BMVC 2018): saliency = mask-weighted mean of the target probability under random masks.

    ``n_masks`` binary ``cells x cells`` grids (keep probability ``p``) are bilinearly upsampled to
    ``(cells + 1) x cell`` pixels, randomly shifted by less than one cell and cropped to the image (the paper's
    recipe). A mask ``m`` keeps the image where ``m = 1`` and shows the neutral image elsewhere:
    ``x_m = m x + (1 - m) x0``; with the default neutral ``"zeros"`` this is RISE's own masking of the normalised
    tensor. ``S = Σ_i f_c(x_{m_i}) m_i / (n_masks · p)``. The masks are drawn once per image size from ``seed``
    and shared by every image (as in the reference code), or given (``masks``). Cost: ``n_masks`` forward passes per
    image.

    Args:
        model: a HookedViT with a classification head.
        n_masks: number of masks (the paper: 4000 for ResNet-50 on ImageNet); default 2000, or the number of
            given ``masks``.
        cells: grid side ``s`` of the low-resolution masks.
        p: keep probability (with given ``masks``: the ``p`` of the normalisation ``n_masks · p``).
        seed: mask seed.
        masks: masks to use instead of drawing them, ``[n_masks, H, W]`` in [0, 1] (images must then be ``H x W``),
            e.g. to reproduce another implementation's masks.
        neutral: baseline name or one image tensor for the masked-out pixels.
        score: ``"prob"`` (RISE) or ``"logit"``.
        upsample: unused (pixel-native).

    Example:
        >>> RISE(model, n_masks=64).attribute(images).pixel_map.shape
        torch.Size([2, 32, 32])
    """

    name = "rise"
    native = "pixel"

    def __init__(
        self,
        model: HookedViT,
        *,
        n_masks: int | None = None,
        cells: int = 7,
        p: float = 0.5,
        seed: int = 0,
        masks: Float[Tensor, "n_masks height width"] | None = None,
        neutral: str | Tensor = "zeros",
        score: str = "prob",
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__(model, upsample=upsample)
        self.cells = check_positive_int(cells, "cells")
        self.p = check_fraction(p, "p", open_low=True)
        self.seed = check_seed(seed)
        self.neutral = check_neutral(neutral, model=model)
        self.score = _check_score(score)
        self._masks: dict[tuple[int, int], Tensor] = {}
        self.given_masks = masks is not None
        if masks is None:
            self.n_masks = check_positive_int(2000 if n_masks is None else n_masks, "n_masks")
            return
        if not isinstance(masks, Tensor) or not masks.is_floating_point() or masks.ndim != 3 or masks.shape[0] == 0:
            got = f"shape {tuple(masks.shape)}, dtype {masks.dtype}" if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"masks: expected a floating-point tensor [n_masks, height, width], got {got}")
        if not (torch.isfinite(masks).all() and masks.min() >= 0 and masks.max() <= 1):
            raise ValueError(f"masks: expected values in [0, 1], got min {masks.min().item()}, max {masks.max().item()}")
        if n_masks is not None and n_masks != masks.shape[0]:
            raise ValueError(f"n_masks: expected None or the number of given masks {masks.shape[0]}, got {n_masks!r}")
        self.n_masks = masks.shape[0]
        self._masks[tuple(masks.shape[1:])] = masks.detach().to(device="cpu", dtype=torch.float32).clone()

    @property
    def rows_per_image(self) -> int:  # type: ignore[override]
        return self.n_masks

    def options(self) -> dict[str, Any]:
        masks = {"masks": "given"} if self.given_masks else {"cells": self.cells, "seed": self.seed}
        return {
            "n_masks": self.n_masks, **masks, "p": self.p,
            "neutral": describe_neutral(self.neutral), "score": self.score, "masking_space": "normalised input",
        }

    def check_inputs(self, images: Tensor) -> None:
        if self.given_masks:
            (size,) = self._masks
            if tuple(images.shape[-2:]) != size:
                raise ValueError(
                    f"images: expected {size[0]}x{size[1]} images (the size of the given RISE masks), "
                    f"got {images.shape[-2]}x{images.shape[-1]}"
                )

    def masks(self, size: tuple[int, int]) -> Float[Tensor, "n_masks height width"]:
        """The method's masks for images of ``size = (H, W)`` (drawn once per size, on the CPU, from ``seed``)."""
        size = (int(size[0]), int(size[1]))
        if size not in self._masks:
            if self.given_masks:
                raise ValueError(f"size: expected the size of the given masks {next(iter(self._masks))}, got {size}")
            g = torch.Generator().manual_seed(self.seed)
            s = self.cells
            cell_h, cell_w = math.ceil(size[0] / s), math.ceil(size[1] / s)
            grid = (torch.rand(self.n_masks, 1, s, s, generator=g) < self.p).float()
            up = F.interpolate(grid, size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False)
            dy = torch.randint(0, cell_h, (self.n_masks,), generator=g)
            dx = torch.randint(0, cell_w, (self.n_masks,), generator=g)
            rows = (dy[:, None] + torch.arange(size[0]))[:, :, None]
            cols = (dx[:, None] + torch.arange(size[1]))[:, None, :]
            # clamp: bilinear weights can sum to 1 + 1 ulp, and a mask is a keep fraction in [0, 1]
            self._masks[size] = up[torch.arange(self.n_masks)[:, None, None], 0, rows, cols].clamp(0, 1)
        return self._masks[size]

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        masks = self.masks(tuple(images.shape[-2:])).to(device=images.device, dtype=images.dtype)
        x0 = neutral_batch(self.model, images, self.neutral)
        sal = torch.zeros(images.shape[0], *images.shape[-2:], dtype=images.dtype, device=images.device)
        with torch.no_grad():
            for img, mask_i in row_chunks(images.shape[0], self.n_masks, batch_size):
                img, mask_i = img.to(images.device), mask_i.to(images.device)
                m = masks[mask_i][:, None]
                x = images[img] * m + x0[img] * (1 - m)
                s = _score(self.model(x), target[img], self.score)
                sal.index_add_(0, img, s[:, None, None] * m[:, 0])
        return sal / (self.n_masks * self.p)


# ------------------------------------------------------------------------------------------------------ AtMan
class AtMan(AttributionMethod):
    """AtMan-style attention manipulation (Deiseroth et al., NeurIPS 2023), single-token suppression.

    For each patch token ``i``, its pre-softmax attention scores (key column ``i``, every query, head and layer,
    ``blocks.*.attn.hook_attn_scores``) are multiplied by ``1 - suppression``; the attribution is the rise of the
    target's cross-entropy, ``log p_c(x) - log p_c(x | i suppressed)``. Rows (image, token) are batched, each row
    scaling its own column. AtMan's optional "conceptual suppression" (also suppressing tokens whose embedding
    cosine similarity exceeds a threshold) is not implemented. Cost: ``1 + N`` forward passes per image, no
    backward pass.

    Args:
        model: a HookedViT with a classification head.
        suppression: ``f`` in ``(1 - f)`` (the paper's 0.9).
        upsample: patch -> pixel rule.

    Example:
        >>> AtMan(model).attribute(images).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "atman"
    native = "patch"

    def __init__(self, model: HookedViT, *, suppression: float = 0.9, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self.suppression = check_fraction(suppression, "suppression")

    def rows_per_image_for(self, images: Tensor) -> int:
        gh, gw = self.model.grid_size_for(images)
        return gh * gw

    def options(self) -> dict[str, Any]:
        return {
            "suppression": self.suppression, "layers": "all", "heads": "all", "site": "pre-softmax scores, key column",
            "score": "cross-entropy increase", "conceptual_suppression": False,
        }

    def suppressed_logits(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Logits with token ``tokens[r]`` (a sequence position) suppressed in row ``r`` of ``images``."""
        model = self.model
        factor = torch.ones(images.shape[0], model.layout_for(images).n_pos, dtype=images.dtype, device=images.device)
        factor[torch.arange(images.shape[0], device=images.device), tokens.to(images.device)] = 1.0 - self.suppression
        factor = factor[:, None, None, :]  # [rows, head, query, key]

        def scale(scores: Tensor, hook: Any) -> Tensor:
            return scores * factor

        names = [get_act_name("attn_scores", l) for l in range(model.cfg.n_layers)]
        return model.run_with_hooks(images, fwd_hooks=[(n, scale) for n in names])

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        layout = self.model.layout_for(images)
        n = layout.n_patches
        out = torch.empty(images.shape[0], n, dtype=images.dtype, device=images.device)
        with torch.no_grad():
            clean = self.model(images).log_softmax(dim=-1).gather(1, target[:, None])[:, 0]
            for img, patch in row_chunks(images.shape[0], n, batch_size):
                img, patch = img.to(images.device), patch.to(images.device)
                logp = self.suppressed_logits(images[img], patch + layout.n_prefix).log_softmax(dim=-1)
                out[img, patch] = clean[img] - logp.gather(1, target[img][:, None])[:, 0]
        return out.reshape(images.shape[0], *layout.grid_size)

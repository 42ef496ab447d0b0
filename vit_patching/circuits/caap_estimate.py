"""A first-order estimate of CAAP (:func:`vit_patching.patching.caap.caap`) from one neutral-run backward pass.

CAAP writes the source image's residual at patch ``i`` into a neutral context at every block of a window
``[start, end)`` and reads the target-class score. To first order (each window layer's write linearised on its
own, as attribution patching does)::

    caap_i ~ score(neutral) + sum_{l in window} (resid_l(source) - resid_l(neutral))[i] . d score / d resid_l[i]

with the gradient taken in the unpatched neutral run: all ``N`` patches from one forward of the source, one
forward and one backward of the neutral context (instead of ``N`` patched forwards). The estimate ignores that
writing layer ``l + 1`` overwrites what layer ``l``'s write did at the same token, so it is least accurate for
wide windows; ``verify_top_k`` compares the top patches with the real :func:`caap`.

**It does not track CAAP.** Median per-image Spearman rank correlation with exact :func:`caap` at the default
window, 8 held-out images per shipped model (``scripts/measure_caap_estimate.py``): toy-shapes 0.49,
toy-conjunction 0.11, toy-relation -0.12. Pinning one patch into a neutral context is far from the neutral run
where the gradient is taken, so the linear term misses most of the change. Only where one object decides the
class (toy-shapes) does it roughly find the top patch (exact CAAP's top patch in its top 5 on 7 of 8 images). It
is a cheap first look to be checked with ``verify_top_k``, not a substitute for :func:`caap`.

Neutral contexts: ``"zeros"`` (0 after normalisation, CAAP's default), ``"image_mean"`` or a normalised image
tensor; the site is ``resid_pre``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_batch_size, check_choice, check_finite, check_window, is_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching.caap import caap, default_window

from .common import Verification, forward_backward

__all__ = ["CAAPEstimate", "caap_estimate"]

ESTIMATE_NEUTRALS = ("zeros", "image_mean")
ESTIMATE_READOUTS = ("logit", "prob")


@dataclass
class CAAPEstimate:
    """First-order CAAP maps.

    Attributes:
        map: Estimated CAAP score per patch ``[batch, grid_h, grid_w]`` (neutral score + linear change).
        neutral_score: Readout of the unpatched neutral run ``[batch]``.
        target: Class per image ``[batch]``.
        window: ``(start, end)``.
        readout: ``"logit"`` or ``"prob"``.
        verification: With ``verify_top_k=k``: row ``j`` holds each image's ``j``-th largest estimated change,
            estimated and exact (real CAAP) ``[k, batch]``; ``options["verified_patches"]`` their patch indices.
        options: Settings.

    Example:
        >>> est = caap_estimate(model, images, window=(0, 2), verify_top_k=3)
        >>> est.verification.errors()
    """

    map: Float[Tensor, "batch grid_h grid_w"]
    neutral_score: Float[Tensor, " batch"]
    target: Int[Tensor, " batch"]
    window: tuple[int, int]
    readout: str
    verification: Verification | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _neutral(images: Tensor, neutral: Any) -> Tensor:
    if isinstance(neutral, Tensor):
        n = neutral[None] if neutral.ndim == 3 else neutral
        if n.ndim != 4 or n.shape[1:] != images.shape[1:] or n.shape[0] not in (1, images.shape[0]):
            raise ValueError(f"neutral: expected an image [C, H, W] or [1 | batch, C, H, W] matching images "
                             f"{tuple(images.shape)}, got shape {tuple(neutral.shape)}")
        return n.to(images).expand_as(images)
    check_choice(neutral, ESTIMATE_NEUTRALS, "neutral")
    if neutral == "zeros":
        return torch.zeros_like(images)
    return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()


def caap_estimate(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    target: int | Int[Tensor, " batch"] | None = None,
    window: tuple[int, int] | None = None,
    *,
    neutral: str | Float[Tensor, "..."] = "zeros",
    readout: str = "logit",
    verify_top_k: int = 0,
    batch_size: int = 64,
) -> CAAPEstimate:
    """First-order CAAP for every patch from one neutral-run backward (see the module docstring).

    A rough first look only: its ranking of patches does not track exact :func:`caap` (median Spearman 0.49 /
    0.11 / -0.12 on the three shipped toy models); read ``verify_top_k`` before trusting it.

    Args:
        model: A HookedViT with a classification head.
        images: Normalised source images ``[batch, C, H, W]``.
        target: Class per image (int or ``[batch]``); ``None`` = the model's prediction on ``images``.
        window: ``(start, end)``; ``None`` = CAAP's default window.
        neutral: ``"zeros"``, ``"image_mean"`` or a normalised image tensor.
        readout: ``"logit"`` or ``"prob"`` of the target class.
        verify_top_k: Re-run each image's ``k`` largest |estimated changes| with the real :func:`caap`
            (which runs every patch).
        batch_size: Batch size of the verification's CAAP run.

    Returns:
        :class:`CAAPEstimate`.

    Example:
        >>> est = caap_estimate(model, images, window=(0, 2))
        >>> est.map.shape
        torch.Size([4, 8, 8])
    """
    if not isinstance(model, HookedViT):
        raise TypeError(f"model: expected a HookedViT, got {type(model).__name__}")
    model.check_images(images)
    L = model.cfg.n_layers
    window = default_window(L) if window is None else check_window(window, L)
    check_choice(readout, ESTIMATE_READOUTS, "readout")
    if not is_int(verify_top_k) or verify_top_k < 0:
        raise ValueError(f"verify_top_k: expected a non-negative int, got {verify_top_k!r}")
    check_batch_size(batch_size)
    batch = images.shape[0]
    given = model.check_target(target, batch)
    x0 = _neutral(images, neutral)
    hooks = [get_act_name("resid_pre", l) for l in range(*window)]
    with torch.no_grad():
        src_logits, src = model.run_with_cache(images, names_filter=lambda n: n in hooks, return_cache_object=False)
    check_finite(src_logits, "source logits (the images' own run)")  # before its argmax becomes the target
    tgt = (given if given is not None else src_logits.argmax(-1).cpu()).to(images.device)

    def score(logits: Tensor, image_index: Tensor) -> Tensor:
        lg = logits.float().softmax(-1) if readout == "prob" else logits.float()
        return lg.gather(1, tgt[image_index][:, None])[:, 0]

    logits0, acts, grads = forward_backward(model, x0, hooks, score)
    change = sum(((src[h] - acts[h]) * grads[h]).sum(-1) for h in hooks)  # [batch pos]
    layout = model.layout_for(images)
    patches = torch.tensor(layout.patch_positions(), device=images.device)
    change = change[:, patches].float().cpu()
    neutral_score = score(logits0, torch.arange(batch, device=images.device)).float().cpu()
    gh, gw = layout.grid_size
    est = CAAPEstimate((neutral_score[:, None] + change).view(batch, gh, gw), neutral_score, tgt.cpu(), window,
                       readout, options={"neutral": neutral if isinstance(neutral, str) else "tensor"})
    if verify_top_k:
        k = min(verify_top_k, change.shape[1])
        top = change.abs().argsort(dim=1, descending=True, stable=True)[:, :k]  # [batch, k]
        attr = caap(model, images, tgt.cpu(), window, neutral=neutral, readout=readout, batch_size=batch_size)
        exact = attr.map.reshape(batch, -1).gather(1, top)
        estimate = est.map.reshape(batch, -1).gather(1, top)
        est.verification = Verification([(j,) for j in range(k)], [f"rank {j}" for j in range(k)],
                                        estimate.T.contiguous(), exact.T.contiguous().float(), attr.n_forwards)
        est.options["verified_patches"] = top.T.contiguous()
    return est

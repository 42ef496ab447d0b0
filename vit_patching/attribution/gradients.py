"""Gradient-based attribution: Grad-CAM for ViT tokens, Integrated Gradients and SmoothGrad (the last two via captum).

Example:
    >>> from vit_patching.attribution import get_method
    >>> get_method("integrated_gradients", model, n_steps=16).attribute(images).pixel_map.shape
    torch.Size([2, 32, 32])
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vit_patching.attribution.base import AttributionMethod, image_seeds
from vit_patching.attribution.perturbation import check_neutral, describe_neutral, neutral_batch
from vit_patching.checks import check_choice, check_positive_int, check_positive_number, check_seed
from vit_patching.hook_names import get_act_name
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT

__all__ = ["GradCAM", "IntegratedGradients", "SmoothGrad"]


class GradCAM(AttributionMethod):
    """Grad-CAM for ViT tokens (the pytorch-grad-cam ViT recipe, at a point that weight processing leaves alone).

    Target layer: the **normalised output of the last block's first LayerNorm before its affine**,
    ``blocks[-1].ln1.hook_normalized`` (``(x - mean) / sqrt(var + eps)`` of the residual stream, per token).
    pytorch-grad-cam hooks timm's ``blocks[-1].norm1`` *with* its affine; that point changes when the affine is
    folded into ``W_Q``/``W_K``/``W_V`` (``HookedViT.from_timm(..., fold_ln=True)``), and so did the map, although
    the model computes the same logits. The pre-affine output is the same tensor, with the same gradient, in a model
    and in its processed twin (``fold_ln``, ``center_writing_weights``, ``fold_value_biases``), so the map is too.

    Later sites (the block output, ``ln2``, ``attn``) carry no gradient at the patch tokens of a CLS-pooled model,
    because only the CLS token reaches the head after them. All prefix tokens (CLS, DIST, registers) are dropped
    and the patch tokens are laid on the model's grid. Channel weights ``α_k = mean over patches of ∂y_c/∂A_k``;
    ``CAM = ReLU(Σ_k α_k A_k)``. One forward + one backward pass.

    This is Grad-CAM on token features, not the "GradCAM" of Chefer et al.'s tables (Grad-CAM on the last
    attention map).

    Args:
        model: a HookedViT with a classification head.
        layer: block whose ``ln1`` normalised output is the target layer (default -1, the last).
        upsample: patch -> pixel rule.

    Example:
        >>> GradCAM(model).attribute(images, target=1).patch_map.shape
        torch.Size([2, 4, 4])
    """

    name = "gradcam"
    native = "patch"

    def __init__(self, model: HookedViT, *, layer: int = -1, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self._check_shared_ln1()
        self.layer = self._block_index(layer)

    def _check_shared_ln1(self) -> None:
        # With split q/k/v inputs ln1 normalises a [batch, pos, 3, head, d_model] stack: no one token feature map.
        if self.model.cfg.use_split_qkv_input or self.model.cfg.use_attn_in:
            raise ValueError("model: Grad-CAM needs the shared ln1 input; switch off use_split_qkv_input / use_attn_in")

    @property
    def hook_name(self) -> str:
        """The hook whose activation is the target layer, ``blocks.{layer}.ln1.hook_normalized``."""
        return get_act_name("normalized", self.layer, "ln1")

    def options(self) -> dict[str, Any]:
        return {
            "target_layer": f"{self.hook_name} (ln1 output before its affine)", "score": "logit", "relu": True,
        }

    def activations_and_grads(self, images: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Target-layer activations and the target logit's gradient there, both ``[batch, pos, d_model]``."""
        self._check_shared_ln1()  # the flags can be switched after construction
        store: list[Tensor] = []

        def keep(act: Tensor, hook: Any) -> Tensor:
            store.append(act)
            return act

        with torch.enable_grad():
            x = images.detach().requires_grad_(True)  # so activations need grad even with frozen weights
            logits = self.model.run_with_hooks(x, fwd_hooks=[(self.hook_name, keep)])
            (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store[0])
        return store[0].detach(), grad

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        acts, grads = self.activations_and_grads(images, target)
        layout = self.model.layout_for(images)
        acts, grads = acts[:, layout.n_prefix :], grads[:, layout.n_prefix :]  # drop every prefix token
        alpha = grads.mean(dim=1, keepdim=True)
        cam = (alpha * acts).sum(dim=-1).clamp(min=0)
        return cam.reshape(images.shape[0], *layout.grid_size)


class _CaptumPixelMethod(AttributionMethod):
    """Pixel-native captum methods: channel reduction of ``[batch, C, H, W]`` attributions."""

    native = "pixel"

    def __init__(self, model: HookedViT, *, reduce: str, upsample: str = DEFAULT_UPSAMPLE) -> None:
        super().__init__(model, upsample=upsample)
        self.reduce = check_choice(reduce, ("sum", "abs_sum"), "reduce")

    def _reduce(self, attributions: Tensor) -> Tensor:
        if self.reduce == "abs_sum":
            attributions = attributions.abs()
        return attributions.sum(dim=1)


class IntegratedGradients(_CaptumPixelMethod):
    """Integrated Gradients (Sundararajan et al., 2017) with captum, summed over channels (and per patch).

    ``φ = (x - x̄) ⊙ ∫ ∇f(x̄ + α(x - x̄)) dα`` of the target **logit**, with the baseline ``x̄`` from the one
    baseline vocabulary, :func:`vit_patching.images.baseline_images` (default ``"zeros"``: 0 in normalised space =
    the dataset-mean colour, also CAAP's default neutral; ``"black"`` uses the model's data config).
    With ``reduce="sum"`` the map sums to ``f(x) - f(x̄)`` up to the integration error (completeness).
    Cost: ``n_steps`` forward + backward passes per image.

    Args:
        model: a HookedViT with a classification head.
        n_steps: integration steps.
        method: captum integration rule (``"gausslegendre"``, ``"riemann_trapezoid"``, ...).
        baseline: a :data:`vit_patching.images.BASELINES` name (``"zeros"``, ``"black"``, ``"image_mean"``,
            ``"blur"``) or one normalised image tensor ``[C, H, W]`` / ``[1, C, H, W]``.
        reduce: channel reduction, ``"sum"`` (signed, keeps completeness) or ``"abs_sum"``.
        upsample: unused (pixel-native); kept for a uniform signature.

    Example:
        >>> IntegratedGradients(model, n_steps=32).attribute(images).pixel_map.shape
        torch.Size([2, 32, 32])
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: HookedViT,
        *,
        n_steps: int = 32,
        method: str = "gausslegendre",
        baseline: str | Tensor = "zeros",
        reduce: str = "sum",
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__(model, reduce=reduce, upsample=upsample)
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.method = check_choice(
            method, ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"), "method"
        )
        self.baseline = check_neutral(baseline, "baseline", model=model)
        import captum.attr  # noqa: F401  (imported here so that attribute() timings exclude it)

    @property
    def rows_per_image(self) -> int:  # type: ignore[override]
        return self.n_steps

    def options(self) -> dict[str, Any]:
        return {
            "n_steps": self.n_steps, "integration": self.method, "baseline": describe_neutral(self.baseline),
            "score": "logit", "reduce": self.reduce,
        }

    def attributions(self, images: Tensor, target: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """captum's per-channel attributions ``[batch, C, H, W]`` and its convergence delta ``[batch]``."""
        from captum.attr import IntegratedGradients as CaptumIG

        baseline = neutral_batch(self.model, images, self.baseline)
        with torch.enable_grad():
            return CaptumIG(self.model).attribute(
                images, baselines=baseline, target=target, n_steps=self.n_steps, method=self.method,
                internal_batch_size=max(batch_size, images.shape[0]), return_convergence_delta=True,
            )

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        attr, _ = self.attributions(images, target, batch_size)
        return self._reduce(attr.detach())


class SmoothGrad(_CaptumPixelMethod):
    """SmoothGrad (Smilkov et al., 2017) with captum's ``NoiseTunnel(Saliency)``: mean |gradient| over noisy copies.

    Noise ``ε ~ N(0, σ²)`` with ``σ = noise_level x`` the input range in normalised space (``1/std`` of the
    model's data config averaged over channels, i.e. the width of [0, 1] pixels after normalisation; 1 without a
    data config). Each image draws its noise from a seed derived from ``seed`` and the image itself, so maps do
    not depend on batching or sharding. Gradients of the target logit; channels reduced by ``reduce`` after
    captum's absolute value. Cost: ``n_samples`` forward + backward passes per image.

    Args:
        model: a HookedViT with a classification head.
        n_samples: noisy copies per image.
        noise_level: σ as a fraction of the input range (0.15 in the paper's range 10-20 %).
        seed: base random seed.
        reduce: ``"sum"`` of the absolute gradients over channels (``"abs_sum"`` is the same here).
        upsample: unused (pixel-native).

    Example:
        >>> SmoothGrad(model, n_samples=8).attribute(images).pixel_map.shape
        torch.Size([2, 32, 32])
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: HookedViT,
        *,
        n_samples: int = 32,
        noise_level: float = 0.15,
        seed: int = 0,
        reduce: str = "sum",
        upsample: str = DEFAULT_UPSAMPLE,
    ) -> None:
        super().__init__(model, reduce=reduce, upsample=upsample)
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.noise_level = check_positive_number(noise_level, "noise_level")
        self.seed = check_seed(seed)
        import captum.attr  # noqa: F401  (imported here so that attribute() timings exclude it)

    @property
    def rows_per_image(self) -> int:  # type: ignore[override]
        return self.n_samples

    @property
    def sigma(self) -> float:
        """Noise standard deviation in normalised input space."""
        std = (self.model.cfg.data_config or {}).get("std")
        span = sum(1.0 / s for s in std) / len(std) if std else 1.0
        return self.noise_level * span

    def options(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples, "noise_level": self.noise_level, "sigma": self.sigma, "seed": self.seed,
            "score": "logit", "gradient": "abs", "reduce": self.reduce,
        }

    def _attribute(self, images: Tensor, target: Tensor, batch_size: int) -> Tensor:
        from captum.attr import NoiseTunnel, Saliency

        tunnel = NoiseTunnel(Saliency(self.model))
        devices = [images.device] if images.device.type == "cuda" else []
        out = []
        for img, t, seed in zip(images, target, image_seeds(images, self.seed)):
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.manual_seed(seed)
                attr = tunnel.attribute(
                    img[None], nt_type="smoothgrad", nt_samples=self.n_samples,
                    nt_samples_batch_size=min(batch_size, self.n_samples), stdevs=self.sigma, target=t[None], abs=True,
                )
            out.append(self._reduce(attr.detach()))
        return torch.cat(out)

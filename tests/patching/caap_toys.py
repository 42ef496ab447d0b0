"""Tiny random ViTs and an independent, deliberately naive CAAP for the CAAP / window tests."""
from __future__ import annotations

import timm
import torch

from vit_patching.model import HookedViT

SITE_SUFFIX = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}


def tiny_model(seed: int = 0, **kwargs) -> HookedViT:
    """A random timm ViT (img 32, patch 8 -> 4x4 grid, 4 layers, width 32) with non-trivial weights."""
    kw = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2, num_classes=5)
    kw.update(kwargs)
    torch.manual_seed(seed)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # biases/prefix tokens/norms away from their defaults, so mistakes show
        for name, p in m.named_parameters():
            if p.ndim >= 2 and not name.endswith(("token", "pos_embed")):
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith("norm.weight") else 0.0))
    return HookedViT.from_timm(m)


def tiny_images(batch: int = 2, seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def window_images_and_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Three tiny images with one rectangular evidence mask each (the window-selection tests' data)."""
    images = tiny_images(3, seed=7)
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 0:8, 8:16] = True
    masks[1, 20:30, 4:12] = True
    masks[2, 10:14, 22:30] = True
    return images, masks


def readout(logits: torch.Tensor, target: int, kind: str, neutral_logits: torch.Tensor) -> float:
    def score(lg: torch.Tensor) -> float:
        lg = lg.double()
        return float(lg.softmax(-1)[target] if kind.endswith("prob") else lg[target])

    return score(logits) - (score(neutral_logits) if kind.startswith("delta_") else 0.0)


@torch.no_grad()
def naive_caap(
    model: HookedViT,
    images: torch.Tensor,
    neutral_images: torch.Tensor,
    window: tuple[int, int],
    *,
    site: str = "resid_pre",
    kind: str = "logit",
    include_prefix: bool = False,
    target: torch.Tensor | None = None,
    neutral_resid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One full hooked forward per (image, patch); ``neutral_images`` is ``[batch, C, H, W]``.

    With ``neutral_resid`` ``[1, pos, d_model]`` (mean activations) each run starts at block ``window[0]`` from it.
    Returns maps ``[batch, grid_h, grid_w]``.
    """
    layout = model.layout_for(images)
    src_logits, src_cache = model.run_with_cache(images, return_cache_object=False)
    target = src_logits.argmax(-1) if target is None else target
    hooks = [f"blocks.{l}.{SITE_SUFFIX[site]}" for l in range(*window)]
    prefix = list(range(layout.n_prefix)) if include_prefix else []
    out = torch.empty(images.shape[0], layout.n_patches)
    for b in range(images.shape[0]):
        if neutral_resid is None:
            start_input, start_at = neutral_images[b : b + 1], None
        else:
            start_input, start_at = neutral_resid, window[0]
        neutral_logits = model(start_input, start_at_layer=start_at) if start_at is not None else model(start_input)
        for k, pos in enumerate(layout.patch_positions()):
            positions = prefix + [pos]

            def write(act, hook, b=b, positions=positions):
                act = act.clone()
                act[0, positions] = src_cache[hook.name][b, positions]
                return act

            kwargs = {} if start_at is None else {"start_at_layer": start_at}
            logits = model.run_with_hooks(start_input, fwd_hooks=[(h, write) for h in hooks], **kwargs)
            out[b, k] = readout(logits[0], int(target[b]), kind, neutral_logits[0])
    return out.view(images.shape[0], *layout.grid_size)

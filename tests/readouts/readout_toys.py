"""Tiny headless and projection-head HookedViTs with every kind of readout, and independent reference scores
(computed from timm's own forward, never through vit_patching's readout code)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.model import HookedViT  # noqa: E402
from vit_patching.readouts import EmbeddingSimilarity, LinearProbe, ZeroShotHead  # noqa: E402

D_EMBED = 16  # width of the projection head's image embedding
READOUTS = ["zero_shot", "siglip", "probe_cls", "probe_mean", "probe_cls_mean", "similarity", "module"]


def pair(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return images(batch, seed=1), images(batch, seed=2)


def headless(depth: int = 3, seed: int = 0, **kwargs) -> tuple[nn.Module, HookedViT]:
    """(timm model, HookedViT) without a head: the output is the pooled, normed CLS (DINOv2-style)."""
    return make_pair(depth=depth, seed=seed, num_classes=0, **kwargs)


def projection(depth: int = 3, seed: int = 0, **kwargs) -> tuple[nn.Module, HookedViT]:
    """(timm model, HookedViT) whose head is a bias-free projection into a D_EMBED space (CLIP's ``proj``)."""
    tm, _ = make_pair(depth=depth, seed=seed, num_classes=D_EMBED, **kwargs)
    with torch.no_grad():
        tm.head.bias.zero_()
    model = HookedViT.from_timm(tm)
    model.cfg.head_kind = "projection"  # what the open_clip loader sets for CLIP's image projection
    return tm, model


def tokens(tm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's normed token stream (after the final norm)."""
    with torch.no_grad():
        return tm.forward_features(x)


def build(kind: str, tm: nn.Module, model: HookedViT, fit_images: torch.Tensor):
    """(readout, reference score function x -> [batch, n_classes] from timm alone)."""
    g = torch.Generator().manual_seed(5)
    n_prefix = model.cfg.n_prefix

    def embed(x):  # timm's output: the pooled, normed features (headless) or the projection (projection head)
        with torch.no_grad():
            return tm(x)

    width = model.feature_width()
    if kind in ("zero_shot", "siglip"):
        text = torch.randn(3, width, generator=g)
        scale, bias = (14.0, None) if kind == "zero_shot" else (10.0, -3.0)
        readout = ZeroShotHead(text, scale, bias, class_names=["a red circle", "a green square", "a blue cross"])
        return readout, lambda x: scale * F.normalize(embed(x), dim=-1) @ F.normalize(text, dim=-1).T + (bias or 0.0)
    if kind == "similarity":
        refs = fit_images[:2]
        readout = EmbeddingSimilarity(refs, model=model)
        return readout, lambda x: F.normalize(embed(x), dim=-1) @ F.normalize(embed(refs), dim=-1).T
    if kind == "module":
        module = nn.Sequential(nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, 3))
        torch.manual_seed(0)
        for p in module.parameters():
            nn.init.normal_(p, std=0.5)
        return module, lambda x: module(embed(x)).detach()
    features = {"probe_cls": "cls", "probe_mean": "mean", "probe_cls_mean": "cls+mean"}[kind]
    labels = torch.arange(fit_images.shape[0]) % 3
    readout = LinearProbe.fit(model, fit_images, labels, features=features, weight_decay=1e-2)

    def ref(x):
        t = tokens(tm, x)
        parts = {"cls": [t[:, 0]], "mean": [t[:, n_prefix:].mean(1)], "cls+mean": [t[:, 0], t[:, n_prefix:].mean(1)]}
        return F.linear(torch.cat(parts[features], -1), readout.weight, readout.bias).detach()

    return readout, ref

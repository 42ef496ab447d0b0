"""batch_size='auto': the activation estimate by an independent count, the budget arithmetic for ViT-L/16."""
from __future__ import annotations

import pytest
import torch

from vit_patching.model import ViTConfig
from vit_patching.patching.memory import (
    SAFETY,
    activation_bytes_per_row,
    auto_batch_size,
    batch_size_for_budget,
    free_memory,
    resolve_batch_size,
)
from vit_patching.zoo import load_dataset, load_model

GIB = 2**30


def vit_config(layers: int, d: int, heads: int) -> ViTConfig:
    return ViTConfig(n_layers=layers, d_model=d, n_heads=heads, d_head=d // heads, d_mlp=4 * d, n_classes=1000,
                     img_size=(224, 224), patch_size=(16, 16))


def test_estimate_counts_the_block_peak_tensors():
    cfg = vit_config(24, 1024, 16)  # ViT-L/16 at 224: 196 patches + CLS
    n = 197
    residual_like = 11 * n * 1024      # resid in/out, ln, qkv + per-head copies, z, attn out
    mlp = 2 * n * 4096                 # hidden before and after GELU
    scores = 2 * 16 * n * n            # scores + softmax when attention is not fused
    assert activation_bytes_per_row(cfg) == int(SAFETY * (residual_like + mlp + scores) * 4)
    assert activation_bytes_per_row(cfg, torch.bfloat16) == int(SAFETY * (residual_like + mlp + scores) * 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vit_large_on_a_24_gib_machine_fits(dtype):
    cfg = vit_config(24, 1024, 16)
    weights = 304_326_632 * torch.empty((), dtype=dtype).element_size()  # ViT-L/16 parameter count
    for budget in (24 * GIB // 2, 24 * GIB - weights):  # default fraction of a free 24 GiB; all of it
        rows = batch_size_for_budget(cfg, budget, dtype, max_rows=10**6)
        assert rows >= 64  # the fixed default still fits
        # the chosen rows' activations (estimate, itself >= 3x the measured CPU peak) + weights fit in 24 GiB
        assert weights + rows * activation_bytes_per_row(cfg, dtype) <= 24 * GIB
        per_row = activation_bytes_per_row(cfg, dtype)
        assert rows * per_row <= budget < (rows + 1) * per_row  # the largest count that fits the budget
    assert batch_size_for_budget(cfg, 24 * GIB // 2) == 423  # fp32, the number reported for ViT-L


def test_auto_batch_size_on_a_model_and_errors():
    model = load_model("toy-shapes")
    per_row = activation_bytes_per_row(model.cfg, model.dtype)
    assert auto_batch_size(model, max_memory=10 * per_row + 1) == 10
    assert auto_batch_size(model, max_memory=1) == 1
    assert auto_batch_size(model, max_memory=10**15, max_rows=300) == 300
    assert 1 <= auto_batch_size(model) <= 4096 and free_memory("cpu") > 0
    assert resolve_batch_size(7, model) == 7
    assert resolve_batch_size("auto", model, max_memory=3 * per_row) == 3
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        resolve_batch_size("big", model)
    with pytest.raises(ValueError, match="max_memory: expected a positive int"):
        auto_batch_size(model, max_memory=0)
    with pytest.raises(ValueError, match="fraction"):
        auto_batch_size(model, fraction=1.5)


def test_caap_and_engine_accept_auto():
    from vit_patching.patching.caap import caap

    model = load_model("toy-shapes")
    x = load_dataset("shapes", n=1, seed=0).images
    fixed = caap(model, x, window=(0, 1), batch_size=64)
    auto = caap(model, x, window=(0, 1), batch_size="auto")
    assert isinstance(auto.options["batch_size"], int) and auto.options["batch_size"] >= 1  # resolved, recorded
    torch.testing.assert_close(auto.map, fixed.map, rtol=0, atol=1e-5)  # same values, other row chunking

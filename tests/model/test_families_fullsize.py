"""The new families at their real size: full-width, full-depth random timm models convert exactly.

The tiny-model tests in ``test_families.py`` cover every feature; these catch what only shows at full size
(real head counts and widths, 196/256 patches, RoPE tables for a real grid, 4 DINOv3 registers, the SigLIP
attention pool at width 768). One image each; weights randomised by ``randomize_`` so that norm weights,
biases and LayerScale gammas are not at their defaults. Observed relative errors are ~1e-6 (float32).
"""
import pytest
import timm
import torch

from model_helpers import images, randomize_, timm_block_outputs
from vit_patching.model import HookedViT

# max |HookedViT - timm| / max |timm|, for the logits and for every block output; observed <= 7e-7.
REL = 1e-5

FULL = {
    # name -> (timm name, overrides, expected config)
    "siglip_base": ("vit_base_patch16_siglip_224", {}, dict(global_pool="map", n_prefix=0, n_layers=12, d_model=768)),
    "dinov3_small": (
        "vit_small_patch16_dinov3", {}, dict(rope="axial", rope_half=True, n_registers=4, n_layers=12, d_model=384),
    ),
    "eva02_small": (  # RoPE + SwiGLU (the sub-LN is only in EVA02-B/L)
        "eva02_small_patch14_224", {}, dict(rope="axial", gated_mlp=True, mlp_norm=False, n_layers=12, d_model=384),
    ),
}


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FULL))
def test_full_size_family_matches_timm(family):
    name, overrides, expected = FULL[family]
    m = randomize_(timm.create_model(name, pretrained=False, num_classes=10, **overrides)).eval()
    model = HookedViT.from_timm(m)
    for key, value in expected.items():
        assert getattr(model.cfg, key) == value, key
    x = images(1, *m.patch_embed.img_size)
    ref_logits, ref_blocks = timm_block_outputs(m, x)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert logits.shape == ref_logits.shape == (1, 10)
    assert _rel(logits, ref_logits) <= REL
    assert len(ref_blocks) == model.cfg.n_layers
    for i, ref in enumerate(ref_blocks):
        assert _rel(cache[f"blocks.{i}.hook_resid_post"], ref) <= REL, f"block {i}"

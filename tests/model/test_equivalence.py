"""HookedViT reproduces timm: logits and every block output, one tiny random model per feature."""
from functools import partial

import pytest
import timm
import torch
from torch import nn

from model_helpers import images, make_pair, make_timm, randomize_, timm_block_outputs
from vit_patching.model import HookedViT

ATOL = 1e-5

# name -> (timm model name, timm kwargs, what the config must say about it)
FEATURES = {
    "class_token": ("vit_tiny_patch16_224", {}, dict(has_cls=True, n_prefix=1, global_pool="token")),
    "no_class_token": (
        "vit_tiny_patch16_224", dict(class_token=False, global_pool="avg"), dict(has_cls=False, n_prefix=0),
    ),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=3), dict(n_registers=3, n_prefix=4)),
    "registers_no_cls": (
        "vit_tiny_patch16_224", dict(reg_tokens=2, class_token=False, global_pool="avg"), dict(n_prefix=2),
    ),
    "distilled": ("deit_tiny_distilled_patch16_224", {}, dict(has_dist=True, n_prefix=2)),
    "distilled_features": ("deit_tiny_distilled_patch16_224", dict(num_classes=0), dict(has_dist=True, n_classes=0)),
    "no_embed_class": (
        "vit_tiny_patch16_224", dict(no_embed_class=True, reg_tokens=2), dict(no_embed_class=True, n_pos_embed=16),
    ),
    "deit3_like": (
        "vit_tiny_patch16_224", dict(no_embed_class=True, init_values=1e-6), dict(no_embed_class=True),
    ),
    "pre_norm_clip": (
        "vit_tiny_patch16_224",
        dict(pre_norm=True, act_layer="quick_gelu", norm_layer=partial(nn.LayerNorm, eps=1e-5)),
        dict(pre_norm=True, patch_bias=False, eps=1e-5, act_fn="quick_gelu"),
    ),
    "no_qkv_bias": ("vit_tiny_patch16_224", dict(qkv_bias=False), {}),
    "no_proj_bias": ("vit_tiny_patch16_224", dict(proj_bias=False, qkv_bias=False), {}),
    "mlp_ratio_2_5": ("vit_tiny_patch16_224", dict(mlp_ratio=2.5), dict(d_mlp=80)),
    "one_channel": ("vit_tiny_patch16_224", dict(in_chans=1), dict(in_chans=1)),
    "no_pos_embed_dynamic_gap": (
        "vit_tiny_patch16_224",
        dict(class_token=False, global_pool="avg", pos_embed="none", dynamic_img_size=True),
        dict(has_pos_embed=False, n_prefix=0),
    ),
    "qk_norm": ("vit_tiny_patch16_224", dict(qk_norm=True), dict(qk_norm=True)),
    "layer_scale": ("vit_tiny_patch16_224", dict(init_values=1e-5), {}),
    "pool_avg": ("vit_tiny_patch16_224", dict(global_pool="avg"), dict(global_pool="avg", fc_norm=True)),
    "pool_max": ("vit_tiny_patch16_224", dict(global_pool="max"), dict(global_pool="max", fc_norm=True)),
    "pool_avgmax": ("vit_tiny_patch16_224", dict(global_pool="avgmax"), dict(global_pool="avgmax")),
    "pool_none": ("vit_tiny_patch16_224", dict(global_pool=""), dict(global_pool="")),
    "pool_avg_token_norm": (
        "vit_tiny_patch16_224", dict(global_pool="avg", fc_norm=False), dict(final_norm=True, fc_norm=False),
    ),
    "pool_max_token_norm": ("vit_tiny_patch16_224", dict(global_pool="max", fc_norm=False), dict(final_norm=True)),
    "pool_avg_include_prefix": (
        "vit_tiny_patch16_224", dict(global_pool="avg", pool_include_prefix=True), dict(pool_include_prefix=True),
    ),
    "fc_norm_token": ("vit_tiny_patch16_224", dict(fc_norm=True), dict(final_norm=False, fc_norm=True)),
    "gap_medium_like": (
        "vit_tiny_patch16_224",
        dict(class_token=False, global_pool="avg", qkv_bias=False, init_values=1e-6, fc_norm=True),
        dict(n_prefix=0, fc_norm=True),
    ),
    "no_final_norm": ("vit_tiny_patch16_224", dict(final_norm=False), dict(final_norm=False, fc_norm=False)),
    "no_pos_embed": ("vit_tiny_patch16_224", dict(pos_embed="none"), dict(has_pos_embed=False)),
    "num_classes_0": ("vit_tiny_patch16_224", dict(num_classes=0), dict(n_classes=0)),
    "img48_patch16": ("vit_tiny_patch16_224", dict(img_size=48, patch_size=16, depth=3), dict(grid_size=(3, 3))),
    "rect_img_patch": (
        "vit_tiny_patch16_224", dict(img_size=(32, 48), patch_size=(8, 4), depth=4), dict(grid_size=(4, 12)),
    ),
    "gelu_tanh": ("vit_tiny_patch16_224", dict(act_layer="gelu_tanh"), dict(act_fn="gelu_tanh")),
    "quick_gelu": ("vit_tiny_patch16_224", dict(act_layer="quick_gelu"), dict(act_fn="quick_gelu")),
    "dynamic_img_size": ("vit_tiny_patch16_224", dict(dynamic_img_size=True), dict(dynamic_img_size=True)),
}


def _input_size(kwargs):
    size = kwargs.get("img_size", 32)
    return (size, size) if isinstance(size, int) else size


@pytest.mark.parametrize("feature", list(FEATURES))
def test_feature_matches_timm(feature):
    name, kwargs, expected_cfg = FEATURES[feature]
    m, model = make_pair(name, **kwargs)
    for key, value in expected_cfg.items():
        assert getattr(model.cfg, key) == value, key
    x = images(2, *_input_size(kwargs))[:, : kwargs.get("in_chans", 3)]
    ref_logits, ref_blocks = timm_block_outputs(m, x)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
        fast = model(x)
    # The unhooked forward runs timm's own parameters and kernels (LayerScale gamma included): bit for bit.
    assert torch.equal(fast, ref_logits), (fast - ref_logits).abs().max().item()
    assert len(ref_blocks) == model.cfg.n_layers
    assert logits.shape == ref_logits.shape
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    for i, ref in enumerate(ref_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref, atol=ATOL, rtol=0, msg=f"block {i}")


@pytest.mark.parametrize("size", [(48, 64), (32, 32), (64, 24)])
@pytest.mark.parametrize("extra", [{}, dict(no_embed_class=True, reg_tokens=2)], ids=["cls", "no_embed_class_reg"])
def test_dynamic_img_size_matches_timm(size, extra):
    m, model = make_pair(dynamic_img_size=True, **extra)
    x = images(2, *size)
    ref_logits, ref_blocks = timm_block_outputs(m, x)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        assert torch.equal(model(x), ref_logits)  # unhooked: bit for bit
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    for i, ref in enumerate(ref_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref, atol=ATOL, rtol=0)
    grid = (size[0] // 8, size[1] // 8)
    assert model.grid_size_for(x) == grid
    assert cache["blocks.0.hook_resid_pre"].shape[1] == model.cfg.n_prefix + grid[0] * grid[1]


def test_prefix_tokens_and_patch_embed_match_timm_forward_features():
    """The embedding (prefix rows + pos) equals the input to timm's first block, also with registers."""
    m, model = make_pair(reg_tokens=2, no_embed_class=True)
    x = images(1)
    seen = []
    h = m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        m(x)
        _, cache = model.run_with_cache(x, names_filter="blocks.0.hook_resid_pre")
    h.remove()
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], seen[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [dict(init_values=1e-5), dict(init_values=1e-5, no_embed_class=True, reg_tokens=4, global_pool="avg")],
    ids=["deit3_like", "dinov2_like"],
)
def test_layer_scale_unhooked_forward_is_bit_identical_to_timm(kwargs):
    """Folding gamma into W_O/W_out used to change the rounding (max diff 1.1e-6): gamma now stays separate on the
    forward, while W_O/b_O/W_out/b_out still carry it."""
    m, model = make_pair(depth=3, **kwargs)
    assert model.cfg.layer_scale and model.blocks[0].attn.ls_gamma is not None
    x = images(3)
    with torch.no_grad():
        assert (model(x) - m(x)).abs().max().item() == 0.0
    sd = m.state_dict()
    g1 = sd["blocks.2.ls1.gamma"]
    assert torch.equal(model.blocks[2].attn.b_O, sd["blocks.2.attn.proj.bias"] * g1)
    assert torch.equal(model.blocks[2].attn.W_O.flatten(0, 1), (sd["blocks.2.attn.proj.weight"] * g1[:, None]).T)
    # Folding gamma in (for writable views) keeps the model equal to timm within rounding.
    model.process_weights_(fold_layer_scale=True)
    assert not model.cfg.layer_scale and model.blocks[2].mlp.ls_gamma is None
    assert "blocks.0.attn.ls_gamma" not in model.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), atol=ATOL, rtol=0)


def test_eval_mode_and_dropout_free_even_if_timm_is_training():
    """A timm model with dropout converts; the HookedViT is deterministic and equals timm's eval forward."""
    m = make_timm(drop_rate=0.3, attn_drop_rate=0.3, proj_drop_rate=0.3)
    m.train()
    model = HookedViT.from_timm(m)
    assert m.training  # untouched
    assert not model.training
    x = images(2)
    with torch.no_grad():
        out1, out2 = model(x), model(x)
        m.eval()
        ref = m(x)
    torch.testing.assert_close(out1, out2, atol=0, rtol=0)
    torch.testing.assert_close(out1, ref, atol=ATOL, rtol=0)


def test_timm_model_by_name():
    model = HookedViT.from_timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.d_head) == (1, 32, 2, 16)
    assert model.cfg.n_classes == 1000
    with pytest.raises(ValueError, match="pretrained"):
        HookedViT.from_timm(make_timm(depth=1), img_size=64)
    with pytest.raises(TypeError, match="model"):  # beartype or the explicit check
        HookedViT.from_timm(42)


@pytest.mark.slow
def test_vit_base_full_size_matches_timm():
    m = randomize_(timm.create_model("vit_base_patch16_224", pretrained=False), seed=3).eval()
    model = HookedViT.from_timm(m)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_heads, model.cfg.n_pos) == (12, 768, 12, 197)
    x = images(1, 224, 224)
    with torch.no_grad():
        ref = m(x)
        out = model(x)
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-4, rel


@pytest.mark.parametrize(
    "kwargs", [{}, dict(global_pool="avg", init_values=1e-5, qk_norm=True)], ids=["vit", "gap_ls_qknorm"]
)
def test_input_gradients_match_timm(kwargs):
    """Gradient-based attribution needs the backward pass to match too, on the fused and the explicit path."""
    m, model = make_pair(**kwargs)
    x = images(2)
    grads = []
    for run in (m, model, lambda t: model.run_with_hooks(t, fwd_hooks=[(lambda n: "hook_pattern" in n, lambda a, hook: a)])):
        xi = x.clone().requires_grad_(True)
        run(xi)[:, 3].sum().backward()
        grads.append(xi.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[2], grads[0], atol=1e-5, rtol=1e-4)

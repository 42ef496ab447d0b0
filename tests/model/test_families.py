"""ViT families beyond the plain pre-LN ViT: each converts exactly, each new hook takes effect, fused == explicit.

One tiny random model per feature (norm weights, biases and gammas randomised by ``randomize_``); logits and
every block output must equal timm's within 1e-5.
"""
import pytest
import timm
import torch
from timm.layers import GluMlp, SwiGLU, SwiGLUPacked

from model_helpers import images, make_pair, make_timm, randomize_, timm_block_outputs
from vit_patching.model import HookedViT, UnsupportedModelError
from vit_patching.model.logit_attribution import head_bias, head_contributions

ATOL = 1e-5
VIT = "vit_tiny_patch16_224"

# name -> (timm model name, timm kwargs, expected config, hook points the feature adds)
FAMILIES = {
    "rmsnorm": (VIT, dict(norm_layer="rmsnorm"), dict(norm_kind="RMS", normalization_type="RMS"), []),
    "rmsnorm_qk_norm_pre_norm": (
        VIT, dict(norm_layer="rmsnorm", qk_norm=True, pre_norm=True, global_pool="avg"), dict(norm_kind="RMS"),
        ["blocks.0.attn.q_norm.hook_scale", "ln_pre.hook_normalized", "fc_norm.hook_normalized"],
    ),
    "swiglu": (
        VIT, dict(mlp_layer=SwiGLU, act_layer="silu"), dict(gated_mlp=True, act_fn="silu", d_mlp=128),
        ["blocks.0.mlp.hook_pre", "blocks.1.mlp.hook_pre_linear", "blocks.1.mlp.hook_post"],
    ),
    "swiglu_packed": (
        VIT, dict(mlp_layer=SwiGLUPacked, act_layer="silu"), dict(gated_mlp=True, d_mlp=64),
        ["blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear"],
    ),
    "glu_sigmoid_gate_last": (
        VIT, dict(mlp_layer=GluMlp, act_layer="sigmoid"), dict(gated_mlp=True, act_fn="sigmoid"),
        ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_pre_linear"],
    ),
    "scale_mlp_norm": (
        VIT, dict(scale_mlp_norm=True), dict(mlp_norm=True),
        ["blocks.0.mlp.hook_mid", "blocks.0.mlp.ln.hook_scale", "blocks.0.mlp.hook_post"],
    ),
    "swiglu_scale_mlp_norm_rms": (
        VIT, dict(mlp_layer=SwiGLU, act_layer="silu", scale_mlp_norm=True, norm_layer="rmsnorm"),
        dict(gated_mlp=True, mlp_norm=True, norm_kind="RMS"),
        ["blocks.1.mlp.hook_mid", "blocks.1.mlp.ln.hook_normalized"],
    ),
    "scale_attn_norm": (
        VIT, dict(scale_attn_norm=True), dict(attn_norm=True),
        ["blocks.0.attn.hook_z_pre_norm", "blocks.0.attn.ln.hook_scale", "blocks.1.attn.ln.hook_normalized"],
    ),
    "beit3": ("beit3_base_patch16_224", dict(embed_dim=32, num_heads=2), dict(attn_norm=True, mlp_norm=True), []),
    "embed_norm": (
        VIT, dict(embed_norm_layer="layernorm"), dict(embed_norm=True), ["embed.ln.hook_scale", "embed.ln.hook_normalized"],
    ),
    "map_pool": (
        VIT, dict(global_pool="map"), dict(global_pool="map", pool_n_heads=2, pool_d_mlp=128),
        [f"attn_pool.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z", "attn_out", "mlp_out")]
        + ["attn_pool.ln.hook_scale", "attn_pool.mlp.hook_pre", "attn_pool.mlp.hook_post"],
    ),
    "map_pool_no_cls_registers": (
        VIT, dict(global_pool="map", class_token=False, reg_tokens=2), dict(global_pool="map", n_prefix=2),
        ["attn_pool.hook_pattern"],
    ),
    "map_pool_include_prefix": (
        VIT, dict(global_pool="map", pool_include_prefix=True), dict(pool_include_prefix=True), ["attn_pool.hook_k"],
    ),
    "parallel_scaling_block": (
        VIT, dict(block_fn="PARALLEL", qkv_bias=False, qk_norm=True, init_values=1e-5),
        dict(parallel_attn_mlp=True, qk_norm=True), ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"],
    ),
    "parallel_scaling_block_qkv_bias": (VIT, dict(block_fn="PARALLEL"), dict(parallel_attn_mlp=True), []),
    # Whole timm architectures, built tiny.
    "aimv2": (
        "aimv2_large_patch14_224", dict(img_size=28, patch_size=7, embed_dim=32, num_heads=2),
        dict(norm_kind="RMS", gated_mlp=True, embed_norm=True, global_pool="avg"), [],
    ),
    "siglip": ("vit_base_patch16_siglip_224", dict(embed_dim=32, num_heads=2), dict(global_pool="map"), []),
    "dinov2_giant_swiglu": (
        "vit_giant_patch14_dinov2", dict(img_size=28, patch_size=7, embed_dim=32, num_heads=2),
        dict(gated_mlp=True), [],
    ),
}


def _pair(name):
    from timm.models.vision_transformer import ParallelScalingBlock

    timm_name, kwargs, _, _ = FAMILIES[name]
    if kwargs.get("block_fn") == "PARALLEL":
        kwargs = dict(kwargs, block_fn=ParallelScalingBlock)
    return make_pair(timm_name, **kwargs)


def _size(m):
    return tuple(m.patch_embed.img_size)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_timm(family):
    _, _, expected, _ = FAMILIES[family]
    m, model = _pair(family)
    for key, value in expected.items():
        assert getattr(model.cfg, key) == value, key
    x = images(2, *_size(m))
    ref_logits, ref_blocks = timm_block_outputs(m, x)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    assert logits.shape == ref_logits.shape
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    assert len(ref_blocks) == model.cfg.n_layers
    for i, ref in enumerate(ref_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref, atol=ATOL, rtol=0, msg=f"block {i}")
    # The explicit path (every hook point hooked, hence explicit softmax and norms) agrees as well.
    with torch.no_grad():
        explicit = model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda a, hook: a)])
    torch.testing.assert_close(explicit, ref_logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f][3]])
def test_family_hooks_exist_and_take_effect(family):
    _, _, _, hooks = FAMILIES[family]
    m, model = _pair(family)
    x = images(2, *_size(m))
    with torch.no_grad():
        base, cache = model.run_with_cache(x)
        for name in hooks:
            assert name in model.hook_dict, name
            assert name in cache.cache_dict, name

            def perturb(a, hook):
                # Not affine along any axis: a norm right after the hook cannot undo it.
                return a + 0.5 * torch.sin(torch.arange(a.numel(), dtype=a.dtype).view(a.shape))

            out = model.run_with_hooks(x, fwd_hooks=[(name, perturb)])
            assert (out - base).abs().max() > 1e-4, f"perturbing {name} changed nothing"


def test_gated_mlp_hooks_compose_to_the_mlp_output():
    """hook_post == act(hook_pre) * hook_pre_linear, and hook_post @ W_out + b_out is hook_mlp_out."""
    m, model = _pair("swiglu")
    x = images(2)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    mlp = model.blocks[1].mlp
    pre, lin = cache["blocks.1.mlp.hook_pre"], cache["blocks.1.mlp.hook_pre_linear"]
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"], torch.nn.functional.silu(pre) * lin)
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], cache["blocks.1.mlp.hook_post"] @ mlp.W_out + mlp.b_out)
    # The gate weights are the timm SwiGLU's fc1_g (gate) and fc1_x (linear), not swapped.
    torch.testing.assert_close(mlp.W_gate, m.blocks[1].mlp.fc1_g.weight.T, atol=0, rtol=0)
    torch.testing.assert_close(mlp.W_in, m.blocks[1].mlp.fc1_x.weight.T, atol=0, rtol=0)


def test_mlp_norm_post_is_what_w_out_reads():
    """With scale_mlp_norm, hook_post (after the sub-norm) @ W_out + b_out is hook_mlp_out, so neuron
    contributions stay exact; hook_mid is the activation before the norm."""
    m, model = _pair("scale_mlp_norm")
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    mlp = model.blocks[0].mlp
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], cache["blocks.0.mlp.hook_post"] @ mlp.W_out + mlp.b_out)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_mid"], torch.nn.functional.gelu(cache["blocks.0.mlp.hook_pre"]))


def test_attention_pool_pattern_and_output():
    """The pool's pattern is one softmax row per head over the pooled tokens, and z = pattern @ v."""
    m, model = _pair("map_pool_no_cls_registers")
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    pattern, v = cache["attn_pool.hook_pattern"], cache["attn_pool.hook_v"]
    assert pattern.shape == (2, 2, 1, 16)  # registers are not pooled (pool_include_prefix=False)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 1))
    z = (pattern @ v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(cache["attn_pool.hook_z"], z, atol=1e-6, rtol=0)
    pooled = cache["attn_pool.hook_attn_out"] + cache["attn_pool.hook_mlp_out"]
    torch.testing.assert_close(cache["hook_pooled"], pooled[:, 0], atol=0, rtol=0)


def test_attn_norm_head_results_sum_to_attn_out():
    """With a norm over the concatenated heads, hook_z is the normed z that W_O reads, so per-head results
    (use_attn_result) still add up to the attention output; hook_z_pre_norm is pattern @ v."""
    m, model = _pair("scale_attn_norm")
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    attn = model.blocks[1].attn
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_result"].sum(2) + attn.b_O, cache["blocks.1.hook_attn_out"], atol=1e-5, rtol=0
    )
    pattern, v = cache["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_v"]
    z_raw = (pattern @ v.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(cache["blocks.1.attn.hook_z_pre_norm"], z_raw, atol=1e-6, rtol=0)


def test_map_pool_refuses_linear_logit_attribution():
    m, model = _pair("map_pool")
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    parts = cache.decompose_resid()
    with pytest.raises(ValueError, match="map"):
        head_contributions(model, cache, parts)
    with pytest.raises(UnsupportedModelError, match="map"):
        model.tokens_to_residual_directions(3)


@pytest.mark.parametrize("family", ["rmsnorm", "swiglu_scale_mlp_norm_rms", "map_pool", "swiglu", "embed_norm"])
def test_fold_ln_keeps_logits(family):
    m, model = _pair(family)
    x = images(2)
    with torch.no_grad():
        ref = m(x)
        model.process_weights_(fold_ln=True, fold_value_biases=True)
        out = model(x)
    assert model.cfg.normalization_type == ("RMSPre" if model.cfg.norm_kind == "RMS" else "LNPre")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_rms_head_contributions_add_up_to_logits():
    m, model = _pair("rmsnorm")
    with torch.no_grad():
        logits, cache = model.run_with_cache(images(2))
    parts = cache.decompose_resid()
    total = head_contributions(model, cache, parts).sum(0) + head_bias(model, cache)
    torch.testing.assert_close(total, logits, atol=ATOL, rtol=0)


def test_attn_norm_refuses_fold_value_biases_and_keeps_logits_with_the_rest():
    m, model = _pair("scale_attn_norm")
    x = images(2)
    with pytest.raises(UnsupportedModelError, match="scale_attn_norm"):
        model.process_weights_(fold_value_biases=True)
    with torch.no_grad():
        model.process_weights_(fold_ln=True, center_writing_weights=True)
        torch.testing.assert_close(model(x), m(x), atol=ATOL, rtol=0)


def test_rms_refuses_center_writing_weights():
    m, model = _pair("rmsnorm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="RmsNorm"):
        model.process_weights_(center_writing_weights=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_pool="prr"), "AttentionPoolPrr"),
        (dict(act_layer="relu"), "activation ReLU"),
        (dict(norm_layer="layernorm2d"), "unsupported normalisation"),
    ],
)
def test_still_refused(kwargs, match):
    with pytest.raises(UnsupportedModelError, match=match):
        HookedViT.from_timm(make_timm(depth=1, **kwargs))


def test_mixed_norm_kinds_refused():
    m = make_timm(depth=2, norm_layer="rmsnorm")
    m.blocks[1].norm1 = torch.nn.LayerNorm(32, eps=1e-6)
    with pytest.raises(UnsupportedModelError, match="mixed|eps"):
        HookedViT.from_timm(m)


def test_map_pool_variants_refused():
    from timm.layers import AttentionPoolLatent

    m = make_timm(depth=1, global_pool="map")
    m.attn_pool = randomize_(AttentionPoolLatent(32, num_heads=2, latent_len=2, norm_layer=torch.nn.LayerNorm))
    with pytest.raises(UnsupportedModelError, match="one latent query"):
        HookedViT.from_timm(m)


def test_siglip_by_name_full_width_block():
    """A real SigLIP block width (768, 12 heads) at depth 1: the pool head converts at full size too."""
    m = randomize_(timm.create_model("vit_base_patch16_siglip_224", depth=1, img_size=32, num_classes=5)).eval()
    model = HookedViT.from_timm(m)
    x = images(1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m(x), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- timm Eva (RoPE, LayerScale gammas, GQA, ...)
EVA = {
    "eva_giant_no_rope": ("eva_giant_patch14_224", {}, dict(rope="")),
    "eva02_rope_swiglu_sub_ln": ("eva02_base_patch14_224", {}, dict(rope="axial", gated_mlp=True, mlp_norm=True)),
    "eva02_tiny_glu_packed": ("eva02_tiny_patch14_224", {}, dict(rope="axial", gated_mlp=True)),
    "eva02_clip_attn_norm": ("eva02_base_patch16_clip_224", {}, dict(attn_norm=True, mlp_norm=True)),
    "rope_axial_layer_scale": ("vit_small_patch16_rope_224", {}, dict(rope="axial")),
    "rope_axial_abs_pos": ("vit_small_patch16_rope_ape_224", {}, dict(rope="axial", has_pos_embed=True)),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", {}, dict(rope="mixed")),
    "rope_mixed_abs_pos": ("vit_small_patch16_rope_mixed_ape_224", {}, dict(rope="mixed")),
    "dinov3_rotate_half_registers": (
        "vit_small_patch16_dinov3", {}, dict(rope="axial", rope_half=True, n_registers=4, dynamic_img_size=False),
    ),
    "perception_encoder_map": ("vit_pe_core_tiny_patch16_384", {}, dict(global_pool="map", pool_include_prefix=True)),
    "sapiens2_gqa_rms_qk_norm": (
        "vit_base_patch16_sapiens2", dict(num_kv_heads=(2, 1)), dict(norm_kind="RMS", qk_norm=True, rope_half=True),
    ),
}


@pytest.mark.parametrize("family", list(EVA))
def test_eva_family_matches_timm(family):
    name, kwargs, expected = EVA[family]
    m, model = make_pair(name, **kwargs)
    for key, value in expected.items():
        assert getattr(model.cfg, key) == value, key
    x = images(2)
    ref_logits, ref_blocks = timm_block_outputs(m, x)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        explicit = model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda a, hook: a)])
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(explicit, ref_logits, atol=ATOL, rtol=0)
    assert len(ref_blocks) == 2
    for i, ref in enumerate(ref_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], ref, atol=ATOL, rtol=0, msg=f"block {i}")


@pytest.mark.parametrize("family", ["rope_axial_layer_scale", "rope_mixed", "dinov3_rotate_half_registers"])
def test_rope_hooks(family):
    """hook_q/hook_k are before the rotation, hook_rot_q/hook_rot_k after; prefix tokens are not rotated; the
    rotation keeps each pair's norm; perturbing any of the four changes the output."""
    name, kwargs, _ = EVA[family]
    m, model = make_pair(name, **kwargs)
    x = images(2)
    n = model.cfg.n_prefix
    with torch.no_grad():
        base, cache = model.run_with_cache(x)
        for site in ("q", "k"):
            pre, rot = cache[f"blocks.1.attn.hook_{site}"], cache[f"blocks.1.attn.hook_rot_{site}"]
            assert pre.shape == rot.shape == (2, model.cfg.n_pos, model.cfg.n_heads, model.cfg.d_head)
            torch.testing.assert_close(rot[:, :n], pre[:, :n], atol=0, rtol=0)
            assert (rot[:, n:] - pre[:, n:]).abs().max() > 1e-3
            torch.testing.assert_close(rot.norm(dim=-1), pre.norm(dim=-1), atol=1e-5, rtol=1e-5)
        for hook in ("hook_q", "hook_k", "hook_rot_q", "hook_rot_k", "hook_v"):
            out = model.run_with_hooks(x, fwd_hooks=[(f"blocks.0.attn.{hook}", lambda a, hook: a.flip(1))])
            assert (out - base).abs().max() > 1e-4, hook


def test_gqa_kv_heads_are_repeated_per_group():
    """Sapiens2 block 1 has one K/V head for two query heads: hook_k holds it once per query head."""
    m, model = make_pair("vit_base_patch16_sapiens2", num_kv_heads=(2, 1))
    assert m.blocks[1].attn.num_kv_heads == 1
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    k, v = cache["blocks.1.attn.hook_k"], cache["blocks.1.attn.hook_v"]
    torch.testing.assert_close(k[:, :, 0], k[:, :, 1], atol=0, rtol=0)
    torch.testing.assert_close(v[:, :, 0], v[:, :, 1], atol=0, rtol=0)
    assert (cache["blocks.0.attn.hook_k"][:, :, 0] - cache["blocks.0.attn.hook_k"][:, :, 1]).abs().max() > 1e-3


def test_rope_model_takes_its_image_size_only():
    """DINOv3 is dynamic_img_size in timm; the converted model's RoPE table is for one grid, so other sizes are
    refused with a clear error instead of being silently mis-rotated."""
    m, model = make_pair("vit_small_patch16_dinov3")
    assert m.dynamic_img_size and not model.cfg.dynamic_img_size
    with pytest.raises(ValueError, match="img_size"):
        model(images(1, 48, 48))


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("eva02_enormous_patch14_clip_224", dict(embed_dim=32, num_heads=2), "EvaBlockPostNorm"),
    ],
)
def test_eva_refusals(name, kwargs, match):
    with pytest.raises(UnsupportedModelError, match=match):
        HookedViT.from_timm(make_timm(name, **kwargs))


def test_eva_conversion_leaves_timm_untouched_even_in_training_mode():
    m = make_timm("vit_small_patch16_dinov3")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: mod.training for n, mod in m.named_modules()}
    model = HookedViT.from_timm(m)
    assert {n: mod.training for n, mod in m.named_modules()} == flags
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images(2)), m(images(2)), atol=ATOL, rtol=0)


def test_parallel_block_sums_attention_and_mlp_and_refuses_what_it_lacks():
    m, model = _pair("parallel_scaling_block")
    x = images(2)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    for i in range(2):
        b = f"blocks.{i}."
        torch.testing.assert_close(
            cache[b + "hook_resid_post"], cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"] + cache[b + "hook_mlp_out"],
            atol=1e-6, rtol=0,
        )
    assert "blocks.0.hook_resid_mid" not in model.hook_dict and not hasattr(model.blocks[0], "ln2")
    with pytest.raises(UnsupportedModelError, match="parallel"):
        model.process_weights_(fold_ln=True)
    model.set_use_split_qkv_input(True)
    with pytest.raises(ValueError, match="parallel"):
        model(x)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vit_small_patch16_dinov3", {}),  # RoPE (rotate-half), registers, LayerScale
        ("vit_base_patch16_sapiens2", dict(num_kv_heads=(2, 1))),  # GQA, RmsNorm, GLU
        ("vit_base_patch16_siglip_224", {}),  # attention-pool head
        ("vit_base_patch16_xp_224", {}),  # parallel blocks
    ],
)
def test_head_patching_engine_equals_hand_patching(name, kwargs):
    """The patching engine works on the new families: each head's z/q/k/v patch (all positions, denoising)
    equals a hand-written run_with_hooks that writes the clean activation into the corrupted run."""
    from vit_patching.patching import patch_heads

    m, model = make_pair(name, **kwargs)
    clean, corrupted = images(2, seed=1), images(2, seed=2)

    def metric(logits, image_index):
        return logits[:, 3]

    res = patch_heads(model, clean, corrupted, metric, sites=("z", "q", "k", "v"), progress=False)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        for s, site in enumerate(("z", "q", "k", "v")):
            for layer in range(model.cfg.n_layers):
                for head in range(model.cfg.n_heads):
                    hook_name = f"blocks.{layer}.attn.hook_{site}"

                    def put(a, hook, head=head, hook_name=hook_name):
                        a = a.clone()
                        a[:, :, head] = cache[hook_name][:, :, head]
                        return a

                    ref = model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, put)])[:, 3]
                    torch.testing.assert_close(res.values[s, layer, head], ref, atol=2e-5, rtol=0)
    assert (res.values - res.target_score).abs().max() > 1e-4  # some head matters

"""ActivationCache helpers, head logit attribution, and TransformerLens's patching tools on a HookedViT."""
import pandas as pd
import pytest
import torch
from transformer_lens import ActivationCache

from model_helpers import images, make_pair
from vit_patching.model.logit_attribution import head_bias, head_contributions

CLOSE = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def vit():
    _, model = make_pair(depth=3)
    return model


def test_run_with_cache_returns_activation_cache(vit):
    x = images(2)
    with torch.no_grad():
        logits, cache = vit.run_with_cache(x)
        plain = vit(x)
    assert isinstance(cache, ActivationCache)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)  # caching switches on the explicit paths
    # TransformerLens-style indexing, negative layers included
    assert torch.equal(cache["z", 1], cache["blocks.1.attn.hook_z"])
    assert torch.equal(cache["pattern", -1], cache["blocks.2.attn.hook_pattern"])
    assert torch.equal(cache["resid_pre", 0], cache["blocks.0.hook_resid_pre"])
    assert torch.equal(cache["scale", 2, "ln1"], cache["blocks.2.ln1.hook_scale"])
    assert cache.stack_activation("resid_post").shape == (3, 2, vit.cfg.n_pos, vit.cfg.d_model)
    _, raw = vit.run_with_cache(x, return_cache_object=False)
    assert isinstance(raw, dict) and set(raw) == set(cache.keys())
    _, one = vit.run_with_cache(x[:1], remove_batch_dim=True, names_filter="blocks.1.hook_resid_mid")
    assert one["blocks.1.hook_resid_mid"].shape == (vit.cfg.n_pos, vit.cfg.d_model)


def test_accumulated_resid(vit):
    with torch.no_grad():
        _, cache = vit.run_with_cache(images(2))
    acc, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert acc.shape == (4, 2, vit.cfg.n_pos, vit.cfg.d_model)
    for i in range(3):
        assert torch.equal(acc[i], cache[f"blocks.{i}.hook_resid_pre"])
    assert torch.equal(acc[-1], cache["blocks.2.hook_resid_post"])


def test_decompose_resid_sums_to_final_residual(vit):
    with torch.no_grad():
        _, cache = vit.run_with_cache(images(2))
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed"] + [f"{i}_{k}" for i in range(3) for k in ("attn_out", "mlp_out")]
    torch.testing.assert_close(parts.sum(0), cache["blocks.2.hook_resid_post"], **CLOSE)
    attn_parts = cache.decompose_resid(layer=2, mode="attn", incl_embeds=False)
    torch.testing.assert_close(attn_parts, torch.stack([cache["attn_out", i] for i in range(2)]), atol=0, rtol=0)


@pytest.mark.parametrize("use_attn_result", [False, True])
def test_stack_head_results_plus_bias_is_attn_out(vit, use_attn_result):
    with torch.no_grad(), vit.flags(use_attn_result=use_attn_result):
        _, cache = vit.run_with_cache(images(2))
    heads, labels = cache.stack_head_results(return_labels=True)
    h = vit.cfg.n_heads
    assert labels == [f"L{layer}H{j}" for layer in range(3) for j in range(h)]
    assert heads.shape == (3 * h, 2, vit.cfg.n_pos, vit.cfg.d_model)
    for layer in range(3):
        torch.testing.assert_close(
            heads[layer * h : (layer + 1) * h].sum(0) + vit.blocks[layer].attn.b_O,
            cache[f"blocks.{layer}.hook_attn_out"],
            **CLOSE,
        )


def test_layer_scale_is_in_the_head_results():
    """Without a cached hook_result, TL recomputes z @ W_O: exact only because LayerScale is folded into W_O."""
    _, model = make_pair(init_values=1e-5, depth=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    heads = cache.stack_head_results(layer=1)
    torch.testing.assert_close(heads.sum(0) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"], **CLOSE)


# ------------------------------------------------------------------------------------- logit attribution
ATTRIBUTION = {
    "token_pool": ("vit_tiny_patch16_224", {}),
    "avg_fc_norm": ("vit_tiny_patch16_224", dict(global_pool="avg", reg_tokens=2)),
    "avg_token_norm": ("vit_tiny_patch16_224", dict(global_pool="avg", fc_norm=False)),
    "avg_include_prefix": ("vit_tiny_patch16_224", dict(global_pool="avg", pool_include_prefix=True)),
    "fc_norm_token": ("vit_tiny_patch16_224", dict(fc_norm=True)),
    "no_final_norm": ("vit_tiny_patch16_224", dict(final_norm=False)),
    "gap_no_cls": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", init_values=1e-5)),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
}


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("config", list(ATTRIBUTION))
def test_head_contributions_add_up_to_logits(config, fold):
    name, kwargs = ATTRIBUTION[config]
    _, model = make_pair(name, **kwargs)
    if fold:
        model.process_weights_(fold_ln=True, center_writing_weights=model.cfg.final_norm or model.cfg.fc_norm)
    with torch.no_grad():
        logits, cache = model.run_with_cache(images(3))
        parts, labels = cache.decompose_resid(return_labels=True)
        contrib = head_contributions(model, cache, parts)
        bias = head_bias(model, cache)
    assert contrib.shape == (len(labels), 3, model.cfg.n_classes)
    assert bias.shape == (3, model.cfg.n_classes)
    torch.testing.assert_close(contrib.sum(0) + bias, logits, **CLOSE)
    # per-head split: heads + b_O of each layer reproduce the attention parts
    heads = cache.stack_head_results()
    per_head = head_contributions(model, cache, heads)
    attn_parts = contrib[[labels.index(f"{i}_attn_out") for i in range(model.cfg.n_layers)]]
    b_o = torch.stack([b.attn.b_O for b in model.blocks])[:, None, None].expand(-1, 3, model.cfg.n_pos, -1)
    torch.testing.assert_close(
        per_head.sum(0) + head_contributions(model, cache, b_o).sum(0), attn_parts.sum(0), **CLOSE
    )


def test_head_contributions_for_token_pool_match_direct_readout():
    """Token pooling, per-token LN: a component's contribution is (x_CLS - mean) / scale * w @ W_H."""
    _, model = make_pair()
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    stack = torch.randn(4, 2, model.cfg.n_pos, model.cfg.d_model)
    got = head_contributions(model, cache, stack)
    cls = stack[:, :, 0]
    expected = (cls - cls.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"][:, 0] * model.ln_final.w @ model.W_H
    torch.testing.assert_close(got, expected, **CLOSE)


@pytest.mark.parametrize("pool", ["max", "avgmax", ""])
def test_head_contributions_refuse_nonlinear_pooling(pool):
    _, model = make_pair(global_pool=pool)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    with pytest.raises(ValueError, match="not linear"):
        head_contributions(model, cache, cache.decompose_resid())


def test_head_contributions_input_errors():
    _, model = make_pair()
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2), names_filter=lambda n: "ln_final" not in n)
    with pytest.raises(KeyError, match="ln_final.hook_scale"):
        head_contributions(model, cache, cache.decompose_resid(incl_embeds=False))
    _, features = make_pair(num_classes=0)
    with torch.no_grad():
        _, cache = features.run_with_cache(images(2))
    with pytest.raises(ValueError, match="no classifier head"):
        head_contributions(features, cache, cache.decompose_resid())


def test_tokens_to_residual_directions_and_logit_attrs(vit):
    dirs = vit.tokens_to_residual_directions(torch.tensor([3, 7]))
    assert torch.equal(dirs, vit.W_H[:, [3, 7]].T)
    assert torch.equal(vit.tokens_to_residual_directions(4), vit.W_H[:, 4])
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        vit.tokens_to_residual_directions(10)
    _, dist = make_pair("deit_tiny_distilled_patch16_224")
    with pytest.raises(ValueError, match="distilled"):
        dist.tokens_to_residual_directions(1)


# ------------------------------------------------------------------------ TransformerLens patching tools
def test_transformer_lens_act_patch_resid_pre_equals_hand_loop(vit):
    from transformer_lens.patching import get_act_patch_resid_pre

    clean, corrupted = images(2, seed=1), images(2, seed=2)
    target = 3
    metric = lambda logits: logits[:, target].mean()  # noqa: E731
    with torch.no_grad():
        _, clean_cache = vit.run_with_cache(clean)
        # the index comes from the model's token layout, never from the image width (32 here)
        rows = [(layer, pos) for layer in range(vit.cfg.n_layers) for pos in vit.layout.patch_positions()[::5] + [0]]
        df = pd.DataFrame(rows, columns=["layer", "pos"])
        got = get_act_patch_resid_pre(vit, corrupted, clean_cache, metric, index_axis_names=None, index_df=df)

        expected = []
        for layer, pos in rows:
            name = f"blocks.{layer}.hook_resid_pre"

            def patch(act, hook, pos=pos, name=name):
                act = act.clone()
                act[:, pos] = clean_cache[name][:, pos]
                return act

            expected.append(metric(vit.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])))
        corrupted_value = metric(vit(corrupted))
        clean_value = metric(vit(clean))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=0)
    # sanity: patching changes things, and patching CLS at layer 0 ... all positions at layer 0 restores clean
    assert (torch.stack(expected) - corrupted_value).abs().max() > 1e-4
    full = vit.run_with_hooks(
        corrupted, fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: clean_cache["blocks.0.hook_resid_pre"])]
    )
    torch.testing.assert_close(metric(full), clean_value, atol=1e-6, rtol=0)


def test_transformer_lens_head_patching_runs(vit):
    from transformer_lens.patching import get_act_patch_attn_head_out_by_pos

    clean, corrupted = images(2, seed=1), images(2, seed=2)
    with torch.no_grad():
        _, clean_cache = vit.run_with_cache(clean)
        df = pd.DataFrame({"layer": [0, 2], "pos": [0, 5], "head": [1, 0]})
        got = get_act_patch_attn_head_out_by_pos(
            vit, corrupted, clean_cache, lambda lg: lg[:, 1].mean(), index_axis_names=None, index_df=df
        )

        def patch(z, hook):
            z = z.clone()
            z[:, 5, 0] = clean_cache["blocks.2.attn.hook_z"][:, 5, 0]
            return z

        manual = vit.run_with_hooks(corrupted, fwd_hooks=[("blocks.2.attn.hook_z", patch)])[:, 1].mean()
    torch.testing.assert_close(got[1], manual, atol=1e-6, rtol=0)


def test_class_index_checks(vit):
    assert vit.tokens_to_residual_directions([3, 7]).shape == (2, vit.cfg.d_model)
    with pytest.raises(TypeError, match="integer class indices"):
        vit.check_classes(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        vit.check_classes(torch.tensor([-1, 2]), "target")
    vit.check_classes(torch.tensor([0, 9]))


def test_pre_norm_decomposition_starts_at_ln_pre_output():
    """CLIP pre_norm: the stream starts at ln_pre's output, so decompose_resid() starts from
    blocks.0.hook_resid_pre (TransformerLens's own would add the raw embed + pos_embed instead)."""
    _, model = make_pair(pre_norm=True, act_layer="quick_gelu")
    with torch.no_grad():
        logits, cache = model.run_with_cache(images(2))
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed_ln_pre" and labels[1:] == ["0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(parts[0], cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], **CLOSE)
    # The raw embeddings do not sum to the stream here: the override is needed.
    assert not torch.allclose(cache["hook_embed"] + cache["hook_pos_embed"], cache["blocks.0.hook_resid_pre"])
    contrib = head_contributions(model, cache, parts)
    torch.testing.assert_close(contrib.sum(0) + head_bias(model, cache), logits, **CLOSE)


@pytest.mark.parametrize("expand_neurons", [False, True])
def test_full_resid_decomposition_sums_to_the_stream(expand_neurons):
    """TransformerLens's get_full_resid_decomposition (heads, neurons, embeddings, accumulated biases) works on a
    HookedViT and adds up to the final residual; the bias row is recomputed by hand."""
    _, model = make_pair()
    model.set_use_attn_result(True)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    parts, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], **CLOSE)
    # MLP biases ride in the MLP rows unless the MLPs are expanded into neurons.
    bias = sum(b.attn.b_O + (b.mlp.b_out if expand_neurons else 0) for b in model.blocks)
    assert labels[-1] == "bias"
    torch.testing.assert_close(parts[-1][0, 0], bias, **CLOSE)
    all_biases = sum(b.attn.b_O + b.mlp.b_out for b in model.blocks)
    torch.testing.assert_close(
        model.accumulated_bias(1, mlp_input=True), all_biases - model.blocks[1].mlp.b_out, **CLOSE
    )


# Every model family the HookedViT tests build: the embedding rows, prefix tokens, LayerScale and norms all
# enter the decomposition differently.
FAMILIES = {
    "plain": ("vit_tiny_patch16_224", {}),
    "pre_norm_clip": ("vit_tiny_patch16_224", dict(pre_norm=True, act_layer="quick_gelu")),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "distilled_features": ("deit_tiny_distilled_patch16_224", dict(num_classes=0)),
    "registers": ("vit_tiny_patch16_224", dict(reg_tokens=3)),
    "no_cls_avg_pool": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg")),
    "layer_scale_no_embed_class": ("vit_tiny_patch16_224", dict(init_values=1e-5, no_embed_class=True, reg_tokens=2)),
    "fc_norm_token": ("vit_tiny_patch16_224", dict(fc_norm=True)),
    "qk_norm_no_pos_embed": ("vit_tiny_patch16_224", dict(qk_norm=True, pos_embed="none")),
    "clip_gap_layer_scale": ("vit_tiny_patch16_224", dict(pre_norm=True, global_pool="avg", init_values=1e-5)),
}


@pytest.mark.parametrize("expand_neurons", [False, True], ids=["mlp", "neurons"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_resid_decomposition_sums_to_the_stream_on_every_family(family, expand_neurons):
    """Before the pre_norm override, the CLIP families' parts missed the stream by ~2 (raw embeddings, pre ln_pre)."""
    name, kwargs = FAMILIES[family]
    _, model = make_pair(name, depth=3, **kwargs)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
        for layer, mlp_input, stream in [
            (None, False, "blocks.2.hook_resid_post"),
            (1, False, "blocks.1.hook_resid_pre"),
            (1, True, "blocks.1.hook_resid_mid"),
            (0, False, "blocks.0.hook_resid_pre"),
        ]:
            parts, labels = cache.get_full_resid_decomposition(
                layer, mlp_input=mlp_input, expand_neurons=expand_neurons, return_labels=True
            )
            assert len(labels) == parts.shape[0]
            # float32 rounding of a sum of up to ~400 rows (observed <= 2.4e-6)
            torch.testing.assert_close(parts.sum(0), cache[stream], atol=1e-5, rtol=0, msg=f"{layer=} {mlp_input=}")
            if model.cfg.pre_norm:
                assert "embed" not in labels and "pos_embed" not in labels
                assert torch.equal(parts[labels.index("embed_ln_pre")], cache["blocks.0.hook_resid_pre"])
            else:
                assert labels.count("embed") == 1 and labels.count("pos_embed") == 1


def test_full_resid_decomposition_projection_and_ln_on_pre_norm():
    """apply_ln and a projection treat the ln_pre row like every other row: the projected rows, summed, give the
    logit (head bias aside) of the final normalised CLS token."""
    _, model = make_pair(pre_norm=True, depth=2)
    model.process_weights_(fold_ln=True)  # TransformerLens's apply_ln only normalises: the affine must be folded
    with torch.no_grad():
        logits, cache = model.run_with_cache(images(2))
        parts = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=0, project_output_onto=model.W_H[:, 3])
        plain = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=0) @ model.W_H[:, 3]
    torch.testing.assert_close(parts, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts.sum(0) + model.b_H[3], logits[:, 3], atol=1e-4, rtol=0)

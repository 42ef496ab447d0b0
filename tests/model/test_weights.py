"""Weight views (shapes, independent recomputation from timm, in-place edits) and weight processing."""
import pytest
import torch

from model_helpers import images, make_pair
from vit_patching.model import HookedViT, UnsupportedModelError


@pytest.fixture(scope="module")
def pair():
    # LayerScale on, so W_O / W_out must carry gamma; 3 heads to catch head-order mistakes.
    return make_pair(depth=3, embed_dim=48, num_heads=3, init_values=1e-5, reg_tokens=1)


def test_weight_shapes(pair):
    _, model = pair
    cfg = model.cfg
    L, h, dm, dh, dmlp, C = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_classes
    assert (L, h, dm, dh, dmlp, C) == (3, 3, 48, 16, 192, 10)
    expected = {
        "W_E": (dm, 3, 8, 8), "b_E": (dm,), "W_pos": (cfg.n_pos, dm),
        "W_Q": (L, h, dm, dh), "W_K": (L, h, dm, dh), "W_V": (L, h, dm, dh), "W_O": (L, h, dh, dm),
        "b_Q": (L, h, dh), "b_K": (L, h, dh), "b_V": (L, h, dh), "b_O": (L, dm),
        "W_in": (L, dm, dmlp), "W_out": (L, dmlp, dm), "b_in": (L, dmlp), "b_out": (L, dm),
        "W_H": (dm, C), "b_H": (C,), "W_U": (dm, C), "b_U": (C,),
    }  # fmt: skip
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, name


def test_weights_equal_timm_state_dict(pair):
    m, model = pair
    sd = m.state_dict()
    cfg = model.cfg
    h, dh = cfg.n_heads, cfg.d_head
    assert torch.equal(model.W_E, sd["patch_embed.proj.weight"])
    assert torch.equal(model.b_E, sd["patch_embed.proj.bias"])
    assert torch.equal(model.W_pos, sd["pos_embed"][0])
    assert torch.equal(model.embed.cls_token, sd["cls_token"][0, 0])
    assert torch.equal(model.embed.reg_tokens, sd["reg_token"][0])
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        wqkv, bqkv = sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]
        g1, g2 = sd[p + "ls1.gamma"], sd[p + "ls2.gamma"]
        proj = sd[p + "attn.proj.weight"]
        for head in range(h):
            for j, (W, b) in enumerate(((model.W_Q, model.b_Q), (model.W_K, model.b_K), (model.W_V, model.b_V))):
                rows = slice(j * h * dh + head * dh, j * h * dh + (head + 1) * dh)
                assert torch.equal(W[layer, head], wqkv[rows].T)
                assert torch.equal(b[layer, head], bqkv[rows])
            cols = slice(head * dh, (head + 1) * dh)
            torch.testing.assert_close(model.W_O[layer, head], (proj[:, cols] * g1[:, None]).T, atol=0, rtol=0)
        torch.testing.assert_close(model.b_O[layer], sd[p + "attn.proj.bias"] * g1, atol=0, rtol=0)
        assert torch.equal(model.W_in[layer], sd[p + "mlp.fc1.weight"].T)
        assert torch.equal(model.b_in[layer], sd[p + "mlp.fc1.bias"])
        torch.testing.assert_close(model.W_out[layer], (sd[p + "mlp.fc2.weight"] * g2[:, None]).T, atol=0, rtol=0)
        torch.testing.assert_close(model.b_out[layer], sd[p + "mlp.fc2.bias"] * g2, atol=0, rtol=0)
        assert torch.equal(model.blocks[layer].ln1.w, sd[p + "norm1.weight"])
        assert torch.equal(model.blocks[layer].ln2.b, sd[p + "norm2.bias"])
    assert torch.equal(model.W_H, sd["head.weight"].T)
    assert torch.equal(model.b_H, sd["head.bias"])
    assert torch.equal(model.ln_final.w, sd["norm.weight"])


def test_weights_follow_timm_conventions_numerically(pair):
    """Using the views the TransformerLens way reproduces the cached activations."""
    _, model = pair
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
        normed = cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.w + model.blocks[1].ln1.b
        for n in "QKV":
            act = cache[f"blocks.1.attn.hook_{n.lower()}"]
            W, b = getattr(model, f"W_{n}")[1], getattr(model, f"b_{n}")[1]
            torch.testing.assert_close(torch.einsum("bpd,hde->bphe", normed, W) + b, act, atol=1e-5, rtol=1e-5)
        z = cache["blocks.1.attn.hook_z"]
        out = torch.einsum("bphe,hed->bpd", z, model.W_O[1]) + model.b_O[1]
        torch.testing.assert_close(out, cache["blocks.1.hook_attn_out"], atol=1e-5, rtol=1e-5)
        pre = cache["blocks.2.ln2.hook_normalized"] * model.blocks[2].ln2.w + model.blocks[2].ln2.b
        torch.testing.assert_close(pre @ model.W_in[2] + model.b_in[2], cache["blocks.2.mlp.hook_pre"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "edit",
    [
        lambda mo: mo.blocks[1].attn.W_Q[2].mul_(3.0),
        lambda mo: mo.blocks[0].attn.W_K[0].zero_(),
        lambda mo: mo.blocks[2].attn.W_V[1].neg_(),
        lambda mo: mo.blocks[1].attn.W_O[0].mul_(-2.0),
        lambda mo: mo.blocks[0].attn.b_Q.add_(1.0),
        lambda mo: mo.blocks[2].attn.b_V[1].add_(1.0),
        lambda mo: mo.blocks[1].mlp.W_in[:, :5].zero_(),
        lambda mo: mo.blocks[2].mlp.W_out[:20].mul_(-3.0),  # (adding a constant would be invisible to LN)
        lambda mo: mo.W_H[:, 2].mul_(3.0),
        lambda mo: mo.W_pos[5].mul_(-3.0),
        lambda mo: mo.W_E.mul_(0.5),
    ],
    ids=["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_V", "W_in", "W_out", "W_H", "W_pos", "W_E"],
)
def test_in_place_edits_through_views_change_the_model(edit):
    _, model = make_pair(depth=3, embed_dim=48, num_heads=3)
    x = images(2)
    with torch.no_grad():
        before = model(x)
        edit(model)
        after = model(x)
    assert (after - before).abs().max() > 1e-3


def test_per_block_weights_are_views_and_stacks_are_copies():
    # With LayerScale, W_O/W_out are computed (gamma kept apart for a bit-identical forward) until it is folded in.
    _, model = make_pair(depth=2, init_values=1e-5)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert attn.W_O.untyped_storage().data_ptr() != attn.w_proj.untyped_storage().data_ptr()
    model.process_weights_(fold_layer_scale=True)
    for view, param in ((attn.W_Q, attn.w_qkv), (attn.b_V, attn.b_qkv), (attn.W_O, attn.w_proj), (mlp.W_in, mlp.w_fc1),
                        (mlp.W_out, mlp.w_fc2), (model.W_H, model.head.w_head)):  # fmt: skip
        assert view.untyped_storage().data_ptr() == param.untyped_storage().data_ptr()
    # like TransformerLens, the stacked [layer ...] tensors are new tensors
    assert model.W_Q.untyped_storage().data_ptr() != attn.w_qkv.untyped_storage().data_ptr()


# ------------------------------------------------------------------------------------- processing
PROCESS_CONFIGS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit3_like": ("vit_tiny_patch16_224", dict(init_values=1e-5, no_embed_class=True, reg_tokens=2)),
    "gap_fc_norm": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", qkv_bias=False)),
    "clip_pre_norm": ("vit_tiny_patch16_224", dict(pre_norm=True, act_layer="quick_gelu")),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "qk_norm_avg_token_norm": ("vit_tiny_patch16_224", dict(qk_norm=True, global_pool="avg", fc_norm=False)),
    "max_fc_norm": ("vit_tiny_patch16_224", dict(global_pool="max")),  # fold_ln ok (fc_norm after pooling)
}
OPTIONS = {
    "fold_ln": dict(fold_ln=True),
    "center": dict(center_writing_weights=True),
    "fold_value_biases": dict(fold_value_biases=True),
    "all": dict(fold_ln=True, center_writing_weights=True, fold_value_biases=True),
}


# max pooling after a per-token shift is not a shifted max: centring is refused there (see below)
CASES = [(c, o) for c in PROCESS_CONFIGS for o in OPTIONS if not (c == "max_fc_norm" and o in ("center", "all"))]


@pytest.mark.parametrize("config, option", CASES)
def test_processing_keeps_logits(config, option):
    name, kwargs = PROCESS_CONFIGS[config]
    flags = OPTIONS[option]
    m, ref_model = make_pair(name, **kwargs)
    model = HookedViT.from_timm(m, **flags)
    x = images(2)
    with torch.no_grad():
        ref, ref_cache = ref_model.run_with_cache(x)
        out, cache = model.run_with_cache(x)
        timm_out = m(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, timm_out, atol=1e-5, rtol=0)
    cfg = model.cfg
    if flags.get("fold_ln"):
        assert cfg.normalization_type == "LNPre"
        assert all(b.ln1.folded and b.ln2.folded for b in model.blocks)
        if cfg.pre_norm:
            assert not model.ln_pre.folded  # ln_pre's output is the residual itself
    if flags.get("fold_value_biases"):
        assert torch.count_nonzero(model.b_V) == 0
    else:
        torch.testing.assert_close(cache["blocks.0.attn.hook_v"], ref_cache["blocks.0.attn.hook_v"], atol=1e-5, rtol=1e-5)
    if flags.get("center_writing_weights"):
        for W in (model.W_O, model.W_out, model.b_O, model.b_out):
            torch.testing.assert_close(W.mean(-1), torch.zeros_like(W.mean(-1)), atol=1e-6, rtol=0)
        last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
        # residual values differ from the unprocessed ones by a per-token constant (the all-ones direction)
        diff = cache[last] - ref_cache[last]
        torch.testing.assert_close(diff - diff.mean(-1, keepdim=True), torch.zeros_like(diff), atol=1e-5, rtol=0)
        if not cfg.pre_norm:  # with CLIP's ln_pre the stream starts uncentred; only the block writes are centred
            torch.testing.assert_close(model.W_pos.mean(-1), torch.zeros(model.W_pos.shape[0]), atol=1e-6, rtol=0)
            torch.testing.assert_close(cache[last].mean(-1), torch.zeros_like(diff[..., 0]), atol=1e-5, rtol=0)


def test_process_weights_in_place_equals_from_timm_flags():
    m, model = make_pair(init_values=1e-5)
    processed = HookedViT.from_timm(m, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    assert model.process_weights_(fold_ln=True, center_writing_weights=True, fold_value_biases=True) is model
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), processed.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@pytest.mark.parametrize(
    "kwargs, flags, match",
    [
        (dict(global_pool="max", fc_norm=False), dict(fold_ln=True), "per-token final norm through global_pool='max'"),
        (dict(global_pool="avgmax", fc_norm=False), dict(fold_ln=True), "global_pool='avgmax'"),
        (dict(global_pool="max"), dict(center_writing_weights=True), "does not commute with global_pool='max'"),
        (dict(final_norm=False), dict(center_writing_weights=True), "needs a final norm or fc_norm"),
        (dict(final_norm=False), dict(fold_ln=True, center_writing_weights=True), "needs a final norm or fc_norm"),
    ],
)
def test_processing_refusals_leave_the_model_untouched(kwargs, flags, match):
    _, model = make_pair(**kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=match):
        model.process_weights_(**flags)
    assert model.cfg.normalization_type == "LN"
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_fold_ln_twice_refused():
    _, model = make_pair()
    model.process_weights_(fold_ln=True)
    with pytest.raises(ValueError, match="already folded"):
        model.process_weights_(fold_ln=True)
    # the other passes still apply to a folded model
    x = images(2)
    with torch.no_grad():
        before = model(x)
        model.process_weights_(center_writing_weights=True, fold_value_biases=True)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(global_pool="avg"), dict(num_classes=0)], ids=["token", "gap_fc_norm", "features"]
)
@pytest.mark.parametrize("process", [False, True])
def test_state_dict_round_trip_through_the_config(kwargs, process):
    """HookedViT(model.cfg) rebuilds the architecture, processed models included, and loads strictly."""
    import copy

    _, model = make_pair(**kwargs)
    if process:
        model.process_weights_(fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    rebuilt = HookedViT(copy.deepcopy(model.cfg))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)

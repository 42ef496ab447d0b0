"""Hook points: documented shapes, every point takes effect, identities, gates, fast paths, cleanup."""
import pytest
import torch
import torch.nn.functional as F

from model_helpers import all_gates_on, images, make_pair
from vit_patching.model import HookedViT

B = 2

# Configurations that together switch on every optional hook point (ln_pre, q/k norms, ln_final, fc_norm,
# hook_pooled_dist) and every prefix kind.
CONFIGS = {
    "vit": ("vit_tiny_patch16_224", {}),
    "clip_qknorm_reg_gap": (
        "vit_tiny_patch16_224", dict(pre_norm=True, qk_norm=True, reg_tokens=2, global_pool="avg"),
    ),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "no_cls_features": ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", num_classes=0)),
}


def expected_shapes(model: HookedViT, qkv_mode: str) -> dict[str, tuple[int, ...]]:
    """The hook table of docs/hook_points.md, written from the config (not read off a cache).

    ``qkv_mode``: "split" (use_split_qkv_input), "attn_in" (use_attn_in) or "none". With split inputs LN1 runs
    once over the stacked q/k/v forks, so its hooks carry an extra ``3`` axis before the head axis.
    """
    cfg = model.cfg
    P, dm, h, dh, dmlp = cfg.n_pos, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
    ln1_lead = {"split": (B, P, 3, h), "attn_in": (B, P, h), "none": (B, P)}[qkv_mode]
    s = {"hook_embed": (B, P, dm), "hook_pos_embed": (B, P, dm)}
    if cfg.pre_norm:
        s |= {"ln_pre.hook_scale": (B, P, 1), "ln_pre.hook_normalized": (B, P, dm)}
    for i in range(cfg.n_layers):
        b = f"blocks.{i}."
        s[b + "hook_resid_pre"] = (B, P, dm)
        if qkv_mode == "attn_in":
            s[b + "hook_attn_in"] = (B, P, h, dm)
        if qkv_mode == "split":
            s |= {b + f"hook_{x}_input": (B, P, h, dm) for x in "qkv"}
        s |= {b + "ln1.hook_scale": (*ln1_lead, 1), b + "ln1.hook_normalized": (*ln1_lead, dm)}
        if cfg.qk_norm:
            for x in "qk":
                s |= {b + f"attn.{x}_norm.hook_scale": (B, P, h, 1), b + f"attn.{x}_norm.hook_normalized": (B, P, h, dh)}
        s |= {b + f"attn.hook_{x}": (B, P, h, dh) for x in ("q", "k", "v", "z")}
        s |= {b + "attn.hook_attn_scores": (B, h, P, P), b + "attn.hook_pattern": (B, h, P, P)}
        s[b + "attn.hook_result"] = (B, P, h, dm)
        s |= {b + n: (B, P, dm) for n in ("hook_attn_out", "hook_resid_mid", "hook_mlp_in")}
        s |= {b + "ln2.hook_scale": (B, P, 1), b + "ln2.hook_normalized": (B, P, dm)}
        s |= {b + "mlp.hook_pre": (B, P, dmlp), b + "mlp.hook_post": (B, P, dmlp)}
        s |= {b + "hook_mlp_out": (B, P, dm), b + "hook_resid_post": (B, P, dm)}
    if cfg.final_norm:
        s |= {"ln_final.hook_scale": (B, P, 1), "ln_final.hook_normalized": (B, P, dm)}
    s["hook_pooled"] = (B, dm)
    if cfg.has_dist:
        s["hook_pooled_dist"] = (B, dm)
    if cfg.fc_norm:
        s |= {"fc_norm.hook_scale": (B, 1), "fc_norm.hook_normalized": (B, dm)}
    if cfg.n_classes:
        s["hook_logits"] = (B, cfg.n_classes)
    return s


def _enable(model, qkv_mode):
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    model.set_use_split_qkv_input(qkv_mode == "split")
    model.set_use_attn_in(qkv_mode == "attn_in")
    return model


@pytest.mark.parametrize("qkv_mode", ["split", "attn_in"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_hook_has_documented_shape(config, qkv_mode):
    name, kwargs = CONFIGS[config]
    _, model = make_pair(name, **kwargs)
    _enable(model, qkv_mode)
    expected = expected_shapes(model, qkv_mode)
    assert set(model.hook_dict) == set(expected)
    _, cache = model.run_with_cache(images(B))
    assert set(cache.keys()) == set(expected)
    for n, shape in expected.items():
        assert tuple(cache[n].shape) == shape, n


def test_cache_keys_fire_in_documented_order():
    """Cache insertion order = firing order = the order of the table in hook_points.md (1-layer model)."""
    _, model = make_pair(depth=1, pre_norm=True, global_pool="avg")
    _enable(model, "split")
    _, cache = model.run_with_cache(images(B))
    b = "blocks.0."
    assert list(cache.keys()) == [
        "hook_embed", "hook_pos_embed", "ln_pre.hook_scale", "ln_pre.hook_normalized",
        b + "hook_resid_pre", b + "hook_q_input", b + "hook_k_input", b + "hook_v_input",
        b + "ln1.hook_scale", b + "ln1.hook_normalized",
        b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v", b + "attn.hook_attn_scores", b + "attn.hook_pattern",
        b + "attn.hook_z", b + "attn.hook_result", b + "hook_attn_out", b + "hook_resid_mid", b + "hook_mlp_in",
        b + "ln2.hook_scale", b + "ln2.hook_normalized", b + "mlp.hook_pre", b + "mlp.hook_post",
        b + "hook_mlp_out", b + "hook_resid_post", "hook_pooled", "fc_norm.hook_scale", "fc_norm.hook_normalized",
        "hook_logits",
    ]  # fmt: skip


def _perturb(name):
    """A replacement that must change the output: noise, or for the pattern a renormalised key permutation."""

    def hook(x, hook):
        if name.endswith("hook_pattern"):
            return x.flip(-1)  # still a distribution over keys, but attending elsewhere
        g = torch.Generator().manual_seed(abs(hash(name)) % 2**31)
        return x + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)

    return hook


@pytest.mark.parametrize("qkv_mode", ["split", "attn_in"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_replacing_any_hook_changes_the_output(config, qkv_mode):
    """Catches observation-only hooks: each point's return value must reach the output."""
    name, kwargs = CONFIGS[config]
    _, model = make_pair(name, **kwargs, depth=1)
    _enable(model, qkv_mode)
    x = images(B)
    with torch.no_grad():
        clean = model(x)
        for hook_name in model.hook_dict:
            out = model.run_with_hooks(x, fwd_hooks=[(hook_name, _perturb(hook_name))])
            assert (out - clean).abs().max() > 1e-3, f"{hook_name} does not affect the output"
            # and the hook was removed again
            torch.testing.assert_close(model(x), clean, atol=0, rtol=0)


def test_in_place_edits_in_hooks_take_effect():
    """A hook that edits in place and returns None works too, including on the (expanded) position table."""
    _, model = make_pair()
    x = images(B)

    def zero_(t, hook):
        t.zero_()

    with torch.no_grad():
        clean = model(x)
        for hook_name in ("hook_pos_embed", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"):
            out = model.run_with_hooks(x, fwd_hooks=[(hook_name, zero_)])
            assert (out - clean).abs().max() > 1e-3, hook_name
        # zeroing the pos-embed rows must not corrupt the stored parameter
        torch.testing.assert_close(model(x), clean, atol=0, rtol=0)


@pytest.mark.parametrize("config", ["vit", "clip_qknorm_reg_gap", "distilled"])
def test_identities(config):
    name, kwargs = CONFIGS[config]
    _, model = make_pair(name, **kwargs, depth=3)
    _enable(model, "split")
    x = images(B)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    close = dict(atol=1e-5, rtol=1e-5)
    cfg = model.cfg
    embedded = cache["hook_embed"] + cache["hook_pos_embed"]
    if cfg.pre_norm:
        ln = model.ln_pre
        torch.testing.assert_close(
            F.layer_norm(embedded, (cfg.d_model,), ln.w, ln.b, cfg.eps), cache["blocks.0.hook_resid_pre"], **close
        )
    else:
        torch.testing.assert_close(embedded, cache["blocks.0.hook_resid_pre"], **close)
    for i in range(cfg.n_layers):
        c = lambda n: cache[f"blocks.{i}.{n}"]  # noqa: E731
        attn = model.blocks[i].attn
        torch.testing.assert_close(c("hook_resid_mid"), c("hook_resid_pre") + c("hook_attn_out"), **close)
        torch.testing.assert_close(c("hook_resid_post"), c("hook_resid_mid") + c("hook_mlp_out"), **close)
        torch.testing.assert_close(c("hook_attn_out"), c("attn.hook_result").sum(2) + attn.b_O, **close)
        torch.testing.assert_close(c("hook_mlp_in"), c("hook_resid_mid"), atol=0, rtol=0)
        for x_ in "qkv":
            torch.testing.assert_close(c(f"hook_{x_}_input"), c("hook_resid_pre")[:, :, None].expand_as(c(f"hook_{x_}_input")))
        # attention from the cached q/k/v, by hand
        q, k, v = c("attn.hook_q"), c("attn.hook_k"), c("attn.hook_v")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / cfg.d_head**0.5
        torch.testing.assert_close(c("attn.hook_attn_scores"), scores, **close)
        torch.testing.assert_close(c("attn.hook_pattern"), scores.softmax(-1), **close)
        torch.testing.assert_close(c("attn.hook_z"), torch.einsum("bhqk,bkhe->bqhe", c("attn.hook_pattern"), v), **close)
        torch.testing.assert_close(
            c("attn.hook_result"), torch.einsum("bphe,hed->bphd", c("attn.hook_z"), attn.W_O), **close
        )
        torch.testing.assert_close(
            c("mlp.hook_post"), F.gelu(c("mlp.hook_pre")), **close
        )
        torch.testing.assert_close(
            c("hook_mlp_out"), c("mlp.hook_post") @ model.blocks[i].mlp.W_out + model.blocks[i].mlp.b_out, **close
        )
        if i + 1 < cfg.n_layers:
            torch.testing.assert_close(cache[f"blocks.{i + 1}.hook_resid_pre"], c("hook_resid_post"), atol=0, rtol=0)
    last = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    if cfg.final_norm:
        normed = F.layer_norm(last, (cfg.d_model,), model.ln_final.w, model.ln_final.b, cfg.eps)
        torch.testing.assert_close(cache["ln_final.hook_normalized"] * model.ln_final.w + model.ln_final.b, normed, **close)
    if cfg.has_dist:
        torch.testing.assert_close(cache["hook_pooled"], normed[:, 0], **close)
        torch.testing.assert_close(cache["hook_pooled_dist"], normed[:, 1], **close)
        head = model.head
        manual = (cache["hook_pooled"] @ head.W_H + head.b_H + cache["hook_pooled_dist"] @ head.W_H_dist + head.b_H_dist) / 2
        torch.testing.assert_close(logits, manual, **close)
    elif cfg.global_pool == "avg":
        torch.testing.assert_close(cache["hook_pooled"], last[:, cfg.n_prefix :].mean(1), **close)
    else:
        torch.testing.assert_close(cache["hook_pooled"], normed[:, 0], **close)
    torch.testing.assert_close(cache["hook_logits"], logits, atol=0, rtol=0)


def test_attn_in_and_split_inputs_together():
    """Both gates on: hook_attn_in fires first and feeds the q/k/v forks; outputs unchanged."""
    _, model = make_pair()
    x = images(B)
    with torch.no_grad():
        clean = model(x)
        with model.flags(use_attn_in=True, use_split_qkv_input=True):
            logits, cache = model.run_with_cache(x)
            assert "blocks.0.hook_attn_in" in cache and "blocks.0.hook_q_input" in cache
            out = model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_attn_in", _perturb("attn_in"))])
    torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)
    assert (out - clean).abs().max() > 1e-3


@pytest.mark.parametrize("flag", ["use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in"])
def test_gates_do_not_change_outputs(flag):
    _, model = make_pair()
    x = images(B)
    with torch.no_grad():
        clean = model(x)
        with model.flags(**{flag: True}):
            gated = model(x)
    torch.testing.assert_close(gated, clean, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- gates
GATED = {
    "blocks.0.attn.hook_result": "set_use_attn_result",
    "blocks.1.hook_q_input": "set_use_split_qkv_input",
    "blocks.0.hook_k_input": "set_use_split_qkv_input",
    "blocks.0.hook_v_input": "set_use_split_qkv_input",
    "blocks.0.hook_attn_in": "set_use_attn_in",
    "blocks.1.hook_mlp_in": "set_use_hook_mlp_in",
}


def test_catch_all_filter_skips_disabled_points():
    _, model = make_pair()
    x = images(B)
    seen = []
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: True)
        model.run_with_hooks(x, fwd_hooks=[(lambda n: True, lambda t, hook: seen.append(hook.name))])
    assert not set(GATED) & set(cache.keys())
    assert set(seen) == set(cache.keys()) == set(model.hook_dict)
    assert "blocks.0.attn.hook_pattern" in cache  # explicit paths still switched on by the catch-all


@pytest.mark.parametrize("hook_name", list(GATED))
def test_hooking_a_disabled_point_names_the_setter(hook_name):
    _, model = make_pair()
    x = images(B)
    fn = lambda t, hook: t  # noqa: E731
    setter = GATED[hook_name]
    with pytest.raises(ValueError, match=rf"{setter}\(True\)"):
        model.run_with_hooks(x, fwd_hooks=[(hook_name, fn)])
    with pytest.raises(ValueError, match=rf"{setter}\(True\)"):
        model.add_hook(hook_name, fn)
    with pytest.raises(ValueError, match=rf"{setter}\(True\)"):
        model.run_with_cache(x, names_filter=[hook_name])
    with pytest.raises(ValueError, match=rf"{setter}\(True\)"):
        model.run_with_cache(x, names_filter=hook_name)
    _assert_no_hooks(model)
    getattr(model, setter)(True)
    out = model.run_with_hooks(x, fwd_hooks=[(hook_name, _perturb(hook_name))])
    assert out.shape == (B, 10)


def test_unknown_names_raise():
    _, model = make_pair()
    with pytest.raises(ValueError, match="unknown hook point 'blocks.0.hook_nope'"):
        model.run_with_hooks(images(B), fwd_hooks=[("blocks.0.hook_nope", lambda t, hook: t)])
    with pytest.raises(ValueError, match="unknown hook point"):
        model.run_with_cache(images(B), names_filter=["blocks.0.hook_resid_pre", "blocks.9.hook_resid_pre"])
    _assert_no_hooks(model)


def test_flags_context_restores_flags_also_after_error():
    _, model = make_pair()
    with model.flags(use_attn_result=True, use_hook_mlp_in=True, use_fused_attn=False):
        assert model.cfg.use_attn_result and model.cfg.use_hook_mlp_in and not model.cfg.use_fused_attn
        assert "blocks.0.attn.hook_result" in model.hook_dict
    assert not model.cfg.use_attn_result and not model.cfg.use_hook_mlp_in and model.cfg.use_fused_attn
    assert "blocks.0.attn.hook_result" not in model.hook_dict
    model.set_use_split_qkv_input(True)
    with pytest.raises(RuntimeError, match="boom"):
        with model.flags(use_split_qkv_input=False, use_attn_result=True):
            assert "blocks.0.hook_q_input" not in model.hook_dict
            raise RuntimeError("boom")
    assert model.cfg.use_split_qkv_input and not model.cfg.use_attn_result
    assert "blocks.0.hook_q_input" in model.hook_dict
    with pytest.raises(ValueError, match="unknown flags"):
        with model.flags(use_magic=True):
            pass
    with pytest.raises(TypeError):
        model.set_use_attn_result(1)


def test_reset_hooks_clears_hooks_added_while_a_gate_was_on():
    _, model = make_pair()
    x = images(B)
    calls = []
    with model.flags(use_attn_result=True):
        model.add_hook("blocks.0.attn.hook_result", lambda t, hook: calls.append(1))
    model.reset_hooks()
    model.set_use_attn_result(True)
    with torch.no_grad():
        model(x)
    assert calls == []
    _assert_no_hooks(model)


# --------------------------------------------------------------------------------- fused / explicit paths
def test_fused_and_explicit_attention_agree():
    _, model = make_pair(depth=3, qk_norm=True)
    x = images(B)
    with torch.no_grad():
        fused = model(x)
        model.set_use_fused_attn(False)
        explicit = model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_pattern_hook_switches_only_its_layer(monkeypatch):
    _, model = make_pair(depth=3)
    x = images(B)
    calls = {"sdpa": 0, "ln": 0}
    sdpa, ln = F.scaled_dot_product_attention, F.layer_norm

    def counting_sdpa(*a, **k):
        calls["sdpa"] += 1
        return sdpa(*a, **k)

    def counting_ln(*a, **k):
        calls["ln"] += 1
        return ln(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(F, "layer_norm", counting_ln)
    with torch.no_grad():
        clean = model(x)
        assert calls == {"sdpa": 3, "ln": 7}  # 3 blocks x (ln1, ln2) + ln_final
        calls.update(sdpa=0, ln=0)
        patterns = []
        out = model.run_with_hooks(
            x,
            fwd_hooks=[
                ("blocks.1.attn.hook_pattern", lambda t, hook: patterns.append(t)),
                ("blocks.2.ln1.hook_scale", lambda t, hook: None),
            ],
        )
        assert calls == {"sdpa": 2, "ln": 6}
        assert len(patterns) == 1 and torch.allclose(patterns[0].sum(-1), torch.ones(()))
        torch.testing.assert_close(out, clean, atol=1e-5, rtol=0)
        calls.update(sdpa=0, ln=0)
        model.set_use_fused_attn(False)
        model(x)
        assert calls["sdpa"] == 0
        # q/k/v/z hooks fire on the fused path too, without switching it off
        model.set_use_fused_attn(True)
        calls.update(sdpa=0)
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_q", "hook_z")))
        assert calls["sdpa"] == 3 and len(cache) == 6


# ------------------------------------------------------------------------------------------- cleanup
def _assert_no_hooks(model):
    for name, mod in model.named_modules():
        assert not mod._forward_hooks and not mod._backward_hooks and not mod._forward_pre_hooks, name
        if hasattr(mod, "fwd_hooks"):
            assert not mod.fwd_hooks and not mod.bwd_hooks, name
    assert model.context_level == 0


def test_hooks_removed_after_exception_in_run_with_hooks():
    _, model = make_pair()
    x = images(B)

    def bad(t, hook):
        raise RuntimeError("bad hook")

    with pytest.raises(RuntimeError, match="bad hook"):
        model.run_with_hooks(
            x, fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t * 2), ("blocks.1.attn.hook_pattern", bad)]
        )
    _assert_no_hooks(model)


def test_hooks_removed_after_exception_in_run_with_cache(monkeypatch):
    _, model = make_pair()
    x = images(B)
    with torch.no_grad():
        clean = model(x)

    def broken(*a, **k):
        raise RuntimeError("mlp exploded")

    monkeypatch.setattr(model.blocks[1].mlp, "forward", broken)
    with pytest.raises(RuntimeError, match="mlp exploded"):
        model.run_with_cache(x)
    _assert_no_hooks(model)
    monkeypatch.undo()

    def bad(t, hook):
        raise RuntimeError("bad hook")

    with pytest.raises(RuntimeError, match="bad hook"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", bad)]):
            model.run_with_cache(x)
    _assert_no_hooks(model)
    assert not model.is_caching
    with torch.no_grad():
        torch.testing.assert_close(model(x), clean, atol=0, rtol=0)


@pytest.mark.parametrize("bad_name", ["blocks.0.hook_nope", "blocks.0.attn.hook_result"])
def test_no_partial_attachment_after_bad_name(bad_name):
    _, model = make_pair()
    fn = lambda t, hook: t * 0  # noqa: E731
    with pytest.raises(ValueError):
        model.run_with_hooks(
            images(B), fwd_hooks=[("blocks.0.hook_resid_pre", fn), (lambda n: "mlp" in n, fn), (bad_name, fn)]
        )
    _assert_no_hooks(model)


@pytest.mark.parametrize("site", ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.1.ln2.hook_scale"])
def test_backward_hooks_see_the_gradient_of_their_activation(site):
    """The gradient a backward hook receives equals torch.autograd.grad of the same scalar with respect to the
    activation captured at that point in the same forward (also at fast-path sites that bwd hooks switch off)."""
    _, model = make_pair()
    x = images(B)
    with torch.no_grad():
        clean = model(x)
    acts, grads = {}, {}
    logits = model.run_with_hooks(
        x,
        fwd_hooks=[(site, lambda t, hook: acts.setdefault(hook.name, t))],
        bwd_hooks=[(site, lambda g, hook: grads.setdefault(hook.name, g.clone()))],
        reset_hooks_end=False,
    )
    try:
        torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)  # the hooks observe only
        score = logits[:, 3].sum()
        (expected,) = torch.autograd.grad(score, acts[site], retain_graph=True)
        score.backward()
    finally:
        model.reset_hooks()
    _assert_no_hooks(model)
    assert expected.abs().max() > 0
    assert grads[site].shape == acts[site].shape
    torch.testing.assert_close(grads[site], expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    "hook_name, edit",
    [
        ("blocks.1.attn.hook_pattern", lambda t: t.flip(-1)),
        ("blocks.0.attn.hook_attn_scores", lambda t: 2 * t),
        ("blocks.0.ln2.hook_scale", lambda t: 3 * t),
        ("blocks.1.ln1.hook_normalized", lambda t: -t),
    ],
)
def test_plain_pytorch_pre_hooks_switch_to_the_explicit_path(hook_name, edit):
    """A register_forward_pre_hook on a HookPoint of a fast-path site (fused attention, F.layer_norm) must fire and
    take effect exactly as the same edit through a TransformerLens hook does."""
    _, model = make_pair()
    x = images(B)
    fired = []

    def pre_hook(module, args):
        fired.append(module.name)
        return (edit(args[0]),)

    with torch.no_grad():
        clean = model(x)
        expected = model.run_with_hooks(x, fwd_hooks=[(hook_name, lambda t, hook: edit(t))])
        handle = model.mod_dict[hook_name].register_forward_pre_hook(pre_hook)
        try:
            out = model(x)
        finally:
            handle.remove()
    assert fired == [hook_name]
    assert (expected - clean).abs().max() > 1e-3
    torch.testing.assert_close(out, expected, atol=0, rtol=0)

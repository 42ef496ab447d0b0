"""``HookedViT.forward(readout_only=True)``: the last block computes only the tokens the head reads.

Every family of ``test_families`` either gives timm's logits (to float32 rounding) or is refused with the reason;
hooks that would see the pruned tokens refuse it; the patching engine turns it on exactly when its hooks allow.
"""
import pytest
import torch

from model_helpers import images, make_pair
from test_families import EVA, FAMILIES, _pair
from vit_patching.patching.engine import Intervention, run_interventions

# Observed |readout_only - timm| on these randomised models: at most 1.0e-6 (logits of size 1.4-3.1).
ATOL, RTOL = 2e-6, 1e-6


def _family(name):
    if name in FAMILIES:
        m, model = _pair(name)
        return m, model, images(2, *m.patch_embed.img_size)
    timm_name, kwargs, _ = EVA[name]
    m, model = make_pair(timm_name, **kwargs)
    return m, model, images(2)


@pytest.mark.parametrize("family", list(FAMILIES) + list(EVA))
def test_every_family_matches_timm_or_is_refused_with_the_reason(family):
    m, model, x = _family(family)
    with torch.no_grad():
        ref = m(x)
        if model.readout_tokens() is None:
            with pytest.raises(ValueError, match=f"global_pool={model.cfg.global_pool!r} reads every token"):
                model(x, readout_only=True)
            return
        if model.cfg.parallel_attn_mlp:
            with pytest.raises(ValueError, match="the last block is a parallel block"):
                model(x, readout_only=True)
            return
        out = model(x, readout_only=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_distilled_reads_cls_and_dist_and_rope_prefix_queries_are_unrotated():
    m, model = make_pair("deit_tiny_distilled_patch16_224")
    x = images(3)
    assert model.readout_tokens() == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x, readout_only=True), m(x), atol=ATOL, rtol=RTOL)
    m, model = make_pair("vit_small_patch16_rope_224")  # RoPE with a CLS token: its query is never rotated
    assert model.cfg.rope and model.readout_tokens() == 1
    with torch.no_grad():
        torch.testing.assert_close(model(images(2), readout_only=True), m(images(2)), atol=ATOL, rtol=RTOL)


def test_from_a_cached_residual_and_with_a_write_at_the_last_block_input():
    m, model = make_pair()
    x = images(4)
    L = model.cfg.n_layers
    last = f"blocks.{L - 1}.hook_resid_pre"

    def write(act, hook):  # a patch at the last block's input: allowed, it comes before the pruning
        act = act.clone()
        act[:, 3] = 2.0
        return act

    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
        torch.testing.assert_close(model(resid, start_at_layer=1, readout_only=True), m(x), atol=ATOL, rtol=RTOL)
        full = model.run_with_hooks(x, fwd_hooks=[(last, write)])
        pruned = model.run_with_hooks(x, fwd_hooks=[(last, write)], readout_only=True)
        assert not torch.allclose(full, m(x), atol=1e-3)  # the write matters
        torch.testing.assert_close(pruned, full, atol=ATOL, rtol=RTOL)
        # start_at_layer=L runs no block: nothing to prune, the head alone
        end = model(x, stop_at_layer=L)
        torch.testing.assert_close(model(end, start_at_layer=L, readout_only=True), model(end, start_at_layer=L))


def test_gradients_agree_with_the_full_forward():
    _, model = make_pair()
    x = images(2).requires_grad_(True)
    g_full, = torch.autograd.grad(model(x)[:, 3].sum(), x)
    g_pruned, = torch.autograd.grad(model(x, readout_only=True)[:, 3].sum(), x)
    assert g_full.abs().max() > 1e-3
    torch.testing.assert_close(g_pruned, g_full, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_pre",
                                  "blocks.1.ln2.hook_scale", "ln_final.hook_normalized"])
def test_refused_when_a_hook_would_see_the_pruned_tokens(hook):
    _, model = make_pair()
    x = images(2)
    assert model.readout_only_blockers([hook]) == [f"hook {hook!r} reads every token of the last block"]
    with torch.no_grad(), pytest.raises(ValueError, match=f"readout_only: .*hook {hook!r}"):
        model.run_with_hooks(x, fwd_hooks=[(hook, lambda a, hook: a)], readout_only=True)
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())  # run_with_hooks removed it
    # hooks before the pruned part, and the pooled features / logits, are fine
    assert model.readout_only_blockers(["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "hook_pooled",
                                        "hook_logits"]) == []


def test_refusals_of_the_argument_itself():
    _, model = make_pair()
    x = images(2)
    with pytest.raises(ValueError, match="readout_only: expected False with stop_at_layer"):
        model(x, stop_at_layer=1, readout_only=True)
    with pytest.raises(TypeError, match="readout_only"):
        model(x, readout_only=1)
    model.set_use_split_qkv_input(True)
    assert model.readout_only_blockers() == ["split q/k/v inputs (use_split_qkv_input / use_attn_in) are on"]
    with pytest.raises(ValueError, match="split q/k/v inputs"):
        model(x, readout_only=True)
    with pytest.raises(ValueError, match="n_out: expected None while use_split_qkv_input"):
        model.blocks[1](torch.zeros(1, 17, 32), n_out=1)


def _last_mlp_tokens(model, fn):
    """Token counts the last block's MLP saw during ``fn()`` (a plain torch hook: not a HookPoint, no blocker)."""
    seen = []
    handle = model.blocks[-1].mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_engine_prunes_exactly_when_its_hooks_allow():
    _, model = make_pair()
    x = images(3)
    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
        full = model(resid, start_at_layer=1)
    site = "blocks.1.hook_resid_pre"
    iv = Intervention(site, torch.tensor([0, 2]), (torch.tensor([5, 5]),), torch.full((2, 32), 3.0))

    def expected():
        def write(act, hook):
            act = act.clone()
            act[[0, 2], 5] = 3.0
            return act

        with torch.no_grad():
            return model.run_with_hooks(resid, fwd_hooks=[(site, write)], start_at_layer=1)

    out = []
    assert _last_mlp_tokens(model, lambda: out.append(run_interventions(model, resid, [iv], start_layer=1)[0])) == [1]
    torch.testing.assert_close(out[0], expected(), atol=ATOL, rtol=RTOL)
    assert not torch.allclose(out[0][0], full[0], atol=1e-3)  # the write matters; row 1 is not written
    torch.testing.assert_close(out[0][1], full[1], atol=ATOL, rtol=RTOL)
    # recording the last block's output needs every token: the full block runs
    rec = "blocks.1.hook_resid_post"
    seen = _last_mlp_tokens(model, lambda: out.append(run_interventions(model, resid, [iv], start_layer=1, record=[rec])))
    assert seen == [model.cfg.n_pos] and out[1][1][rec].shape == (3, model.cfg.n_pos, 32)
    torch.testing.assert_close(out[1][0], out[0], atol=ATOL, rtol=RTOL)


def test_readout_only_does_not_depend_on_the_thread_count():
    # A one-process run (torch's default threads) must equal torchrun's one-thread ranks bit for bit: the readout
    # queries use the explicit attention, as SDPA's CPU kernel splits one query's keys across threads.
    _, model = make_pair(img_size=64, patch_size=8, embed_dim=128, num_heads=4)
    resid = torch.randn(64, model.cfg.n_pos, 128, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(model(resid, start_at_layer=1, readout_only=True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])

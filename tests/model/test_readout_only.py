"""``HookedViT.forward(readout_only=True)``: the last block computes only the tokens the head reads.

Every family of ``test_families`` either gives timm's logits (to float32 rounding) or is refused with the reason;
hooks that would see the pruned tokens refuse it (hook points, and plain PyTorch module and global hooks on
the pruned part, naming the module); the patching engine turns it on exactly when its hooks allow.
"""
import pytest
import torch
import torch.nn.modules.module as torch_module

import vit_patching as vp
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
    """Token counts the last block's MLP saw during ``fn()``: its ``forward`` is wrapped for the call (a hook,
    plain or HookPoint, would itself turn the pruning off)."""
    seen = []
    mlp = model.blocks[-1].mlp
    forward = mlp.forward
    mlp.forward = lambda x: (seen.append(x.shape[1]), forward(x))[1]
    try:
        fn()
    finally:
        del mlp.forward
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


# Plain PyTorch hooks: (kind in the message, register on a module). Forward and pre hooks mix the tokens, so a
# pruned last block under them would change the logits.
def _mix(t):
    return t + t.mean(1, keepdim=True)


PLAIN_HOOKS = {  # name: (the kind the message names, register on a module)
    "forward": ("forward", lambda mod: mod.register_forward_hook(lambda m, args, out: _mix(out))),
    "forward_with_kwargs": ("forward", lambda mod: mod.register_forward_hook(
        lambda m, args, kwargs, out: _mix(out), with_kwargs=True)),
    "forward_always_called": ("forward", lambda mod: mod.register_forward_hook(
        lambda m, args, out: _mix(out), always_call=True)),
    "forward_pre": ("forward-pre", lambda mod: mod.register_forward_pre_hook(
        lambda m, args: (_mix(args[0]), *args[1:]))),
    "forward_pre_with_kwargs": ("forward-pre", lambda mod: mod.register_forward_pre_hook(
        lambda m, args, kwargs: ((_mix(args[0]), *args[1:]), kwargs), with_kwargs=True)),
    "full_backward": ("backward", lambda mod: mod.register_full_backward_hook(lambda m, gin, gout: None)),
    "legacy_backward": ("backward", lambda mod: mod.register_backward_hook(lambda m, gin, gout: None)),
    "full_backward_pre": ("backward-pre", lambda mod: mod.register_full_backward_pre_hook(lambda m, gout: None)),
}
# Every module the pruned part runs (fc_norm on a model that has one), and hooks that do not block.
LATE_MODULES = ["blocks.1", "blocks.1.attn", "blocks.1.attn.q_norm", "blocks.1.attn.k_norm", "blocks.1.mlp",
                "blocks.1.ln1", "blocks.1.ln2", "ln_final", "fc_norm", "head"]


def _engine_run(model, resid):
    """One engine run from block 1 with a write at ``blocks.1.hook_resid_pre`` (before the pruned part)."""
    iv = Intervention("blocks.1.hook_resid_pre", torch.tensor([0, 2]), (torch.tensor([5, 5]),),
                      torch.full((2, model.cfg.d_model), 3.0))
    return run_interventions(model, resid, [iv], start_layer=1)[0]


def _full_block_run(model, resid):
    """:func:`_engine_run` with the full last block (a blocker forced), whatever hooks are attached."""
    blockers = model.readout_only_blockers
    model.readout_only_blockers = lambda hooks=(): ["forced by the test"]
    try:
        return _engine_run(model, resid)
    finally:
        del model.readout_only_blockers
    assert model.readout_only_blockers == blockers


@pytest.mark.parametrize("hook", list(PLAIN_HOOKS))
@pytest.mark.parametrize("name", LATE_MODULES)
def test_a_plain_module_hook_on_the_pruned_part_turns_readout_only_off(hook, name):
    fc_norm = name == "fc_norm"  # timm: fc_norm=True with CLS pooling moves the final norm after the pooling
    _, model = make_pair(fc_norm=True, qk_norm=True) if fc_norm else make_pair(qk_norm=True)
    x = images(3)
    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
    assert model.readout_only_blockers() == []
    kind, register = PLAIN_HOOKS[hook]
    handle = register(model.get_submodule(name))
    try:
        assert model.readout_only_blockers() == [f"a {kind} hook on module {name!r} would see only the head's tokens"]
        with pytest.raises(ValueError, match=f"readout_only: .*a {kind} hook on module {name!r}"):
            model(x, readout_only=True)
        out = []
        seen = _last_mlp_tokens(model, lambda: out.append(_engine_run(model, resid)))
        assert seen == [model.cfg.n_pos]  # the engine ran the full last block
        torch.testing.assert_close(out[0], _full_block_run(model, resid), atol=0, rtol=0)
    finally:
        handle.remove()
    assert model.readout_only_blockers() == []


GLOBAL_HOOKS = {
    "forward": lambda: torch_module.register_module_forward_hook(lambda m, args, out: None),
    "forward-pre": lambda: torch_module.register_module_forward_pre_hook(lambda m, args: None),
    "backward": lambda: torch_module.register_module_full_backward_hook(lambda m, gin, gout: None),
    "backward-pre": lambda: torch_module.register_module_full_backward_pre_hook(lambda m, gout: None),
}


@pytest.mark.parametrize("kind", list(GLOBAL_HOOKS))
def test_a_global_module_hook_turns_readout_only_off(kind):
    _, model = make_pair()
    x = images(3)
    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
    handle = GLOBAL_HOOKS[kind]()
    try:
        (reason,) = model.readout_only_blockers()
        assert reason.startswith(f"a global {kind} hook (torch.nn.modules.module.register_module_")
        with pytest.raises(ValueError, match=f"readout_only: .*a global {kind} hook"):
            model(x, readout_only=True)
        assert _last_mlp_tokens(model, lambda: _engine_run(model, resid)) == [model.cfg.n_pos]
    finally:
        handle.remove()
    assert model.readout_only_blockers() == []


@pytest.mark.parametrize("hook", list(PLAIN_HOOKS))
def test_a_plain_hook_before_the_pruned_part_keeps_readout_only_on(hook):
    _, model = make_pair()
    x = images(3)
    with torch.no_grad():
        resid = model(x, stop_at_layer=1)
        plain = _engine_run(model, resid)
    seen = []  # tokens the earlier hooks see: all of them, the pruning starts after
    handles = [PLAIN_HOOKS[hook][1](model.get_submodule(n)) for n in ("blocks.0", "blocks.0.mlp", "embed")]
    handles += [model.blocks[1].hook_resid_pre.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))]
    try:
        assert model.readout_only_blockers() == []
        with torch.no_grad():
            torch.testing.assert_close(model(x, readout_only=True), model(x), atol=ATOL, rtol=RTOL)
        out = []
        assert _last_mlp_tokens(model, lambda: out.append(_engine_run(model, resid))) == [1]  # pruned
        assert seen[-1] == model.cfg.n_pos
        # a hook on the residual entering block 1 (the engine's start): the engine run is unchanged by it
        torch.testing.assert_close(out[0], plain, atol=0, rtol=0)
    finally:
        for h in handles:
            h.remove()


def test_caap_under_a_token_mixing_hook_on_the_last_block_equals_the_full_last_block():
    # The reproduction: pruned under this hook, the logits moved by 2.57 and the CAAP map by 0.47.
    model = vp.load_model("toy-shapes")
    x = vp.load_dataset("shapes", n=2, seed=1).images
    handle = model.blocks[-1].register_forward_hook(lambda m, args, out: _mix(out))
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="a forward hook on module 'blocks.3'"):
            model(x, readout_only=True)
        got = vp.caap(model, x, window=(0, 2)).patch_map
        model.readout_only_blockers = lambda hooks=(): ["forced by the test"]
        try:
            full = vp.caap(model, x, window=(0, 2)).patch_map
        finally:
            del model.readout_only_blockers
    finally:
        handle.remove()
    plain = vp.caap(model, x, window=(0, 2)).patch_map
    assert (plain - full).abs().max() > 0.1  # the hook matters
    torch.testing.assert_close(got, full, atol=0, rtol=0)

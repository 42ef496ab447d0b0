"""Splicing SAEs into a HookedViT: exact with the error term, a decode(encode(x)) replacement without it, latents
as hook points that cache and patch, clean removal, positions, and the readout_only shortcut."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.patching import PatchSpec, Site, run_patch_spec, target_logit  # noqa: E402
from vit_patching.sae import SAE_HOOKS, SAEConfig, make_sae, spliced_saes  # noqa: E402

ARCHS = ["standard", "topk", "jumprelu", "gated"]
# (hook, d_in, reshape): residual, MLP output and per-head z (head * d_head = 2 * 16) hooks of the 2-block model
HOOKS = [("blocks.0.hook_resid_pre", 32, "none"), ("blocks.0.hook_mlp_out", 32, "none"),
         ("blocks.1.attn.hook_z", 32, "hook_z")]


@pytest.fixture(scope="module")
def model():
    return make_pair()[1]


def _sae(arch, hook="blocks.0.hook_resid_post", d_in=32, reshape="none", seed=0, **kw):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(arch, d_in, 64, hook_name=hook, k=6 if arch == "topk" else None,
                             reshape_activations=reshape, **kw))
    with torch.no_grad():  # non-zero biases/thresholds so every term of the formulas matters
        for name, p in sae.named_parameters():
            if p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p).abs() if name == "threshold" else 0.2 * torch.randn_like(p))
    return sae.eval()


def _names(model):
    return [n for n in model.hook_dict if ".sae." not in n]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("hook, d_in, reshape", HOOKS)
def test_with_the_error_term_outputs_and_every_hook_are_unchanged_bit_for_bit(model, arch, hook, d_in, reshape):
    x = images(2)
    with torch.no_grad():
        ref = model(x)
        ref_cached, ref_cache = model.run_with_cache(x, names_filter=_names(model))
        with model.saes([_sae(arch, hook, d_in, reshape)], use_error_term=True):
            assert torch.equal(model(x), ref)
            out, cache = model.run_with_cache(x)
    assert torch.equal(out, ref_cached)
    for name in ref_cache.keys():
        assert torch.equal(cache[name], ref_cache[name]), name
    sae_in, recons = cache[f"{hook}.sae.hook_sae_input"], cache[f"{hook}.sae.hook_sae_recons"]
    assert torch.equal(sae_in, ref_cache[hook])
    # the error is not trivially zero: the SAE's reconstruction differs from its input
    assert (recons - sae_in).abs().max() > 0.1
    torch.testing.assert_close(cache[f"{hook}.sae.hook_sae_error"], sae_in - recons, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("hook, d_in, reshape", HOOKS)
def test_without_it_the_model_runs_on_decode_encode(model, arch, hook, d_in, reshape):
    x = images(2)
    sae = _sae(arch, hook, d_in, reshape)
    with torch.no_grad():
        hand_out = model.run_with_hooks(x, fwd_hooks=[(hook, lambda a, hook: sae.decode(sae.encode(a)))])
        with model.hooks(fwd_hooks=[(hook, lambda a, hook: sae.decode(sae.encode(a)))]):
            hand, hand_cache = model.run_with_cache(x, names_filter=_names(model))
        with model.saes([sae]):
            out = model(x)
            cached, cache = model.run_with_cache(x)
    assert torch.equal(out, hand_out) and torch.equal(cached, hand)
    assert not torch.allclose(out, model(x))  # the reconstruction is lossy: the splice did something
    for name in hand_cache.keys():
        if name != hook:  # the spliced model caches the SAE's input there, the hand-written hook its output
            assert torch.equal(cache[name], hand_cache[name]), name
    latents = cache[f"{hook}.sae.hook_sae_acts_post"]
    assert latents.shape == (2, 17, 64) and torch.equal(latents, sae.encode(cache[hook]))
    assert torch.equal(cache[f"{hook}.sae.hook_sae_output"], cache[f"{hook}.sae.hook_sae_recons"])
    assert f"{hook}.sae.hook_sae_error" not in cache.keys()  # no error term, no error hook point


def test_patching_one_latent_at_one_position_equals_a_hand_written_hooked_run(model):
    hook, pos, k = "blocks.0.hook_resid_post", 5, None
    sae = _sae("standard", hook)
    src, tgt = images(1, seed=3), images(1, seed=4)
    act = f"{hook}.sae.hook_sae_acts_post"
    with torch.no_grad():
        with model.saes([sae], use_error_term=True):
            _, src_cache = model.run_with_cache(src, names_filter=[act])
            _, tgt_cache = model.run_with_cache(tgt, names_filter=[act])
            k = int((src_cache[act][0, pos] - tgt_cache[act][0, pos]).abs().argmax())  # a latent that differs
            value = src_cache[act][0, pos, k]

            def patch_latent(latents, hook):
                latents[:, pos, k] = value
                return latents

            patched = model.run_with_hooks(tgt, fwd_hooks=[(act, patch_latent)])
        clean = model(tgt)

        def by_hand(resid, hook):  # the SAE and its error term written out on the unspliced model
            latents = sae.encode(resid)
            edited = latents.clone()
            edited[:, pos, k] = value
            return resid + (sae.decode(edited) - sae.decode(latents))

        expected = model.run_with_hooks(tgt, fwd_hooks=[(hook, by_hand)])
    assert (patched - clean).abs().max() > 1e-3  # the latent matters
    torch.testing.assert_close(patched, expected, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["standard", "gated"])
def test_pre_activations_are_cached_and_patchable(model, arch):
    hook = "blocks.0.hook_resid_post"
    sae, x = _sae(arch, hook), images(2)
    pre = f"{hook}.sae.hook_sae_acts_pre"
    with torch.no_grad():
        with model.saes([sae], use_error_term=True):
            _, cache = model.run_with_cache(x, names_filter=[hook, pre])
            patched = model.run_with_hooks(x, fwd_hooks=[(pre, lambda h, hook: h + 1.0)])
        xc = cache[hook] - sae.b_dec
        expected_pre = (xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag if arch == "gated"
                        else xc @ sae.W_enc + sae.b_enc)
        assert torch.equal(cache[pre], expected_pre)

        def by_hand(a, hook):  # latents from the shifted pre-activation; the error term keeps the rest exact
            shifted = sae.activation(sae.hidden_pre(sae.process_input(a)) + 1.0, sae.process_input(a))
            return a + (sae.decode(shifted) - sae.decode(sae.encode(a)))

        expected = model.run_with_hooks(x, fwd_hooks=[(hook, by_hand)])
    assert (patched - model(x)).abs().max() > 1e-3
    torch.testing.assert_close(patched, expected, atol=0, rtol=0)


def test_in_place_edits_by_hooks_act_like_returned_copies(model):
    hook = "blocks.0.hook_resid_post"
    sae, x = _sae("standard", hook), images(2)

    def in_place(a, hook):
        a[:, 3] += 1.0
        return a

    def copy(a, hook):
        a = a.clone()
        a[:, 3] += 1.0
        return a

    with model.saes([sae], use_error_term=True):
        for name in (f"{hook}.sae.hook_sae_input", f"{hook}.sae.hook_sae_acts_post"):
            with torch.no_grad():
                expected = model.run_with_hooks(x, fwd_hooks=[(name, copy)])
                assert (expected - model(x)).abs().max() > 1e-3
            out = model.run_with_hooks(x, fwd_hooks=[(name, in_place)])  # with autograd on: backward must work
            out[:, 0].sum().backward()
            assert torch.equal(out.detach(), expected), name
    model.zero_grad(set_to_none=True)


def test_hooks_on_the_hook_name_see_and_patch_the_sae_input(model):
    hook = "blocks.0.hook_resid_post"
    sae = _sae("topk", hook)
    x = images(2)
    seen = {}
    with torch.no_grad(), model.saes([sae]):
        def zero_cls(a, hook):
            a = a.clone()
            a[:, 0] = 0
            return a

        model.run_with_hooks(x, fwd_hooks=[(hook, zero_cls),
                                           (f"{hook}.sae.hook_sae_input", lambda a, hook: seen.update(a=a))])
    assert torch.equal(seen["a"][:, 0], torch.zeros(2, 32))


def test_gradients_flow_to_latents_and_upstream_gradients_are_unchanged(model):
    hook = "blocks.0.hook_resid_post"
    x = images(2).requires_grad_(True)
    (g_ref,) = torch.autograd.grad(model(x)[:, 3].sum(), x)
    grads = {}
    with model.saes([_sae("jumprelu", hook)], use_error_term=True):
        model.add_hook(f"{hook}.sae.hook_sae_acts_post", lambda g, hook: grads.update(g=g), dir="bwd")
        model.add_hook(f"{hook}.sae.hook_sae_error", lambda g, hook: grads.update(err=g), dir="bwd")
        assert f"{hook}.sae.module.W_enc" in model.state_dict()  # the SAE is a submodule while spliced
        (g,) = torch.autograd.grad(model(x)[:, 3].sum(), x)
    assert grads["g"].shape == (2, 17, 64) and grads["g"].abs().max() > 0
    assert grads["err"].shape == (2, 17, 32) and grads["err"].abs().max() > 0  # an error node
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    assert not model.hook_dict[hook]._backward_hooks and not spliced_saes(model)


def test_an_sae_in_another_dtype_keeps_the_model_dtype_and_exactness(model):
    x = images(2)
    with torch.no_grad():
        ref = model(x)
        sae = _sae("topk", dtype="float64")
        with model.saes([sae], use_error_term=True):
            out, cache = model.run_with_cache(x, names_filter=["blocks.0.hook_resid_post.sae.hook_sae_acts_post",
                                                               "blocks.1.hook_resid_pre"])
    assert cache["blocks.0.hook_resid_post.sae.hook_sae_acts_post"].dtype == torch.float64
    assert cache["blocks.1.hook_resid_pre"].dtype == torch.float32 and torch.equal(out, ref)


def test_context_manager_removes_everything_also_after_an_exception(model):
    before_names, before_params = list(model.hook_dict), len(list(model.parameters()))
    sae = _sae("gated", "blocks.1.hook_resid_pre")
    with pytest.raises(RuntimeError, match="boom"), model.saes([sae, _sae("standard")], use_error_term=True):
        assert list(spliced_saes(model)) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
        assert all(f"blocks.1.hook_resid_pre.sae.{h}" in model.hook_dict for h in SAE_HOOKS)
        model.add_hook("blocks.1.hook_resid_pre.sae.hook_sae_acts_post", lambda a, hook: a, is_permanent=True)
        raise RuntimeError("boom")
    assert list(model.hook_dict) == before_names and len(list(model.parameters())) == before_params
    assert not spliced_saes(model) and type(model.hook_dict["blocks.1.hook_resid_pre"]).__name__ == "HookPoint"
    assert not sae._forward_hooks and not any(m._forward_hooks for m in sae.modules())
    model.add_sae(sae)
    model.add_sae(_sae("standard"), use_error_term=True)
    assert len(spliced_saes(model)) == 2
    model.reset_saes()
    assert list(model.hook_dict) == before_names and not spliced_saes(model)


@pytest.mark.parametrize("positions", ["patches", "cls"])
def test_positions_apply_the_sae_only_to_those_tokens(model, positions):
    hook = "blocks.0.hook_resid_post"
    sae = _sae("standard", hook, positions=positions)
    sel = slice(1, None) if positions == "patches" else slice(0, 1)  # CLS is the one prefix token here
    x = images(2)

    def by_hand(a, hook):
        a = a.clone()
        a[:, sel] = sae.decode(sae.encode(a[:, sel]))
        return a

    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(hook, by_hand)])
        with model.saes([sae]):  # positions from sae.cfg
            out, cache = model.run_with_cache(x, names_filter=[f"{hook}.sae.hook_sae_acts_post"])
    assert cache[f"{hook}.sae.hook_sae_acts_post"].shape == (2, 16 if positions == "patches" else 1, 64)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_readout_only_sees_an_sae_spliced_in_the_last_block(model):
    x = images(2)
    assert model.readout_only_blockers() == []
    with model.saes([_sae("standard", "blocks.1.hook_resid_mid")], use_error_term=True):
        assert model.readout_only_blockers() == [
            "an SAE spliced at 'blocks.1.hook_resid_mid' reads every token of the last block"]
        with pytest.raises(ValueError, match="readout_only: .*an SAE spliced at 'blocks.1.hook_resid_mid'"):
            model(x, readout_only=True)
    with torch.no_grad(), model.saes([_sae("standard", "blocks.1.hook_resid_pre")]):
        # the last block's input is computed for every token before the pruning: no blocker, same logits
        assert model.readout_only_blockers() == []
        torch.testing.assert_close(model(x, readout_only=True), model(x), atol=1e-6, rtol=0)


class LinearAE(nn.Module):
    """Not one of ours: any module with encode/decode (and here no cfg at all)."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(32, 8), nn.Linear(8, 32)

    def encode(self, x):
        return torch.relu(self.enc(x))

    def decode(self, z):
        return self.dec(z)


def test_any_module_with_encode_decode_and_a_stated_hook(model):
    ae, x, hook = LinearAE(), images(2), "blocks.1.hook_resid_pre"
    with pytest.raises(ValueError, match="hook_name: expected the hook the SAE reads"):
        model.add_sae(ae)
    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(hook, lambda a, hook: ae.decode(ae.encode(a)))])
        model.add_sae(ae, hook_name=hook)
        assert f"{hook}.sae.hook_sae_acts_pre" not in model.hook_dict  # a foreign encode has no pre-activation
        try:
            out, cache = model.run_with_cache(x, names_filter=[f"{hook}.sae.hook_sae_acts_post"])
        finally:
            model.reset_saes()
    assert torch.equal(out, expected) and cache[f"{hook}.sae.hook_sae_acts_post"].shape == (2, 17, 8)


def test_bad_arguments_are_refused_naming_them(model):
    sae = _sae("standard")
    before = list(model.hook_dict)
    with pytest.raises(ValueError, match="hook_name: expected a hook point of the model.*'blocks.9.hook_x'"):
        model.add_sae(_sae("standard", "blocks.9.hook_x"))
    with pytest.raises(ValueError, match="hook_name: expected the SAE's own hook 'blocks.0.hook_resid_post'"):
        model.add_sae(sae, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="positions: expected one of"):
        model.add_sae(sae, positions="rows")
    with pytest.raises(TypeError, match="sae: expected an nn.Module with encode"):
        model.add_sae(nn.Linear(32, 32), hook_name="blocks.0.hook_resid_post")
    assert list(model.hook_dict) == before
    with model.saes([sae]):
        with pytest.raises(ValueError, match="already has an SAE spliced"):
            model.add_sae(_sae("topk"))
    x = images(2)
    with model.saes([_sae("standard", d_in=16)]):
        with pytest.raises(ValueError, match=r"sae: expected an SAE whose d_in is the last axis of "
                                             r"'blocks.0.hook_resid_post' \(32\), got d_in=16"):
            model(x)
    with model.saes([_sae("standard", "blocks.0.attn.hook_z", d_in=16, reshape="hook_z")]):
        with pytest.raises(ValueError, match=r"d_in is the head \* d_head of 'blocks.0.attn.hook_z' \(32\)"):
            model(x)
    with model.saes([_sae("standard", "hook_pooled", positions="patches")]):
        with pytest.raises(ValueError, match="positions: expected 'all' for 'hook_pooled'"):
            model(x)
    assert list(model.hook_dict) == before
    _, gap = make_pair(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="positions: expected 'all' or 'patches' for a model without a CLS"):
        gap.add_sae(sae, positions="cls")
    assert not spliced_saes(gap)


@pytest.mark.parametrize("sae_hook, site_hook", [("blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre"),
                                                 ("blocks.1.hook_resid_mid", "blocks.0.hook_resid_post")])
def test_the_patching_engine_runs_on_a_spliced_model(model, sae_hook, site_hook):
    """The engine starts from cached residuals (which hold the SAE's input at its hook, so the SAE runs once) and
    must not prune the last block under an SAE there: its values equal hand-written hooked runs."""
    src, tgt = images(2, seed=3), images(2, seed=4)
    positions = (0, 3, 9)
    spec = PatchSpec([(Site(site_hook, pos=p),) for p in positions])
    metric = target_logit(torch.tensor([2, 7]))
    with torch.no_grad(), model.saes([_sae("topk", sae_hook)]):
        run = run_patch_spec(model, spec, metric, target=tgt, source=src, batch_size=4, progress=False)
        _, src_cache = model.run_with_cache(src, names_filter=[site_hook])
        for i, p in enumerate(positions):
            def write(a, hook, p=p):
                a[:, p] = src_cache[site_hook][:, p]
                return a

            hand = metric(model.run_with_hooks(tgt, fwd_hooks=[(site_hook, write)]), torch.arange(2))
            torch.testing.assert_close(run.values[i], hand, atol=5e-7, rtol=0)  # batching: observed 1.2e-7
        assert not torch.allclose(run.values[1], metric(model(tgt), torch.arange(2)))  # the patch matters


def test_activation_cache_helpers_read_a_spliced_run(model):
    x = images(2)
    with torch.no_grad():
        _, ref = model.run_with_cache(x)
        with model.saes([_sae("standard")], use_error_term=True):
            _, cache = model.run_with_cache(x)
    assert torch.equal(cache.decompose_resid(), ref.decompose_resid())
    assert torch.equal(cache.accumulated_resid(), ref.accumulated_resid())

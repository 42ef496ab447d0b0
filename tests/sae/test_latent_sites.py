"""SAE latents as engine sites: hook names, the engine's checks and start block, and latent sweeps equal to
hand-written run_with_hooks runs (with and without the error term, all positions or one, an SAE on the patch
tokens only)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.hook_names import sae_act_name, site_axes, split_sae_name  # noqa: E402
from vit_patching.patching import PatchSpec, Site, latent_sweep, run_patch_spec, target_logit  # noqa: E402
from vit_patching.patching.engine import spec_memory  # noqa: E402
from vit_patching.sae import SAEConfig, make_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"
LAT = f"{HOOK}.sae.hook_sae_acts_post"


@pytest.fixture(scope="module")
def model():
    return make_pair()[1]


def sae_at(hook=HOOK, arch="topk", seed=0, positions="all", d_sae=64):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(arch, 32, d_sae, hook_name=hook, k=8 if arch == "topk" else None, positions=positions))
    with torch.no_grad():
        sae.b_enc.copy_(0.2 * torch.randn_like(sae.b_enc))
        sae.b_dec.copy_(0.2 * torch.randn_like(sae.b_dec))
    return sae.eval()


def hand_patch(model, tgt, src, name, latent, pos=None, metric=None):
    """One run_with_hooks run that writes latent ``latent`` (at ``pos`` or every position) of the source run."""
    with torch.no_grad():
        _, cache = model.run_with_cache(src, names_filter=[name])

        def write(act, hook):
            sl = (slice(None), slice(None) if pos is None else pos, latent)
            act[sl] = cache[name][sl]
            return act

        return metric(model.run_with_hooks(tgt, fwd_hooks=[(name, write)]), torch.arange(tgt.shape[0]))


def test_sae_hook_names_and_axes():
    assert sae_act_name(HOOK) == LAT and sae_act_name("embed", "error") == "hook_embed.sae.hook_sae_error"
    assert split_sae_name(LAT) == (HOOK, "hook_sae_acts_post") and split_sae_name(HOOK) is None
    assert site_axes(LAT) == ("pos", "latent") and site_axes(sae_act_name(HOOK, "acts_pre")) == ("pos", "latent")
    assert site_axes(sae_act_name(HOOK, "error")) == ("pos",)
    assert site_axes(sae_act_name("blocks.0.attn.hook_z", "recons")) == ("pos", "head")
    with pytest.raises(ValueError, match="point: expected one of"):
        sae_act_name(HOOK, "latents")
    with pytest.raises(ValueError, match="hook: expected the hook an SAE is spliced at"):
        sae_act_name(LAT)
    with pytest.raises(ValueError, match="latents are patched per position"):
        site_axes("blocks.0.attn.hook_pattern.sae.hook_sae_acts_post")


@pytest.mark.parametrize("error_term", [True, False])
def test_engine_latent_sites_equal_hand_written_runs_and_start_at_the_sae_block(model, error_term):
    src, tgt = images(2, seed=3), images(2, seed=4)
    metric = target_logit(torch.tensor([2, 7]))
    sites = [Site(LAT, latent=5), Site(LAT, pos=3, latent=11), Site(LAT, pos=0, latent=63)]
    with model.saes([sae_at(arch="standard")], use_error_term=error_term):  # ReLU: most latents are active
        run = run_patch_spec(model, PatchSpec([(s,) for s in sites]), metric, target=tgt, source=src,
                             batch_size=4, progress=False)
        for i, s in enumerate(sites):
            hand = hand_patch(model, tgt, src, LAT, s.latent, s.pos, metric)
            torch.testing.assert_close(run.values[i], hand, atol=5e-7, rtol=0)  # batching: observed 2.4e-7
        assert run.start_layer == 1 and set(run.info["chunk_start_layers"]) == {1}
        base = metric(model(tgt), torch.arange(2))
        assert (run.values - base).abs().amax(-1).min() > 1e-4  # every patched latent matters (observed >= 1.5e-4)
        # per row: the start residual, the widest variant's values (17 positions of one latent), one copy of the
        # latents [17, 64], the logits
        mem = spec_memory(model, PatchSpec([(s,) for s in sites]), batch=2, target_cache={}, source_cache={})
        assert mem["extra_elements_per_row"] == 17 * 32 + 17 + 17 * 64 + model.cfg.n_classes


def test_engine_refuses_bad_latent_sites_before_compute(model):
    src, tgt = images(1, seed=3), images(1, seed=4)
    metric = target_logit(torch.tensor([2]))
    with pytest.raises(ValueError, match="latent: expected None, 'blocks.1.hook_resid_pre' has no latent axis"):
        Site(HOOK, latent=3).index()
    with model.saes([sae_at(positions="patches")]):
        for site, msg in [(Site(LAT, latent=64), r"latent: expected a latent in \[0, 64\)"),
                          (Site(LAT, pos=16, latent=0), r"pos: expected a token position in \[0, 16\)")]:
            with pytest.raises(ValueError, match=msg):
                run_patch_spec(model, PatchSpec([(site,)]), metric, target=tgt, source=src, progress=False)
    with pytest.raises(ValueError, match="no SAE spliced at 'blocks.1.hook_resid_pre': model.add_sae"):
        run_patch_spec(model, PatchSpec([(Site(LAT, latent=0),)]), metric, target=tgt, source=src, progress=False)
    z = "blocks.0.attn.hook_z"
    torch.manual_seed(0)
    per_head = make_sae(SAEConfig("standard", 16, 32, hook_name=z))
    with model.saes([per_head]), pytest.raises(ValueError, match="reshape_activations='hook_z'"):
        run_patch_spec(model, PatchSpec([(Site(sae_act_name(z), latent=0),)]), metric, target=tgt, source=src,
                       progress=False)


@pytest.mark.parametrize("error_term", [True, False])
def test_latent_sweep_equals_hand_written_runs(model, error_term):
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    with model.saes([sae_at()], use_error_term=error_term):
        res = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, batch_size=16, progress=False)
        by_pos = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[1, 40], per_position=True,
                              positions=[0, 9], direction="noising", batch_size=3, progress=False)
        cls = model(clean).argmax(-1)
        metric = target_logit(cls)
        assert res.axes == ("site", "latent") and res.values.shape == (1, 64, 2)
        for k in (0, 17, 63):
            torch.testing.assert_close(res.values[0, k], hand_patch(model, corrupted, clean, LAT, k, None, metric),
                                       atol=5e-7, rtol=0)
        assert by_pos.axes == ("site", "pos", "latent") and by_pos.labels["latent"] == ["F1", "F40"]
        for i, p in enumerate([0, 9]):
            for j, k in enumerate([1, 40]):
                torch.testing.assert_close(by_pos.values[0, i, j],
                                           hand_patch(model, clean, corrupted, LAT, k, p, metric), atol=5e-7, rtol=0)
    assert (res.values - res.target_score).abs().max() > 1e-3


def test_latent_sweep_on_patch_tokens_uses_model_positions(model):
    clean, corrupted = images(1, seed=3), images(1, seed=4)
    with model.saes([sae_at(positions="patches")], use_error_term=True):
        res = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[2, 3], per_position=True,
                           positions=[1, 16], progress=False)
        metric = target_logit(model(clean).argmax(-1))
        # model token 16 is the SAE's position 15 (the CLS token passes the SAE by)
        torch.testing.assert_close(res.values[0, 1, 0], hand_patch(model, corrupted, clean, LAT, 2, 15, metric),
                                   atol=5e-7, rtol=0)
        assert res.options["pos_indices"] == [1, 16] and res.labels["pos"][0] != "CLS"
        with pytest.raises(ValueError, match=r"positions: expected token positions the SAE covers, \[1, 17\)"):
            latent_sweep(model, clean, corrupted, "logit", hook=HOOK, per_position=True, positions=[0])
        with pytest.raises(ValueError, match=r"latents: expected latent indices in \[0, 64\)"):
            latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[64])
        with pytest.raises(ValueError, match="positions: expected None without per_position=True"):
            latent_sweep(model, clean, corrupted, "logit", hook=HOOK, positions=[1])
    with pytest.raises(ValueError, match="hook: expected a hook with a spliced SAE"):
        latent_sweep(model, clean, corrupted, "logit", hook=HOOK)


def test_latent_sweep_figures(model):
    clean, corrupted = images(1, seed=3), images(1, seed=4)
    with model.saes([sae_at()], use_error_term=True):
        res = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[0, 1, 2], progress=False)
        by_pos = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[0, 1], per_position=True,
                              progress=False)
    fig = res.plot()
    assert list(fig.layout.xaxis.ticktext) == ["F0", "F1", "F2"]
    heat = fig.data[0]
    torch.testing.assert_close(torch.tensor(heat.z, dtype=torch.float32)[0], res.mean()[0].float(),
                               equal_nan=True)
    facets = by_pos.plot()
    assert len(facets.data) >= 2 and "latent_sweep_by_pos" in facets.layout.title.text


def test_latent_sweep_of_pre_activations_equals_hand_written_runs(model):
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    pre = sae_act_name(HOOK, "acts_pre")
    with model.saes([sae_at(arch="jumprelu")], use_error_term=True):
        res = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, point="acts_pre", latents=[0, 9],
                           progress=False)
        metric = target_logit(model(clean).argmax(-1))
        assert res.labels["site"] == [pre] and (res.values - res.target_score).abs().max() > 1e-4
        for j, k in enumerate([0, 9]):
            torch.testing.assert_close(res.values[0, j], hand_patch(model, corrupted, clean, pre, k, None, metric),
                                       atol=5e-7, rtol=0)

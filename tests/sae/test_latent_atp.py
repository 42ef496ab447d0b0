"""AtP over SAE latents equals a hand-written autograd computation on the unspliced model (the SAE and its error
term written out), and tracks the exact latent sweep on a tiny model."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402
from test_latent_sites import HOOK, LAT, sae_at  # noqa: E402

from vit_patching.circuits import atp_latents  # noqa: E402
from vit_patching.patching import latent_sweep, target_logit  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return make_pair()[1]


def hand_atp(model, sae, source, target, metric, error_term):
    """(a' - a) * dm/da per image, position and latent, with the SAE written out as a hook on the plain model."""
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[HOOK])
        src_lat = sae.encode(cache[HOOK])
    kept = {}

    def by_hand(resid, hook):
        lat = sae.encode(resid).detach().requires_grad_(True)
        kept["lat"] = lat
        return resid + (sae.decode(lat) - sae.decode(lat).detach()) if error_term else sae.decode(lat)

    logits = model.run_with_hooks(target, fwd_hooks=[(HOOK, by_hand)])
    (grad,) = torch.autograd.grad(metric(logits, torch.arange(target.shape[0])).sum(), kept["lat"])
    return (src_lat - kept["lat"].detach()) * grad, metric(logits, torch.arange(target.shape[0])).detach()


@pytest.mark.parametrize("error_term, direction", [(True, "denoising"), (False, "denoising"), (True, "noising")])
def test_atp_latents_equals_hand_written_autograd(model, error_term, direction):
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    sae = sae_at(arch="standard")
    with torch.no_grad(), model.saes([sae], use_error_term=error_term):
        metric = target_logit(model(clean).argmax(-1))
    source, target = (clean, corrupted) if direction == "denoising" else (corrupted, clean)
    effect, target_score = hand_atp(model, sae, source, target, metric, error_term)
    with model.saes([sae], use_error_term=error_term):
        est = atp_latents(model, clean, corrupted, metric, hook=HOOK, direction=direction)
        by_pos = atp_latents(model, clean, corrupted, metric, hook=LAT, latents=[3, 9], per_position=True,
                             positions=[0, 5, 16], direction=direction)
    assert est.axes == ("site", "latent") and est.kind == "atp_latents"
    torch.testing.assert_close(est.target_score, target_score, atol=2e-6, rtol=0)
    torch.testing.assert_close(est.values[0] - est.target_score, effect.sum(1).T, atol=1e-6, rtol=1e-5)
    expected = effect[:, [0, 5, 16]][..., [3, 9]].permute(1, 2, 0)
    torch.testing.assert_close(by_pos.values[0] - by_pos.target_score, expected, atol=1e-6, rtol=1e-5)
    assert effect.abs().max() > 1e-2  # not trivially zero


def test_atp_latents_tracks_the_exact_latent_sweep_and_verifies_exactly(model):
    clean, corrupted = images(4, seed=3), images(4, seed=4)
    with model.saes([sae_at(arch="standard")], use_error_term=True):
        exact = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, batch_size=256, progress=False)
        est = atp_latents(model, clean, corrupted, "logit", hook=HOOK, verify_top_k=3)
    d_exact = (exact.values - exact.target_score).flatten()
    d_est = (est.values - est.target_score).flatten()
    r = torch.corrcoef(torch.stack([d_exact, d_est]))[0, 1]
    assert abs(r - 0.83) < 0.005, r  # docs/sae.md states 0.83 (Pearson, 4 images x 64 latents) for this model
    v = est.options["verification"]
    for i, (site, latent) in enumerate(v.cells):
        torch.testing.assert_close(v.exact[i], exact.values[site, latent], atol=5e-7, rtol=0)
        torch.testing.assert_close(v.estimate[i], est.values[site, latent])


def test_atp_latents_refuses_bad_arguments(model):
    clean, corrupted = images(1, seed=3), images(1, seed=4)
    with pytest.raises(ValueError, match="hook: expected a hook with a spliced SAE"):
        atp_latents(model, clean, corrupted, "logit", hook=HOOK)
    with model.saes([sae_at()]):
        with pytest.raises(ValueError, match="positions: expected None without per_position=True"):
            atp_latents(model, clean, corrupted, "logit", hook=HOOK, positions=[1])
        with pytest.raises(ValueError, match="verify_top_k: expected a non-negative int"):
            atp_latents(model, clean, corrupted, "logit", hook=HOOK, verify_top_k=-1)
        with pytest.raises(ValueError, match="point: expected one of"):
            atp_latents(model, clean, corrupted, "logit", hook=HOOK, point="error")


def test_atp_latents_is_exact_where_the_metric_is_linear_in_the_latents():
    """Known answer: an SAE at the last block's output of a model without a final norm feeds the CLS token straight
    into the linear head, so a logit is linear in the latents and AtP equals the exact sweep."""
    model = make_pair(final_norm=False)[1]
    hook = "blocks.1.hook_resid_post"
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    with model.saes([sae_at(hook, arch="standard")], use_error_term=True):
        exact = latent_sweep(model, clean, corrupted, "logit", hook=hook, batch_size=64, progress=False)
        est = atp_latents(model, clean, corrupted, "logit", hook=hook)
        exact_pos = latent_sweep(model, clean, corrupted, "logit", hook=hook, latents=[1, 2, 3], per_position=True,
                                 batch_size=64, progress=False)
        est_pos = atp_latents(model, clean, corrupted, "logit", hook=hook, latents=[1, 2, 3], per_position=True)
    assert (exact.values - exact.target_score).abs().max() > 0.5  # latents that move the logit
    torch.testing.assert_close(est.values, exact.values, atol=3e-6, rtol=0)  # observed 1.2e-6
    torch.testing.assert_close(est_pos.values, exact_pos.values, atol=1e-6, rtol=0)  # observed 2.4e-7


def test_atp_latents_per_position_verification_re_runs_those_cells_exactly(model):
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    with model.saes([sae_at(arch="standard", positions="patches")], use_error_term=True):
        exact = latent_sweep(model, clean, corrupted, "logit", hook=HOOK, latents=[4, 8], per_position=True,
                             positions=[1, 6, 16], progress=False)
        est = atp_latents(model, clean, corrupted, "logit", hook=HOOK, latents=[4, 8], per_position=True,
                          positions=[1, 6, 16], verify_top_k=3)
    v = est.options["verification"]
    assert len(v.cells) == 3 and est.options["pos_indices"] == [1, 6, 16]
    for i, cell in enumerate(v.cells):
        torch.testing.assert_close(v.exact[i], exact.values[cell], atol=5e-7, rtol=0)

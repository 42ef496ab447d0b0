"""A spliced SAE's latent as the readout: the scores equal the latent read by hand, CAAP on it equals a
hand-written hooked CAAP loop, and windows or shortcuts that would read past the latent are refused."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402
from test_latent_sites import sae_at  # noqa: E402

from vit_patching.patching.caap import caap  # noqa: E402
from vit_patching.readouts import LatentReadout  # noqa: E402

POST = "blocks.1.hook_resid_post"
LAT = f"{POST}.sae.hook_sae_acts_post"


@pytest.fixture(scope="module")
def spliced():
    model = make_pair()[1]
    model.add_sae(sae_at(POST, arch="standard"), use_error_term=True)
    return model


def hand_latents(model, x, fwd_hooks=()):
    kept = {}

    def keep(act, hook):
        kept["a"] = act.detach().clone()
        return act

    with torch.no_grad():
        model.run_with_hooks(x, fwd_hooks=[*fwd_hooks, (LAT, keep)])
    return kept["a"]


@pytest.mark.parametrize("reduce", ["sum", "mean", 5])
def test_latent_readout_scores_are_the_latent(spliced, reduce):
    x = images(2)
    latents = hand_latents(spliced, x)
    k = int(latents.sum((0, 1)).argmax())
    scored = spliced.with_readout(LatentReadout(POST, k, reduce=reduce))
    with torch.no_grad():
        out = scored(x)
    expected = {"sum": latents[..., k].sum(1), "mean": latents[..., k].mean(1), 5: latents[:, 5, k]}[reduce]
    torch.testing.assert_close(out, expected[:, None], atol=1e-6, rtol=1e-6)
    assert scored.readout_only_blockers() and scored.readout.class_names == [f"F{k}" + ("@5" if reduce == 5 else "")]
    with pytest.raises(ValueError, match="readout_only: expected a model and hooks that read only"):
        scored(x, readout_only=True)


def test_caap_on_a_latent_equals_a_hand_written_hooked_loop(spliced):
    x = images(2, seed=5)
    k = int(hand_latents(spliced, x).sum((0, 1)).argmax())
    scored = spliced.with_readout(LatentReadout(POST, k))
    attr = caap(scored, x, target=0, window=(0, 2), neutral="zeros", batch_size=7)
    with torch.no_grad():
        _, src = spliced.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_pre"))
    neutral = torch.zeros(1, *x.shape[1:])
    expected = torch.zeros(2, 16)
    for b in range(2):
        for i in range(16):
            def pin(act, hook, b=b, i=i):
                act[:, 1 + i] = src[hook.name][b, 1 + i]
                return act

            hooks = [(f"blocks.{l}.hook_resid_pre", pin) for l in (0, 1)]
            expected[b, i] = hand_latents(spliced, neutral, hooks)[0, :, k].sum()
    torch.testing.assert_close(attr.map.reshape(2, 16), expected, atol=2e-5, rtol=1e-5)
    assert expected.std() > 1e-2  # patches drive the feature differently


def test_windows_and_readouts_that_read_past_the_latent_are_refused(spliced):
    x = images(1)
    pre_model = make_pair()[1]
    pre_model.add_sae(sae_at("blocks.1.hook_resid_pre", arch="standard"))
    pre = pre_model.with_readout(LatentReadout("blocks.1.hook_resid_pre", 0))
    with pytest.raises(ValueError, match=r"window: expected a window that ends at or before block 1 .*got \(0, 2\)"):
        caap(pre, x, target=0, window=(0, 2))
    scored = spliced.with_readout(LatentReadout(LAT, 0))
    with pytest.raises(ValueError, match="readout: expected 'logit' or 'delta_logit'"):
        caap(scored, x, target=0, window=(0, 2), readout="prob")
    with pytest.raises(ValueError, match="hook: expected a hook with a spliced SAE"):
        make_pair()[1].with_readout(LatentReadout(POST, 0))
    with pytest.raises(ValueError, match=r"latent: expected a latent in \[0, 64\)"):
        spliced.with_readout(LatentReadout(POST, 64))
    with pytest.raises(ValueError, match="reduce: expected one of"):
        LatentReadout(POST, 0, reduce="max")
    with pytest.raises(ValueError, match="start_at_layer: expected at most 1"):
        scored(torch.zeros(1, 17, 32), start_at_layer=2)

"""CAAP direction="noising": equality with an independent hook-by-hook recomputation, known answers, errors."""
from __future__ import annotations

import pytest
import torch

from caap_toys import readout, tiny_images, tiny_model
from vit_patching.hook_names import get_act_name
from vit_patching.patching.caap import caap
from vit_patching.patching.windows import select_window
from vit_patching.zoo import load_dataset, load_model

ATOL = 2e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-shapes")


@pytest.fixture(scope="module")
def images():
    return tiny_images(3)


@torch.no_grad()
def naive_noising(model, images, neutral_images, window, *, site="resid_pre", kind="logit", include_prefix=False):
    """One plain ``run_with_hooks`` per (image, patch): the source run with position ``i`` (and the prefix tokens
    if asked) overwritten at every window layer by the neutral run's cached activation. Returns the score drops
    ``source - patched`` ``[batch, n_patches]`` for the source's predicted class."""
    hooks = [get_act_name(site, l) for l in range(*window)]
    src_logits = model(images)
    neu_logits, neu_cache = model.run_with_cache(neutral_images, names_filter=lambda n: n in hooks, return_cache_object=False)
    layout = model.layout_for(images)
    prefix = list(range(layout.n_prefix)) if include_prefix else []
    out = torch.empty(images.shape[0], layout.n_patches, dtype=torch.float64)
    for b in range(images.shape[0]):
        t = int(src_logits[b].argmax())
        src = readout(src_logits[b], t, kind, neu_logits[b])
        for k, pos in enumerate(layout.patch_positions()):
            positions = prefix + [pos]

            def write(act, hook, b=b, positions=positions):
                act = act.clone()
                act[0, positions] = neu_cache[hook.name][b, positions]
                return act

            logits = model.run_with_hooks(images[b : b + 1], fwd_hooks=[(h, write) for h in hooks])
            out[b, k] = src - readout(logits[0], t, kind, neu_logits[b])
    return out


@pytest.mark.parametrize("window, site, kind, include_prefix", [
    ((0, 4), "resid_pre", "logit", False),
    ((1, 3), "resid_pre", "prob", True),
    ((1, 3), "attn_out", "delta_logit", False),
    ((2, 4), "mlp_out", "logit", True),
])
def test_noising_equals_a_hook_by_hook_recomputation_on_the_tiny_model(model, images, window, site, kind, include_prefix):
    expected = naive_noising(model, images, torch.zeros_like(images), window, site=site, kind=kind, include_prefix=include_prefix)
    for batch_size in (1, 7, 64):  # chunks must not change the result
        attr = caap(model, images, window=window, site=site, readout=kind, include_prefix=include_prefix,
                    direction="noising", batch_size=batch_size)
        torch.testing.assert_close(attr.map.reshape(3, -1).double(), expected, atol=ATOL, rtol=1e-5)
        assert attr.direction == "noising" and attr.settings["direction"] == "noising"


@pytest.mark.parametrize("include_prefix", [False, True])
def test_noising_equals_the_recomputation_on_the_shipped_toy_model(toy, include_prefix):
    x = load_dataset("shapes", n=2, seed=0).images
    neutral = torch.zeros_like(x)
    expected = naive_noising(toy, x, neutral, (0, 2), include_prefix=include_prefix)
    for batch_size in (5, 128):
        attr = caap(toy, x, window=(0, 2), neutral="zeros", include_prefix=include_prefix, direction="noising",
                    batch_size=batch_size)
        torch.testing.assert_close(attr.map.reshape(2, -1).double(), expected, atol=1e-4, rtol=1e-5)


def test_noising_with_a_per_image_neutral_equals_the_recomputation(model, images):
    neutral = images.mean(dim=(2, 3), keepdim=True).expand_as(images)  # image_mean, computed here
    expected = naive_noising(model, images, neutral, (1, 3))
    attr = caap(model, images, window=(1, 3), neutral="image_mean", direction="noising", batch_size=10)
    torch.testing.assert_close(attr.map.reshape(3, -1).double(), expected, atol=ATOL, rtol=1e-5)

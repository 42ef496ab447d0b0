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


def test_noising_with_mean_activations_equals_the_recomputation_from_the_mean_residual(model, images):
    reference = tiny_images(4, seed=5)
    window = (1, 3)
    hooks = [get_act_name("resid_pre", l) for l in range(*window)]
    with torch.no_grad():
        _, ref = model.run_with_cache(reference, names_filter=lambda n: n == "blocks.1.hook_resid_pre", return_cache_object=False)
        mean = ref["blocks.1.hook_resid_pre"].mean(0, keepdim=True)  # the neutral run starts here, at the window
        neu_logits, neu_cache = model.run_with_cache(mean, start_at_layer=1, names_filter=lambda n: n in hooks,
                                                     return_cache_object=False)
        src_logits = model(images)
        layout = model.layout_for(images)
        expected = torch.empty(3, layout.n_patches, dtype=torch.float64)
        for b in range(3):
            t = int(src_logits[b].argmax())
            for k, pos in enumerate(layout.patch_positions()):
                def write(act, hook, pos=pos):
                    act = act.clone()
                    act[0, pos] = neu_cache[hook.name][0, pos]
                    return act

                logits = model.run_with_hooks(images[b : b + 1], fwd_hooks=[(h, write) for h in hooks])
                expected[b, k] = float(src_logits[b, t]) - float(logits[0, t])
    attr = caap(model, images, window=window, neutral="mean_activations", reference=reference, direction="noising")
    torch.testing.assert_close(attr.map.reshape(3, -1).double(), expected, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(attr.neutral_logits, neu_logits.expand(3, -1))


def test_noising_in_the_embedding_layer_is_pixel_occlusion_with_the_neutral_image(model, images):
    # Known answer: resid_pre of block 0 at patch i depends only on patch i's pixels (conv patch embedding + its
    # position embedding), so writing the neutral's there = the image with patch i's pixels replaced by the
    # neutral's. Window [0, 1) noising is then exactly the occlusion drop.
    neutral = torch.zeros_like(images)
    attr = caap(model, images, window=(0, 1), neutral="zeros", direction="noising", readout="prob")
    with torch.no_grad():
        p_src = model(images).softmax(-1)
        t = p_src.argmax(-1)
        gh, gw = attr.map.shape[-2:]
        for b in range(3):
            for r in range(gh):
                for c in range(gw):
                    x = images[b : b + 1].clone()
                    x[..., r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = neutral[b, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
                    drop = p_src[b, t[b]] - model(x).softmax(-1)[0, t[b]]
                    assert abs(float(attr.map[b, r, c]) - float(drop)) < 1e-5


def test_a_neutral_equal_to_the_source_gives_no_drop(model, images):
    attr = caap(model, images, window=(0, 4), neutral=images, direction="noising", include_prefix=True)
    assert float(attr.map.abs().max()) < 1e-5
    assert attr.zmid(0) == 0.0 and attr.value_label == "logit drop"


def test_result_fields_for_class_and_delta_readouts(model, images):
    attr = caap(model, images, window=(1, 3), direction="noising")
    torch.testing.assert_close(attr.for_class(), attr.map)
    # delta readouts: the neutral's score cancels in the drop
    delta = caap(model, images, window=(1, 3), direction="noising", readout="delta_logit")
    torch.testing.assert_close(delta.map, attr.map)
    # another class from the same runs: source logit minus patched logit of class 2
    expected = attr.source_logits[:, None, None, 2] - attr.patched_logits[..., 2]
    torch.testing.assert_close(attr.for_class(2), expected)
    assert "direction='noising'" in repr(attr)
    with pytest.raises(ValueError, match="direction"):
        type(attr).cat([attr, caap(model, images, window=(1, 3))])


def test_select_window_noising_scores_the_noising_maps(model, images):
    sel = select_window(model, images, [(0, 2), (1, 3)], direction="noising", eval_kwargs={"step": 8})
    for w in [(0, 2), (1, 3)]:
        torch.testing.assert_close(sel.maps[w], caap(model, images, window=w, direction="noising").map)
        assert sel.zmid[w] == [0.0] * 3
    assert sel.options["direction"] == "noising"


def test_attribution_interface_and_the_caap_noising_method(model, images):
    from vit_patching.attribution import available_methods, get_method

    expected = caap(model, images, window=(0, 2), direction="noising").map
    via_option = get_method("caap", model, window=(0, 2), direction="noising")
    builtin = get_method("caap_noising", model, window=(0, 2))
    assert "caap_noising" in available_methods(include_registered=False)
    assert builtin.options()["direction"] == "noising" and get_method("caap", model).options()["direction"] == "denoising"
    for method in (via_option, builtin):
        torch.testing.assert_close(method.attribute(images).patch_map, expected)


@pytest.mark.parametrize("call", [
    lambda m, x: caap(m, x, direction="nosing"),
    lambda m, x: select_window(m, x, [(0, 1)], direction="Noising"),
    lambda m, x: __import__("vit_patching.attribution", fromlist=["get_method"]).get_method("caap", m, direction="x"),
    lambda m, x: __import__("vit_patching.runs", fromlist=["CAAPRunConfig"]).CAAPRunConfig(direction="up"),
])
def test_bad_direction_names_direction_before_any_forward(model, images, call, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran before the argument error")

    monkeypatch.setattr(model, "run_with_cache", refuse)
    monkeypatch.setattr(model, "run_with_hooks", refuse)
    with pytest.raises(ValueError, match="^direction: expected one of"):
        call(model, images)


def test_noising_warning_says_what_a_class_predicting_neutral_means(toy, caplog):
    batch = load_dataset("shapes", n=16, seed=0)
    with torch.no_grad():
        pred = toy(batch.images).argmax(-1)
    twin = int(((pred == pred[0]) & (torch.arange(16) != 0)).nonzero()[0])
    attr = caap(toy, batch.images[:1], window=(0, 2), neutral=batch.images[twin], direction="noising")
    assert attr.warnings and "already predicts the explained class" in attr.warnings[0]
    assert "drops are small" in attr.warnings[0]
    den = caap(toy, batch.images[:1], window=(0, 2), neutral=batch.images[twin])
    assert "drops" not in den.warnings[0] and den.warnings[0].split(":")[0] == attr.warnings[0].split(":")[0]

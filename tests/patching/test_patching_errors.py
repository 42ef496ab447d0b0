"""Bad specs raise clear errors naming the argument, and leave no hook (or flag) behind."""
from __future__ import annotations

import pytest
import torch

from patch_toys import hooks_left, images, metric, no_hooks_left, pair, tiny
from vit_patching.patching import (
    Intervention,
    PatchSpec,
    Site,
    block_every,
    direct_path_patch,
    layer_sweep,
    patch_heads,
    path_patch,
    run_interventions,
    run_patch_spec,
)


@pytest.fixture(scope="module")
def model():
    return tiny(depth=3)


CLEAN, CORRUPTED = pair()

CASES = [
    (layer_sweep, dict(sites=("resid_pre", "resid_foo")), r"sites: expected one of \[.*'mlp_out'\], got 'resid_foo'"),
    (layer_sweep, dict(layers=[0, 3]), r"layers: expected layer indices in \[0, 3\), got 3"),
    (layer_sweep, dict(layers=[-1]), r"layers: expected layer indices in \[0, 3\), got -1"),
    (layer_sweep, dict(positions=[17]), r"positions: expected token position indices in \[0, 17\), got 17"),
    (layer_sweep, dict(positions=[]), r"positions: expected at least one token position index"),
    (layer_sweep, dict(direction="sideways"), r"direction: expected one of \['denoising', 'noising'\], got 'sideways'"),
    (layer_sweep, dict(batch_size=0), r"batch_size: expected a positive int \(rows per forward pass\) or 'auto', got 0"),
    (layer_sweep, dict(pixels=torch.rand(2, 3, 16, 16)), r"pixels: expected display images"),
    (patch_heads, dict(heads=[2]), r"heads: expected head indices in \[0, 2\), got 2"),
    (patch_heads, dict(sites="zz"), r"sites: expected one of \['z', 'q', 'k', 'v', 'pattern'\], got 'zz'"),
    (patch_heads, dict(positions=[1]), r"positions: expected None without by_pos=True .*got \[1\]"),
    (path_patch, dict(senders=["L3H0"]), r"senders: expected layers in \[0, 3\), got 3 in 'L3H0'"),
    (path_patch, dict(senders=["L0H5"]), r"senders: expected heads in \[0, 2\), got 5 in 'L0H5'"),
    (path_patch, dict(senders=["L0H1.q"]), r"senders: expected a sender without an input suffix"),
    (path_patch, dict(receivers=["embed"]), r"receivers: expected receivers of kind .*, got 'embed'"),
    (path_patch, dict(receivers=[("logits", "L1H0")]), r"receivers: expected 'logits' .* alone in its receiver set"),
    (path_patch, dict(receivers=["L1H0.x"]), r"receivers: expected 'embed', 'logits', .*got 'L1H0.x'"),
    (path_patch, dict(freeze=("heads", "attn")), r"freeze: expected one of \['heads', 'mlps'\], got 'attn'"),
    (path_patch, dict(batch_size=True), r"batch_size: expected a positive int \(rows per forward pass\) or 'auto', got True"),
    (direct_path_patch, dict(senders=[]), r"senders: expected at least one sender"),
    (direct_path_patch, dict(direction="both"), r"direction: expected one of \['denoising', 'noising'\], got 'both'"),
]


@pytest.mark.parametrize("fn, kwargs, message", CASES, ids=[f"{f.__name__}-{list(k)[0]}" for f, k, _ in CASES])
def test_bad_arguments_name_the_argument(model, fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(model, CLEAN, CORRUPTED, metric(), progress=False, **kwargs)
    assert no_hooks_left(model)


@pytest.mark.parametrize("fn", [layer_sweep, patch_heads, path_patch])
def test_mismatched_clean_and_corrupted(model, fn):
    with pytest.raises(ValueError, match=r"corrupted: expected clean's shape \(2, 3, 32, 32\) .*got \(3, 3, 32, 32\)"):
        fn(model, CLEAN, images(3), metric(), progress=False)
    with pytest.raises(ValueError, match=r"corrupted must be 32x32 pixels"):
        fn(model, CLEAN, images(2, 24, 24), metric(), progress=False)
    assert no_hooks_left(model)


def test_unknown_metric_name(model):
    with pytest.raises(ValueError, match=r"metric: expected one of \['logit_diff', 'logit', 'prob'\], got 'loss'"):
        layer_sweep(model, CLEAN, CORRUPTED, "loss", progress=False)
    assert no_hooks_left(model)


@pytest.mark.parametrize("site, message", [
    (Site("blocks.0.hook_nonexistent"), r"spec: expected hooks of this model, got unknown or switched-off hook "
                                        r"'blocks.0.hook_nonexistent'"),
    (Site("blocks.0.ln1.hook_scale"), r"hook: 'blocks.0.ln1.hook_scale' cannot be patched by the engine"),
    (Site("blocks.0.hook_resid_pre", head=1), r"head: expected None, 'blocks.0.hook_resid_pre' has no head axis, "
                                              r"got 1"),
    (Site("blocks.1.hook_resid_pre", pos=17), r"pos: expected a token position in \[0, 17\) .*got 17"),
    (Site("blocks.5.hook_resid_pre"), r"unknown or switched-off hook 'blocks.5.hook_resid_pre'"),
    (Site("blocks.1.hook_q_input"), r"unknown or switched-off hook 'blocks.1.hook_q_input'"),
    (Site("blocks.1.attn.hook_z", head=2), r"head: expected a head in \[0, 2\) .*got 2"),
])
def test_engine_refuses_bad_sites(model, site, message):
    with pytest.raises(ValueError, match=message):
        run_patch_spec(model, PatchSpec([(site,)]), metric(), target=CORRUPTED, source=CLEAN, progress=False)
    assert no_hooks_left(model)


def test_failure_inside_a_hook_removes_every_hook(model):
    resid = model(CLEAN, stop_at_layer=1)
    bad = Intervention("blocks.2.hook_resid_pre", torch.tensor([0]), (torch.tensor([99]),), torch.zeros(1, 32))
    good = Intervention("blocks.1.hook_resid_pre", torch.tensor([0]), (torch.tensor([0]),), torch.zeros(1, 32))
    with pytest.raises(IndexError):
        run_interventions(model, resid, [good, bad], start_layer=1)
    assert no_hooks_left(model)


def test_failure_inside_a_path_run_restores_flags(model):
    def broken(logits, image_index):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        path_patch(model, CLEAN, CORRUPTED, broken, senders=["L0H0"], receivers=["L1H0", "MLP2"], progress=False)
    assert no_hooks_left(model)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in
    assert "blocks.1.hook_q_input" not in model.hook_dict


EXPERIMENTS = [layer_sweep, patch_heads, path_patch, direct_path_patch, block_every]


@pytest.mark.parametrize("fn", EXPERIMENTS)
def test_empty_batches_are_refused_naming_the_argument(model, fn):
    empty = CLEAN[:0]
    with pytest.raises(ValueError, match=r"clean: expected a non-empty batch \[batch, channel, height, width\], "
                                         r"got shape \(0, 3, 32, 32\)"):
        fn(model, empty, empty, metric(), progress=False)
    assert hooks_left(model) == []


@pytest.mark.parametrize("fn", EXPERIMENTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused_before_compute(model, fn, bad):
    corrupted = CORRUPTED.clone()
    corrupted[1, 0, 3, 4] = bad
    calls = []
    message = r"corrupted: expected finite pixel values, got 1 NaN/Inf entries in image\(s\) \[1\]"
    with pytest.raises(ValueError, match=message):
        fn(model, CLEAN, corrupted, lambda logits, ids: calls.append(1), progress=False)
    assert calls == [] and hooks_left(model) == []


def test_engine_refuses_empty_and_non_finite_images(model):
    spec = PatchSpec([(Site("blocks.1.hook_resid_pre", pos=0),)])
    with pytest.raises(ValueError, match=r"target: expected a non-empty batch"):
        run_patch_spec(model, spec, metric(), target=CORRUPTED[:0], source=CLEAN[:0], progress=False)
    nan = CLEAN.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"source: expected finite pixel values"):
        run_patch_spec(model, spec, metric(), target=CORRUPTED, source=nan, progress=False)
    assert hooks_left(model) == []


def test_only_a_classifier_is_patched():
    headless = tiny(depth=1, num_classes=0)
    with pytest.raises(ValueError, match=r"model: expected a model that outputs class scores \(a classifier head or a readout\), got a headless model; attach a readout"):
        layer_sweep(headless, CLEAN, CORRUPTED, metric(), progress=False)
    with pytest.raises(TypeError, match=r"model"):  # the annotation (under the tests' jaxtyping hook) or the check
        patch_heads("vit", CLEAN, CORRUPTED, metric(), progress=False)


def test_hooks_left_sees_gated_hook_points_and_plain_pytorch_hooks(model):
    """The check the error tests rely on: it must see hooks on gated HookPoints (absent from hook_dict while
    their flag is off) and PyTorch forward pre-hooks, or a leak there would pass unnoticed."""
    assert "blocks.1.hook_q_input" not in model.hook_dict
    with model.flags(use_split_qkv_input=True):
        model.blocks[1].hook_q_input.add_hook(lambda act, hook: act)
    handle = model.blocks[0].attn.hook_result.register_forward_pre_hook(lambda mod, args: None)
    try:
        assert hooks_left(model) == ["blocks.0.attn.hook_result:forward_pre", "blocks.1.hook_q_input:forward",
                                     "blocks.1.hook_q_input:fwd_handles"]
        assert not no_hooks_left(model)
    finally:
        handle.remove()
        with model.flags(use_split_qkv_input=True):
            model.reset_hooks(including_permanent=True)
    assert hooks_left(model) == []

"""Bad specs raise clear errors naming the argument, and leave no hook (or flag) behind."""
from __future__ import annotations

import pytest
import torch

from patch_toys import images, metric, no_hooks_left, pair, tiny
from vit_patching.patching import (
    Intervention,
    PatchSpec,
    Site,
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
    (layer_sweep, dict(sites=("resid_pre", "resid_foo")), r"sites must be one of \[.*'mlp_out'\], got 'resid_foo'"),
    (layer_sweep, dict(layers=[0, 3]), r"layers must hold layer indices in \[0, 3\), got 3"),
    (layer_sweep, dict(layers=[-1]), r"layers must hold layer indices in \[0, 3\), got -1"),
    (layer_sweep, dict(positions=[17]), r"positions must hold token position indices in \[0, 17\), got 17"),
    (layer_sweep, dict(positions=[]), r"positions must list at least one token position"),
    (layer_sweep, dict(direction="sideways"), r"direction must be one of \['denoising', 'noising'\], got 'sideways'"),
    (layer_sweep, dict(batch_size=0), r"batch_size must be a positive int"),
    (layer_sweep, dict(pixels=torch.rand(2, 3, 16, 16)), r"pixels must be display images"),
    (patch_heads, dict(heads=[2]), r"heads must hold head indices in \[0, 2\), got 2"),
    (patch_heads, dict(sites="zz"), r"sites must be one of \['z', 'q', 'k', 'v', 'pattern'\], got 'zz'"),
    (patch_heads, dict(positions=[1]), r"positions=\[1\] needs by_pos=True"),
    (path_patch, dict(senders=["L3H0"]), r"senders: layer of 'L3H0' must be in \[0, 3\), got 3"),
    (path_patch, dict(senders=["L0H5"]), r"senders: head of 'L0H5' must be in \[0, 2\), got 5"),
    (path_patch, dict(senders=["L0H1.q"]), r"senders: a sender is patched at its output"),
    (path_patch, dict(receivers=["embed"]), r"receivers: 'embed' cannot be a receiver"),
    (path_patch, dict(receivers=[("logits", "L1H0")]), r"receivers: 'logits' .* cannot share a receiver set"),
    (path_patch, dict(receivers=["L1H0.x"]), r"receivers must be 'embed', 'logits', .*got 'L1H0.x'"),
    (path_patch, dict(freeze=("heads", "attn")), r"freeze must be one of \['heads', 'mlps'\], got 'attn'"),
    (direct_path_patch, dict(senders=[]), r"senders must list at least one sender"),
]


@pytest.mark.parametrize("fn, kwargs, message", CASES, ids=[f"{f.__name__}-{list(k)[0]}" for f, k, _ in CASES])
def test_bad_arguments_name_the_argument(model, fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(model, CLEAN, CORRUPTED, metric(), progress=False, **kwargs)
    assert no_hooks_left(model)


@pytest.mark.parametrize("fn", [layer_sweep, patch_heads, path_patch])
def test_mismatched_clean_and_corrupted(model, fn):
    with pytest.raises(ValueError, match=r"clean and corrupted must have the same shape .* \(2, 3, 32, 32\) and "
                                         r"\(3, 3, 32, 32\)"):
        fn(model, CLEAN, images(3), metric(), progress=False)
    with pytest.raises(ValueError, match=r"corrupted must be 32x32 pixels"):
        fn(model, CLEAN, images(2, 24, 24), metric(), progress=False)
    assert no_hooks_left(model)


def test_unknown_metric_name(model):
    with pytest.raises(ValueError, match=r"metric must be one of \['logit_diff', 'logit', 'prob'\], got 'loss'"):
        layer_sweep(model, CLEAN, CORRUPTED, "loss", progress=False)


@pytest.mark.parametrize("site, message", [
    (Site("blocks.0.hook_nonexistent"), r"unknown or switched-off hook 'blocks.0.hook_nonexistent'"),
    (Site("blocks.0.ln1.hook_scale"), r"hook 'blocks.0.ln1.hook_scale' cannot be patched by the engine"),
    (Site("blocks.0.hook_resid_pre", head=1), r"has no head axis, but head=1"),
    (Site("blocks.1.hook_resid_pre", pos=17), r"pos must be in \[0, 17\), got 17"),
    (Site("blocks.5.hook_resid_pre"), r"unknown or switched-off hook 'blocks.5.hook_resid_pre'"),
    (Site("blocks.1.hook_q_input"), r"unknown or switched-off hook 'blocks.1.hook_q_input'"),
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

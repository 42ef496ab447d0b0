"""Attribution baselines: shapes, sanity on a model that reads one patch, and known answers / independent
recomputations for every method."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from attribution_toys import GRID, PATCH, REGION, region_images, region_reading_timm, tiny_images, tiny_model, tiny_timm

from vit_patching.attribution import AttributionMaps, AttributionMethod, available_methods, get_method, register_method
from vit_patching.model import HookedViT

# Cheap settings for the expensive methods (the defaults are for real runs).
FAST = {
    "integrated_gradients": dict(n_steps=8),
    "smoothgrad": dict(n_samples=4),
    "rise": dict(n_masks=32),
    "caap": dict(window=(0, 1)),
}
MODEL_BASED = [m for m in available_methods() if m not in ("random", "center")]

VARIANTS = {
    "cls": dict(),
    "registers_avg": dict(class_token=False, reg_tokens=2, global_pool="avg", fc_norm=True),
}


@pytest.fixture(scope="module")
def models():
    return {k: tiny_model(seed=3, **kw) for k, kw in VARIANTS.items()}


@pytest.fixture(scope="module")
def region_model():
    return HookedViT.from_timm(region_reading_timm())


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", available_methods())
def test_every_method_gives_both_resolutions(models, variant, name):
    model = models[variant]
    x = tiny_images(3)
    maps = get_method(name, model, **FAST.get(name, {})).attribute(x, target=torch.tensor([0, 1, 4]), batch_size=8)
    assert isinstance(maps, AttributionMaps) and maps.method == name
    assert maps.patch_map.shape == (3, GRID, GRID) and maps.pixel_map.shape == (3, 32, 32)
    assert maps.patch_map.dtype == torch.float32 and maps.patch_map.device.type == "cpu"
    assert torch.isfinite(maps.patch_map).all() and torch.isfinite(maps.pixel_map).all()
    assert maps.target.tolist() == [0, 1, 4]
    assert maps.settings["method"] == name and maps.seconds > 0
    if maps.settings["native"] == "pixel":  # patch map = per-patch sums of the pixel map
        sums = maps.pixel_map.reshape(3, GRID, PATCH, GRID, PATCH).sum(dim=(2, 4))
        torch.testing.assert_close(maps.patch_map, sums)
    else:  # pixel map = bilinear upsampling of the patch map
        from vit_patching.evaluation import upsample_map

        torch.testing.assert_close(maps.pixel_map, upsample_map(maps.patch_map, (32, 32), "bilinear"))


@pytest.mark.parametrize("name", ["gae", "atman", "occlusion", "smoothgrad", "random"])
def test_maps_do_not_depend_on_batching(models, name):
    model, x = models["cls"], tiny_images(3)
    method = get_method(name, model, **FAST.get(name, {}))
    whole = method.attribute(x, batch_size=64).patch_map
    parts = torch.cat([method.attribute(x[i : i + 1], batch_size=5).patch_map for i in range(3)])
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-5)


def test_default_target_is_the_prediction(models):
    model, x = models["cls"], tiny_images(3)
    maps = get_method("rollout", model).attribute(x)
    assert maps.target.tolist() == model(x).argmax(-1).tolist()
    assert get_method("gae", model).attribute(x, target=2).target.tolist() == [2, 2, 2]


# ------------------------------------------------------------------------------------------- sanity (region)
def test_region_model_reads_only_its_patch(region_model):
    x = region_images(2)
    y = x.clone()
    r, c = REGION
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[:, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = False
    y[outside] = torch.rand(int(outside.sum()), generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(region_model(y), region_model(x), atol=1e-5, rtol=0)
    z = x.clone()
    z[~outside] = 0.0
    assert (region_model(x)[:, 0] - region_model(z)[:, 0]).min() > 0.5  # the region really matters


@pytest.mark.parametrize("name", MODEL_BASED)
def test_map_peaks_on_the_region_the_model_reads(region_model, name):
    opts = {**FAST, "rise": dict(n_masks=2000), "integrated_gradients": dict(n_steps=32)}.get(name, {})
    maps = get_method(name, region_model, **opts).attribute(region_images(3))
    r, c = REGION
    assert (maps.target == 0).all()
    assert maps.patch_map.flatten(1).argmax(1).tolist() == [r * GRID + c] * 3
    peak = maps.pixel_map.flatten(1).argmax(1)
    rows, cols = peak // 32, peak % 32
    assert ((rows // PATCH == r) & (cols // PATCH == c)).all()


def test_sanity_baselines_ignore_the_model(region_model):
    x = region_images(3)
    centre = get_method("center", region_model).attribute(x).patch_map
    assert torch.equal(centre[0], centre[1]) and centre[0].flatten().argmax().item() == 5  # first of the 4 middle
    rand = get_method("random", region_model, seed=1).attribute(x).patch_map
    assert not torch.equal(rand[0], rand[1])
    assert torch.equal(get_method("random", region_model, seed=1).attribute(x[1:]).patch_map[0], rand[1])


# ------------------------------------------------------------------------------------ attention: hand recompute
def timm_patterns(model, x, grad_class=None):
    """Post-softmax attention of every timm block, captured at ``attn_drop`` (and their gradients)."""
    store = []
    handles = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda mod, inp, out: store.append(out)))
    try:
        with torch.enable_grad():
            logits = model(x)
            for a in store:
                a.retain_grad()
            if grad_class is not None:
                logits.gather(1, grad_class[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return [a.detach() for a in store], [None if a.grad is None else a.grad.detach() for a in store]


def query_rows(n_prefix, n_pos, cls):
    q = torch.zeros(n_pos)
    if cls:
        q[0] = 1
    else:
        q[n_prefix:] = 1 / (n_pos - n_prefix)
    return q


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rollout_and_raw_attention_match_hand_computation(variant):
    tm = tiny_timm(seed=5, **VARIANTS[variant])
    model, x = HookedViT.from_timm(tm), tiny_images(2)
    pats, _ = timm_patterns(tm, x)
    n_pos = pats[0].shape[-1]
    n_prefix = n_pos - GRID * GRID
    q = query_rows(n_prefix, n_pos, variant == "cls")
    for b in range(2):
        rollout = torch.eye(n_pos)
        for a in pats:
            a_hat = a[b].mean(0) + torch.eye(n_pos)
            a_hat = a_hat / a_hat.sum(-1, keepdim=True)
            rollout = a_hat @ rollout
        expect = (q @ rollout)[n_prefix:].reshape(GRID, GRID)
        torch.testing.assert_close(get_method("rollout", model).attribute(x).patch_map[b], expect)
        raw = (q @ pats[-1][b].mean(0))[n_prefix:].reshape(GRID, GRID)
        torch.testing.assert_close(get_method("raw_attention", model).attribute(x).patch_map[b], raw)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gae_matches_hand_computation_with_autograd(variant):
    tm = tiny_timm(seed=6, **VARIANTS[variant])
    model, x = HookedViT.from_timm(tm), tiny_images(2)
    target = torch.tensor([1, 3])
    pats, grads = timm_patterns(tm, x, grad_class=target)
    n_pos = pats[0].shape[-1]
    n_prefix = n_pos - GRID * GRID
    q = query_rows(n_prefix, n_pos, variant == "cls")
    got = get_method("gae", model).attribute(x, target=target).patch_map
    for b in range(2):
        rel = torch.eye(n_pos)
        for a, g in zip(pats, grads):
            cam = torch.relu(g[b] * a[b]).mean(0)
            rel = rel + cam @ rel
        torch.testing.assert_close(got[b], (q @ rel)[n_prefix:].reshape(GRID, GRID))
    assert got.abs().sum() > 0


# ------------------------------------------------------------------------------------------------- Grad-CAM
def test_gradcam_matches_the_norm1_recipe_and_has_gradients():
    tm = tiny_timm(seed=7)
    model, x, target = HookedViT.from_timm(tm), tiny_images(2), torch.tensor([0, 2])
    store = []
    handle = tm.blocks[-1].norm1.register_forward_hook(lambda mod, inp, out: store.append(out))
    try:
        with torch.enable_grad():
            logits = tm(x)
            (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store[0])
    finally:
        handle.remove()
    acts, grad = store[0].detach()[:, 1:], grad[:, 1:]  # drop CLS; reshape with the 4x4 grid
    assert grad.abs().amax(dim=-1).min() > 0  # every patch token gets gradient at this layer
    cam = torch.relu((grad.mean(1, keepdim=True) * acts).sum(-1)).reshape(2, GRID, GRID)
    torch.testing.assert_close(get_method("gradcam", model).attribute(x, target=target).patch_map, cam)


def test_gradcam_layer_choice_matters_for_cls_models():
    # After the last block only CLS reaches the head: the block output's patch tokens get no gradient.
    tm = tiny_timm(seed=7)
    x = tiny_images(1)
    store = []
    handle = tm.blocks[-1].register_forward_hook(lambda mod, inp, out: store.append(out))
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(tm(x)[0, 0], store[0])
    finally:
        handle.remove()
    assert grad[:, 1:].abs().max() == 0


# ----------------------------------------------------------------------------------------------- IG / SmoothGrad
@pytest.mark.parametrize("baseline", ["zeros", "blur"])
def test_integrated_gradients_completeness(models, baseline):
    from vit_patching.attribution.perturbation import neutral_batch

    model, x, target = models["cls"], tiny_images(2), torch.tensor([1, 2])
    maps = get_method("integrated_gradients", model, n_steps=64, baseline=baseline).attribute(x, target=target)
    with torch.no_grad():
        x0 = neutral_batch(model, x, baseline)
        expect = (model(x) - model(x0)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(maps.pixel_map.sum(dim=(1, 2)), expect, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(maps.patch_map.sum(dim=(1, 2)), expect, rtol=2e-3, atol=2e-3)


def test_smoothgrad_is_the_mean_abs_gradient_over_its_noise(models):
    # With a tiny sigma SmoothGrad is |gradient| summed over channels.
    model, x, target = models["cls"], tiny_images(1), torch.tensor([3])
    maps = get_method("smoothgrad", model, n_samples=2, noise_level=1e-6).attribute(x, target=target)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr)[0, 3], xr)
    torch.testing.assert_close(maps.pixel_map, g.abs().sum(1), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------ perturbation methods
@pytest.mark.parametrize("neutral,score", [("zeros", "logit"), ("blur", "prob")])
def test_occlusion_equals_one_forward_per_patch(models, neutral, score):
    from vit_patching.attribution.perturbation import neutral_batch

    model, x, target = models["registers_avg"], tiny_images(2), torch.tensor([4, 0])
    got = get_method("occlusion", model, neutral=neutral, score=score).attribute(x, target=target, batch_size=5)
    x0 = neutral_batch(model, x, neutral)
    f = (lambda z: model(z).softmax(-1)) if score == "prob" else model
    with torch.no_grad():
        for b in range(2):
            clean = f(x[b : b + 1])[0, target[b]]
            for r in range(GRID):
                for c in range(GRID):
                    y = x[b : b + 1].clone()
                    sl = (slice(None), slice(None), slice(r * PATCH, (r + 1) * PATCH), slice(c * PATCH, (c + 1) * PATCH))
                    y[sl] = x0[b : b + 1][sl]
                    torch.testing.assert_close(got.patch_map[b, r, c], clean - f(y)[0, target[b]], rtol=1e-4, atol=1e-5)


def test_atman_equals_naive_loop(models):
    model, x, target = models["registers_avg"], tiny_images(2), torch.tensor([1, 2])
    f = 0.9
    got = get_method("atman", model, suppression=f).attribute(x, target=target, batch_size=7).patch_map
    n_prefix = model.cfg.n_prefix
    with torch.no_grad():
        for b in range(2):
            clean = model(x[b : b + 1]).log_softmax(-1)[0, target[b]]
            for i in range(GRID * GRID):
                def hook(scores, hook, tok=n_prefix + i):
                    scores = scores.clone()
                    scores[..., tok] = scores[..., tok] * (1 - f)
                    return scores

                hooks = [(f"blocks.{l}.attn.hook_attn_scores", hook) for l in range(model.cfg.n_layers)]
                sup = model.run_with_hooks(x[b : b + 1], fwd_hooks=hooks).log_softmax(-1)[0, target[b]]
                torch.testing.assert_close(got[b].flatten()[i], clean - sup, rtol=1e-4, atol=1e-5)


def test_rise_equals_its_formula_and_masks_are_rise_masks(models):
    model, x, target = models["cls"], tiny_images(2), torch.tensor([0, 1])
    rise = get_method("rise", model, n_masks=24, p=0.5, seed=3)
    got = rise.attribute(x, target=target, batch_size=10).pixel_map
    masks = rise.masks((32, 32))
    assert masks.shape == (24, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert not torch.equal(masks[0], masks[1])
    with torch.no_grad():
        for b in range(2):
            expect = torch.zeros(32, 32)
            for m in masks:
                expect += model(x[b : b + 1] * m).softmax(-1)[0, target[b]] * m  # neutral zeros: plain product
            torch.testing.assert_close(got[b], expect / (24 * 0.5), rtol=1e-4, atol=1e-5)
    big = get_method("rise", model, n_masks=400, p=0.3).masks((32, 32))
    assert abs(big.mean().item() - 0.3) < 0.03  # bilinear upsampling keeps the keep probability on average


def test_caap_method_wraps_caap(models):
    from vit_patching.patching.caap import caap

    model, x = models["cls"], tiny_images(2)
    got = get_method("caap", model, window=(0, 2), readout="prob").attribute(x, target=1)
    ref = caap(model, x, 1, (0, 2), readout="prob")
    torch.testing.assert_close(got.patch_map, ref.map)
    assert got.settings["window"] == [0, 2] and got.settings["readout"] == "prob"


# ------------------------------------------------------------------------------------------------ interface
def test_registry_and_cat(models):
    model, x = models["cls"], tiny_images(3)

    class Ones(AttributionMethod):
        name, native = "ones", "patch"

        def _attribute(self, images, target, batch_size):
            return images.new_ones(images.shape[0], GRID, GRID)

    register_method("ones_test", Ones)
    assert "ones_test" in available_methods()
    assert get_method("ones_test", model).attribute(x).patch_map.sum() == 3 * GRID * GRID
    a, b = (get_method("rollout", model).attribute(x[s]) for s in (slice(0, 1), slice(1, 3)))
    both = AttributionMaps.cat([a, b])
    assert len(both) == 3 and both.seconds == pytest.approx(a.seconds + b.seconds)
    with pytest.raises(ValueError, match="built-in"):
        register_method("rollout", Ones)
    with pytest.raises(ValueError, match="one method"):
        AttributionMaps.cat([a, get_method("gae", model).attribute(x[:1])])


def test_bad_inputs_raise_clear_errors(models):
    model, x = models["cls"], tiny_images(2)
    with pytest.raises(ValueError, match="name: expected one of the attribution methods"):
        get_method("lime", model)
    with pytest.raises(TypeError, match="options: 'rise' takes options"):
        get_method("rise", model, masks=3)
    with pytest.raises(TypeError, match="model: expected a HookedViT"):
        get_method("rollout", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="n_masks: expected a positive int"):
        get_method("rise", model, n_masks=0)
    with pytest.raises(ValueError, match="neutral: expected one of"):
        get_method("occlusion", model, neutral="grey")
    with pytest.raises(ValueError, match="neutral: expected one image"):
        get_method("occlusion", model, neutral=torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="suppression: expected a number in"):
        get_method("atman", model, suppression=1.5)
    with pytest.raises(ValueError, match="upsample: expected one of"):
        get_method("gae", model, upsample="cubic")
    with pytest.raises(ValueError, match="layer: expected a block index"):
        get_method("gradcam", model, layer=5)
    with pytest.raises(ValueError, match="window"):
        get_method("caap", model, window=(1, 1))
    method = get_method("gae", model)
    with pytest.raises(ValueError, match=r"target must be class indices in \[0, 5\)"):
        method.attribute(x, target=9)
    with pytest.raises(ValueError, match=r"target: expected one class per image, shape \[2\]"):
        method.attribute(x, target=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="target: expected integer class indices"):
        method.attribute(x, target=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="images must be 32x32"):
        method.attribute(torch.zeros(1, 3, 16, 16))
    # Under the test suite's jaxtyping hook the annotation fires first; without it, HookedViT.check_images.
    with pytest.raises((ValueError, TypeError), match="images"):
        method.attribute(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        method.attribute(x, batch_size=0)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            method.attribute(x)
    finally:
        model.eval()


def test_import_is_cheap():
    code = "import sys, vit_patching.attribution as a; a.available_methods(); print(sorted(m for m in ('captum', 'plotly', 'vit_patching.patching.caap') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

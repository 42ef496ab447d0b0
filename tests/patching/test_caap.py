"""CAAP: agreement with an independent naive implementation, known identities, the engine fast path, errors."""
from __future__ import annotations

import pytest
import torch
from jaxtyping import TypeCheckError

from caap_toys import naive_caap, tiny_images, tiny_model
from vit_patching.evaluation import gaussian_blur
from vit_patching.patching import engine
from vit_patching.patching.caap import Attribution, caap, caap_spec, compare_attributions, default_window, to_pixels
from vit_patching.patching.engine import PatchSpec, Site, run_patch_spec
from vit_patching.patching.metrics import target_logit

ATOL = 2e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def reg_model():
    """Registers, no CLS, average pooling with fc_norm: the patched token reaches the readout directly."""
    return tiny_model(seed=3, class_token=False, reg_tokens=2, global_pool="avg", fc_norm=True)


@pytest.fixture(scope="module")
def images():
    return tiny_images(3)


def _neutral_batch(model, images, neutral):
    """The neutral images as the test computes them, independently of caap.py."""
    if isinstance(neutral, torch.Tensor):
        return neutral.expand_as(images)
    if neutral == "zeros":
        return torch.zeros_like(images)
    if neutral == "black":
        mean = torch.tensor(model.cfg.data_config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(model.cfg.data_config["std"]).view(1, 3, 1, 1)
        return (-mean / std).expand_as(images)
    if neutral == "image_mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if neutral == "blur":
        sigma = images.shape[-1] / 16  # the documented default
        return gaussian_blur(images, 2 * int(torch.tensor(3 * sigma).ceil()) + 1, sigma)
    raise AssertionError(neutral)


CASES = [  # (window, site, readout, include_prefix, neutral)
    ((0, 4), "resid_pre", "logit", False, "zeros"),
    ((1, 3), "resid_pre", "prob", True, "black"),
    ((1, 3), "attn_out", "delta_logit", False, "blur"),
    ((2, 4), "mlp_out", "delta_prob", True, "image_mean"),
    ((0, 2), "resid_post", "logit", False, "user"),
    ((3, 4), "resid_pre", "delta_logit", False, "zeros"),
]


@pytest.mark.parametrize(
    "which,window,site,kind,include_prefix,neutral",
    [("cls", *c) for c in CASES] + [("registers", *c) for c in CASES[1:4]],
)
def test_caap_equals_naive_one_forward_per_patch(model, reg_model, images, which, window, site, kind, include_prefix, neutral):
    m = model if which == "cls" else reg_model
    images = images[:2]
    if neutral == "user":
        neutral = tiny_images(1, seed=9)[0]
    attr = caap(m, images, window=window, neutral=neutral, site=site, readout=kind, include_prefix=include_prefix, batch_size=7)
    ref = naive_caap(m, images, _neutral_batch(m, images, neutral), window, site=site, kind=kind, include_prefix=include_prefix)
    torch.testing.assert_close(attr.map, ref.float(), atol=ATOL, rtol=1e-5)
    assert attr.window == window and attr.options["site"] == site and attr.options["readout"] == kind


def test_mean_activations_neutral_equals_naive(model, images):
    reference = tiny_images(5, seed=4)
    attr = caap(model, images, window=(1, 3), neutral="mean_activations", reference=reference)
    _, cache = model.run_with_cache(reference, return_cache_object=False)
    mean_resid = cache["blocks.1.hook_resid_pre"].mean(0, keepdim=True)
    ref = naive_caap(model, images, None, (1, 3), neutral_resid=mean_resid)
    torch.testing.assert_close(attr.map, ref.float(), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(attr.neutral_score, model(mean_resid, start_at_layer=1)[0, attr.target].detach())


def test_embedding_window_equals_pixel_space_single_patch_insertion(model, images):
    neutral = tiny_images(1, seed=5)
    attr = caap(model, images, window=(0, 1), neutral=neutral)
    p = model.cfg.patch_size[0]
    gh, gw = model.cfg.grid_size
    inserted = []
    for b in range(images.shape[0]):
        for r in range(gh):
            for c in range(gw):
                x = neutral[0].clone()
                x[:, r * p : (r + 1) * p, c * p : (c + 1) * p] = images[b, :, r * p : (r + 1) * p, c * p : (c + 1) * p]
                inserted.append(x)
    with torch.no_grad():
        logits = model(torch.stack(inserted)).view(images.shape[0], gh, gw, -1)
    expected = logits.gather(-1, attr.target.view(-1, 1, 1, 1).expand(-1, gh, gw, 1))[..., 0]
    torch.testing.assert_close(attr.map, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", ["logit", "prob", "delta_logit"])
def test_source_equal_to_neutral_gives_a_constant_map_at_the_unpatched_score(model, images, kind):
    attr = caap(model, images, window=(1, 3), neutral=images, readout=kind)
    flat = attr.map.flatten(1)
    torch.testing.assert_close(flat, attr.neutral_score[:, None].expand_as(flat), atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(attr.neutral_score, attr.source_score, atol=ATOL, rtol=1e-5)
    logits = model(images).detach()
    score = logits.softmax(-1) if kind == "prob" else logits
    expected = score.gather(1, attr.target[:, None])[:, 0] * (0 if kind.startswith("delta") else 1)
    torch.testing.assert_close(attr.neutral_score, expected, atol=ATOL, rtol=1e-5)


def test_single_layer_window_equals_the_engine_layer_sweep_cell(model, images):
    layout = model.layout_for(images)
    L = model.cfg.n_layers
    neutral = torch.zeros_like(images)
    target = model(images).argmax(-1)
    spec = PatchSpec([(Site(f"blocks.{l}.hook_resid_pre", pos=p),) for l in range(L) for p in layout.patch_positions()])
    run = run_patch_spec(model, spec, target_logit(target), target=neutral, source=images, progress=False)
    sweep = run.values.view(L, *layout.grid_size, images.shape[0])
    for l in range(L):
        attr = caap(model, images, window=(l, l + 1), neutral="zeros")
        torch.testing.assert_close(attr.map, sweep[l].permute(2, 0, 1), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(attr.neutral_score, run.target_score, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(attr.source_score, run.source_score, atol=ATOL, rtol=1e-5)


def test_pinning_every_patch_over_the_embedding_reproduces_the_source(model, images):
    """caap.md 6.2: all patch positions pinned over [0, 1) with an image neutral = the source logits."""
    layout = model.layout_for(images)
    spec = PatchSpec([tuple(Site("blocks.0.hook_resid_pre", pos=p) for p in layout.patch_positions())])
    run = run_patch_spec(model, spec, lambda lg, i: lg, target=torch.zeros_like(images), source=images, progress=False)
    torch.testing.assert_close(run.values[0], model(images).detach(), atol=ATOL, rtol=1e-5)


def test_batching_and_image_order_do_not_change_the_result(model, images):
    full = caap(model, images, window=(1, 4), neutral="blur", batch_size=1000)
    odd = caap(model, images, window=(1, 4), neutral="blur", batch_size=5)
    torch.testing.assert_close(full.map, odd.map, atol=ATOL, rtol=1e-5)
    alone = caap(model, images[2:3], window=(1, 4), neutral="blur")
    torch.testing.assert_close(alone.map[0], full.map[2], atol=ATOL, rtol=1e-5)
    assert odd.n_forwards == -(-16 * 3 // 5)


def test_all_classes_come_from_the_same_runs(model, images):
    attr = caap(model, images, window=(0, 2))
    for cls in range(model.cfg.n_classes):
        direct = caap(model, images, cls, window=(0, 2), readout="delta_prob")
        torch.testing.assert_close(attr.for_class(cls, readout="delta_prob"), direct.map, atol=ATOL, rtol=1e-5)
        assert (direct.target == cls).all() and direct.options["target_source"] == "given"
    torch.testing.assert_close(attr.for_class(), attr.map)


def test_result_fields_and_upsampling(model, images):
    attr = caap(model, images, torch.tensor([0, 1, 2]), window=(1, 2), upsample="nearest")
    assert attr.map.shape == (3, 4, 4) and attr.pixel_map.shape == (3, 32, 32)
    assert attr.patched_logits.shape == (3, 4, 4, 5) and attr.options["upsample"] == "nearest"
    torch.testing.assert_close(attr.pixel_map[:, ::8, ::8], attr.map)  # nearest: constant 8x8 blocks
    torch.testing.assert_close(attr.pixel_map[:, 7::8, 7::8], attr.map)
    bil = caap(model, images, torch.tensor([0, 1, 2]), window=(1, 2), upsample="bilinear")
    torch.testing.assert_close(bil.map, attr.map)
    assert bil.options["upsample"] == "bilinear" and not torch.equal(bil.pixel_map, attr.pixel_map)
    top = attr.top_patches(1, k=3)
    assert [v for *_, v in top] == sorted(attr.map[1].flatten().tolist(), reverse=True)[:3]
    r, c, v = top[0]
    assert attr.map[1, r, c] == v
    df = attr.to_dataframe()
    assert len(df) == 3 * 16 and df["value"].iloc[17] == attr.map[1, 0, 1]
    assert attr.pixels.min() >= 0 and attr.pixels.max() <= 1


def test_default_window_is_inside_the_model():
    for L in range(1, 25):
        s, e = default_window(L)
        assert 0 <= s < e <= L


def test_figures(model, images):
    attr = caap(model, images, window=(1, 3))
    assert [t.type for t in attr.overlay(0).data] == ["image", "heatmap"]
    assert attr.plot(2).data[0].type == "heatmap"
    other = caap(model, images, window=(0, 1))
    fig = compare_attributions({"[1,3)": attr, "[0,1)": other}, i=1)
    assert sum(t.type == "heatmap" for t in fig.data) == 2
    with pytest.raises(ValueError, match="i:"):
        attr.overlay(3)


def test_to_pixels_inverts_the_normalisation(model):
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(model.cfg.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.cfg.data_config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(to_pixels(model, (pixels - mean) / std), pixels)


# ------------------------------------------------------------------------------------------- engine fast path
def test_uniform_fast_path_matches_the_generic_compile(model, images, monkeypatch):
    spec = caap_spec(model, images, (1, 3), "resid_pre", include_prefix=True)
    assert engine._UniformSpec.build(spec) is not None
    neutral = torch.zeros_like(images)
    metric = lambda lg, i: lg  # noqa: E731  (extra class axis kept by the engine)
    fast = run_patch_spec(model, spec, metric, target=neutral, source=images, batch_size=11, progress=False)
    monkeypatch.setattr(engine._UniformSpec, "build", classmethod(lambda cls, s: None))
    slow = run_patch_spec(model, spec, metric, target=neutral, source=images, batch_size=11, progress=False)
    assert fast.values.shape == (16, 3, 5)
    torch.testing.assert_close(fast.values, slow.values, atol=1e-6, rtol=1e-6)


def test_mixed_specs_take_the_generic_path(model, images):
    spec = PatchSpec([(Site("blocks.1.hook_resid_pre", pos=1),), (Site("blocks.2.attn.hook_z", pos=2, head=1),)])
    assert engine._UniformSpec.build(spec) is None
    heads = PatchSpec([(Site("blocks.2.attn.hook_z", pos=None, head=h),) for h in range(2)])
    fast = engine._UniformSpec.build(heads)
    assert fast is not None
    neutral = torch.zeros_like(images)
    run = run_patch_spec(model, heads, target_logit(0), target=neutral, source=images, progress=False)
    for h in range(2):
        def write(act, hook, h=h):
            act = act.clone()
            act[:, :, h] = src[hook.name][:, :, h]
            return act
        _, src = model.run_with_cache(images, return_cache_object=False)
        expected = model.run_with_hooks(neutral, fwd_hooks=[("blocks.2.attn.hook_z", write)])[:, 0]
        torch.testing.assert_close(run.values[h], expected.detach(), atol=ATOL, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(window=(2, 2)), "window"),
        (dict(window=(3, 1)), "window"),
        (dict(window=(0, 5)), "window"),
        (dict(window=(-1, 2)), "window"),
        (dict(window=(0.0, 2)), "window"),
        (dict(window=3), "window"),
        (dict(target=5), "target"),
        (dict(target=-1), "target"),
        (dict(target=torch.tensor([0, 1])), "target"),
        (dict(target=1.0), "target"),
        (dict(neutral="grey"), "neutral"),
        (dict(neutral=torch.zeros(3, 16, 16)), "neutral"),
        (dict(neutral="mean_activations"), "reference"),
        (dict(neutral="zeros", reference=torch.zeros(2, 3, 32, 32)), "reference"),
        (dict(neutral="blur", blur_sigma=-1.0), "blur_sigma"),
        (dict(site="resid_mid"), "site"),
        (dict(readout="logprob"), "readout"),
        (dict(upsample="cubic"), "upsample"),
        (dict(batch_size=0), "batch_size"),
        (dict(include_prefix="yes"), "include_prefix"),
    ],
)
def test_bad_input_names_the_argument(model, images, kwargs, name):
    kwargs = dict(kwargs)
    with pytest.raises((ValueError, TypeError)) as err:
        caap(model, images, **kwargs)
    assert str(err.value).startswith(name) or f"{name} " in str(err.value) or f"{name}:" in str(err.value)


def test_images_of_the_wrong_size_are_refused(model):
    with pytest.raises(ValueError, match="images"):
        caap(model, torch.randn(1, 3, 40, 40), window=(0, 1))
    with pytest.raises((ValueError, TypeError, TypeCheckError), match="images"):  # jaxtyping's check comes first in tests
        caap(model, torch.randn(3, 32, 32), window=(0, 1))
    with pytest.raises(TypeError, match="model"):
        caap(torch.nn.Identity(), torch.randn(1, 3, 32, 32), window=(0, 1))


def test_attribution_repr_and_for_class_errors(model, images):
    attr = caap(model, images[:1], window=(0, 1))
    assert isinstance(attr, Attribution) and "window=(0, 1)" in repr(attr)
    with pytest.raises(ValueError, match="target"):
        attr.for_class(7)
    with pytest.raises(ValueError, match="readout"):
        attr.for_class(0, readout="rank")


def test_docstring_examples_run():
    """The examples of caap.py and windows.py, on the shipped toy-shapes model."""
    import doctest

    from vit_patching.patching import caap as caap_module
    from vit_patching.patching import windows as windows_module
    from vit_patching.patching.windows import select_window
    from vit_patching.zoo import load_dataset, load_model

    batch = load_dataset("shapes", n=2, seed=0)
    model = load_model("toy-shapes")
    sel = select_window(model, batch.images, [(0, 1), (0, 2)], masks=batch.masks, eval_kwargs={"step": 8})
    globs = dict(model=model, images=batch.images, masks=batch.masks, sel=sel, torch=torch)
    for module in (caap_module, windows_module):
        result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 5, (module.__name__, result)


def test_top_level_caap_is_the_function():
    import vit_patching as vp
    from vit_patching.patching import caap as caap_module

    assert vp.caap is caap and callable(vp.caap)
    assert caap_module.default_window(4) == (0, 2)  # the package attribute stays the submodule

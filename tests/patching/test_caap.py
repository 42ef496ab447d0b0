"""CAAP: agreement with an independent naive implementation, known identities, the engine fast path, errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from caap_toys import naive_caap, tiny_images, tiny_model
from vit_patching.evaluation import gaussian_blur
from vit_patching.images import to_pixels
from vit_patching.patching import engine
from vit_patching.patching.caap import Attribution, caap, caap_spec, compare_attributions, default_window
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
    """All patch positions pinned over [0, 1) with an image neutral = the source logits."""
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
    # the colour bar says what the values are, for both directions
    assert attr.overlay(0).layout.coloraxis.colorbar.title.text == "CAAP score (logit)"
    noising = caap(model, images[:1], window=(1, 3), direction="noising")
    assert noising.overlay(0).layout.coloraxis.colorbar.title.text == "CAAP score drop (logit)"
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
    torch.testing.assert_close(to_pixels((pixels - mean) / std, model.cfg.data_config), pixels)


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
    """The examples of caap.py, caap_context.py, caap_results.py and windows.py, on the shipped toy-shapes model."""
    import doctest

    from vit_patching.patching import caap as caap_module
    from vit_patching.patching import caap_context, caap_results
    from vit_patching.patching import windows as windows_module
    from vit_patching.patching.windows import select_window
    from vit_patching.zoo import load_dataset, load_model

    batch = load_dataset("shapes", n=2, seed=0)
    model = load_model("toy-shapes")
    sel = select_window(model, batch.images, [(0, 1), (0, 2)], masks=batch.masks, eval_kwargs={"step": 8})
    globs = dict(model=model, images=batch.images, masks=batch.masks, sel=sel, torch=torch, caap=caap)
    for module in (caap_module, caap_context, caap_results, windows_module):
        result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 5, (module.__name__, result)


def test_top_level_caap_is_the_function():
    import vit_patching as vp
    from vit_patching.patching import caap as caap_module

    assert vp.caap is caap and callable(vp.caap)
    assert caap_module.default_window(4) == (0, 2)  # the package attribute stays the submodule


# ------------------------------------------------------------------------------- colour centres (issue 9)
def colour_centres(fig, maps):
    """For each map heatmap of ``fig`` (drawn without an image): the map value at the centre of its colour scale.

    A figure may draw ``map - offset`` instead of the map; the offset must then be one constant per panel.
    """
    traces = [t for t in fig.data if t.type == "heatmap"]
    assert len(traces) == len(maps)
    out = []
    for t, m in zip(traces, maps):
        axis = fig.layout[t.coloraxis or "coloraxis"]
        offset = m.double() - torch.tensor(np.asarray(t.z, dtype=float))
        torch.testing.assert_close(offset, torch.full_like(offset, float(offset.flatten()[0])), atol=1e-5, rtol=0)
        out.append((axis.cmin + axis.cmax) / 2 + float(offset.flatten()[0]))
    return out


@pytest.mark.parametrize("shared_scale", [True, False])
def test_compare_attributions_centres_every_panel_on_its_own_neutral(model, images, shared_scale):
    attrs = {n: caap(model, images, window=(0, 2), neutral=n) for n in ("zeros", "black", "blur")}
    zmids = [a.zmid(1) for a in attrs.values()]
    assert len({round(z, 4) for z in zmids}) == 3  # the case of the bug: three different neutral scores
    fig = compare_attributions(attrs, i=1, over_image=False, shared_scale=shared_scale)
    centres = colour_centres(fig, [a.map[1] for a in attrs.values()])
    assert centres == pytest.approx(zmids, abs=1e-5)
    same = compare_attributions({"a": attrs["zeros"], "b": caap(model, images, window=(1, 3))}, i=0, over_image=False)
    assert np.allclose(np.asarray(same.data[0].z, dtype=float), attrs["zeros"].map[0].numpy())  # one centre: raw maps


# ---------------------------------------------------------------------------------------- bad values (issue 15)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused_before_any_forward_pass(model, images, bad, monkeypatch):
    x = images.clone()
    x[1, 2, 5, 7] = bad
    monkeypatch.setattr(model, "run_with_cache", lambda *a, **k: pytest.fail("forward pass before the check"))
    with pytest.raises(ValueError, match="^images: expected finite pixel values, got 1 NaN/Inf"):
        caap(model, x, window=(0, 2))
    with pytest.raises(ValueError, match="^neutral: expected finite"):
        caap(model, images, window=(0, 2), neutral=torch.full((3, 32, 32), bad))


@pytest.mark.parametrize("target", [10**20, -(10**20), 5, -1, 1e20, torch.tensor([0, 1, 10**18])])
def test_huge_or_out_of_range_targets_name_target(model, images, target):
    # A float is refused by the annotation check in tests (jaxtyping + beartype) and by the library otherwise.
    match = "target" if isinstance(target, float) else "^target"
    with pytest.raises((ValueError, TypeError, TypeCheckError), match=match):
        caap(model, images, target, window=(0, 1))
    with pytest.raises((ValueError, TypeError, TypeCheckError), match=match):
        caap(model, images, window=(0, 1)).for_class(target)


# -------------------------------------------------------------------------------- neutral diagnosis (issue 16)
def _direct_neutral_logits(model, images, neutral):
    with torch.no_grad():
        return model(_neutral_batch(model, images, neutral))


@pytest.mark.parametrize("neutral,readout", [("zeros", "logit"), ("black", "delta_prob"), ("blur", "prob"), ("image_mean", "delta_logit")])
def test_diagnosis_equals_a_direct_forward_of_the_neutral_image(model, images, neutral, readout):
    attr = caap(model, images, window=(1, 3), neutral=neutral, readout=readout)
    lg = _direct_neutral_logits(model, images, neutral)
    p = lg.softmax(-1)
    t = attr.target
    assert torch.equal(attr.neutral_prediction, lg.argmax(-1))
    torch.testing.assert_close(attr.neutral_prediction_prob, p.max(-1).values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attr.neutral_target_prob, p[torch.arange(3), t], atol=1e-5, rtol=1e-5)
    score = p if readout.endswith("prob") else lg
    torch.testing.assert_close(attr.neutral_target_score, score[torch.arange(3), t], atol=1e-5, rtol=1e-5)
    assert attr.neutral_choice == [neutral] * 3
    df = attr.to_dataframe()
    for col in ("neutral_prediction", "neutral_prediction_prob", "neutral_target_score", "neutral_target_prob"):
        assert df[col].iloc[16 * 2 + 5] == pytest.approx(float(getattr(attr, col)[2]))
    assert (df["neutral"] == neutral).all()
    assert f"neutral_prediction=[{int(attr.neutral_prediction[0])}@" in repr(attr)


def test_diagnosis_of_mean_activations_is_the_neutral_run_from_the_window_start(model, images):
    reference = tiny_images(5, seed=4)
    _, cache = model.run_with_cache(reference, return_cache_object=False)
    for start in (0, 2):
        attr = caap(model, images, window=(start, 3), neutral="mean_activations", reference=reference, readout="prob")
        with torch.no_grad():
            lg = model(cache[f"blocks.{start}.hook_resid_pre"].mean(0, keepdim=True), start_at_layer=start)[0]
        assert (attr.neutral_prediction == lg.argmax()).all()
        torch.testing.assert_close(attr.neutral_target_score, lg.softmax(-1)[attr.target], atol=1e-5, rtol=1e-5)


def _warnings_expected(attr, share=0.5):
    p0, ps = attr.neutral_logits.softmax(-1), attr.source_logits.softmax(-1)
    idx = torch.arange(len(attr.target))
    p0_t = p0[idx, attr.target]
    n = p0.shape[-1]
    predicts = (p0.argmax(-1) == attr.target) & (p0_t >= max(min(2 / n, 0.5), 1.5 / n))
    return bool((predicts | (p0_t - 1 / n > share * (ps[idx, attr.target] - 1 / n))).any())


@pytest.fixture(scope="module")
def toy():
    from vit_patching.zoo import load_dataset, load_model

    return load_model("toy-shapes"), load_dataset("shapes", n=64, seed=0)


def test_warning_fires_on_the_toy_model_for_its_neutral_predicted_class(toy, caplog):
    model, batch = toy
    with torch.no_grad():
        c0 = int(model(torch.zeros(1, *batch.images.shape[1:])).argmax())
        pred = model(batch.images).argmax(-1)
    # Images of the zeros image's class, if any, and one of another class whose neutral is an image of its own class.
    same = batch.images[pred == c0][:2]
    k = int((pred != c0).nonzero()[0])
    twin = int(((pred == pred[k]) & (torch.arange(64) != k)).nonzero()[0])
    with caplog.at_level(logging.WARNING, logger="vit_patching.patching.caap"):
        if len(same):  # the retrained model's zeros image is near uniform: its top class is no prediction
            attr = caap(model, same, window=(0, 2))
            assert bool(attr.neutral_target_prob.max() < min(2 / model.cfg.n_classes, 0.5))
            assert attr.warnings == [] and not _warnings_expected(attr)
        own = caap(model, batch.images[k : k + 1], window=(0, 2), neutral=batch.images[twin])
    assert own.warnings and "already predicts the explained class for 1/1 images [0]" in own.warnings[0]
    assert [r.getMessage() for r in caplog.records][-len(own.warnings):] == own.warnings


def test_warning_stays_quiet_for_a_neutral_that_predicts_another_class(toy, caplog):
    # A crafted case on the trained toy model: the neutral is an image of another class than the explained one.
    model, batch = toy
    with torch.no_grad():
        p = model(batch.images).softmax(-1)
    conf, pred = p.max(-1)
    k = int(conf.argmax())
    j = int(torch.where(pred != pred[k], conf, torch.zeros_like(conf)).argmax())
    assert pred[j] != pred[k] and p[j, pred[k]] < 0.5 * p[k, pred[k]]  # the case really is a quiet one
    with caplog.at_level(logging.WARNING, logger="vit_patching.patching.caap"):
        quiet = caap(model, batch.images[k : k + 1], window=(0, 2), neutral=batch.images[j])
    assert not _warnings_expected(quiet) and quiet.warnings == [] and not caplog.records
    # The share counts probability above chance: a neutral that gives the class less than chance (1/4) stays
    # quiet even at warn_share=0; the source image itself as neutral is loud (it predicts the class).
    assert float(quiet.neutral_target_prob[0]) < 0.25
    assert caap(model, batch.images[k : k + 1], window=(0, 2), neutral=batch.images[j], warn_share=0.0).warnings == []
    loud = caap(model, batch.images[k : k + 1], window=(0, 2), neutral=batch.images[k])
    assert len(loud.warnings) == 1 and "already predicts the explained class" in loud.warnings[0]


def test_auto_is_the_per_image_best_of_the_image_neutrals(model, images):
    auto = caap(model, images, window=(1, 3), neutral="auto", readout="prob")
    each = {n: caap(model, images, window=(1, 3), neutral=n, readout="prob") for n in ("zeros", "black", "image_mean", "blur")}
    probs = torch.stack([a.neutral_target_prob for a in each.values()])  # [neutral, image]
    best = [list(each)[int(k)] for k in probs.argmin(0)]
    assert auto.neutral_choice == best and auto.options["neutral"] == "auto"
    for i, n in enumerate(best):
        torch.testing.assert_close(auto.map[i], each[n].map[i], atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(auto.neutral_target_prob[i], probs.min(0).values[i], atol=1e-6, rtol=1e-5)
    assert (auto.to_dataframe().groupby("image")["neutral"].first().tolist()) == best


# ------------------------------------------------------------------------------------ one result type (issue 10)
def test_attribution_is_an_attribution_maps_with_the_package_upsampling(model, images):
    from vit_patching.attribution.base import AttributionMaps
    from vit_patching.images import DEFAULT_UPSAMPLE, upsample_map

    attr = caap(model, images, window=(0, 2))
    assert isinstance(attr, AttributionMaps) and attr.method == "caap" and len(attr) == 3
    assert attr.map is attr.patch_map and attr.options is attr.settings
    assert attr.options["upsample"] == DEFAULT_UPSAMPLE == "bilinear"
    torch.testing.assert_close(attr.pixel_map, upsample_map(attr.map, (32, 32), mode="bilinear"))
    both = Attribution.cat([caap(model, images[:1], window=(0, 2)), caap(model, images[1:], window=(0, 2))])
    torch.testing.assert_close(both.map, attr.map, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(both.neutral_target_prob, attr.neutral_target_prob)
    assert len(both.neutral_choice) == 3 and both.window == (0, 2)


def test_deprecated_neutral_helpers_warn_and_match_vit_patching_images(model, images):
    from vit_patching import images as image_ops
    from vit_patching.patching import caap as caap_module

    with pytest.warns(DeprecationWarning, match="baseline_images"):
        x0, per_image = caap_module.neutral_images(model, images, "black")
    ref, ref_per_image = image_ops.baseline_images(images, "black", data_config=model.cfg.data_config)
    assert torch.equal(x0, ref) and per_image == ref_per_image is False
    with pytest.warns(DeprecationWarning, match="to_pixels"):
        torch.testing.assert_close(caap_module.to_pixels(model, images), image_ops.to_pixels(images, model.cfg.data_config))
    from vit_patching import checks

    assert caap_module.check_window is checks.check_window


def test_windows_module_uses_no_private_caap_name():
    import ast
    import inspect

    from vit_patching.patching import windows

    tree = ast.parse(inspect.getsource(windows))
    imported = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names]
    assert imported and not [n for n in imported if n.startswith("_")]


def test_a_binary_neutral_near_one_half_is_not_a_prediction():
    """Two classes: the top class always has p >= 0.5, so 'predicts' starts at 1.5 x uniform = 0.75."""
    from vit_patching.patching.caap_results import neutral_warnings, predicts_threshold

    source = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    target = torch.tensor([0, 0])
    near_half = torch.tensor([[0.2, 0.0], [0.0, 0.2]])  # p(class 0) = 0.550, 0.450
    assert not any("already predicts" in w for w in neutral_warnings(near_half, source, target, "zeros"))
    decided = torch.tensor([[1.2, 0.0], [1.0, 0.0]])  # p = 0.768 >= 0.75, 0.731 < 0.75
    warns = neutral_warnings(decided, source, target, "zeros")
    assert any("already predicts the explained class for 1/2 images [0]" in w for w in warns), warns
    assert predicts_threshold(2) == 0.75 and predicts_threshold(4) == 0.5 and predicts_threshold(1000) == 0.002


def test_the_share_warning_counts_probability_above_chance():
    """Two classes: an undecided neutral (p = 0.55) is not 'more than half' of a confident source's evidence."""
    from vit_patching.patching.caap_results import neutral_warnings

    source = torch.tensor([[4.0, 0.0], [0.4, 0.0]])  # p(class 0) = 0.982, 0.599
    target = torch.tensor([0, 0])
    neutral = torch.tensor([[0.2, 0.0], [0.2, 0.0]])  # p = 0.550: above chance by 0.050
    warns = neutral_warnings(neutral, source, target, "zeros")
    # image 0: 0.050 <= 0.5 * 0.482; image 1: 0.050 > 0.5 * 0.099
    assert [w for w in warns if "above chance for 1/2 images [1]" in w], warns
    many = torch.zeros(1, 1000)
    many[0, 0] = 7.0  # source p(class 0) = 0.523 among 1000 classes
    other = many.clone()
    other[0, 1] = 7.2  # the neutral's top class is class 1; p(class 0) = 0.319 > 0.5 * 0.523, chance 0.001
    warns = neutral_warnings(other, many, torch.tensor([0]), "zeros")
    assert len(warns) == 1 and "above chance for 1/1 images [0]" in warns[0], warns

"""Every experiment and attribution method on a headless and a projection-head model with each readout, each
checked against an identity or an independent computation (timm's own forward, hand-hooked runs)."""
from __future__ import annotations

import functools

import pytest
import torch

from readout_toys import READOUTS, build, headless, pair, projection
from vit_patching.attribution import available_methods, get_method
from vit_patching.circuits import Circuit, Graph, atp_layer_sweep, eap, evaluate_circuit
from vit_patching.hook_names import get_act_name
from vit_patching.patching import (
    all_senders, direct_path_patch, layer_sweep, patch_heads, path_patch, select_window, target_logit,
)
from vit_patching.patching.caap import caap
from vit_patching.patching.engine import PatchSpec, Site, run_patch_spec

ATOL = 2e-5
CLASSES = torch.tensor([1, 0])
# Cheap settings for the sampling methods; the rest run with their defaults.
METHOD_OPTIONS = {"integrated_gradients": dict(n_steps=4), "smoothgrad": dict(n_samples=3), "rise": dict(n_masks=16)}
CASES = [("headless", r) for r in READOUTS] + [("projection", r) for r in ("zero_shot", "siglip", "similarity")]


@functools.lru_cache(maxsize=None)
def setup(base: str, kind: str):
    tm, model = (headless if base == "headless" else projection)()
    fit = torch.cat([pair(4)[0], pair(4)[1]])
    readout, ref = build(kind, tm, model, fit)
    return model, model.with_readout(readout), ref


def classes(scored):
    return CLASSES % scored.cfg.n_classes


@pytest.mark.parametrize("base,kind", CASES)
def test_scores_equal_the_independent_readout_of_timm_and_the_original_is_unchanged(base, kind):
    model, scored, ref = setup(base, kind)
    clean, _ = pair()
    torch.testing.assert_close(scored(clean).detach(), ref(clean), atol=1e-6, rtol=0)  # measured 4.8e-7
    assert model._modules.get("readout") is None and model.readout is None
    assert "hook_logits" not in model.hook_dict or base == "projection"
    assert set(scored.hook_dict) >= set(model.hook_dict) | {"hook_logits"}
    if hasattr(scored.readout, "hook_scale"):
        assert "readout.hook_scale" in scored.hook_dict and "readout.hook_scale" not in model.hook_dict


@pytest.mark.parametrize("base,kind", CASES)
def test_pinning_every_patch_over_the_embedding_reproduces_the_source_scores(base, kind):
    """The CAAP identity: every patch position pinned to the source over [0, 1) in a zero-image neutral (whose
    prefix tokens are image-independent) is the source run."""
    _, scored, ref = setup(base, kind)
    clean, _ = pair()
    layout = scored.layout_for(clean)
    spec = PatchSpec([tuple(Site("blocks.0.hook_resid_pre", pos=p) for p in layout.patch_positions())])
    run = run_patch_spec(scored, spec, lambda lg, i: lg, target=torch.zeros_like(clean), source=clean, progress=False)
    torch.testing.assert_close(run.values[0], ref(clean), atol=ATOL, rtol=1e-5)
    assert (run.values[0] - scored(torch.zeros_like(clean))).abs().max() > 1e-3  # not vacuous


@pytest.mark.parametrize("base,kind", CASES)
def test_layer_sweep_equals_hand_patching_and_last_cls_patch_restores_cls_readouts(base, kind):
    _, scored, ref = setup(base, kind)
    clean, corrupted = pair()
    L = scored.cfg.n_layers
    res = layer_sweep(scored, clean, corrupted, target_logit(classes(scored)), sites=("resid_pre", "resid_post"),
                      layers=[1, L - 1], progress=False)
    torch.testing.assert_close(res.source_score, ref(clean)[torch.arange(2), classes(scored)], atol=ATOL, rtol=0)
    with torch.no_grad():
        _, cache = scored.run_with_cache(clean)
        for p in (0, 5):
            def put(a, hook, p=p):
                a = a.clone()
                a[:, p] = cache[hook.name][:, p]
                return a

            out = scored.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("resid_pre", 1), put)])
            want = out[torch.arange(2), classes(scored)]
            torch.testing.assert_close(res.values[0, 0, p], want, atol=ATOL, rtol=0)
    if kind not in ("probe_mean", "probe_cls_mean"):  # these read every patch token, not CLS alone
        torch.testing.assert_close(res.values[1, 1, 0], res.source_score, atol=ATOL, rtol=0)
    assert (res.values - res.target_score).abs().max() > 1e-3


@pytest.mark.parametrize("base,kind", CASES[:4])
def test_patch_heads_z_equals_hand_patching(base, kind):
    _, scored, _ = setup(base, kind)
    clean, corrupted = pair()
    res = patch_heads(scored, clean, corrupted, target_logit(classes(scored)), sites=("z",), progress=False)
    with torch.no_grad():
        _, cache = scored.run_with_cache(clean)

        def put(a, hook):
            a = a.clone()
            a[:, :, 1] = cache[hook.name][:, :, 1]
            return a

        out = scored.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("z", 2), put)])
    torch.testing.assert_close(res.values[0, 2, 1], out[torch.arange(2), classes(scored)], atol=ATOL, rtol=0)


@pytest.mark.parametrize("base,kind", CASES)
def test_path_patching_every_sender_into_the_scores_is_the_source_run(base, kind):
    _, scored, _ = setup(base, kind)
    clean, corrupted = pair()
    senders = [tuple(all_senders(scored))]
    for fn in (path_patch, direct_path_patch):
        res = fn(scored, clean, corrupted, target_logit(classes(scored)), senders=senders, receivers=["logits"],
                 progress=False)
        torch.testing.assert_close(res.values[0, 0], res.source_score, atol=ATOL, rtol=0, msg=fn.__name__)


@pytest.mark.parametrize("base,kind", CASES)
def test_caap_source_as_neutral_gives_the_source_score_and_windows_are_caap_maps(base, kind):
    _, scored, ref = setup(base, kind)
    clean, _ = pair()
    attr = caap(scored, clean, window=(0, scored.cfg.n_layers), neutral=clean)
    want = ref(clean).gather(1, attr.target[:, None])[:, 0]
    torch.testing.assert_close(attr.source_score, want, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(attr.map.flatten(1), want[:, None].expand(2, attr.map[0].numel()), atol=ATOL, rtol=1e-5)
    assert torch.equal(attr.target, ref(clean).argmax(-1))
    sel = select_window(scored, clean, windows=[(0, 1), (1, 3)])
    for window, m in sel.maps.items():
        torch.testing.assert_close(m, caap(scored, clean, window=window).map, atol=ATOL, rtol=0)
        assert m.std() > 1e-5


@pytest.mark.parametrize("base,kind", [c for c in CASES if c[0] == "headless"][:3] + [("projection", "zero_shot")])
def test_atp_verification_and_full_and_empty_circuits(base, kind):
    _, scored, _ = setup(base, kind)
    clean, corrupted = pair()
    metric = target_logit(classes(scored))
    est = atp_layer_sweep(scored, clean, corrupted, metric, sites=("resid_pre",), verify_top_k=2)
    exact = layer_sweep(scored, clean, corrupted, metric, sites=("resid_pre",), progress=False)
    for j, cell in enumerate(est.options["verification"].cells):
        torch.testing.assert_close(est.options["verification"].exact[j], exact.values[cell])
    g = Graph.of(scored)
    scores = eap(scored, clean, corrupted, metric).scores
    assert torch.equal(torch.isfinite(scores), g.mask)  # NaN exactly on the edges that do not exist
    ev = evaluate_circuit(scored, [Circuit(g, g.mask.clone()), Circuit(g, torch.zeros_like(g.mask))], clean,
                          corrupted, metric)
    torch.testing.assert_close(ev.values[0], ev.clean_score, rtol=0, atol=1e-5)
    torch.testing.assert_close(ev.values[1], ev.corrupted_score, rtol=0, atol=1e-5)
    assert (ev.clean_score - ev.corrupted_score).abs().min() > 1e-3


@pytest.mark.parametrize("base,kind", [("headless", "probe_cls"), ("headless", "probe_cls_mean"),
                                       ("projection", "zero_shot")])
def test_attribution_methods_explain_the_readout_prediction(base, kind):
    _, scored, ref = setup(base, kind)
    clean, _ = pair()
    predicted = ref(clean).argmax(-1)
    for method in available_methods(include_registered=False):  # other tests register toy methods
        maps = get_method(method, scored, **METHOD_OPTIONS.get(method, {})).attribute(clean)
        assert torch.equal(maps.target, predicted), method
        assert torch.isfinite(maps.patch_map).all(), method
        if method not in ("random", "center"):
            assert maps.patch_map.std() > 0, f"{method}: constant map"
    caap_maps = get_method("caap", scored).attribute(clean)
    torch.testing.assert_close(caap_maps.patch_map, caap(scored, clean).map, atol=ATOL, rtol=0)

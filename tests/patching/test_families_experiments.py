"""Every patching experiment and attribution method on every newly supported ViT family (tiny random models).

Families: EVA02-style (RoPE + SwiGLU + sub-LN), DINOv3-style (rotate-half RoPE + LayerScale + 4 registers),
Perception Encoder (RoPE, CLS, attention pool over every token), SigLIP (attention pool, no CLS token),
RmsNorm, ParallelScalingBlock, GQA (Sapiens2: grouped K/V heads, RmsNorm, 8 registers).
Each experiment is checked against an identity or an independent hand-written computation, not just run.
"""
from __future__ import annotations

import functools

import pytest
import torch
from timm.models.vision_transformer import ParallelScalingBlock

from caap_toys import naive_caap
from patch_toys import make_pair, pair
from vit_patching.attribution import available_methods, get_method
from vit_patching.hook_names import get_act_name
from vit_patching.patching import (
    all_senders,
    direct_path_patch,
    layer_sweep,
    patch_heads,
    path_patch,
    select_window,
    target_logit,
)
from vit_patching.patching.caap import caap
from vit_patching.patching.engine import PatchSpec, Site, run_patch_spec

VIT = "vit_tiny_patch16_224"
FAMILIES = {  # name -> (timm model, overrides of model_helpers.TINY, expected config)
    "eva02_rope_swiglu_subln": ("eva02_base_patch14_224", {}, dict(rope="axial", gated_mlp=True, mlp_norm=True)),
    "dinov3_rope_layerscale_registers": ("vit_small_patch16_dinov3", {}, dict(rope_half=True, n_registers=4)),
    "perception_encoder": ("vit_pe_core_tiny_patch16_384", {}, dict(global_pool="map", pool_include_prefix=True)),
    "siglip_map_no_cls": ("vit_base_patch16_siglip_224", {}, dict(global_pool="map", n_prefix=0)),
    "rmsnorm": (VIT, dict(norm_layer="rmsnorm"), dict(norm_kind="RMS")),
    "parallel_block": (VIT, dict(block_fn=ParallelScalingBlock), dict(parallel_attn_mlp=True)),
    "gqa": ("vit_base_patch16_sapiens2", dict(num_kv_heads=(2, 1)), dict(norm_kind="RMS", n_registers=8)),
}
CLASSES = torch.tensor([1, 2])
ATOL = 2e-5


@functools.lru_cache(maxsize=None)
def family(name: str):
    timm_name, overrides, expected = FAMILIES[name]
    model = make_pair(timm_name, **overrides)[1]
    for key, value in expected.items():
        assert getattr(model.cfg, key) == value, key
    return model


@pytest.fixture(scope="module")
def images():
    return pair()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_engine_whole_residual_at_layer_0_is_the_source_run(name, images):
    """Writing the clean resid_pre of block 0 at every position (one site, or every position as its own site)
    into the corrupted run reproduces the clean run's metric exactly."""
    model = family(name)
    clean, corrupted = images
    spec = PatchSpec([
        (Site(get_act_name("resid_pre", 0)),),
        tuple(Site(get_act_name("resid_pre", 0), pos=p) for p in range(model.cfg.n_pos)),
    ])
    run = run_patch_spec(model, spec, target_logit(CLASSES), target=corrupted, source=clean, progress=False)
    with torch.no_grad():
        want = model(clean)[torch.arange(2), CLASSES]
    torch.testing.assert_close(run.source_score, want.to(run.source_score.dtype), atol=ATOL, rtol=0)
    torch.testing.assert_close(run.values, run.source_score.expand(2, -1), atol=ATOL, rtol=0)
    assert (run.source_score - run.target_score).abs().min() > 1e-3  # the identity is not vacuous


@pytest.mark.parametrize("name", list(FAMILIES))
def test_layer_sweep_equals_hand_patching(name, images):
    """Every (site, layer, position) cell equals a hand-hooked run that writes the clean value at that position
    (one forward per site and layer: row ``pos * batch + b`` patches position ``pos`` of image ``b``)."""
    model = family(name)
    clean, corrupted = images
    res = layer_sweep(model, clean, corrupted, target_logit(CLASSES), sites=("resid_pre", "attn_out"), progress=False)
    n_pos = model.cfg.n_pos
    assert res.values.shape == (2, model.cfg.n_layers, n_pos, 2)
    rows_pos = torch.arange(n_pos).repeat_interleave(2)
    rows_img = torch.arange(2).repeat(n_pos)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        for s, site in enumerate(("resid_pre", "attn_out")):
            for layer in range(model.cfg.n_layers):
                def put(a, hook):
                    a = a.clone()
                    for r in range(a.shape[0]):
                        a[r, rows_pos[r]] = cache[hook.name][rows_img[r], rows_pos[r]]
                    return a

                logits = model.run_with_hooks(corrupted[rows_img], fwd_hooks=[(get_act_name(site, layer), put)])
                ref = logits[torch.arange(len(rows_img)), CLASSES[rows_img]].view(n_pos, 2)
                torch.testing.assert_close(res.values[s, layer], ref.to(res.values.dtype), atol=ATOL, rtol=0)
    assert (res.values - res.target_score).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(FAMILIES))
def test_patch_heads_z_equals_hand_patching(name, images):
    model = family(name)
    clean, corrupted = images
    res = patch_heads(model, clean, corrupted, target_logit(CLASSES), sites=("z",), progress=False)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                def put(a, hook, head=head):
                    a = a.clone()
                    a[:, :, head] = cache[hook.name][:, :, head]
                    return a

                ref = model.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("z", layer), put)])
                torch.testing.assert_close(
                    res.values[0, layer, head], ref[torch.arange(2), CLASSES].to(res.values.dtype), atol=ATOL, rtol=0
                )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_path_patching_every_sender_into_logits_is_the_source_run(name, images):
    """All senders (embed, every head, every MLP) as one set: path patching into the logits and direct-path
    patching (the summed source-minus-target writes added to the final residual) both give the clean run."""
    model = family(name)
    clean, corrupted = images
    senders = [tuple(all_senders(model))]
    for fn in (path_patch, direct_path_patch):
        res = fn(model, clean, corrupted, target_logit(CLASSES), senders=senders, receivers=["logits"], progress=False)
        assert res.values.shape == (1, 1, 2)
        torch.testing.assert_close(res.values[0, 0], res.source_score, atol=ATOL, rtol=0, msg=fn.__name__)
    # Per-head path patching is a real experiment on every family, too (finite where upstream, NaN nowhere here).
    res = path_patch(model, clean, corrupted, target_logit(CLASSES), progress=False)
    assert torch.isfinite(res.values).all() and (res.values - res.target_score).abs().max() > 1e-4


def test_direct_path_patch_refuses_component_receivers_on_parallel_blocks(images):
    """Parallel blocks have no separate q/k/v or MLP input (one shared norm), and head l does not feed MLP l:
    only 'logits' can receive a direct path; anything else is refused before any forward pass."""
    model = family("parallel_block")
    clean, corrupted = images
    for fn in (direct_path_patch, path_patch):
        for receivers in (None, ["L1H0"], ["MLP1"]):
            kwargs = {} if receivers is None else {"receivers": receivers}
            if fn is path_patch and receivers is None:
                continue  # path_patch's default receiver is 'logits'
            with pytest.raises(ValueError, match="receivers: .*parallel attention/MLP blocks"):
                fn(model, clean, corrupted, target_logit(CLASSES), progress=False, **kwargs)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("window, include_prefix", [((0, 2), False), ((1, 2), True)])
def test_caap_equals_naive_loop(name, window, include_prefix, images):
    """CAAP (batched, starting from the cached neutral prefix) equals one hand-hooked forward per patch that
    overwrites resid_pre of every block in the window at that patch with the source run's value."""
    model = family(name)
    clean = images[0][:1]
    attr = caap(model, clean, window=window, neutral="zeros", include_prefix=include_prefix, batch_size=5)
    ref = naive_caap(model, clean, torch.zeros_like(clean), window, include_prefix=include_prefix)
    assert attr.map.shape == (1, *model.cfg.grid_size)
    torch.testing.assert_close(attr.map, ref.float(), atol=ATOL, rtol=1e-5)
    assert attr.map.std() > 1e-4


@pytest.mark.parametrize("name", ["siglip_map_no_cls", "dinov3_rope_layerscale_registers", "parallel_block"])
def test_select_window_maps_are_caap_maps(name, images):
    model = family(name)
    clean, _ = images
    sel = select_window(model, clean, windows=[(0, 1), (0, 2), (1, 2)])
    assert sel.recommended in sel.maps and len(sel.table) == 3
    for window, m in sel.maps.items():
        torch.testing.assert_close(m, caap(model, clean, window=window).map, atol=ATOL, rtol=0)


# Cheap settings for the sampling methods; the rest run with their defaults.
METHOD_OPTIONS = {"integrated_gradients": dict(n_steps=4), "smoothgrad": dict(n_samples=3), "rise": dict(n_masks=16)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_attribution_method_gives_finite_maps(name, images):
    model = family(name)
    clean, _ = images
    with torch.no_grad():
        predicted = model(clean).argmax(-1)
    for method in available_methods(include_registered=False):  # other tests register toy methods
        maps = get_method(method, model, **METHOD_OPTIONS.get(method, {})).attribute(clean)
        assert maps.patch_map.shape == (2, *model.cfg.grid_size), method
        assert maps.pixel_map.shape == (2, *clean.shape[-2:]), method
        assert torch.isfinite(maps.patch_map).all() and torch.isfinite(maps.pixel_map).all(), method
        assert torch.equal(maps.target, predicted), method
        if method not in ("random", "center"):
            assert maps.patch_map.std() > 0, f"{method}: constant map"

"""Head patching equals TransformerLens's get_act_patch_attn_head_*; all heads' z together = the layer's attn_out."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from patch_toys import metric, pair, tiny, tl_metric
from vit_patching.patching import PatchSpec, Site, patch_heads, run_patch_spec

ATOL = 2e-5
ALL_POS = {
    "z": tlp.get_act_patch_attn_head_out_all_pos,
    "q": tlp.get_act_patch_attn_head_q_all_pos,
    "k": tlp.get_act_patch_attn_head_k_all_pos,
    "v": tlp.get_act_patch_attn_head_v_all_pos,
    "pattern": tlp.get_act_patch_attn_head_pattern_all_pos,
}
BY_POS = {
    "z": tlp.get_act_patch_attn_head_out_by_pos,
    "q": tlp.get_act_patch_attn_head_q_by_pos,
    "k": tlp.get_act_patch_attn_head_k_by_pos,
    "v": tlp.get_act_patch_attn_head_v_by_pos,
}


@pytest.fixture(scope="module")
def model():
    return tiny(depth=2)


@pytest.fixture(scope="module")
def setup(model):
    clean, corrupted = pair()
    _, clean_cache = model.run_with_cache(clean)
    return clean, corrupted, clean_cache


def test_all_positions_equal_transformer_lens(model, setup):
    clean, corrupted, clean_cache = setup
    m = metric()
    res = patch_heads(model, clean, corrupted, m, batch_size=7, progress=False)
    assert res.axes == ("site", "layer", "head") and res.labels["site"] == list(ALL_POS)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    df = pd.DataFrame([(l, h) for l in range(L) for h in range(H)], columns=["layer", "head_index"])
    for k, fn in enumerate(ALL_POS.values()):
        tl = fn(model, corrupted, clean_cache, tl_metric(m, 2), index_axis_names=None, index_df=df, reduce="none")
        torch.testing.assert_close(res.values[k], tl.values.view(L, H, 2), atol=ATOL, rtol=0)


def test_by_position_equals_transformer_lens(model, setup):
    clean, corrupted, clean_cache = setup
    m = metric()
    res = patch_heads(model, clean, corrupted, m, by_pos=True, batch_size=50, progress=False)
    assert res.axes == ("site", "layer", "pos", "head")
    L, P, H = model.cfg.n_layers, model.layout.n_pos, model.cfg.n_heads
    df = pd.DataFrame([(l, p, h) for l in range(L) for p in range(P) for h in range(H)],
                      columns=["layer", "pos", "head_index"])
    for k, (site, fn) in enumerate(BY_POS.items()):
        tl = fn(model, corrupted, clean_cache, tl_metric(m, 2), index_axis_names=None, index_df=df, reduce="none")
        torch.testing.assert_close(res.values[k], tl.values.view(L, P, H, 2), atol=ATOL, rtol=0)
    # pattern: TransformerLens indexes (layer, head, dest_pos); ours (layer, pos = destination, head).
    df = pd.DataFrame([(l, h, p) for l in range(L) for h in range(H) for p in range(P)],
                      columns=["layer", "head_index", "dest_pos"])
    tl = tlp.get_act_patch_attn_head_pattern_by_pos(model, corrupted, clean_cache, tl_metric(m, 2),
                                                     index_axis_names=None, index_df=df, reduce="none")
    torch.testing.assert_close(res.values[4], tl.values.view(L, H, P, 2).transpose(1, 2), atol=ATOL, rtol=0)


def test_every_head_of_a_layer_equals_attn_out(model, setup):
    """b_O is the same in both runs, so writing every head's z from the source equals writing attn_out."""
    clean, corrupted, _ = setup
    m, H = metric(), model.cfg.n_heads
    spec = PatchSpec(
        [tuple(Site(f"blocks.{l}.attn.hook_z", head=h) for h in range(H)) for l in range(2)]
        + [(Site(f"blocks.{l}.hook_attn_out"),) for l in range(2)]
    )
    run = run_patch_spec(model, spec, m, target=corrupted, source=clean, progress=False)
    torch.testing.assert_close(run.values[:2], run.values[2:], atol=ATOL, rtol=0)
    assert not torch.allclose(run.values[0], run.target_score)  # the patch did something


def test_head_subsets_and_source_into_itself(model, setup):
    clean, corrupted, _ = setup
    full = patch_heads(model, clean, corrupted, metric(), sites=("v", "z"), by_pos=True, progress=False)
    sub = patch_heads(model, clean, corrupted, metric(), sites="z", by_pos=True, layers=[1], heads=[1],
                      positions=[0, 3], progress=False)
    assert sub.labels == {"site": ["z"], "layer": ["L1"], "pos": ["CLS", "P(0,2)"], "head": ["H1"]}
    torch.testing.assert_close(sub.values[0, 0, :, 0], full.values[1, 1, [0, 3], 1], atol=ATOL, rtol=0)
    same = patch_heads(model, clean, clean, metric(), progress=False)
    torch.testing.assert_close(same.values, same.target_score.expand_as(same.values), atol=ATOL, rtol=0)

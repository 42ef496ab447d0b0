"""Layer sweeps equal TransformerLens's get_act_patch_* and a one-patch-per-forward loop; batching is real."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tlp

from patch_toys import metric, naive_patch, pair, tiny, tl_metric
from vit_patching.patching import BLOCK_EVERY_SITES, block_every, layer_sweep, logit_diff
from vit_patching.patching.engine import cache_for

ATOL = 2e-5
TL_FN = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "resid_mid": tlp.get_act_patch_resid_mid,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
}


@pytest.fixture(scope="module")
def model():
    return tiny(depth=3)


@pytest.fixture(scope="module")
def reg_model():
    """Registers + CLS: 3 prefix tokens, so prefix positions are patched too."""
    return tiny(depth=2, reg_tokens=2)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_layer_sweep_equals_transformer_lens(model, direction):
    clean, corrupted = pair()
    m = metric()
    res = layer_sweep(model, clean, corrupted, m, direction=direction, batch_size=40, progress=False)
    source, target = (clean, corrupted) if direction == "denoising" else (corrupted, clean)
    _, source_cache = model.run_with_cache(source)
    n_layers, n_pos = model.cfg.n_layers, model.layout.n_pos
    assert n_pos == 17 and res.axes == ("site", "layer", "pos")
    assert res.values.shape == (4, n_layers, n_pos, 2)
    index_df = pd.DataFrame([(l, p) for l in range(n_layers) for p in range(n_pos)], columns=["layer", "pos"])
    for k, site in enumerate(res.labels["site"]):
        tl = TL_FN[site](model, target, source_cache, tl_metric(m, 2), index_axis_names=None, index_df=index_df,
                         reduce="none")
        torch.testing.assert_close(res.values[k], tl.values.view(n_layers, n_pos, 2), atol=ATOL, rtol=0)
    # Baselines: 0 = target run, 1 = source run.
    ids = torch.arange(2)
    torch.testing.assert_close(res.target_score, m(model(target), ids), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.source_score, m(model(source), ids), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.normalized, (res.values - res.target_score) / (res.source_score - res.target_score))
    assert res.direction == direction
    torch.testing.assert_close(res.clean_score, m(model(clean), ids), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.corrupted_score, m(model(corrupted), ids), atol=ATOL, rtol=0)


def test_layer_sweep_equals_naive_loop_with_prefix_tokens(reg_model):
    clean, corrupted = pair()
    m = metric()
    res = layer_sweep(reg_model, clean, corrupted, m, sites=("resid_mid", "mlp_out"), batch_size=16, progress=False)
    assert res.labels["pos"][:4] == ["CLS", "REG0", "REG1", "P(0,0)"]
    _, clean_cache = reg_model.run_with_cache(clean)
    for k, site in enumerate(("resid_mid", "mlp_out")):
        for l in range(2):
            for p in range(reg_model.layout.n_pos):
                want = naive_patch(reg_model, corrupted, clean_cache, m, f"blocks.{l}.hook_{site}", (p,))
                torch.testing.assert_close(res.values[k, l, p], want, atol=ATOL, rtol=0)


def test_block_every_stacks_resid_pre_attn_out_mlp_out(model):
    clean, corrupted = pair()
    every = block_every(model, clean, corrupted, metric(), progress=False)
    sweep = layer_sweep(model, clean, corrupted, metric(), sites=BLOCK_EVERY_SITES, progress=False)
    assert every.labels["site"] == ["resid_pre", "attn_out", "mlp_out"]
    torch.testing.assert_close(every.values, sweep.values)
    with pytest.raises(ValueError, match="block_every fixes sites"):
        block_every(model, clean, corrupted, sites=("resid_pre",))


def test_source_into_itself_changes_nothing(model):
    clean, _ = pair()
    res = layer_sweep(model, clean, clean, metric(), batch_size=64, progress=False)
    torch.testing.assert_close(res.values, res.target_score.expand_as(res.values), atol=ATOL, rtol=0)
    torch.testing.assert_close(res.source_score, res.target_score)


def test_string_metrics_use_the_clean_prediction(model):
    clean, corrupted = pair()
    clean_cls, corrupted_cls = model(clean).argmax(-1), model(corrupted).argmax(-1)
    for direction in ("denoising", "noising"):
        by_name = layer_sweep(model, clean, corrupted, "logit_diff", sites="resid_pre", layers=[1], direction=direction,
                              progress=False)
        explicit = layer_sweep(model, clean, corrupted, logit_diff(clean_cls, corrupted_cls), sites="resid_pre",
                               layers=[1], direction=direction, progress=False)
        assert by_name.metric == "logit_diff" and explicit.metric == "logit_diff"
        torch.testing.assert_close(by_name.values, explicit.values)


def test_subsets_of_layers_and_positions_keep_their_labels(model):
    clean, corrupted = pair()
    full = layer_sweep(model, clean, corrupted, metric(), sites="attn_out", progress=False)
    sub = layer_sweep(model, clean, corrupted, metric(), sites="attn_out", layers=[2, 0], positions=[0, 5, 16],
                      progress=False)
    assert sub.labels == {"site": ["attn_out"], "layer": ["L2", "L0"], "pos": ["CLS", "P(1,0)", "P(3,3)"]}
    torch.testing.assert_close(sub.values[0], full.values[0][[2, 0]][:, [0, 5, 16]], atol=ATOL, rtol=0)
    df = sub.to_dataframe()
    assert len(df) == 1 * 2 * 3 * 2 and set(df["layer_label"]) == {"L2", "L0"}


class _BlockCounter:
    """Counts each block's forward calls and the rows it saw (a pre-hook on the block module, not a HookPoint)."""

    def __init__(self, model):
        self.calls = [0] * model.cfg.n_layers
        self.rows = [0] * model.cfg.n_layers
        self.handles = [b.register_forward_pre_hook(self._hook(i)) for i, b in enumerate(model.blocks)]

    def _hook(self, i):
        def fn(module, args):
            self.calls[i] += 1
            self.rows[i] += args[0].shape[0]

        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def test_batching_is_real_and_starts_from_the_cached_prefix(model):
    clean, corrupted = pair()
    n_pos, batch, batch_size = model.layout.n_pos, 2, 20
    counter = _BlockCounter(model)
    try:
        res = layer_sweep(model, clean, corrupted, metric(), sites="resid_pre", layers=[1, 2], batch_size=batch_size,
                          progress=False)
    finally:
        counter.remove()
    n_rows = 2 * n_pos * batch
    assert res.n_forwards == math.ceil(n_rows / batch_size) == 4
    starts = res.options["chunk_start_layers"]
    assert starts == [1, 1, 2, 2]  # layer-1 rows 0..33 -> chunks 0, 1 (chunk 1 also holds layer-2 rows)
    # Two unpatched caching runs go through every block; patched passes never run block 0 ...
    assert counter.calls[0] == 2 and counter.rows[0] == 2 * batch
    # ... block 1 only in the chunks that start there, block 2 in all of them.
    assert counter.calls[1] == 2 + starts.count(1)
    assert counter.calls[2] == 2 + res.n_forwards
    assert counter.rows[2] == 2 * batch + n_rows


def test_cache_for_only_keeps_requested_hooks(model):
    _, cache = cache_for(model, pair()[0], ["blocks.1.hook_resid_pre"])
    assert list(cache) == ["blocks.1.hook_resid_pre"]

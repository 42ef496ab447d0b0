"""batch_size="auto" and max_memory in every patching experiment: the same numbers as an explicit batch size, a
small budget forces small chunks, path patching's budget counts the receiver inputs it records, bad values name
the argument (before any forward pass)."""
from __future__ import annotations

import math

import pytest
import torch

from caap_toys import tiny_images, tiny_model
from patch_toys import metric, pair, tiny
from vit_patching.patching import direct_path_patch, layer_sweep, patch_heads, path_patch
from vit_patching.patching.caap import caap
from vit_patching.patching.memory import activation_bytes_per_row, hook_elements
from vit_patching.patching.windows import select_window


@pytest.fixture(scope="module")
def model():
    return tiny(depth=3)


@pytest.fixture(scope="module")
def images():
    return pair()


# (experiment, keyword arguments, patched rows = cells x images or None when rows are not cells x images)
EXPERIMENTS = {
    "layer_sweep": (layer_sweep, dict(sites=("resid_pre", "attn_out"), layers=[1, 2], positions=[0, 3, 7])),
    "patch_heads": (patch_heads, dict(sites=("z", "pattern"), layers=[2])),
    "patch_heads_by_pos": (patch_heads, dict(sites="q", by_pos=True, layers=[1], positions=[0, 5])),
    "path_patch": (path_patch, dict(senders=["L0H0", "L1H1", "MLP0"], receivers=["L2H0.q", "L2H1", "logits"])),
    "direct_path_patch": (direct_path_patch, dict(senders=["embed", "L0H1"], receivers=["L1H0.k", "MLP1", "logits"])),
}


def _cells(res) -> int:
    return math.prod(res.values.shape[:-1]) * res.values.shape[-1]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_auto_equals_an_explicit_batch_size_and_a_tiny_budget_runs_one_row(model, images, name):
    fn, kw = EXPERIMENTS[name]
    clean, corrupted = images
    m = metric()
    auto = fn(model, clean, corrupted, m, batch_size="auto", progress=False, **kw)
    k = auto.options["batch_size"]
    assert isinstance(k, int) and k >= _cells(auto)  # the free memory holds every row of these toys at once
    explicit = fn(model, clean, corrupted, m, batch_size=k, progress=False, **kw)
    torch.testing.assert_close(auto.values, explicit.values, rtol=0, atol=0, equal_nan=True)
    assert auto.n_forwards == explicit.n_forwards

    # A budget smaller than the caches: one row per forward pass, still the same numbers as batch_size=1.
    small = fn(model, clean, corrupted, m, batch_size="auto", max_memory=1, progress=False, **kw)
    one = fn(model, clean, corrupted, m, batch_size=1, progress=False, **kw)
    assert small.options["batch_size"] == 1
    assert small.n_forwards == one.n_forwards
    torch.testing.assert_close(small.values, one.values, rtol=0, atol=0, equal_nan=True)
    if name in ("layer_sweep", "patch_heads", "patch_heads_by_pos"):
        assert small.n_forwards == _cells(small)  # every (cell, image) row alone
    # Differently chunked float32 batches agree up to rounding (observed <= 5e-7).
    torch.testing.assert_close(small.values, auto.values, rtol=0, atol=2e-6, equal_nan=True)


@pytest.mark.parametrize("name", ["layer_sweep", "patch_heads"])
def test_a_budget_of_a_few_rows_chooses_a_few_rows(model, images, name):
    fn, kw = EXPERIMENTS[name]
    clean, corrupted = images
    budget = 6 * activation_bytes_per_row(model.cfg)  # room for the caches and a few rows, never for all
    res = fn(model, clean, corrupted, metric(), batch_size="auto", max_memory=budget, progress=False, **kw)
    k, n_rows = res.options["batch_size"], _cells(res)
    assert 1 < k < n_rows
    assert res.n_forwards == math.ceil(n_rows / k)
    same = fn(model, clean, corrupted, metric(), batch_size=k, progress=False, **kw)
    torch.testing.assert_close(res.values, same.values, rtol=0, atol=0)


def test_path_patching_budget_counts_the_recorded_receiver_inputs(model, images):
    """Run 1 keeps every receiver's q/k/v input ``[pos, head, d_model]`` per row while run 2 runs: with every
    head receiving (9 such hooks here) the chosen rows must leave room for them, not only for one block."""
    clean, corrupted = images
    cfg = model.cfg
    unit = activation_bytes_per_row(cfg)
    budget = 64 * unit
    heads = [f"L{l}H{h}" for l in range(3) for h in range(2)]
    to_logits = path_patch(model, clean, corrupted, metric(), receivers=["logits"], batch_size="auto",
                           max_memory=budget, progress=False)
    to_heads = path_patch(model, clean, corrupted, metric(), receivers=heads, batch_size="auto",
                          max_memory=budget, progress=False)
    recorded = 4 * sum(hook_elements(cfg, f"blocks.{l}.hook_{c}_input") for l in range(3) for c in "qkv")
    assert recorded == 4 * 9 * 17 * 2 * 32
    k_logits, k_heads = to_logits.options["batch_size"], to_heads.options["batch_size"]
    assert k_heads * (unit + recorded) <= budget < k_logits * (unit + recorded)
    assert k_heads < k_logits <= budget // unit


def test_caap_and_select_window_take_auto_and_max_memory():
    model, imgs = tiny_model(seed=2), tiny_images(2, seed=7)
    auto = caap(model, imgs, window=(1, 3), batch_size="auto")
    k = auto.settings["batch_size"]
    assert k >= 2 * 16
    torch.testing.assert_close(auto.patched_logits, caap(model, imgs, window=(1, 3), batch_size=k).patched_logits,
                               rtol=0, atol=0)
    small = caap(model, imgs, window=(1, 3), batch_size="auto", max_memory=1)
    assert small.settings["batch_size"] == 1 and small.n_forwards == 2 * 16
    torch.testing.assert_close(small.patched_logits, caap(model, imgs, window=(1, 3), batch_size=1).patched_logits,
                               rtol=0, atol=0)

    kw = dict(windows=[(0, 1), (1, 3)], eval_kwargs={"step": 8})
    sel = select_window(model, imgs, batch_size="auto", max_memory=3 * activation_bytes_per_row(model.cfg), **kw)
    k = sel.options["batch_size"]
    assert 1 <= k < 2 * 16
    ref = select_window(model, imgs, batch_size=k, **kw)
    for w in kw["windows"]:
        torch.testing.assert_close(sel.maps[w], ref.maps[w], rtol=0, atol=0)
    assert sel.table.equals(ref.table)


# (Values of the wrong type, e.g. 2.5 rows, are refused by the runtime type check of the annotations.)
BAD = [
    ("batch_size", dict(batch_size="big"), "batch_size: expected a positive int (rows per forward pass) or 'auto'"),
    ("batch_size", dict(batch_size=0), "batch_size: expected a positive int"),
    ("max_memory", dict(batch_size="auto", max_memory=0), "max_memory: expected a positive int, got 0"),
    ("max_memory", dict(batch_size=8, max_memory=-5), "max_memory: expected a positive int, got -5"),
]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
@pytest.mark.parametrize("arg,kw,message", BAD, ids=[f"{a}{i}" for i, (a, _, _) in enumerate(BAD)])
def test_bad_batch_size_or_max_memory_names_the_argument_before_any_forward(model, images, name, arg, kw, message,
                                                                           monkeypatch):
    fn, exp_kw = EXPERIMENTS[name]

    def no_forward(*a, **k):
        raise AssertionError("a forward pass ran before the argument check")

    monkeypatch.setattr(model, "forward", no_forward)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fn(model, *images, metric(), progress=False, **kw, **exp_kw)


@pytest.mark.parametrize("arg,kw,message", BAD, ids=[f"{a}{i}" for i, (a, _, _) in enumerate(BAD)])
def test_bad_values_in_caap_and_select_window(arg, kw, message):
    model, imgs = tiny_model(seed=2), tiny_images(1, seed=7)
    pattern = message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=pattern):
        caap(model, imgs, window=(0, 1), **kw)
    with pytest.raises(ValueError, match=pattern):
        select_window(model, imgs, [(0, 1)], **kw)

"""Path patching: TransformerLens's direct path, known-answer identities, and a hand-written freeze-and-recompute."""
from __future__ import annotations

import math

import pytest
import torch
from transformer_lens import patching as tlp

from patch_toys import TLNames, metric, pair, tiny
from vit_patching.patching import (
    Node,
    PatchSpec,
    Site,
    all_heads,
    all_senders,
    direct_path_patch,
    patch_heads,
    path_patch,
    run_patch_spec,
)

ATOL = 2e-5


@pytest.fixture(scope="module")
def model():
    return tiny(depth=3)


@pytest.fixture(scope="module")
def images():
    return pair()


@pytest.mark.parametrize("component", ["q", "k", "v"])
@pytest.mark.parametrize("src", [(0, 1), (1, 0)])
def test_direct_path_equals_transformer_lens(model, images, component, src):
    clean, corrupted = images
    m = metric()
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    tl = tlp.get_act_patch_direct_path(
        TLNames(model), corrupted, clean_cache, corrupted_cache, lambda lg: m(lg, torch.arange(2)).mean(),
        src[0], src[1], component=component, verbose=False,
    )
    ours = direct_path_patch(model, clean, corrupted, m, senders=[f"L{src[0]}H{src[1]}"],
                             receivers=all_heads(model, inputs=component), batch_size=5, progress=False)
    assert ours.labels["receiver"][0] == f"L0H0.{component}"
    got = ours.mean(normalized=False).view(3, 2)
    later = slice(src[0] + 1, None)
    torch.testing.assert_close(got[later], tl[later], atol=ATOL, rtol=0)
    assert got[: src[0] + 1].isnan().all()  # TransformerLens fills these with 0.0 placeholders
    assert not model.cfg.use_split_qkv_input  # the flag was only on for the run


def test_fully_frozen_path_patching_equals_direct_path(model, images):
    """With every head and MLP frozen, run 1 changes a receiver's input by exactly the sender's direct write."""
    clean, corrupted = images
    receivers = ["logits", "L2H0.q", "L2H1.k", "L1H0", "MLP1", "L2", ("L1H1.v", "L1H0.k")]
    kw = dict(senders=all_senders(model), receivers=receivers, batch_size=9, progress=False)
    frozen = path_patch(model, clean, corrupted, metric(), freeze=("heads", "mlps"), **kw)
    direct = direct_path_patch(model, clean, corrupted, metric(), **kw)
    assert frozen.labels == direct.labels and frozen.labels["receiver"][-1] == "L1H1.v+L1H0.k"
    assert torch.equal(frozen.values.isnan(), direct.values.isnan())
    torch.testing.assert_close(frozen.values.nan_to_num(), direct.values.nan_to_num(), atol=ATOL, rtol=0)
    # NaN exactly where no sender writes before the receiver reads (e.g. MLP1 -> L1H0, L2H0 -> MLP1).
    s, r = frozen.labels["sender"], frozen.labels["receiver"]
    assert frozen.values[s.index("MLP1"), r.index("L1H0")].isnan().all()
    assert frozen.values[s.index("L2H0"), r.index("MLP1")].isnan().all()
    assert not frozen.values[s.index("L1H0"), r.index("MLP1")].isnan().any()


def test_nothing_frozen_to_logits_is_plain_patching(model, images):
    clean, corrupted = images
    m = metric()
    senders = all_heads(model) + ["MLP0", "MLP2", "embed"]
    res = path_patch(model, clean, corrupted, m, senders=senders, freeze=(), batch_size=6, progress=False)
    heads = patch_heads(model, clean, corrupted, m, sites="z", progress=False)
    torch.testing.assert_close(res.values[:6, 0].view(3, 2, 2), heads.values[0], atol=ATOL, rtol=0)
    spec = PatchSpec([(Site("blocks.0.hook_mlp_out"),), (Site("blocks.2.hook_mlp_out"),)])
    mlps = run_patch_spec(model, spec, m, target=corrupted, source=clean, progress=False)
    torch.testing.assert_close(res.values[6:8, 0], mlps.values, atol=ATOL, rtol=0)
    # The whole embedding from the source *is* the source run.
    torch.testing.assert_close(res.values[8, 0], res.source_score, atol=ATOL, rtol=0)
    assert res.n_forwards == math.ceil(9 * 2 / 6)  # logits receiver: run 1 only


def test_last_layer_heads_to_logits_equal_attn_out(model, images):
    """No head after the last block to freeze: its heads -> logits is patching its attn_out (all positions)."""
    clean, corrupted = images
    m = metric()
    res = path_patch(model, clean, corrupted, m, senders=["L2", ("L2H0", "L2H1")], progress=False)
    run = run_patch_spec(model, PatchSpec([(Site("blocks.2.hook_attn_out"),)]), m, target=corrupted, source=clean,
                         progress=False)
    torch.testing.assert_close(res.values[:, 0], run.values.expand(2, 2), atol=ATOL, rtol=0)


def test_direct_writes_of_every_sender_sum_to_the_source_run(model, images):
    clean, corrupted = images
    for direction in ("denoising", "noising"):
        res = direct_path_patch(model, clean, corrupted, metric(), senders=[tuple(all_senders(model))],
                                receivers=["logits"], direction=direction, progress=False)
        torch.testing.assert_close(res.values[0, 0], res.source_score, atol=ATOL, rtol=0)
        torch.testing.assert_close(res.normalized[0, 0], torch.ones(2), atol=1e-4, rtol=0)


def test_source_into_itself_changes_nothing(model, images):
    clean, _ = images
    for fn in (path_patch, direct_path_patch):
        res = fn(model, clean, clean, metric(), receivers=["logits", "L2H1.k", "MLP1"], progress=False)
        ok = ~res.values.isnan()
        torch.testing.assert_close(res.values[ok], res.target_score.expand_as(res.values)[ok], atol=ATOL, rtol=0)


@torch.no_grad()
def _naive_freeze_and_recompute(model, clean, corrupted, m, sender, receivers):
    """IOI appendix B by hand for sender head (l, h) -> a receiver set of head inputs [(l2, h2, "q"|"k"|"v"), ...]
    patched together: two full forwards of every image, no batching over senders or receivers."""
    l, h = sender
    _, src = model.run_with_cache(clean)
    _, tgt = model.run_with_cache(corrupted)
    z = lambda k: f"blocks.{k}.attn.hook_z"
    name = lambda l2, c: f"blocks.{l2}.hook_{c}_input"
    recorded = {}

    def freeze(act, hook):
        act = tgt[hook.name].clone()
        if hook.name == z(l):
            act[:, :, h] = src[z(l)][:, :, h]
        return act

    def record(act, hook):
        recorded[hook.name] = act.clone()

    def patch(act, hook):
        act = act.clone()
        for l2, h2, c in receivers:
            if name(l2, c) == hook.name:
                act[:, :, h2] = recorded[hook.name][:, :, h2]
        return act

    hooks = sorted({name(l2, c) for l2, _, c in receivers})
    with model.flags(use_split_qkv_input=True):
        model.run_with_hooks(corrupted, fwd_hooks=[(z(k), freeze) for k in range(model.cfg.n_layers)]
                             + [(n, record) for n in hooks])
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(n, patch) for n in hooks])
    return m(logits, torch.arange(clean.shape[0]))


def test_freeze_and_recompute_equals_a_hand_written_run(model, images):
    clean, corrupted = images
    m = metric()
    res = path_patch(model, clean, corrupted, m, senders=["L0H1", "L1H0"], receivers=["L2H1.q"], progress=False)
    for i, sender in enumerate([(0, 1), (1, 0)]):
        want = _naive_freeze_and_recompute(model, clean, corrupted, m, sender, [(2, 1, "q")])
        torch.testing.assert_close(res.values[i, 0], want, atol=ATOL, rtol=0)
    # MLP0 is recomputed in run 1 (not frozen): L0H1's effect through it reaches L2H1, so this differs from
    # the direct path.
    direct = direct_path_patch(model, clean, corrupted, m, senders=["L0H1"], receivers=["L2H1.q"], progress=False)
    assert not torch.allclose(direct.values[0, 0], res.values[0, 0], atol=1e-4)


def test_receiver_sets_straddling_a_sender_do_not_depend_on_batch_size(model, images):
    """A receiver set with receivers before and after a sender (L0H1.q reads before L1H0 writes): run 1 chunks
    that start after block 0 never record L0H1's input, which run 2 then asked for (KeyError at batch_size=2)."""
    clean, corrupted = images
    m = metric()
    kw = dict(senders=["L0H0", "L1H0"], receivers=[("L0H1.q", "L2H0.q"), ("L1H1.v", "L2H0.k"), "L2H1.k"],
              progress=False)
    runs = [path_patch(model, clean, corrupted, m, batch_size=b, **kw) for b in (1, 2, 3, 128)]
    for run in runs[1:]:
        assert torch.equal(run.values.isnan(), runs[0].values.isnan())
        # Equal up to float32 rounding of differently shaped batches (observed max 2.4e-7; 6.7e-16 in float64).
        torch.testing.assert_close(run.values, runs[0].values, atol=1e-6, rtol=0, equal_nan=True)
    sets = [[(0, 1, "q"), (2, 0, "q")], [(1, 1, "v"), (2, 0, "k")], [(2, 1, "k")]]
    for i, sender in enumerate([(0, 0), (1, 0)]):
        for j, receivers in enumerate(sets):
            want = _naive_freeze_and_recompute(model, clean, corrupted, m, sender, receivers)
            torch.testing.assert_close(runs[0].values[i, j], want, atol=ATOL, rtol=0)


def test_float64_models_keep_float64_precision():
    """Deltas, buffers and results stay in the model's dtype: float64 agrees with a float64 naive run to 1e-12
    (a float32 buffer or result would be off by ~1e-7)."""
    model = tiny(depth=3).double()
    clean, corrupted = (x.double() for x in pair())
    m = metric()
    direct = direct_path_patch(model, clean, corrupted, m, senders=["L0H1", "MLP0"], receivers=["L2H0.q", "MLP1"],
                               batch_size=3, progress=False)
    assert direct.values.dtype == direct.normalized.dtype == torch.float64
    _, src = model.run_with_cache(clean)
    _, tgt = model.run_with_cache(corrupted)
    W_O = model.blocks[0].attn.W_O[1]
    deltas = {"L0H1": (src["blocks.0.attn.hook_z"] - tgt["blocks.0.attn.hook_z"])[:, :, 1] @ W_O,
              "MLP0": src["blocks.0.hook_mlp_out"] - tgt["blocks.0.hook_mlp_out"]}
    for i, sender in enumerate(["L0H1", "MLP0"]):
        for j, (hook, head) in enumerate([("blocks.2.hook_q_input", 0), ("blocks.1.hook_mlp_in", None)]):
            def add(act, hook, d=deltas[sender], head=head):
                act = act.clone()
                if head is None:
                    act += d
                else:
                    act[:, :, head] += d
                return act

            with model.flags(use_split_qkv_input=True, use_hook_mlp_in=True):
                want = m(model.run_with_hooks(corrupted, fwd_hooks=[(hook, add)]), torch.arange(2))
            torch.testing.assert_close(direct.values[i, j], want, atol=1e-12, rtol=0)
    path = path_patch(model, clean, corrupted, m, senders=["L0H0"], receivers=[("L0H1.q", "L2H0.q")], batch_size=1,
                      progress=False)
    assert path.values.dtype == torch.float64
    want = _naive_freeze_and_recompute(model, clean, corrupted, m, (0, 0), [(0, 1, "q"), (2, 0, "q")])
    torch.testing.assert_close(path.values[0, 0], want, atol=1e-12, rtol=0)


def test_path_patching_counts_two_runs(model, images):
    clean, corrupted = images
    res = path_patch(model, clean, corrupted, metric(), senders=["L0H0", "L0H1", "MLP0"],
                     receivers=["L1H0.q", "L2", "logits"], batch_size=4, progress=False)
    # run 1: 3 senders x 2 images = 6 rows -> 2 forwards; run 2 per run-1 chunk: 4 rows x 2 receiver sets = 8 -> 2,
    # then 2 rows x 2 = 4 -> 1.
    assert res.n_forwards == 2 + 2 + 1
    assert res.options["freeze"] == ["heads"] and res.options["senders"] == [["L0H0"], ["L0H1"], ["MLP0"]]


def test_node_parsing():
    assert Node.parse("L2H1.kq") == Node("head", 2, 1, "qk")
    assert Node.parse("L3").label == "L3" and Node.parse("L3.v").label == "L3.v"
    assert Node.parse("resid_final") == Node("logits")
    with pytest.raises(ValueError, match=r"receivers: expected 'embed', 'logits', .*got 'L1X2'"):
        Node.parse("L1X2", "receivers")

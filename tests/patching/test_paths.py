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
def _naive_freeze_and_recompute(model, clean, corrupted, m, sender, receiver):
    """IOI appendix B by hand for sender head (l, h) -> receiver head (l2, h2)'s q input, two forwards per image."""
    (l, h), (l2, h2) = sender, receiver
    _, src = model.run_with_cache(clean)
    _, tgt = model.run_with_cache(corrupted)
    z = lambda k: f"blocks.{k}.attn.hook_z"
    recorded = {}

    def freeze(act, hook):
        act = tgt[hook.name].clone()
        if hook.name == z(l):
            act[:, :, h] = src[z(l)][:, :, h]
        return act

    def record(act, hook):
        recorded["q"] = act.clone()

    with model.flags(use_split_qkv_input=True):
        model.run_with_hooks(corrupted, fwd_hooks=[(z(k), freeze) for k in range(model.cfg.n_layers)]
                             + [(f"blocks.{l2}.hook_q_input", record)])

        def patch(act, hook):
            act = act.clone()
            act[:, :, h2] = recorded["q"][:, :, h2]
            return act

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{l2}.hook_q_input", patch)])
    return m(logits, torch.arange(clean.shape[0]))


def test_freeze_and_recompute_equals_a_hand_written_run(model, images):
    clean, corrupted = images
    m = metric()
    res = path_patch(model, clean, corrupted, m, senders=["L0H1", "L1H0"], receivers=["L2H1.q"], progress=False)
    for i, sender in enumerate([(0, 1), (1, 0)]):
        want = _naive_freeze_and_recompute(model, clean, corrupted, m, sender, (2, 1))
        torch.testing.assert_close(res.values[i, 0], want, atol=ATOL, rtol=0)
    # MLP0 is recomputed in run 1 (not frozen): L0H1's effect through it reaches L2H1, so this differs from
    # the direct path.
    direct = direct_path_patch(model, clean, corrupted, m, senders=["L0H1"], receivers=["L2H1.q"], progress=False)
    assert not torch.allclose(direct.values[0, 0], res.values[0, 0], atol=1e-4)


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
    with pytest.raises(ValueError, match=r"receivers must be .*got 'L1X2'"):
        Node.parse("L1X2", "receivers")

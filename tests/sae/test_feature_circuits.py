"""Feature circuits: EAP edges into and out of an SAE's latents and error equal hand-written directional
derivatives, sum to the nodes' own scores, and evaluating kept/ablated features equals hand-written ablation runs."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402
from test_latent_sites import sae_at  # noqa: E402

from vit_patching.circuits import evaluate_features, feature_eap, feature_faithfulness_curve  # noqa: E402
from vit_patching.patching import target_logit  # noqa: E402

H = "blocks.0.hook_resid_post"
LAT, ERR = f"{H}.sae.hook_sae_acts_post", f"{H}.sae.hook_sae_error"


@pytest.fixture(scope="module")
def setup():
    model = make_pair()[1]
    sae = sae_at(H, arch="standard")
    model.add_sae(sae, use_error_term=True)
    clean, corrupted = images(2, seed=3), images(2, seed=4)
    with torch.no_grad():
        metric = target_logit(model(clean).argmax(-1))
        _, cc = model.run_with_cache(clean, names_filter=lambda n: n.startswith("blocks.0"))
        _, kc = model.run_with_cache(corrupted, names_filter=lambda n: n.startswith("blocks.0"))
    return model, sae, clean, corrupted, metric, cc, kc


def d_metric(model, corrupted, metric, hooks):
    """dm/d eps at eps = 0 of the corrupted run with ``hooks(eps)`` attached (a directional derivative)."""
    eps = torch.zeros((), requires_grad=True)
    with model.flags(use_split_qkv_input=True, use_hook_mlp_in=True):
        logits = model.run_with_hooks(corrupted, fwd_hooks=hooks(eps))
    return torch.autograd.grad(metric(logits, torch.arange(corrupted.shape[0])).sum(), eps)[0]


def test_feature_edges_equal_hand_written_directional_derivatives_and_sum_to_node_scores(setup):
    model, sae, clean, corrupted, metric, cc, kc = setup
    fe = feature_eap(model, clean, corrupted, metric, hook=H, latents=[3, 7, 20])
    assert fe.nodes == ["F3", "F7", "F20", "ERR"] and fe.senders[0] == "embed" and fe.receivers[-1] == "logits"
    assert all(r.startswith(("L1", "MLP1", "logits")) for r in fe.receivers)
    total = lambda t: t.sum(-1)  # noqa: E731  (both images: the hand derivatives sum the metric over images)
    k, j = 7, 1  # latent 7 is node 1
    # F7 -> MLP1: its decoder direction times the latent's change, added to MLP1's input alone
    d_feat = (cc[LAT] - kc[LAT])[..., k, None] * sae.W_dec[k].detach()
    hand = d_metric(model, corrupted, metric, lambda e: [("blocks.1.hook_mlp_in", lambda a, hook: a + e * d_feat)])
    torch.testing.assert_close(total(fe.out_of[j, fe.receivers.index("MLP1")]), hand, atol=1e-5, rtol=1e-4)
    # ERR -> L1H0.v
    d_err = cc[ERR] - kc[ERR]

    def v_in(e):
        def add(a, hook):
            a = a.clone()
            a[:, :, 0] = a[:, :, 0] + e * d_err
            return a
        return [("blocks.1.hook_v_input", add)]

    torch.testing.assert_close(total(fe.out_of[3, fe.receivers.index("L1H0.v")]), d_metric(model, corrupted, metric, v_in),
                               atol=1e-5, rtol=1e-4)
    # L0H1 -> F7 and L0H1 -> ERR: the head's write changes the SAE's input seen by that node only
    d_head = torch.einsum("bpe,ed->bpd", (cc["blocks.0.attn.hook_z"] - kc["blocks.0.attn.hook_z"])[:, :, 1],
                          model.blocks[0].attn.W_O[1]).detach()
    x = kc[H]

    def to_latent(e):
        def swap(a, hook):
            a = a.clone()
            a[..., k] = sae.encode(x + e * d_head)[..., k]
            return a
        return [(LAT, swap)]

    s = fe.senders.index("L0H1")
    torch.testing.assert_close(total(fe.into[s, j]), d_metric(model, corrupted, metric, to_latent), atol=1e-5, rtol=1e-4)
    to_error = lambda e: [(ERR, lambda a, hook: (x + e * d_head) - sae.decode(sae.encode(x + e * d_head)))]  # noqa: E731
    torch.testing.assert_close(total(fe.into[s, 3]), d_metric(model, corrupted, metric, to_error), atol=1e-5, rtol=1e-4)
    # the residual at the hook is read only downstream: a node's outgoing edges sum to its AtP score
    torch.testing.assert_close(fe.out_of.sum(1), fe.node_scores, atol=1e-5, rtol=1e-4)
    assert fe.node_scores.abs().max() > 1e-2 and fe.into.abs().max() > 1e-3


@pytest.mark.parametrize("ablation", ["corrupted", "zero"])
@pytest.mark.parametrize("keep_error", [True, False])
def test_evaluate_features_equals_hand_written_ablation_runs(setup, ablation, keep_error):
    model, sae, clean, corrupted, metric, cc, kc = setup
    keep = [3, 7, 20]
    ev = evaluate_features(model, clean, corrupted, metric, hook=H, keep=keep, keep_error=keep_error,
                           ablation=ablation)
    src = {h: (torch.zeros_like(kc[h]) if ablation == "zero" else kc[h]) for h in (LAT, ERR)}

    def run(kept, error_kept):
        def lat(a, hook):
            out = src[LAT].clone()
            out[..., kept] = a[..., kept]
            return out

        hooks = [(LAT, lat)] + ([] if error_kept else [(ERR, lambda a, hook: src[ERR].clone())])
        with torch.no_grad():
            return metric(model.run_with_hooks(clean, fwd_hooks=hooks), torch.arange(2))

    torch.testing.assert_close(ev.values, run(keep, keep_error), atol=5e-6, rtol=0)
    torch.testing.assert_close(ev.empty_score, run([], False), atol=5e-6, rtol=0)
    f = (ev.values.mean() - ev.empty_score.mean()) / (ev.clean_score.mean() - ev.empty_score.mean())
    torch.testing.assert_close(ev.faithfulness, f)


def test_feature_faithfulness_curve_keeps_the_top_scored_latents(setup):
    model, sae, clean, corrupted, metric, cc, kc = setup
    fe = feature_eap(model, clean, corrupted, metric, hook=H, latents=[3, 7, 20, 41])
    curve = feature_faithfulness_curve(model, clean, corrupted, metric, hook=H, scores=fe, sizes=[0, 2, 4],
                                       keep_error=False)
    by_score = [k for _, k in sorted(zip((-fe.node_scores[:4].mean(-1).abs()).tolist(), [3, 7, 20, 41]))]
    assert curve.kept == [[], by_score[:2], by_score]
    for i, kept in enumerate(curve.kept):
        ev = evaluate_features(model, clean, corrupted, metric, hook=H, keep=kept, keep_error=False)
        torch.testing.assert_close(curve.values[i], ev.values, atol=5e-7, rtol=0)
    torch.testing.assert_close(curve.values[0], curve.empty_score, atol=5e-7, rtol=0)  # nothing kept
    assert abs(float(curve.faithfulness[0])) < 1e-5
    with pytest.raises(ValueError, match=r"sizes: expected a non-empty list of latent counts in \[0, 4\]"):
        feature_faithfulness_curve(model, clean, corrupted, metric, hook=H, scores=fe, sizes=[5])
    # its figure, as CircuitEvaluation.plot draws a circuit's: the points in size order, counted in latents
    fig = curve.plot(title="features <b>kept</b>")
    assert list(fig.data[0].x) == [0, 2, 4] and list(fig.data[0].y) == curve.faithfulness.tolist()
    assert fig.layout.xaxis.title.text == "latents kept" and fig.layout.xaxis.type == "linear"  # the empty point drawn
    assert "latents" in fig.data[0].hovertemplate and "edges" not in fig.data[0].hovertemplate
    assert "&lt;b&gt;kept" in fig.layout.title.text and "(error ablated)" in fig.data[0].name


def test_feature_circuits_refuse_what_they_cannot_score(setup):
    model, sae, clean, corrupted, metric, cc, kc = setup
    with pytest.raises(ValueError, match="hook: expected a hook with a spliced SAE"):
        feature_eap(model, clean, corrupted, metric, hook="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match=r"keep: expected latent indices in \[0, 64\)"):
        evaluate_features(model, clean, corrupted, metric, hook=H, keep=[64])
    with pytest.raises(ValueError, match="ablation: expected one of"):
        evaluate_features(model, clean, corrupted, metric, hook=H, keep=[1], ablation="mean")
    other = make_pair()[1]
    other.add_sae(sae_at("blocks.0.hook_mlp_out", arch="standard"))
    with pytest.raises(ValueError, match="hook: expected an SAE on every token of a residual hook"):
        feature_eap(other, clean, corrupted, metric, hook="blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="keep_error: the SAE at 'blocks.0.hook_mlp_out' runs without its error"):
        evaluate_features(other, clean, corrupted, metric, hook="blocks.0.hook_mlp_out", keep=[1], keep_error=False)

"""Attribution patching: result layout equal to the exact experiments, exactness where the model is linear
downstream, error ~ eps^2 as the corruption shrinks, AtP* pattern effects against brute force, verification."""
import pytest
import torch

from circuit_toys import images, metric, pair, tiny
from vit_patching.circuits import atp_heads, atp_layer_sweep
from vit_patching.circuits.atp import pattern_effect_k, pattern_effect_q
from vit_patching.patching import layer_sweep, patch_heads


def test_layer_sweep_layout_and_baselines_match_the_exact_sweep():
    model, (clean, corrupted) = tiny(), pair()
    est = atp_layer_sweep(model, clean, corrupted, metric(), sites=("resid_pre", "attn_out"), layers=[1],
                          positions=[0, 3, 5])
    exact = layer_sweep(model, clean, corrupted, metric(), sites=("resid_pre", "attn_out"), layers=[1],
                        positions=[0, 3, 5], progress=False)
    assert est.axes == exact.axes and est.labels == exact.labels
    assert est.values.shape == exact.values.shape
    torch.testing.assert_close(est.target_score, exact.target_score)
    torch.testing.assert_close(est.source_score, exact.source_score)
    assert est.normalized.shape == exact.normalized.shape


def test_atp_is_exact_where_the_model_is_linear_downstream():
    # Without the final norm, the logits are an affine function of the last block's output (CLS pooling):
    # patching resid_post or mlp_out of the last block changes a logit exactly by (a' - a) . grad.
    model, (clean, corrupted) = tiny(dtype=torch.float64), pair(dtype=torch.float64)
    model.cfg.final_norm = False
    for direction in ("denoising", "noising"):
        est = atp_layer_sweep(model, clean, corrupted, metric(), sites=("resid_post", "mlp_out"), layers=[1],
                              direction=direction)
        exact = layer_sweep(model, clean, corrupted, metric(), sites=("resid_post", "mlp_out"), layers=[1],
                            direction=direction, progress=False)
        assert (exact.values - exact.target_score).abs().max() > 0.1  # the cells do change the metric
        torch.testing.assert_close(est.values, exact.values, rtol=0, atol=1e-6)  # the engine returns float32 metrics


@pytest.mark.parametrize("kind", ["sweep", "heads"])
def test_atp_error_shrinks_like_eps_squared(kind):
    model = tiny(dtype=torch.float64)
    clean = images(2, 32, 32, seed=1).double()
    noise = images(2, 32, 32, seed=3).double()
    errors = []
    for eps in (0.04, 0.02):
        corrupted = clean + eps * noise
        if kind == "sweep":
            args = dict(sites=("resid_pre", "mlp_out"), layers=[0, 1], positions=[0, 2, 7])
            est = atp_layer_sweep(model, clean, corrupted, metric(), **args)
            exact = layer_sweep(model, clean, corrupted, metric(), progress=False, **args)
        else:
            args = dict(sites=("z", "v", "pattern"))
            est = atp_heads(model, clean, corrupted, metric(), **args)
            exact = patch_heads(model, clean, corrupted, metric(), progress=False, **args)
        errors.append((est.values - exact.values).abs().sum().item())
    ratio = errors[0] / errors[1]
    assert 3.5 < ratio < 4.5, (errors, ratio)


@pytest.mark.parametrize("which", ["q", "k"])
def test_pattern_effects_equal_brute_force_recomputation(which):
    g = torch.Generator().manual_seed(0)
    b, n, h, e = 2, 5, 3, 4
    q, k = torch.randn(b, n, h, e, generator=g, dtype=torch.float64) * 2, torch.randn(b, n, h, e, generator=g, dtype=torch.float64) * 2
    new = torch.randn(b, n, h, e, generator=g, dtype=torch.float64) * 3
    grad = torch.randn(b, h, n, n, generator=g, dtype=torch.float64)
    scale = e**-0.5

    def pattern(qq, kk):
        return torch.softmax(torch.einsum("bihe,bjhe->bhij", qq, kk) * scale, dim=-1)

    p = pattern(q, k)
    expected = torch.zeros(b, n, h, dtype=torch.float64)
    for pos in range(n):
        qq, kk = q.clone(), k.clone()
        (qq if which == "q" else kk)[:, pos] = new[:, pos]
        expected[:, pos] = ((pattern(qq, kk) - p) * grad).sum((-1, -2))
    got = pattern_effect_q(new, q, k, p, grad, scale) if which == "q" else pattern_effect_k(new, q, k, grad, scale)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_pattern_effect_k_is_stable_for_saturated_rows():
    b, n, h, e = 1, 4, 1, 2
    q = torch.zeros(b, n, h, e, dtype=torch.float64)
    q[..., 0] = 60.0  # scores up to ~3600: exp overflows without the log-space form
    k = torch.zeros(b, n, h, e, dtype=torch.float64)
    k[:, 0, :, 0] = 1.0
    new = k.clone()
    new[:, 1, :, 0] = 2.0  # key 1 takes over every row
    grad = torch.ones(b, h, n, n, dtype=torch.float64)
    grad[..., 1] = 3.0
    out = pattern_effect_k(new, q, k, grad, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1, 0], torch.tensor(4 * 2.0, dtype=torch.float64))  # 4 rows move 1 -> 3


def test_atp_star_for_keys_matches_the_exact_pattern_change():
    # AtP* linearises only after the softmax: equal to sum (pattern(patched run) - pattern) . dm/dpattern.
    model, (clean, corrupted) = tiny(dtype=torch.float64), pair(dtype=torch.float64)
    res = atp_heads(model, clean, corrupted, metric(), sites="k", layers=[1], by_pos=True, positions=[0, 4])
    ids = torch.arange(2)
    _, src = model.run_with_cache(clean, names_filter=lambda n: n == "blocks.1.attn.hook_k", return_cache_object=False)
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept["p"] = act
        return act

    logits = model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_pattern", keep)])
    metric()(logits, ids).sum().backward()
    p0, grad = kept["p"].detach(), kept["p"].grad
    model.zero_grad(set_to_none=True)
    for j, pos in enumerate([0, 4]):
        def patch(act, hook, pos=pos):
            act = act.clone()
            act[:, pos] = src["blocks.1.attn.hook_k"][:, pos]
            return act

        out = {}
        with torch.no_grad():
            model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.attn.hook_k", patch),
                                                       ("blocks.1.attn.hook_pattern", lambda a, hook: out.setdefault("p", a))])
        expected = ((out["p"] - p0) * grad).sum((-1, -2))  # [batch, head]
        torch.testing.assert_close(res.values[0, 0, j] - res.target_score, expected.T.float(), rtol=1e-5, atol=1e-6)


def test_atp_star_beats_the_linear_estimate_on_queries_and_keys():
    model, (clean, corrupted) = tiny(depth=3, seed=4), pair(batch=4)
    exact = patch_heads(model, clean, corrupted, metric(torch.tensor([1, 2, 3, 4])), sites=("q", "k"), progress=False)
    err = {}
    for star in (True, False):
        est = atp_heads(model, clean, corrupted, metric(torch.tensor([1, 2, 3, 4])), sites=("q", "k"), atp_star=star)
        err[star] = (est.values - exact.values).abs().mean().item()
    assert err[True] < err[False], err


def test_verify_top_k_reruns_the_largest_cells_exactly():
    model, (clean, corrupted) = tiny(), pair()
    est = atp_layer_sweep(model, clean, corrupted, metric(), sites=("resid_pre", "mlp_out"), verify_top_k=4)
    exact = layer_sweep(model, clean, corrupted, metric(), sites=("resid_pre", "mlp_out"), progress=False)
    v = est.options["verification"]
    assert len(v.cells) == 4 and v.estimate.shape == v.exact.shape == (4, 2)
    effect = (est.values - est.target_score).mean(-1).abs()
    assert effect[v.cells[0]] == effect.max()
    for j, cell in enumerate(v.cells):
        torch.testing.assert_close(v.exact[j], exact.values[cell])
        torch.testing.assert_close(v.estimate[j], est.values[cell])
    heads = atp_heads(model, clean, corrupted, metric(), sites=("z", "pattern"), by_pos=True, verify_top_k=3)
    exact_h = patch_heads(model, clean, corrupted, metric(), sites=("z", "pattern"), by_pos=True, progress=False)
    for j, cell in enumerate(heads.options["verification"].cells):
        torch.testing.assert_close(heads.options["verification"].exact[j], exact_h.values[cell])


def test_head_sites_layout_matches_patch_heads():
    model, (clean, corrupted) = tiny(), pair()
    for by_pos in (False, True):
        est = atp_heads(model, clean, corrupted, "logit", by_pos=by_pos, heads=[1])
        exact = patch_heads(model, clean, corrupted, "logit", by_pos=by_pos, heads=[1], progress=False)
        assert est.axes == exact.axes and est.labels == exact.labels and est.values.shape == exact.values.shape
        assert est.metric == exact.metric == "logit"
        est.plot(site="z")  # the same figures apply

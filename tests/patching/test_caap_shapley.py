"""Coalition (Shapley) CAAP and patch interactions: known answers on crafted games, an exact enumeration on a
4-patch model, efficiency for every sample count, the engine's coalition rows against naive hooked runs."""
from __future__ import annotations

import doctest
import itertools
import math

import pytest
import torch
from caap_toys import tiny_images, tiny_model
from shapley_toys import A, B, additive_model, and_images, and_model, naive_value

from vit_patching.attribution import available_methods, get_method
from vit_patching.patching import caap_interactions as interactions_module
from vit_patching.patching import caap_shapley as shapley_module
from vit_patching.patching.caap import caap
from vit_patching.patching.caap_context import prepare_caap
from vit_patching.patching.caap_interactions import caap_interactions
from vit_patching.patching.caap_shapley import caap_shapley, coalition_logits, player_groups


@pytest.fixture(scope="module")
def and_setup():
    return and_model(), and_images(2)


def enumerated_shapley(model, images, window, target, n, direction="denoising"):
    v = {s: naive_value(model, images, list(s), window, target, direction)
         for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    phi = torch.zeros(images.shape[0], n, dtype=torch.float64)
    for i in range(n):
        for s, vs in v.items():
            if i not in s:
                w = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                phi[:, i] += w * (v[tuple(sorted(s + (i,)))] - vs)
    return phi, v


# ---------------------------------------------------------------------------------------------- known answers
def test_additive_readout_gives_single_patch_caap():
    model, x = additive_model(), tiny_images(2, seed=5)
    for direction in ("denoising", "noising"):
        shap = caap_shapley(model, x, None, (0, 2), n_permutations=4, direction=direction)
        single = caap(model, x, shap.target, (0, 2), readout="delta_logit", direction=direction)
        assert single.map.abs().max() > 0.02  # not a trivially zero game
        torch.testing.assert_close(shap.map, single.map, atol=1e-6, rtol=0)  # observed 3.6e-7
        # every permutation gives every patch its single effect: no spread between the pairs
        torch.testing.assert_close(shap.standard_error, torch.zeros_like(shap.map), atol=1e-6, rtol=0)
    # k x k groups as players: a block's value is the sum of its patches' effects, shared equally.
    grouped = caap_shapley(model, x, None, (0, 2), n_permutations=2, groups=2)
    single = caap(model, x, grouped.target, (0, 2), readout="delta_logit").map
    block_mean = single.view(2, 2, 2, 2, 2).mean(dim=(2, 4), keepdim=True).expand(2, 2, 2, 2, 2).reshape(2, 4, 4)
    torch.testing.assert_close(grouped.map, block_mean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_permutations", [2, 6])
def test_and_of_two_patches_each_gets_half(and_setup, n_permutations):
    model, x = and_setup
    attr = caap_shapley(model, x, 0, (0, 1), n_permutations=n_permutations, seed=3)
    joint = attr.v_all - attr.v_empty
    torch.testing.assert_close(joint, torch.full((2,), 13.86), atol=0.005, rtol=0)  # the AND fires with both
    flat = attr.map.flatten(1)
    # Each antithetic pair puts A before B once and B before A once: exactly half each, for every sample count.
    torch.testing.assert_close(flat[:, A], joint / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[:, B], joint / 2, atol=1e-5, rtol=0)
    others = [i for i in range(16) if i not in (A, B)]
    assert float(flat[:, others].abs().max()) < 1e-5
    # Single-patch CAAP (the same call's singletons) sees nothing: neither patch alone moves the score.
    assert float((attr.single_map - attr.neutral_score[:, None, None]).abs().max()) < 1e-5
    torch.testing.assert_close(attr.single_map, caap(model, x, 0, (0, 1)).map)


def test_and_interaction_equals_the_joint_effect(and_setup):
    model, x = and_setup
    attr = caap_shapley(model, x, 0, (0, 1), n_permutations=2)
    inter = caap_interactions(model, x, attr, k=2)
    assert sorted(inter.patches[0].tolist()) == sorted([A, B])
    joint = attr.v_all - attr.v_empty
    torch.testing.assert_close(inter.matrix[:, 0, 1], joint, atol=1e-5, rtol=0)
    torch.testing.assert_close(inter.joint[:, 0, 1], joint, atol=1e-5, rtol=0)
    assert float(inter.matrix.diagonal(dim1=1, dim2=2).abs().max()) < 1e-5  # no main effects
    # Noising: removing either patch kills the AND, so each single drop is the joint effect and the pair is
    # redundant (interaction = -joint); the Shapley values are still half each.
    noise = caap_shapley(model, x, 0, (0, 1), n_permutations=2, direction="noising")
    torch.testing.assert_close(noise.map.flatten(1)[:, A], joint / 2, atol=1e-5, rtol=0)
    inter_n = caap_interactions(model, x, noise, k=2)
    torch.testing.assert_close(inter_n.matrix[:, 0, 1], -joint, atol=1e-5, rtol=0)
    torch.testing.assert_close(inter_n.matrix[:, 0, 0], joint, atol=1e-5, rtol=0)
    fig = inter.plot(0, n_pairs=1, title="<b>AND</b>")
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines" and not t.showlegend]  # legend keys aside
    assert len(lines) == 1 and "&lt;b&gt;AND" in fig.layout.title.text  # the title is escaped, not rendered


def test_additive_interactions_vanish():
    model, x = additive_model(), tiny_images(1, seed=5)
    attr = caap(model, x, None, (0, 2))
    inter = caap_interactions(model, x, attr, k=4)
    off = inter.matrix[0][~torch.eye(4, dtype=torch.bool)]
    assert float(off.abs().max()) < 1e-6
    single = caap(model, x, attr.target, (0, 2), readout="delta_logit").map.flatten(1)[0]
    torch.testing.assert_close(inter.matrix[0].diagonal(), single[inter.patches[0]], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ exactness and estimates
@pytest.fixture(scope="module")
def four_patch():
    model = tiny_model(seed=2, img_size=16)  # 2 x 2 grid: 4 players, 16 coalitions
    x = tiny_images(2, seed=6, size=16)
    return model, x, model(x).argmax(-1)


def test_engine_coalitions_equal_naive_hooked_runs(four_patch):
    model, x, target = four_patch
    for direction in ("denoising", "noising"):
        ctx = prepare_caap(model, x, starts=[1], layers=[1, 2], target=target, direction=direction)
        coals = [list(s) for k in range(1, 5) for s in itertools.combinations(range(4), k)]
        logits = coalition_logits(model, ctx, (1, 3), coals)
        got = logits.double().gather(2, target[None, :, None].expand(len(coals), -1, 1))[..., 0]
        for c, g in zip(coals, got):
            want = naive_value(model, x, c, (1, 3), target, direction)
            if direction == "noising":
                want = model(x).double().gather(1, target[:, None])[:, 0] - want
            torch.testing.assert_close(g, want, atol=2e-6, rtol=0)


def test_permutation_estimates_converge_to_enumeration(four_patch):
    model, x, target = four_patch
    exact, v = enumerated_shapley(model, x, (0, 2), target, 4)
    assert float(exact.abs().max()) > 0.05
    errors, ses = [], []
    for n in (4, 64, 1024):
        attr = caap_shapley(model, x, target, (0, 2), n_permutations=n, seed=11)
        err = (attr.map.flatten(1).double() - exact).abs()
        se = attr.standard_error.flatten(1).double()
        if n > 4:  # two pairs give no usable spread; from 32 pairs on the SE covers the error
            assert bool((err <= 4 * se + 1e-6).all()), (n, err, se)
        errors.append(float(err.max()))
        ses.append(float(se.max()))
        # Efficiency for every sample count: the map sums to v(all) - v(empty) of the enumeration.
        torch.testing.assert_close(attr.map.sum((1, 2)).double(), v[(0, 1, 2, 3)] - v[()], atol=2e-6, rtol=0)
    assert errors[2] < errors[0] and ses[2] < ses[1] < ses[0]
    assert errors[2] < 0.01 * float(exact.abs().max())


@pytest.mark.parametrize("n_permutations", [2, 4, 10])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_efficiency_for_any_sample_count(n_permutations, direction):
    model, x = tiny_model(seed=1), tiny_images(2)
    attr = caap_shapley(model, x, None, (1, 3), n_permutations=n_permutations, direction=direction, seed=n_permutations)
    assert attr.efficiency_gap < 1e-9  # telescoping sums in float64
    torch.testing.assert_close(attr.map.sum((1, 2)), attr.v_all - attr.v_empty, atol=2e-6, rtol=0)
    assert attr.n_permutations == n_permutations and torch.isfinite(attr.map).all()
    assert attr.settings["n_coalitions"] <= (n_permutations + 1) * 16  # prefixes and singletons, duplicates once
    assert torch.isnan(attr.standard_error).all() == (n_permutations == 2)
    torch.testing.assert_close(attr.for_class(), attr.map)  # recomputed from the stored coalition logits
    other = attr.for_class(3, readout="prob")
    assert other.shape == attr.map.shape and not torch.allclose(other, attr.map)


def test_groups_players_and_the_method_registry():
    assert player_groups((3, 3), 2) == [[0, 1, 3, 4], [2, 5], [6, 7], [8]]
    labels = torch.tensor([[0, 0], [1, 0]])
    assert player_groups((2, 2), labels) == [[0, 1, 3], [2]]
    model, x = tiny_model(seed=1), tiny_images(2)
    attr = caap_shapley(model, x, None, (0, 2), n_permutations=4, groups=labels.repeat(2, 2))
    assert attr.map.flatten(1)[:, [0, 1]].unique(dim=1).shape[1] == 1  # a segment's value shared equally
    assert "caap_shapley" in available_methods(include_registered=False)
    got = get_method("caap_shapley", model, window=(0, 2), n_permutations=4).attribute(x, target=1)
    torch.testing.assert_close(got.patch_map, caap_shapley(model, x, 1, (0, 2), n_permutations=4).map)


def test_bad_arguments_are_named():
    model, x = tiny_model(seed=1), tiny_images(1)
    with pytest.raises(ValueError, match="n_permutations: expected an even number"):
        caap_shapley(model, x, n_permutations=3)
    with pytest.raises(ValueError, match="groups: expected an integer label tensor of shape \\[4, 4\\]"):
        caap_shapley(model, x, groups=torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="window"):
        caap_shapley(model, x, window=(2, 9))
    with pytest.raises(ValueError, match="warn_share"):
        caap_shapley(model, x, warn_share=-1.0)
    with pytest.raises(ValueError, match="k: expected at most the 16 patches"):
        caap_interactions(model, x, caap(model, x, window=(0, 1)), k=17)
    with pytest.raises(ValueError, match="n_permutations"):
        get_method("caap_shapley", model, n_permutations=5)


def test_docstring_examples_run():
    model, x = tiny_model(seed=1), tiny_images(2)
    globs = dict(model=model, images=x, torch=torch)
    for module in (shapley_module, interactions_module):
        result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted >= 4, (module.__name__, result)

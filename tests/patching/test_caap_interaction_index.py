"""The Shapley interaction index of patch pairs (``caap_interactions(kind="shapley")``): equal to the index computed
by enumerating every coalition with naive hooked runs on a 4-patch model, the sampled estimate converging to it
within its standard error, and known answers on the crafted AND and additive games."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from caap_toys import tiny_images, tiny_model
from shapley_toys import A, B, additive_model, and_images, and_model, naive_value

from vit_patching.patching.caap import caap
from vit_patching.patching.caap_interactions import caap_interactions, shapley_interaction_samples
from vit_patching.patching.caap_shapley import caap_shapley


def enumerated_index(model, images, window, target, n, i, j, direction):
    """Grabisch-Roubens: sum over S of the others of |S|! (n - |S| - 2)! / (n - 1)! * the second difference."""
    others = [p for p in range(n) if p not in (i, j)]
    total = torch.zeros(images.shape[0], dtype=torch.float64)
    for size in range(len(others) + 1):
        for s in itertools.combinations(others, size):
            s = list(s)
            w = math.factorial(size) * math.factorial(n - size - 2) / math.factorial(n - 1)
            d = (naive_value(model, images, s + [i, j], window, target, direction)
                 - naive_value(model, images, s + [i], window, target, direction)
                 - naive_value(model, images, s + [j], window, target, direction)
                 + naive_value(model, images, s, window, target, direction))
            total += w * d
    return total


@pytest.fixture(scope="module")
def four_patch():
    model = tiny_model(seed=2, img_size=16)  # 2 x 2 grid: 4 patches
    x = tiny_images(2, seed=6, size=16)
    return model, x, model(x).argmax(-1)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_enumerated_index_equals_naive_enumeration(four_patch, direction):
    model, x, target = four_patch
    attr = caap(model, x, target, (0, 2), direction=direction)
    inter = caap_interactions(model, x, attr, k=4, kind="shapley", n_permutations=None)
    pairwise = caap_interactions(model, x, attr, k=4)
    gaps = []
    for a, c in itertools.combinations(range(4), 2):
        for n in range(2):
            i, j = int(inter.patches[n, a]), int(inter.patches[n, c])
            want = enumerated_index(model, x[n : n + 1], (0, 2), target[n : n + 1], 4, i, j, direction)
            got = inter.matrix[n, a, c].double()
            torch.testing.assert_close(got, want[0], atol=3e-6, rtol=0)
            gaps.append(abs(float(want[0] - pairwise.matrix[n, a, c])))
    # The index differs from the pairwise interaction here (denoising: by up to 7e-4 of a largest index 0.16; higher-order
    # terms are small on this model) by far more than the tolerance: the check tells the two apart.
    assert max(gaps) > 30 * 3e-6, max(gaps)
    assert float(inter.standard_error.abs().max()) == 0.0  # enumerated: no sampling error
    torch.testing.assert_close(inter.matrix.diagonal(dim1=1, dim2=2), pairwise.matrix.diagonal(dim1=1, dim2=2))


def test_sampled_index_converges_within_its_standard_error(four_patch):
    model, x, target = four_patch
    attr = caap(model, x, target, (0, 2))
    exact = caap_interactions(model, x, attr, k=4, kind="shapley", n_permutations=None).matrix.double()
    off = ~torch.eye(4, dtype=torch.bool)
    errors, ses = [], []
    for n_perm in (4, 64, 512):
        est = caap_interactions(model, x, attr, k=4, kind="shapley", n_permutations=n_perm, seed=5)
        err = (est.matrix.double() - exact)[:, off].abs()
        se = est.standard_error.double()[:, off]
        assert bool((err <= 4 * se + 1e-6).all()), (n_perm, err, se)
        errors.append(float(err.max()))
        ses.append(float(se.max()))
    assert ses[2] < ses[1] < ses[0] and errors[2] < errors[0]
    assert errors[2] < 0.05 * float(exact[:, off].abs().max())


def test_and_index_equals_the_joint_effect_and_additive_index_vanishes():
    model, x = and_model(), and_images(2)
    attr = caap_shapley(model, x, 0, (0, 1), n_permutations=2)
    joint = attr.v_all - attr.v_empty
    for direction, sign in (("denoising", 1.0), ("noising", -1.0)):  # noising: the two are redundant
        a = attr if direction == "denoising" else caap_shapley(model, x, 0, (0, 1), n_permutations=2, direction=direction)
        inter = caap_interactions(model, x, a, k=2, kind="shapley", n_permutations=4)
        assert sorted(inter.patches[0].tolist()) == sorted([A, B])
        # Every coalition S of the other patches leaves the AND's second difference at the joint effect.
        torch.testing.assert_close(inter.matrix[:, 0, 1], sign * joint, atol=1e-5, rtol=0)
        assert float(inter.standard_error[:, 0, 1].abs().max()) < 1e-5
    add, xa = additive_model(), tiny_images(1, seed=5)
    inter = caap_interactions(add, xa, caap(add, xa, None, (0, 2)), k=3, kind="shapley", n_permutations=4)
    assert float(inter.matrix[0][~torch.eye(3, dtype=torch.bool)].abs().max()) < 1e-6


def test_samples_are_antithetic_and_weights_sum_to_one():
    exact = shapley_interaction_samples(5, 1, 3, None)
    assert len(exact) == 8 and abs(sum(w for _, w in exact) - 1.0) < 1e-12
    sampled = shapley_interaction_samples(10, 0, 9, 6, seed=2)
    for m in range(3):  # an order and its reverse: the two prefixes split the other patches
        assert sorted(sampled[2 * m][0] + sampled[2 * m + 1][0]) == list(range(1, 9))


def test_bad_arguments_are_named():
    model, x = tiny_model(seed=1), tiny_images(1)
    attr = caap(model, x, window=(0, 1))
    with pytest.raises(ValueError, match="kind: expected one of \\['pairwise', 'shapley'\\], got 'triple'"):
        caap_interactions(model, x, attr, k=2, kind="triple")
    with pytest.raises(ValueError, match="n_permutations: expected an even number"):
        caap_interactions(model, x, attr, k=2, kind="shapley", n_permutations=3)
    with pytest.raises(ValueError, match="n_permutations: None enumerates 2 \\*\\* 14 coalitions"):
        caap_interactions(model, x, attr, k=2, kind="shapley", n_permutations=None)

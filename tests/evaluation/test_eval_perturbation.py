"""Building blocks: map upsampling, substrates, orderings, the AUC formula."""
import math

import pytest
import torch

from vit_patching.evaluation import (
    black_substrate,
    gaussian_blur,
    make_substrate,
    minmax_normalize,
    perturbation_ranks,
    stable_order,
    trapezoid_auc,
    upsample_map,
)


def test_upsample_nearest_integer_scale_repeats_cells():
    sal = torch.randn(2, 3, 4)
    up = upsample_map(sal, (12, 16), mode="nearest")
    expected = sal.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    assert torch.equal(up, expected)


def test_upsample_bilinear_matches_align_corners_false_and_identity():
    sal = torch.randn(2, 4, 4)
    # a 1-D check of align_corners=False: output pixel i samples input coordinate (i + 0.5) / 4 - 0.5, clamped at 0
    row = torch.tensor([[[0.0, 4.0]]])
    up = upsample_map(row, (1, 8), mode="bilinear")[0, 0]
    coords = ((torch.arange(8) + 0.5) / 4 - 0.5).clamp(0, 1)
    assert torch.allclose(up, 4.0 * coords)
    assert torch.equal(upsample_map(sal, (4, 4)), sal)
    # a constant map stays constant
    assert torch.allclose(upsample_map(torch.full((1, 2, 2), 3.0), (16, 16)), torch.full((1, 16, 16), 3.0))


def test_upsample_rejects_bad_mode_and_size():
    with pytest.raises(ValueError, match=r"mode: expected one of \['nearest', 'bilinear'\], got 'cubic'"):
        upsample_map(torch.zeros(1, 2, 2), (4, 4), mode="cubic")
    with pytest.raises(ValueError, match="size: expected"):
        upsample_map(torch.zeros(1, 2, 2), (4, 0))


def test_gaussian_blur_matches_explicit_sum():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 2, 6, 7, generator=g, dtype=torch.float64)
    out = gaussian_blur(img)
    k, sigma = 11, 5.0
    weights = {
        (dy, dx): math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) for dy in range(-5, 6) for dx in range(-5, 6)
    }
    total = sum(weights.values())
    for c, y, x in [(0, 0, 0), (1, 3, 4), (0, 5, 6), (1, 2, 0)]:
        # zero padding: pixels outside the image contribute nothing, the kernel is not renormalised
        acc = sum(
            w * img[0, c, y + dy, x + dx].item()
            for (dy, dx), w in weights.items()
            if 0 <= y + dy < 6 and 0 <= x + dx < 7
        )
        assert out[0, c, y, x].item() == pytest.approx(acc / total, rel=1e-12, abs=1e-12)
    assert k == 11


def test_substrates():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(make_substrate(img, "zero"), torch.zeros_like(img))
    mean = make_substrate(img, "mean")
    assert torch.allclose(mean[:, :, 3, 5], img.mean(dim=(2, 3)))
    assert torch.allclose(mean.std(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6)
    assert torch.equal(make_substrate(img, "blur"), gaussian_blur(img))
    black = black_substrate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.equal(make_substrate(img, black), torch.full_like(img, -1.0))
    user = torch.randn(3, 8, 8, generator=g)
    assert torch.equal(make_substrate(img, user)[1], user)


def test_substrate_errors_name_argument_expected_and_given():
    img = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"substrate: expected one of \['blur', 'zero', 'mean'\], got 'black'"):
        make_substrate(img, "black")
    with pytest.raises(ValueError, match=r"substrate: expected a tensor broadcastable to images \(1, 3, 8, 8\).*got shape \(2, 8, 8\)"):
        make_substrate(img, torch.zeros(2, 8, 8))


def test_stable_order_ties_in_raster_order_both_directions():
    s = torch.tensor([[2.0, 1.0, 2.0, 1.0, 3.0]])
    assert stable_order(s, descending=True).tolist() == [[4, 0, 2, 1, 3]]
    assert stable_order(s, descending=False).tolist() == [[1, 3, 0, 2, 4]]


def test_pixel_ranks_follow_scores():
    sal = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    ranks, n, p = perturbation_ranks(sal, (2, 2), unit="pixel")
    assert ranks.tolist() == [[[3, 0], [1, 2]]] and n == 4 and p is None
    ranks, _, _ = perturbation_ranks(sal, (2, 2), unit="pixel", descending=False)
    assert ranks.tolist() == [[[0, 3], [2, 1]]]


def test_patch_ranks_from_patch_map_and_pooled_pixel_map_agree():
    patch_map = torch.tensor([[[0.2, 0.7], [0.9, 0.1]]])
    r1, n1, p1 = perturbation_ranks(patch_map, (8, 8), unit="patch")
    pixel_map = patch_map.repeat_interleave(4, 1).repeat_interleave(4, 2)
    r2, n2, p2 = perturbation_ranks(pixel_map, (8, 8), unit="patch", patch_size=4)
    assert torch.equal(r1, r2) and n1 == n2 == 4 and p1 == p2 == 4
    assert r1[0, ::4, ::4].tolist() == [[2, 1], [0, 3]]
    with pytest.raises(ValueError, match=r"patch_size: expected a divisor of the image size \(8, 8\), got 3"):
        perturbation_ranks(patch_map, (8, 8), unit="patch", patch_size=3)
    with pytest.raises(ValueError, match=r"patch_size: expected an int, or a patch-resolution saliency map"):
        perturbation_ranks(torch.zeros(1, 3, 3), (8, 8), unit="patch")


def test_trapezoid_auc_formula():
    curve = torch.tensor([[1.0, 0.5, 0.25, 0.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    expected = (1.0 + 0.5 + 0.25 + 0.0 - (1.0 + 0.0) / 2) / 3
    assert torch.allclose(trapezoid_auc(curve), torch.tensor([expected, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="curves: expected at least 2 points"):
        trapezoid_auc(torch.ones(3, 1))


def test_minmax_constant_map_is_zero_not_nan():
    out = minmax_normalize(torch.tensor([[[2.0, 2.0], [2.0, 2.0]], [[1.0, 3.0], [2.0, 1.0]]]))
    assert torch.equal(out[0], torch.zeros(2, 2))
    assert torch.equal(out[1], torch.tensor([[0.0, 1.0], [0.5, 0.0]]))

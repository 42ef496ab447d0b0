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


def explicit_blur(img, y, x, c, k=11, sigma=5.0):
    """One output pixel of a k x k Gaussian blur with zero padding, summed by hand in float64."""
    r = k // 2
    weights = {(dy, dx): math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) for dy in range(-r, r + 1) for dx in range(-r, r + 1)}
    h, w = img.shape[-2:]
    # zero padding: pixels outside the image contribute nothing, the kernel is not renormalised
    acc = sum(wt * img[0, c, y + dy, x + dx].item() for (dy, dx), wt in weights.items() if 0 <= y + dy < h and 0 <= x + dx < w)
    return acc / sum(weights.values())


PIXELS = [(0, 0, 0), (1, 3, 4), (0, 5, 6), (1, 2, 0)]


def test_gaussian_blur_defaults_match_explicit_sum():
    img = torch.randn(1, 2, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = gaussian_blur(img)
    for c, y, x in PIXELS:
        assert out[0, c, y, x].item() == pytest.approx(explicit_blur(img, y, x, c), rel=1e-12, abs=1e-12)
    other = gaussian_blur(img, 3, 1.0)
    assert other[0, 1, 3, 4].item() == pytest.approx(explicit_blur(img, 3, 4, 1, k=3, sigma=1.0), rel=1e-12)


def test_blur_substrate_is_rises_kernel_11_sigma_5_whatever_the_image_size():
    # The metrics' "blur" is the baseline family of vit_patching.images with RISE's own kernel, not the side / 16
    # sigma of CAAP's neutral (which would be 2 px on these 32 px images).
    img = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sub = make_substrate(img, "blur")
    for c, y, x in [(0, 0, 0), (1, 16, 16), (0, 31, 5), (1, 7, 30)]:
        assert sub[0, c, y, x].item() == pytest.approx(explicit_blur(img, y, x, c, k=11, sigma=5.0), rel=1e-12, abs=1e-12)
    assert abs(sub[0, 1, 16, 16].item() - explicit_blur(img, 16, 16, 1, k=13, sigma=2.0)) > 1e-3


def test_substrates():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 8, 8, generator=g)
    assert torch.equal(make_substrate(img, "zeros"), torch.zeros_like(img))
    mean = make_substrate(img, "image_mean")
    assert torch.allclose(mean[:, :, 3, 5], img.mean(dim=(2, 3)))
    assert torch.allclose(mean.std(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6)
    black = black_substrate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.equal(make_substrate(img, black), torch.full_like(img, -1.0))
    dc = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    by_name = make_substrate(img, "black", data_config=dc)
    expected = torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])[None, :, None, None].expand_as(img)
    torch.testing.assert_close(by_name, expected)
    user = torch.randn(3, 8, 8, generator=g)
    assert torch.equal(make_substrate(img, user)[1], user)


@pytest.mark.parametrize("old,new", [("zero", "zeros"), ("mean", "image_mean")])
def test_old_substrate_names_still_work_with_a_deprecation_warning(old, new):
    img = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with pytest.warns(DeprecationWarning, match=f"substrate: '{old}' is deprecated, use '{new}'"):
        got = make_substrate(img, old)
    assert torch.equal(got, make_substrate(img, new))


def test_substrate_errors_name_argument_expected_and_given():
    img = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"substrate: expected one of \['zeros', 'black', 'image_mean', 'blur'\], got 'grey'"):
        make_substrate(img, "grey")
    with pytest.raises(ValueError, match=r"substrate: 'black' needs the model's data config"):
        make_substrate(img, "black")
    with pytest.raises(ValueError, match=r"substrate: expected a tensor broadcastable to images \(1, 3, 8, 8\).*got shape \(2, 8, 8\)"):
        make_substrate(img, torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match=r"substrate: expected a floating-point"):
        make_substrate(img, torch.zeros(3, 1, 1, dtype=torch.long))


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

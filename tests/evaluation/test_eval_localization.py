"""Pointing game, energy pointing game, IoU, AP and the segmentation test with known answers."""
import pytest
import torch

from vit_patching.evaluation import (
    PointingGameResult,
    SegmentationResult,
    average_precision,
    binarize_map,
    dilate_mask,
    energy_pointing_game,
    mask_iou,
    pointing_game,
    segmentation_metrics,
)

ROWS, COLS = slice(4, 8), slice(8, 12)


def _region_setup(seed=0):
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, ROWS, COLS] = True
    g = torch.Generator().manual_seed(seed)
    perfect = masks.double() + 0.1 * torch.rand(1, 16, 16, generator=g, dtype=torch.float64)
    return masks, perfect, -perfect


def brute_force_ap(scores, labels):
    """AP by counting, threshold by threshold: sum over distinct thresholds t (descending) of (R_t - R_prev) * P_t."""
    s, y = scores.flatten().tolist(), [bool(v) for v in labels.flatten().tolist()]
    n_pos = sum(y)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        selected = [yi for si, yi in zip(s, y) if si >= t]
        tp = sum(selected)
        recall = tp / n_pos
        ap += (recall - prev_recall) * (tp / len(selected))
        prev_recall = recall
    return ap


# ------------------------------------------------------------------------------------------------ pointing
def test_pointing_game_region_hits_and_misses():
    masks, perfect, inverted = _region_setup()
    for tie in ("first", "any", "all"):
        assert pointing_game(perfect, masks, tolerance=0, tie=tie).hits.tolist() == [True]
        assert pointing_game(inverted, masks, tolerance=0, tie=tie).hits.tolist() == [False]
    res = pointing_game(perfect, masks, tolerance=0)
    row, col = res.points[0].tolist()
    assert ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop
    assert res.accuracy == 1.0 and res.settings == {"tolerance": 0, "tie": "first", "upsample": "bilinear"}


def test_pointing_game_tolerance_ten_pixels_outside():
    masks = torch.zeros(1, 32, 32)
    masks[0, 10:20, 4:10] = 1  # columns 4..9
    sal = torch.zeros(1, 32, 32)
    sal[0, 15, 19] = 1.0  # 10 px right of column 9
    assert pointing_game(sal, masks, tolerance=15).hits.tolist() == [True]
    assert pointing_game(sal, masks, tolerance=5).hits.tolist() == [False]
    assert pointing_game(sal, masks, tolerance=10).hits.tolist() == [True]  # distance <= tolerance
    assert pointing_game(sal, masks, tolerance=9.9).hits.tolist() == [False]
    # Euclidean disk, not a square: (26, 17) is sqrt(7^2 + 8^2) = 10.63 px from the corner pixel (19, 9)
    diag = torch.zeros(1, 32, 32)
    diag[0, 26, 17] = 1.0
    assert pointing_game(diag, masks, tolerance=10).hits.tolist() == [False]
    assert pointing_game(diag, masks, tolerance=11).hits.tolist() == [True]


def test_dilate_mask_equals_brute_force_distance():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(2, 12, 13, generator=g) > 0.95
    out = dilate_mask(masks, 2.5)
    for b in range(2):
        pts = masks[b].nonzero().tolist()
        for y in range(12):
            for x in range(13):
                near = any((y - py) ** 2 + (x - px) ** 2 <= 2.5**2 for py, px in pts)
                assert bool(out[b, y, x]) == near


def test_pointing_game_tie_rules_pinned_on_constant_map():
    masks = torch.zeros(2, 16, 16)
    masks[0, 8:12, 8:12] = 1  # does not contain pixel (0, 0)
    masks[1] = 1  # whole image
    const = torch.ones(2, 4, 4)
    assert pointing_game(const, masks, tolerance=0, tie="first").hits.tolist() == [False, True]
    assert pointing_game(const, masks, tolerance=0, tie="any").hits.tolist() == [True, True]
    assert pointing_game(const, masks, tolerance=0, tie="all").hits.tolist() == [False, True]
    assert pointing_game(const, masks, tolerance=0).points.tolist() == [[0, 0], [0, 0]]


def test_pointing_game_patch_maps():
    masks = torch.zeros(1, 16, 16)
    masks[0, ROWS, COLS] = 1
    patch_map = torch.zeros(1, 4, 4)
    patch_map[0, 1, 2] = 1.0
    patch_map[0, 3, 0] = 0.5
    # bilinear: a smooth peak at the centre of the best patch
    res = pointing_game(patch_map, masks, tolerance=0)
    assert res.hits.tolist() == [True] and res.points.tolist() == [[5, 9]]
    # nearest: the whole best patch ties; every tie rule then agrees here
    for tie in ("first", "any", "all"):
        assert pointing_game(patch_map, masks, tolerance=0, upsample="nearest", tie=tie).hits.tolist() == [True]


def test_pointing_game_empty_masks_and_class_means():
    masks = torch.zeros(4, 8, 8)
    masks[0, :2, :2] = 1
    masks[1, :2, :2] = 1
    masks[3, 6:, 6:] = 1  # image 2 has an empty mask
    sal = torch.zeros(4, 8, 8)
    sal[:, 0, 0] = 1.0
    res = pointing_game(sal, masks, tolerance=0, classes=torch.tensor([5, 5, 5, 7]))
    assert res.valid.tolist() == [True, True, False, True]
    assert res.hits.tolist() == [True, True, False, False]
    assert res.accuracy == pytest.approx(2 / 3)
    assert res.class_accuracy == {5: 1.0, 7: 0.0} and res.mean_class_accuracy == 0.5
    merged = PointingGameResult.merge([res, res])
    assert merged.hits.shape == (8,) and merged.mean_class_accuracy == 0.5


# -------------------------------------------------------------------------------------------------- energy
def test_energy_pointing_game():
    masks, perfect, inverted = _region_setup()
    inside_only = masks.double() * (1 + torch.rand(1, 16, 16, dtype=torch.float64))
    assert energy_pointing_game(inside_only, masks).tolist() == [1.0]
    # the inverted map's minimum lies inside the mask, but the rest of the mask still carries some energy
    e = energy_pointing_game(inverted, masks).item()
    res = inverted - inverted.min()
    res = res / res.max()
    assert e == pytest.approx((res * masks).sum().item() / res.sum().item())
    # constant map: energy spread uniformly -> mask share
    assert energy_pointing_game(torch.ones(1, 4, 4), masks).item() == pytest.approx(16 / 256)
    # empty mask: NaN
    assert torch.isnan(energy_pointing_game(torch.rand(1, 16, 16), torch.zeros(1, 16, 16))).all()


# ------------------------------------------------------------------------------------------------- IoU, AP
def test_mask_iou_rules():
    masks, perfect, inverted = _region_setup()
    assert mask_iou(perfect, masks).tolist() == [1.0]
    assert mask_iou(inverted, masks).tolist() == [0.0]
    assert mask_iou(torch.full((1, 16, 16), 2.0), masks).tolist() == [0.0]  # constant: all background
    # top-k: the 32 highest pixels = the 16 mask pixels + 16 others -> IoU 0.5
    assert mask_iou(perfect, masks, top_fraction=32 / 256).tolist() == [0.5]
    # threshold on the min-max rescaled map
    ramp = torch.arange(16.0).repeat(16, 1)[None]  # columns 0..15
    pred = binarize_map(ramp, threshold=0.5)
    assert pred[0, 0].tolist() == [c / 15 > 0.5 for c in range(16)]
    with pytest.raises(ValueError, match=r"threshold: expected one of \['mean'\], got 'median'"):
        binarize_map(ramp, threshold="median")


def test_average_precision_known_values_and_brute_force():
    # scikit-learn's documented example
    ap = average_precision(torch.tensor([[0.1, 0.4, 0.35, 0.8]]), torch.tensor([[0, 0, 1, 1]]))
    assert ap.item() == pytest.approx(0.8333333, abs=1e-6)
    # ties form one threshold: {0.5: 2 of 3 positive, recall 1} -> 2/3
    ap = average_precision(torch.tensor([[0.5, 0.5, 0.5, 0.1]]), torch.tensor([[1, 0, 1, 0]]))
    assert ap.item() == pytest.approx(2 / 3)
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(6, 50, generator=g, dtype=torch.float64)
    scores[3:] = (scores[3:] * 4).round() / 4  # many ties in half of the rows
    labels = torch.rand(6, 50, generator=g) > 0.6
    ap = average_precision(scores, labels)
    for b in range(6):
        assert ap[b].item() == pytest.approx(brute_force_ap(scores[b], labels[b]), abs=1e-12)
    # without ties AP is also the mean precision at the rank of each positive
    order = torch.argsort(scores[0], descending=True)
    y = labels[0][order].double()
    prec_at = y.cumsum(0) / torch.arange(1, 51)
    assert ap[0].item() == pytest.approx((prec_at * y).sum().item() / y.sum().item())
    assert torch.isnan(average_precision(torch.rand(1, 5), torch.zeros(1, 5)))[0]


def test_region_ap_perfect_constant_inverted():
    masks, perfect, inverted = _region_setup()
    assert average_precision(perfect, masks).tolist() == [1.0]
    assert average_precision(torch.ones(1, 16, 16), masks).item() == pytest.approx(16 / 256)  # all tied
    assert average_precision(inverted, masks).item() == pytest.approx(brute_force_ap(inverted, masks), abs=1e-12)


# ------------------------------------------------------------------------------------------- segmentation
def test_segmentation_perfect_map_scores_one():
    masks = torch.zeros(3, 16, 16)
    masks[0, 2:6, 2:9] = 1
    masks[1, 8:, :] = 1
    masks[2, 5:7, 5:7] = 1
    res = segmentation_metrics(masks.clone(), masks)
    assert (res.pixel_accuracy, res.miou, res.mean_ap, res.mean_f1) == (1.0, 1.0, 1.0, 1.0)
    assert res.iou.tolist() == [1.0, 1.0, 1.0]
    # a patch-resolution perfect map upsampled with nearest also scores 1
    patch_mask = torch.zeros(1, 4, 4)
    patch_mask[0, 1, 2] = 1
    full = patch_mask.repeat_interleave(4, 1).repeat_interleave(4, 2)
    res = segmentation_metrics(patch_mask, full, upsample="nearest")
    assert res.miou == 1.0 and res.mean_ap == 1.0


def test_segmentation_constant_map_is_all_background():
    masks, _, _ = _region_setup()
    res = segmentation_metrics(torch.full((1, 4, 4), 0.3), masks)
    n, p = 256, 16
    assert res.pixel_accuracy == pytest.approx((n - p) / n)
    assert res.iou_per_class.tolist() == pytest.approx([(n - p) / n, 0.0])
    assert res.mean_f1 == 0.0
    # 2-class micro AP: the background channel scores 1 everywhere (n - p positives of n), the foreground channel 0
    expected_ap = ((n - p) / n) * ((n - p) / n) + (p / n) * (n / (2 * n))
    assert res.mean_ap == pytest.approx(expected_ap)


def test_segmentation_accumulates_over_images_and_batches():
    g = torch.Generator().manual_seed(9)
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[0, :8] = True
    masks[1, :, :3] = True
    masks[2, 4:12, 4:12] = True
    masks[3, 0, 0] = True
    maps = torch.rand(4, 4, 4, generator=g, dtype=torch.float64)
    res = segmentation_metrics(maps, masks)
    # independent recomputation
    up = torch.nn.functional.interpolate(maps[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    r = (up - lo) / (hi - lo)
    pred = r > r.mean(dim=(1, 2), keepdim=True)
    assert res.pixel_accuracy == pytest.approx((pred == masks).double().mean().item())
    inter_fg, union_fg = (pred & masks).sum().item(), (pred | masks).sum().item()
    inter_bg, union_bg = (~pred & ~masks).sum().item(), (~pred | ~masks).sum().item()
    assert res.miou == pytest.approx((inter_fg / union_fg + inter_bg / union_bg) / 2)
    for b in range(4):
        scores = torch.stack([1 - r[b], r[b]])
        onehot = torch.stack([~masks[b], masks[b]])
        assert res.ap[b].item() == pytest.approx(brute_force_ap(scores, onehot), abs=1e-12)
        tp = (pred[b] & masks[b]).sum().item()
        f1 = 2 * tp / (pred[b].sum().item() + masks[b].sum().item())
        assert res.f1[b].item() == pytest.approx(f1)
    merged = SegmentationResult.merge([segmentation_metrics(maps[:2], masks[:2]), segmentation_metrics(maps[2:], masks[2:])])
    assert merged.pixel_accuracy == pytest.approx(res.pixel_accuracy) and merged.miou == pytest.approx(res.miou)
    assert torch.allclose(merged.ap, res.ap) and merged.mean_f1 == pytest.approx(res.mean_f1)


# ------------------------------------------------------------------------------------------------ bad input
def test_localization_bad_inputs():
    sal, masks = torch.rand(2, 4, 4), torch.zeros(2, 16, 16)
    with pytest.raises(ValueError, match=r"masks: expected batch size 2 \(one mask per map\), got shape \(3, 16, 16\)"):
        pointing_game(sal, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"masks: expected batch size 2"):
        energy_pointing_game(sal, torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match=r"masks: expected batch size 2"):
        segmentation_metrics(sal, torch.zeros(5, 16, 16))
    with pytest.raises(ValueError, match=r"tolerance: expected a non-negative number of pixels, got -1"):
        pointing_game(sal, masks, tolerance=-1)
    with pytest.raises(ValueError, match=r"tie: expected one of \['first', 'any', 'all'\], got 'random'"):
        pointing_game(sal, masks, tie="random")
    with pytest.raises(ValueError, match=r"upsample: expected one of \['nearest', 'bilinear'\], got 'area'"):
        mask_iou(sal, masks, upsample="area")
    with pytest.raises(ValueError, match=r"classes: expected shape \(2,\) \(one class per image\), got \(3,\)"):
        pointing_game(sal, masks, classes=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, 5\) \(one label per score\), got \(2, 4\)"):
        average_precision(torch.rand(2, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"top_fraction: expected a fraction in \[0, 1\], got 1.5"):
        mask_iou(sal, masks, top_fraction=1.5)
    with pytest.raises(ValueError, match=r"saliency: expected finite values"):
        mask_iou(torch.full((2, 4, 4), float("nan")), masks)

"""Insertion / deletion and Chefer's perturbation test against models whose answers are known."""
import itertools
import math

import pytest
import torch
from evaluation_toys import AdditiveModel, ConstantModel, RegionModel

from vit_patching.evaluation import (
    black_substrate,
    deletion_auc,
    insertion_auc,
    insertion_deletion,
    make_substrate,
    perturbation_test,
)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------- constant model
@pytest.mark.parametrize("mode", ["insertion", "deletion"])
@pytest.mark.parametrize("unit,step", [("pixel", None), ("pixel", 7), ("patch", None), ("patch", 3)])
def test_constant_model_auc_equals_constant(mode, unit, step):
    model = ConstantModel([0.3, -1.2, 2.0, 0.0]).eval()
    images, maps = _rand(2, 3, 16, 16), _rand(2, 4, 4, seed=1)
    targets = torch.tensor([2, 1])
    kw = dict(mode=mode, unit=unit, step=step, batch_size=10)
    logit = insertion_deletion(model, images, maps, targets, score="logit", **kw)
    assert torch.allclose(logit.auc, torch.tensor([2.0, -1.2], dtype=logit.auc.dtype))
    prob = insertion_deletion(model, images, maps, targets, score="prob", **kw)
    p = torch.softmax(model.values, 0)
    assert torch.allclose(prob.auc, p[targets].to(prob.auc.dtype))
    n = math.ceil(256 / step) if unit == "pixel" and step else 16 if unit == "pixel" else math.ceil(16 / (step or 1))
    assert logit.curves.shape == (2, n + 1) and logit.settings["n_steps"] == n
    assert torch.allclose(logit.fractions, torch.linspace(0, 1, n + 1, dtype=logit.fractions.dtype))
    assert logit.n_perturbed[0] == 0 and logit.n_perturbed[-1] == (256 if unit == "pixel" else 16)


# ----------------------------------------------------------------------------------------- additive model
def _expected_curve(model, image, substrate, order, step, insertion):
    """Independent recomputation: f(x_k) = f(start) -/+ sum of the contributions of the first k*step pixels."""
    w = model.weight.detach()
    d = (w * (image - substrate)).sum(dim=0).flatten()  # per-pixel contribution, channels together
    f_img = float((w * image).sum() + model.bias.detach())
    f_sub = float((w * substrate).sum() + model.bias.detach())
    n_pix = d.numel()
    curve = []
    for k in range(math.ceil(n_pix / step) + 1):
        moved = float(sum(d[j] for j in order[: min(k * step, n_pix)]))
        curve.append(f_sub + moved if insertion else f_img - moved)
    return torch.tensor(curve, dtype=torch.float64)


@pytest.mark.parametrize("substrate", ["blur", "zeros", "image_mean"])
def test_additive_model_curve_matches_independent_recomputation(substrate):
    model = AdditiveModel(3, 5, 6, seed=3).eval()
    image = _rand(1, 3, 5, 6, seed=4) * 2 - 1
    sal = _rand(1, 5, 6, seed=5)
    sub = make_substrate(image, substrate)[0]
    order = torch.argsort(sal.flatten(), descending=True, stable=True).tolist()
    for mode in ("insertion", "deletion"):
        res = insertion_deletion(
            model, image, sal, torch.tensor([0]), mode=mode, step=4, substrate=substrate, score="logit"
        )
        expected = _expected_curve(model, image[0], sub, order, 4, mode == "insertion")
        assert torch.allclose(res.curves[0], expected, atol=1e-10)
        n = len(expected) - 1
        assert res.auc[0].item() == pytest.approx(((expected.sum() - (expected[0] + expected[-1]) / 2) / n).item())
    # one class only: its softmax probability is 1 whatever the image
    assert torch.allclose(deletion_auc(model, image, sal, substrate=substrate).auc, torch.ones(1, dtype=torch.float64))


def test_additive_model_contribution_order_is_optimal_over_all_orderings():
    """On a 2x3 image every one of the 720 pixel orderings is tried: the contribution order w * (x - substrate)
    gives the minimal deletion AUC and the maximal insertion AUC, its reverse the opposite extremes."""
    model = AdditiveModel(3, 2, 3, seed=7).eval()
    image = _rand(1, 3, 2, 3, seed=8) * 2 - 1
    sub = make_substrate(image, "image_mean")
    contrib = (model.weight.detach() * (image[0] - sub[0])).sum(dim=0)[None]  # [1, 2, 3]
    perms = torch.tensor(list(itertools.permutations(range(6))), dtype=torch.float64)  # [720, 6]
    maps = (6 - perms).reshape(-1, 2, 3)  # each permutation becomes a map whose descending order is that ordering
    images = image.expand(720, -1, -1, -1)
    kw = dict(step=1, substrate="image_mean", score="logit", batch_size=2048)
    all_del = deletion_auc(model, images, maps, torch.zeros(720, dtype=torch.long), **kw).auc
    all_ins = insertion_auc(model, images, maps, torch.zeros(720, dtype=torch.long), **kw).auc
    best_del = deletion_auc(model, image, contrib, **kw).auc[0]
    worst_del = deletion_auc(model, image, -contrib, **kw).auc[0]
    best_ins = insertion_auc(model, image, contrib, **kw).auc[0]
    worst_ins = insertion_auc(model, image, -contrib, **kw).auc[0]
    assert best_del.item() == pytest.approx(all_del.min().item(), abs=1e-12)
    assert worst_del.item() == pytest.approx(all_del.max().item(), abs=1e-12)
    assert best_ins.item() == pytest.approx(all_ins.max().item(), abs=1e-12)
    assert worst_ins.item() == pytest.approx(all_ins.min().item(), abs=1e-12)
    assert all_del.max() - all_del.min() > 0.1  # the check is not vacuous


def test_additive_model_contribution_order_beats_random_orders_on_larger_image():
    model = AdditiveModel(3, 8, 8, seed=11).eval()
    image = _rand(1, 3, 8, 8, seed=12) * 2 - 1
    sub = make_substrate(image, "blur")
    contrib = (model.weight.detach() * (image[0] - sub[0])).sum(dim=0)[None]
    maps = _rand(200, 8, 8, seed=13)
    kw = dict(step=4, substrate="blur", score="logit", batch_size=4096)
    rand_del = deletion_auc(model, image.expand(200, -1, -1, -1), maps, **kw).auc
    best = deletion_auc(model, image, contrib, **kw).auc[0]
    worst = deletion_auc(model, image, -contrib, **kw).auc[0]
    assert (best <= rand_del + 1e-12).all() and (worst >= rand_del - 1e-12).all()


# -------------------------------------------------------------------------------------------- region model
ROWS, COLS = slice(4, 8), slice(8, 12)  # the 4x4 patch (1, 2) of a 16x16 image with p = 4


def _region_maps(seed=0):
    region = torch.zeros(1, 16, 16, dtype=torch.float64)
    region[0, ROWS, COLS] = 1.0
    noise = _rand(1, 16, 16, seed=seed) * 0.1
    perfect = region + noise
    return perfect, -perfect, _rand(1, 16, 16, seed=seed + 1)


def test_region_model_perfect_random_inverted_order_and_exact_values():
    model = RegionModel(ROWS, COLS).eval()
    image = 0.5 + _rand(1, 3, 16, 16, seed=3)
    m = float(image[0, :, ROWS, COLS].mean())
    perfect, inverted, random = _region_maps()
    kw = dict(substrate="zeros", score="logit", step=16)  # 16 pixels per step: the perfect map clears the region at once
    dele = {name: deletion_auc(model, image, s, **kw).auc.item() for name, s in
            [("perfect", perfect), ("random", random), ("inverted", inverted)]}
    ins = {name: insertion_auc(model, image, s, **kw).auc.item() for name, s in
           [("perfect", perfect), ("random", random), ("inverted", inverted)]}
    assert dele["perfect"] < dele["random"] < dele["inverted"]
    assert ins["perfect"] > ins["random"] > ins["inverted"]
    # 16 steps: the perfect deletion curve is m, 0, ..., 0 and the inverted one m, ..., m, 0
    assert dele["perfect"] == pytest.approx(m / 32)
    assert dele["inverted"] == pytest.approx((16 * m - m / 2) / 16)
    assert ins["perfect"] == pytest.approx((16 * m - m / 2) / 16)
    assert ins["inverted"] == pytest.approx(m / 32)
    # patch steps on a patch map with the same peak give the same curve
    patch_map = torch.zeros(1, 4, 4, dtype=torch.float64)
    patch_map[0, 1, 2] = 1.0
    res = deletion_auc(model, image, patch_map, unit="patch", substrate="zeros", score="logit")
    assert res.settings["patch_size"] == 4 and res.curves.shape == (1, 17)
    assert res.auc.item() == pytest.approx(m / 32)


def test_patch_steps_equal_pixel_steps_for_patch_constant_maps():
    """Distinct patch scores + nearest upsampling + step = p*p pixels: every pixel step removes exactly one whole patch
    (stable ordering keeps a patch's tied pixels together), so pixel and patch curves must coincide."""
    model = AdditiveModel(3, 16, 16, seed=21).eval()
    images = _rand(3, 3, 16, 16, seed=22) * 2 - 1
    patch_maps = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    patch_maps = patch_maps.reshape(3, 4, 4).to(torch.float64)
    for mode in ("insertion", "deletion"):
        kw = dict(mode=mode, substrate="blur", score="logit")
        by_patch = insertion_deletion(model, images, patch_maps, torch.zeros(3, dtype=torch.long), unit="patch", **kw)
        by_pixel = insertion_deletion(
            model, images, patch_maps, torch.zeros(3, dtype=torch.long), unit="pixel", step=16, upsample="nearest", **kw
        )
        pooled = insertion_deletion(
            model, images, patch_maps.repeat_interleave(4, 1).repeat_interleave(4, 2),
            torch.zeros(3, dtype=torch.long), unit="patch", patch_size=4, **kw,
        )
        assert torch.allclose(by_patch.curves, by_pixel.curves, atol=1e-10)
        assert torch.allclose(by_patch.curves, pooled.curves, atol=1e-10)
        assert by_patch.settings["n_steps"] == by_pixel.settings["n_steps"] == 16


def test_batch_size_does_not_change_results_and_targets_default_to_prediction():
    model = RegionModel(ROWS, COLS).eval()
    images = torch.cat([0.5 + _rand(2, 3, 16, 16, seed=31), 0.1 * _rand(1, 3, 16, 16, seed=32)])
    maps = _rand(3, 4, 4, seed=33)
    a = insertion_auc(model, images, maps, unit="patch", batch_size=1)
    b = insertion_auc(model, images, maps, unit="patch", batch_size=1000)
    assert torch.allclose(a.curves, b.curves) and torch.equal(a.targets, b.targets)
    assert a.targets.tolist() == [0, 0, 1]  # the dark third image is predicted class 1
    assert a.settings["targets"] == "predicted" and a.settings["substrate"] == "blur"
    assert deletion_auc(model, images, maps).settings["substrate"] == "zeros"


# ------------------------------------------------------------------------------------ Chefer perturbation
def test_perturbation_test_region_model_known_answers():
    model = RegionModel(ROWS, COLS).eval()
    images = torch.ones(2, 3, 16, 16)  # region mean 1 > 0.5: class 0; removing > 8 of its 16 pixels flips it
    perfect, inverted, random = (m.float().expand(2, -1, -1) for m in _region_maps())
    labels = torch.zeros(2, dtype=torch.long)
    pos = perturbation_test(model, images, perfect, labels, order="positive")
    neg = perturbation_test(model, images, perfect, labels, order="negative")
    assert pos.accuracy.tolist() == [0.0] * 9 and pos.auc == 0.0
    assert neg.accuracy.tolist() == [1.0] * 9 and neg.auc == pytest.approx(100.0)
    assert pos.n_removed.tolist() == [math.floor(f * 256 + 1e-9) for f in [0.1 * i for i in range(1, 10)]]
    # the inverted map behaves the other way round
    assert perturbation_test(model, images, inverted, labels, order="positive").auc == pytest.approx(100.0)
    # per-image probability of the label: softmax([1, 0.5])[0] while intact, softmax([0, 0.5])[0] once cleared
    p_in, p_out = torch.softmax(torch.tensor([1.0, 0.5]), 0)[0], torch.softmax(torch.tensor([0.0, 0.5]), 0)[0]
    assert torch.allclose(neg.target_prob, p_in.expand(2, 9)) and torch.allclose(pos.target_prob, p_out.expand(2, 9))
    assert torch.allclose(neg.prob_auc, p_in.expand(2))


def test_perturbation_test_random_map_matches_independent_recomputation():
    model = RegionModel(ROWS, COLS).eval()
    g = torch.Generator().manual_seed(41)
    images = torch.ones(4, 3, 16, 16)
    maps = torch.rand(4, 16, 16, generator=g)
    maps[:, ROWS, COLS] += torch.linspace(0.0, 0.9, 4)[:, None, None]  # graded: later images hide the region better
    labels = torch.tensor([0, 0, 1, 0])
    fractions = (0.0, 0.05, 0.1, 0.2, 0.4)
    for order in ("positive", "negative"):
        res = perturbation_test(model, images, maps, labels, order=order, fractions=fractions, batch_size=7)
        expected = torch.zeros(4, len(fractions), dtype=torch.bool)
        for i in range(4):
            ranked = torch.argsort(maps[i].flatten(), descending=(order == "positive"), stable=True).tolist()
            in_region = [(j // 16) in range(4, 8) and (j % 16) in range(8, 12) for j in ranked]
            for f_idx, f in enumerate(fractions):
                removed = sum(in_region[: math.floor(f * 256 + 1e-9)])
                pred = 0 if (16 - removed) / 16 >= 0.5 else 1  # a tie [0.5, 0.5] -> argmax picks class 0
                expected[i, f_idx] = pred == labels[i]
        assert torch.equal(res.correct, expected)
        acc = expected.double().mean(0)
        auc = (acc.sum() - (acc[0] + acc[-1]) / 2) / (len(fractions) - 1) * 100
        assert res.auc == pytest.approx(auc.item())
    merged = type(res).merge([res, res])
    assert merged.correct.shape == (8, 5) and merged.auc == pytest.approx(res.auc)


def test_perturbation_test_chefer_black_substrate_and_patch_unit():
    model = RegionModel(ROWS, COLS).eval()
    images = torch.ones(1, 3, 16, 16)
    patch_map = torch.zeros(1, 4, 4)
    patch_map[0, 1, 2] = 1.0
    black = black_substrate((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # -1 everywhere
    res = perturbation_test(model, images, patch_map, order="positive", unit="patch", substrate=black,
                            fractions=(0.0, 0.0625, 0.5))
    assert res.n_removed.tolist() == [0, 1, 8]
    # after one patch the region mean is -1: softmax([-1, 0.5])[0]
    assert res.target_prob[0, 1].item() == pytest.approx(torch.softmax(torch.tensor([-1.0, 0.5]), 0)[0].item())
    assert res.correct.tolist() == [[True, False, False]] and res.settings["labels"] == "predicted"


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_raise_value_errors_naming_the_argument():
    model = RegionModel(ROWS, COLS).eval()
    images, maps = torch.ones(2, 3, 16, 16), torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match=r"saliency: expected batch size 2 \(one map per image\), got shape \(3, 4, 4\)"):
        deletion_auc(model, images, torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match=r"substrate: expected one of \['zeros', 'black', 'image_mean', 'blur'\], got 'grey'"):
        deletion_auc(model, images, maps, substrate="grey")
    with pytest.raises(ValueError, match=r"substrate: 'black' needs the model's data config"):
        deletion_auc(model, images, maps, substrate="black")  # a plain callable has no data config
    for bad in (-1, 0):
        with pytest.raises(ValueError, match=rf"step: expected a positive int \(units per step\) or None, got {bad}"):
            insertion_auc(model, images, maps, step=bad)
    with pytest.raises(ValueError, match=r"unit: expected one of \['pixel', 'patch'\], got 'token'"):
        insertion_auc(model, images, maps, unit="token")
    with pytest.raises(ValueError, match=r"score: expected one of \['prob', 'logit'\], got 'loss'"):
        insertion_auc(model, images, maps, score="loss")
    with pytest.raises(ValueError, match=r"mode: expected one of \['insertion', 'deletion'\], got 'both'"):
        insertion_deletion(model, images, maps, mode="both")
    with pytest.raises(ValueError, match=r"targets: expected shape \(2,\) \(one class per image\), got \(3,\)"):
        insertion_auc(model, images, maps, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int \(rows per forward pass\), got 0"):
        insertion_auc(model, images, maps, batch_size=0)
    with pytest.raises(ValueError, match=r"fractions: expected at least two strictly increasing values in \[0, 1\], got \[0.5, 0.2\]"):
        perturbation_test(model, images, maps, order="positive", fractions=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"order: expected one of \['positive', 'negative'\], got 'neg'"):
        perturbation_test(model, images, maps, order="neg")
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\) \(one class per image\), got \(1,\)"):
        perturbation_test(model, images, maps, torch.zeros(1, dtype=torch.long), order="positive")
    with pytest.raises(ValueError, match=r"saliency: expected a map at patch resolution \(4, 4\)"):
        deletion_auc(model, images, torch.rand(2, 8, 8), unit="patch", patch_size=4)


def test_model_checks():
    images, maps = torch.ones(1, 3, 16, 16), torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match=r"model: expected an nn.Module in eval mode \(call model.eval\(\) first\), got training=True"):
        deletion_auc(RegionModel(ROWS, COLS).train(), images, maps)
    with pytest.raises(ValueError, match=r"model: expected logits of shape \[.*, n_classes\] .* got \(\d+,\)"):
        deletion_auc(lambda x: x.mean((1, 2, 3)), images, maps, torch.zeros(1, dtype=torch.long))


def test_runs_without_grad_and_never_prints(capsys):
    seen = []

    def model(x):
        seen.append(torch.is_grad_enabled())
        return x.mean((2, 3))

    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    res = deletion_auc(model, images, torch.rand(1, 2, 2), unit="patch", progress=False)
    perturbation_test(model, images, torch.rand(1, 8, 8), order="negative")
    assert seen and not any(seen) and not res.curves.requires_grad
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_timm_vit_end_points_of_the_curves():
    """With a real (tiny, random) timm ViT: the deletion curve starts at the clean image's score and ends at the
    substrate's; the insertion curve the other way round."""
    import timm  # a test dependency (installed); the library itself never imports it
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
        num_classes=5,
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 4, 4)
    with torch.no_grad():
        clean = model(images).softmax(-1)
        blurred = model(make_substrate(images, "blur")).softmax(-1)
    dele = deletion_auc(model, images, maps, unit="patch", substrate="blur", batch_size=8)
    ins = insertion_auc(model, images, maps, unit="patch", substrate="blur", batch_size=8)
    idx = torch.arange(2)
    assert torch.equal(dele.targets, clean.argmax(-1))
    assert torch.allclose(dele.curves[:, 0], clean[idx, dele.targets], atol=1e-5)
    assert torch.allclose(dele.curves[:, -1], blurred[idx, dele.targets], atol=1e-5)
    assert torch.allclose(ins.curves[:, 0], blurred[idx, ins.targets], atol=1e-5)
    assert torch.allclose(ins.curves[:, -1], clean[idx, ins.targets], atol=1e-5)
    with pytest.raises(ValueError, match="model: expected an nn.Module in eval mode"):
        deletion_auc(model.train(), images, maps)


def test_black_substrate_by_name_reads_the_data_config_given_or_the_models():
    model = RegionModel(ROWS, COLS).eval()
    images, maps = _rand(2, 3, 16, 16, seed=40, dtype=torch.float32), _rand(2, 4, 4, seed=41, dtype=torch.float32)
    dc = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    tensor = perturbation_test(model, images, maps, order="positive", substrate=black_substrate(dc["mean"], dc["std"]))
    given = perturbation_test(model, images, maps, order="positive", substrate="black", data_config=dc)
    model.cfg = type("Cfg", (), {"data_config": dc})()  # what a HookedViT carries
    own = perturbation_test(model, images, maps, order="positive", substrate="black")
    for res in (given, own):
        torch.testing.assert_close(res.target_prob, tensor.target_prob, rtol=0, atol=0)
        assert res.settings["substrate"] == "black"
    assert not torch.equal(tensor.target_prob, perturbation_test(model, images, maps, order="positive").target_prob)
    with pytest.warns(DeprecationWarning, match="substrate: 'zero' is deprecated"):
        old = deletion_auc(model, images, maps, substrate="zero")
    assert old.settings["substrate"] == "zeros"
    assert torch.equal(old.curves, deletion_auc(model, images, maps, substrate="zeros").curves)

"""Mismatches flagged (issue 21, item 10, library part): a clean/corrupted pair the metric cannot tell apart (the
same predicted class under ``logit_diff``) warns naming the images in every pair experiment; a metric that
returns more than one value per row is an error naming it; interval levels outside (0, 1) and a NaN circuit
threshold are errors naming the argument."""
import math
import warnings

import pytest
import torch

from patch_toys import images, pair, tiny
from vit_patching.circuits import (
    atp_heads, atp_layer_sweep, eap, eap_ig, evaluate_circuit, faithfulness_curve, select_circuit,
)
from vit_patching.evaluation.statistics import mean_ci, paired_ci
from vit_patching.patching import direct_path_patch, layer_sweep, patch_heads, path_patch, select_window

MODEL = tiny(depth=2)
CLEAN = pair(3)[0]
OTHER = torch.cat([images(3, seed=4)[:2], images(3, seed=2)[2:]])  # no image predicted as its CLEAN twin (asserted)
SCORES = eap(MODEL, CLEAN, OTHER, "logit")
CIRCUIT = select_circuit(SCORES, top_n=5)

FAMILIES = {
    "layer_sweep": lambda c, x, m: layer_sweep(MODEL, c, x, m, sites="resid_pre", progress=False),
    "patch_heads": lambda c, x, m: patch_heads(MODEL, c, x, m, progress=False),
    "path_patch": lambda c, x, m: path_patch(MODEL, c, x, m, senders=["L0H0"], progress=False),
    "direct_path_patch": lambda c, x, m: direct_path_patch(MODEL, c, x, m, progress=False),
    "atp_layer_sweep": lambda c, x, m: atp_layer_sweep(MODEL, c, x, m, sites="resid_pre"),
    "atp_heads": lambda c, x, m: atp_heads(MODEL, c, x, m),
    "eap": lambda c, x, m: eap(MODEL, c, x, m),
    "eap_ig": lambda c, x, m: eap_ig(MODEL, c, x, m, steps=2),
    "evaluate_circuit": lambda c, x, m: evaluate_circuit(MODEL, CIRCUIT, c, x, m),
    "faithfulness_curve": lambda c, x, m: faithfulness_curve(MODEL, SCORES, c, x, m, sizes=[2]),
}


def _same_class_pair():
    """(clean, corrupted) where image 1 is predicted the same class in both runs and images 0, 2 are not."""
    corrupted = OTHER.clone()
    corrupted[1] = CLEAN[1] * 0.9  # a slightly dimmer copy: same class on this model (asserted)
    with torch.no_grad():
        same = MODEL(CLEAN).argmax(-1) == MODEL(corrupted).argmax(-1)
        apart = MODEL(CLEAN).argmax(-1) == MODEL(OTHER).argmax(-1)
    assert same.tolist() == [False, True, False] and not apart.any()
    return CLEAN, corrupted


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_pair_predicting_one_class_warns_naming_the_image(family):
    clean, corrupted = _same_class_pair()
    with pytest.warns(UserWarning, match=r"same logit_diff for image\(s\) \[1\] \(both predict the same class"):
        FAMILIES[family](clean, corrupted, "logit_diff")
    with warnings.catch_warnings():  # pairs the model tells apart: no warning
        warnings.simplefilter("error", UserWarning)
        FAMILIES[family](CLEAN, OTHER, "logit_diff")


def all_classes(logits, image_index):  # a user metric that forgot to pick one class per row
    return logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_metric_returning_every_class_is_refused_naming_it(family):
    n_classes = MODEL.cfg.n_classes
    with pytest.raises(ValueError, match=rf"metric: expected all_classes\(logits, image_index\) to return one value "
                                         rf"per row \[3\], got shape \(3, {n_classes}\)"):
        FAMILIES[family](CLEAN, OTHER, all_classes)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1, float("nan")])  # (other types: the annotation)
def test_interval_levels_outside_0_1_are_refused_naming_level(level):
    with pytest.raises(ValueError) as err:
        mean_ci([1.0, 2.0, 3.0], level)
    assert str(err.value) == f"level: expected a number in (0, 1), got {level!r}"
    with pytest.raises(ValueError) as err:
        paired_ci([1.0, 2.0], [0.0, 1.0], level)
    assert str(err.value) == f"level: expected a number in (0, 1), got {level!r}"


def test_window_intervals_check_level_before_any_work():
    sel = select_window(MODEL, CLEAN, [(0, 1), (1, 2)])
    with pytest.raises(ValueError) as err:
        sel.intervals(level=1.0)
    assert str(err.value) == "level: expected a number in (0, 1), got 1.0"
    mean, ci, n = mean_ci([1.0, 2.0, 3.0], 0.5)  # a legal level still gives the t interval: t(0.75, 2) = 0.8165
    assert (mean, n) == (2.0, 3) and math.isclose(ci, 0.816496580927726 / math.sqrt(3), rel_tol=1e-12)
    assert len(sel.intervals(level=0.5)) == 2


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("absolute", [True, False])
def test_select_circuit_refuses_a_non_finite_threshold(threshold, absolute):
    with pytest.raises(ValueError, match=r"threshold: expected a finite number"):
        select_circuit(SCORES, threshold=threshold, absolute=absolute)
    assert select_circuit(SCORES, threshold=-1.0, absolute=False).mask.any()  # a finite negative one is fine

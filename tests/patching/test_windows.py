"""Layer-window selection: every score recomputed independently, the recommendation, figures, errors."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from caap_toys import tiny_images, tiny_model, window_images_and_masks
from vit_patching.evaluation import deletion_auc, insertion_auc, pointing_game
from vit_patching.patching.caap import caap
from vit_patching.patching.windows import all_windows, select_window


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def data():
    return window_images_and_masks()


@pytest.fixture(scope="module")
def selection(model, data):
    images, masks = data
    return select_window(model, images, masks=masks, neutral="blur", readout="prob")


def test_every_window_is_scored_as_the_evaluation_module_scores_its_caap_map(model, data, selection):
    images, masks = data
    assert [(int(s), int(e)) for s, e in zip(selection.table["start"], selection.table["end"])] == all_windows(4)
    for _, row in selection.table.iterrows():
        w = (int(row["start"]), int(row["end"]))
        attr = caap(model, images, window=w, neutral="blur", readout="prob")
        torch.testing.assert_close(selection.maps[w], attr.map)
        ins = insertion_auc(model, images, attr.map, attr.target, unit="patch", substrate="zeros").auc.mean().item()
        dele = deletion_auc(model, images, attr.map, attr.target, unit="patch", substrate="zeros").auc.mean().item()
        pg = pointing_game(attr.map, masks, tolerance=4).accuracy  # default tolerance: half a patch
        assert row["insertion_auc"] == pytest.approx(ins, abs=1e-6)
        assert row["deletion_auc"] == pytest.approx(dele, abs=1e-6)
        assert row["ins_minus_del"] == pytest.approx(ins - dele, abs=1e-6)
        assert row["pointing_game"] == pytest.approx(pg)
        assert row["width"] == w[1] - w[0]


def test_recommendation_follows_the_criterion(model, data, selection):
    t = selection.table
    best = t["ins_minus_del"].idxmax()
    assert selection.recommended == (int(t["start"][best]), int(t["end"][best]))
    images, masks = data
    by_deletion = select_window(model, images, [(0, 1), (1, 3), (3, 4)], criterion="deletion", neutral="blur", readout="prob")
    d = by_deletion.table
    worst_first = d["deletion_auc"].idxmin()
    assert by_deletion.recommended == (int(d["start"][worst_first]), int(d["end"][worst_first]))
    assert "pointing_game" not in d.columns and len(d) == 3


def test_substrates_and_eval_kwargs_are_passed_on(model, data):
    images, _ = data
    w = (1, 3)
    sel = select_window(model, images, [w], insertion_substrate="blur", deletion_substrate="image_mean", eval_kwargs={"step": 3})
    attr = caap(model, images, window=w)
    kw = dict(unit="patch", step=3)
    ins = insertion_auc(model, images, attr.map, attr.target, substrate="blur", **kw).auc.mean().item()
    dele = deletion_auc(model, images, attr.map, attr.target, substrate="image_mean", **kw).auc.mean().item()
    assert sel.table["insertion_auc"][0] == pytest.approx(ins, abs=1e-6)
    assert sel.table["deletion_auc"][0] == pytest.approx(dele, abs=1e-6)
    assert sel.options["insertion_substrate"] == "blur" and sel.options["step"] == 3


def test_per_image_table_averages_to_the_table(selection):
    per = selection.per_image
    assert len(per) == len(selection.table) * 3
    means = per.groupby(["start", "end"])["insertion_auc"].mean()
    for _, row in selection.table.iterrows():
        assert means[(row["start"], row["end"])] == pytest.approx(row["insertion_auc"])


def test_scores_grid_and_heatmap(selection):
    grid = selection.scores("deletion_auc")
    assert grid.shape == (4, 4)
    for _, row in selection.table.iterrows():
        assert grid[int(row["start"]), int(row["end"]) - 1].item() == pytest.approx(row["deletion_auc"])
    assert math.isnan(grid[3, 0].item()) and math.isnan(grid[1, 0].item())  # end <= start: no window
    fig = selection.heatmap()
    best = [t for t in fig.data if (t.meta or {}).get("kind") == "best"][0].meta
    s, e = selection.recommended
    assert (best["start"], best["end"]) == (s, e - 1)  # grid column e-1 is labelled end = e
    assert list(fig.layout.xaxis.ticktext)[best["end"]] == str(e)
    high = [t for t in fig.data if (t.meta or {}).get("kind") == "highlight"][0].meta
    assert (high["start"], high["end"]) == (s, e - 1)


def test_slider_and_compare(selection):
    fig = selection.slider(1, windows=[(0, 1), (0, 2), (0, 4)])
    assert [st.label for st in fig.layout.sliders[0].steps] == ["[0, 1)", "[0, 2)", "[0, 4)"]
    maps = [t for t in fig.data if t.type == "heatmap"]
    assert len(maps) == 3 and [t.visible for t in maps] == [True, False, False]
    assert len([t for t in selection.slider(0).data if t.type == "heatmap"]) == 10
    comp = selection.compare([(0, 2), (2, 4)], i=2, over_image=False)
    assert sum(t.type == "heatmap" for t in comp.data) == 2
    with pytest.raises(ValueError, match="windows"):
        selection.slider(0, windows=[(0, 3), (5, 6)])
    with pytest.raises(ValueError, match="i:"):
        selection.compare(i=3)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(windows=[(0, 1), (2, 2)]), "windows[1]"),
        (dict(windows=[(3, 1)]), "windows[0]"),
        (dict(windows=[(0, 5)]), "windows[0]"),
        (dict(windows=[(0, 1), (0, 1)]), "windows"),
        (dict(windows=[]), "windows"),
        (dict(criterion="best"), "criterion"),
        (dict(criterion="pointing_game"), "masks"),
        (dict(masks=torch.zeros(3, 16, 16)), "masks"),
        (dict(score="rank"), "score"),
        (dict(eval_kwargs={"unit": "pixel"}), "eval_kwargs"),
        (dict(eval_kwargs={"substrate": "blur"}), "eval_kwargs"),
        (dict(insertion_substrate="noise"), "substrate"),
        (dict(readout="margin"), "readout"),
        (dict(target=9), "target"),
    ],
)
def test_bad_input_names_the_argument(model, data, kwargs, name):
    with pytest.raises((ValueError, TypeError)) as err:
        select_window(model, data[0], **kwargs)
    assert name in str(err.value)


def test_each_window_figure_is_centred_on_its_own_neutral_score(model, data):
    """mean_activations: the neutral run starts at each window's first block, so centres differ by window."""
    from test_caap import colour_centres

    images, _ = data
    reference = tiny_images(4, seed=5)
    windows = [(0, 2), (1, 3), (2, 4)]
    sel = select_window(model, images, windows, neutral="mean_activations", reference=reference, eval_kwargs={"step": 8})
    own = {w: caap(model, images, window=w, neutral="mean_activations", reference=reference).neutral_score for w in windows}
    for w in windows:
        assert sel.zmid[w] == pytest.approx(own[w].tolist(), abs=1e-6)
    i = 1
    assert len({round(float(own[w][i]), 4) for w in windows}) == 3  # the case of the bug
    maps = [sel.maps[w][i] for w in windows]
    expected = [float(own[w][i]) for w in windows]
    assert colour_centres(sel.compare(windows, i=i, over_image=False), maps) == pytest.approx(expected, abs=1e-5)
    assert colour_centres(sel.slider(i, windows=windows, over_image=False), maps) == pytest.approx(expected, abs=1e-5)


def test_neutral_warnings_are_surfaced_once(model, data, caplog):
    images, _ = data
    with torch.no_grad():
        pred = model(images).argmax(-1)
    neutral = images[0]  # the first image as the neutral of every image: it predicts its own class
    with caplog.at_level("WARNING"):
        sel = select_window(model, images, [(0, 1), (0, 2), (1, 3)], neutral=neutral, eval_kwargs={"step": 8})
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    one = caap(model, images, window=(0, 1), neutral=neutral)
    assert one.warnings and sel.warnings == one.warnings
    assert f"{int((pred == pred[0]).sum())}/3 images" in sel.warnings[0]
    assert sorted(logged) == sorted(sel.warnings)  # once each, not once per window
    assert sel.neutral_choice == ["tensor[3, 32, 32]"] * 3


def test_intervals_are_student_t_intervals_and_paired_differences(selection):
    """Known answer: with 3 images the 95 % half-width is t(0.975, 2) = 4.302652730 standard errors."""
    import pandas as pd

    per_image = pd.DataFrame(
        [{"start": 0, "end": 1, "image": i, "ins_minus_del": v} for i, v in enumerate([0.1, 0.4, 0.7])]
        + [{"start": 0, "end": 2, "image": i, "ins_minus_del": v} for i, v in enumerate([0.3, 0.5, 1.0])]
    )
    table = per_image.groupby(["start", "end"], as_index=False)["ins_minus_del"].mean()
    sel = dataclasses.replace(selection, table=table, per_image=per_image, recommended=(0, 2))
    iv = sel.intervals(reference=(0, 1))
    t975 = 4.302652730
    first, second = iv.iloc[0], iv.iloc[1]
    assert (first.start, first.end, second.start, second.end) == (0, 1, 0, 2)
    assert first.ins_minus_del == pytest.approx(0.4, abs=1e-15)
    assert first.ins_minus_del_ci == pytest.approx(t975 * 0.3 / math.sqrt(3), rel=1e-9)  # sd of (.1,.4,.7) = .3
    assert first["diff"] == 0.0 and first.diff_ci == 0.0
    diffs = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)  # (0,2) minus (0,1), per image
    assert second["diff"] == pytest.approx(0.2, abs=1e-15)
    assert second.diff_ci == pytest.approx(t975 * float(diffs.std()) / math.sqrt(3), rel=1e-9)
    assert second.diff_low == pytest.approx(0.2 - t975 * 0.1 / math.sqrt(3)) and second.diff_low < 0  # not significant
    # default reference = the recommended window
    assert sel.intervals()["diff"].tolist() == pytest.approx([-0.2, 0.0], abs=1e-15)
    with pytest.raises(ValueError, match="reference"):
        sel.intervals(reference=(1, 2))
    with pytest.raises(ValueError, match="metric"):
        sel.intervals("accuracy")

"""select_window's coalition variant: every window scored on caap_shapley's map, computed here by hand per window
and scored with the evaluation module's functions; confirm_window passes it on; bad coalition arguments named."""
from __future__ import annotations

import pytest
import torch
from caap_toys import tiny_images, tiny_model, window_images_and_masks

from vit_patching.evaluation import deletion_auc, insertion_auc, pointing_game
from vit_patching.patching.caap_shapley import caap_shapley
from vit_patching.patching.window_protocol import confirm_window
from vit_patching.patching.windows import select_window

WINDOWS = [(0, 1), (0, 2), (1, 3), (2, 4)]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)  # 4 blocks, 4 x 4 patch grid


@pytest.fixture(scope="module")
def data():
    return window_images_and_masks()


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_coalition_windows_are_scored_on_caap_shapley_maps(model, data, direction):
    images, masks = data
    kw = dict(n_permutations=4, groups=2, seed=3, direction=direction)
    sel = select_window(model, images, WINDOWS, masks=masks, direction=direction, coalitions=4, coalition_groups=2,
                        coalition_seed=3, eval_kwargs={"step": 3})
    single = select_window(model, images, WINDOWS, direction=direction, eval_kwargs={"step": 3})
    assert [(int(s), int(e)) for s, e in zip(sel.table["start"], sel.table["end"])] == WINDOWS
    per = sel.per_image.set_index(["start", "end", "image"])
    for w in WINDOWS:
        attr = caap_shapley(model, images, window=w, **kw)
        torch.testing.assert_close(sel.maps[w], attr.map, rtol=0, atol=0)
        # 2 x 2 groups share their value: the map is not single-patch CAAP's (the variant really is used)
        assert not torch.allclose(sel.maps[w], single.maps[w], atol=1e-3)
        common = dict(unit="patch", step=3, substrate="zeros")
        ins = insertion_auc(model, images, attr.map, attr.target, **common).auc.double()
        dele = deletion_auc(model, images, attr.map, attr.target, **common).auc.double()
        pg = pointing_game(attr.map, masks, tolerance=4).hits.double()  # half a patch
        for b in range(3):
            row = per.loc[(w[0], w[1], b)]
            assert row["insertion_auc"] == pytest.approx(float(ins[b]), abs=1e-7)
            assert row["deletion_auc"] == pytest.approx(float(dele[b]), abs=1e-7)
            assert row["ins_minus_del"] == pytest.approx(float(ins[b] - dele[b]), abs=1e-7)
            assert row["pointing_game"] == float(pg[b])
        assert sel.zmid[w] == [0.0, 0.0, 0.0]  # Shapley values are shares of v(all) - v(empty)
    assert sel.options["method"] == "caap_shapley" and single.options["method"] == "caap"
    assert (sel.options["n_permutations"], sel.options["groups"], sel.options["seed"]) == (4, 2, 3)
    assert sel.options["direction"] == direction
    drop = " drop" if direction == "noising" else ""
    assert sel.slider(0).layout.coloraxis.colorbar.title.text == f"Shapley value (logit{drop})"


def test_confirm_window_runs_the_coalition_variant(model, data):
    images, _ = data
    other = tiny_images(3, seed=8)
    dec = confirm_window(model, images, other, [(0, 1), (1, 3)], n_candidates=1, coalitions=2,
                         coalition_groups=2, eval_kwargs={"step": 8})
    assert dec.selection.options["method"] == dec.confirmation.options["method"] == "caap_shapley"
    assert sorted(dec.confirmation.maps) == sorted([dec.candidates[0], (0, 2)])
    torch.testing.assert_close(dec.confirmation.maps[(0, 2)],
                               caap_shapley(model, other, window=(0, 2), n_permutations=2, groups=2).map, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(coalitions=3), "coalitions: expected an even number of permutations (antithetic pairs), got 3"),
        (dict(coalitions=0), "coalitions: expected a positive int, got 0"),
        (dict(coalition_groups=2), "coalition_groups: only used with coalitions=N (coalition CAAP), got 2"),
        (dict(coalitions=2, coalition_groups=torch.zeros(3, 3, dtype=torch.long)),
         "coalition_groups: expected an integer label tensor of shape [4, 4]"),
        (dict(coalitions=2, coalition_seed=-1), "coalition_seed: expected a non-negative int, got -1"),
    ],
)
def test_bad_coalition_arguments_are_named(model, data, kwargs, message):
    with pytest.raises(ValueError) as err:
        select_window(model, data[0], WINDOWS, **kwargs)
    assert message in str(err.value)


def test_window_0_1_coalitions_are_the_composite_images_insertion_scores(model, data):
    """docs/caap_defaults.md: at [0, 1) and resid_pre, pinning a coalition's patch tokens into the zeros neutral is
    running the model on the image with those patches and the zero image elsewhere (insertion's composite)."""
    images, _ = data
    attr = caap_shapley(model, images, window=(0, 1), n_permutations=2, seed=1)
    keys = sorted(set(attr.prefix_rows.flatten().tolist()))
    members = {r: set() for r in keys}
    for p, rows in zip(attr.permutations.tolist(), attr.prefix_rows.tolist()):
        for k, r in enumerate(rows):
            members[r] = set(p[: k + 1])
    for r in keys[:6]:
        mask = torch.zeros(1, 1, 32, 32)
        for i in members[r]:
            mask[..., 8 * (i // 4): 8 * (i // 4) + 8, 8 * (i % 4): 8 * (i % 4) + 8] = 1.0
        with torch.no_grad():
            composite = model(images * mask)  # zeros elsewhere: the "zeros" substrate and neutral
        torch.testing.assert_close(attr.coalition_logits[r], composite, rtol=0, atol=1e-6)  # batching: 5e-7

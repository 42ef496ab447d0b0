"""Attribution figures: overlays, patch maps, comparisons, window heatmap and slider."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plot_test_helpers import decode_image_trace, render_hover, to_uint8, traces

from vit_patching.plotting import attribution_overlay, compare_maps, patch_map, window_heatmap, window_slider


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_overlay_nearest_draws_the_map_cells_over_the_image(image):
    att = torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.25, 0.0]])  # 2 x 3 patches of 8 x 8 pixels
    fig = attribution_overlay(image, att, title="caap", value_label="score")
    (img,) = traces(fig, "image")
    (hm,) = traces(fig, "map")
    np.testing.assert_array_equal(decode_image_trace(img), grey_by_hand(image))
    np.testing.assert_allclose(np.asarray(hm.z), att.double().numpy())
    assert (hm.dx, hm.dy, hm.x0, hm.y0) == (8.0, 8.0, 4.0, 4.0)
    assert fig.data.index(img) < fig.data.index(hm)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-2.0, 2.0)
    assert render_hover(hm, 1, 0) == "row 1, col 0<br>score: 2"
    assert render_hover(hm, 0, 2) == "row 0, col 2<br>score: -0.5"
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]
    assert fig.layout.title.text == "caap"
    plain = attribution_overlay(image, att, fade=False, opacity=0.3)
    assert traces(plain, "map")[0].opacity == 0.3 and not plain.layout.coloraxis.colorscale[0][1].startswith("rgba")


def grey_by_hand(image: torch.Tensor) -> np.ndarray:
    """BT.601 luminance of the uint8 pixels, lifted to [64, 255], in all three channels (an independent loop)."""
    rgb = to_uint8(image).astype(np.float64)
    out = np.zeros(rgb.shape, dtype=np.uint8)
    for i in range(rgb.shape[0]):
        for j in range(rgb.shape[1]):
            r, g, b = rgb[i, j]
            out[i, j, :] = round(64 + 0.75 * (0.299 * r + 0.587 * g + 0.114 * b))
    return out


def test_overlay_draws_a_grey_image_under_the_map_and_names_the_values():
    # A red and a blue object: drawn in colour under a red/blue map they would read as map values.
    image = torch.zeros(3, 16, 16)
    image[0, :8, :8] = 1.0   # red square
    image[2, 8:, 8:] = 1.0   # blue square
    fig = attribution_overlay(image, torch.randn(2, 2), value_label="CAAP score (logit)")
    under = decode_image_trace(traces(fig, "image")[0])
    assert (under[..., 0] == under[..., 1]).all() and (under[..., 1] == under[..., 2]).all()   # no hue left
    assert under[0, 0, 0] == round(64 + 0.75 * 0.299 * 255) and under[15, 15, 0] == round(64 + 0.75 * 0.114 * 255)
    assert under.min() == 64                                                                   # black is lifted
    assert fig.layout.coloraxis.colorbar.title.text == "CAAP score (logit)"
    colour = attribution_overlay(image, torch.randn(2, 2), image_style="colour")
    np.testing.assert_array_equal(decode_image_trace(traces(colour, "image")[0]), to_uint8(image))
    with pytest.raises(ValueError, match=r"image_style: expected one of \['grey', 'colour'\], got 'sepia'"):
        attribution_overlay.__wrapped__(image, torch.randn(2, 2), image_style="sepia")
    # the same underlay in the side-by-side and slider figures, and every per-facet colour bar titled
    both = compare_maps({"a": torch.randn(2, 2), "b": torch.randn(2, 2)}, image, shared_scale=False, value_label="v")
    for t in traces(both, "image"):
        np.testing.assert_array_equal(decode_image_trace(t), grey_by_hand(image))
    assert both.layout.coloraxis.colorbar.title.text == "v" and both.layout.coloraxis2.colorbar.title.text == "v"
    slider = window_slider([torch.randn(2, 2)], ["L0-1"], image)
    np.testing.assert_array_equal(decode_image_trace(traces(slider, "image")[0]), grey_by_hand(image))


def test_overlay_bilinear_interpolates_to_pixels():
    image = torch.rand(3, 2, 8)
    att = torch.tensor([[0.0, 1.0]])
    fig = attribution_overlay(image, att, upsample="bilinear")
    z = np.asarray(traces(fig, "map")[0].z)
    # align_corners=False: source x = (i + 0.5) * 2 / 8 - 0.5, clamped to [0, 1].
    expected = [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0]
    np.testing.assert_allclose(z, [expected, expected])
    assert (traces(fig, "map")[0].dx, traces(fig, "map")[0].dy) == (1.0, 1.0)


def test_overlay_bad_input(image):
    with pytest.raises(ValueError, match=r"upsample: expected one of \['nearest', 'bilinear'\], got 'cubic'"):
        attribution_overlay.__wrapped__(image, torch.rand(2, 3), upsample="cubic")  # the Literal hint is checked first under the hook
    with pytest.raises(ValueError, match=r"image: expected pixel values in \[0, 1\]"):
        attribution_overlay(image * 255, torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"attribution: expected a 2-D array .*got shape \(1, 2, 3\)"):
        attribution_overlay.__wrapped__(image, torch.rand(1, 2, 3))


def test_patch_map():
    att = torch.arange(6.0).reshape(2, 3)
    fig = patch_map(att, value_label="a")
    (hm,) = traces(fig, "grid")
    np.testing.assert_allclose(np.asarray(hm.z), att.double().numpy())
    assert hm.customdata[1][2] == "row: 1<br>col: 2<br>a: 5"
    assert list(fig.layout.xaxis.ticktext) == ["0", "1", "2"] and list(fig.layout.yaxis.ticktext) == ["0", "1"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-5.0, 5.0)
    assert fig.layout.yaxis.scaleanchor == "x"


def test_compare_maps_shared_scale_over_image(image):
    maps = {"caap": torch.tensor([[1.0, -3.0, 0.0], [0.0, 0.0, 0.0]]), "pixels": torch.rand(16, 24)}
    fig = compare_maps(maps, image)
    assert [a.text for a in fig.layout.annotations] == ["caap", "pixels"]
    assert len(traces(fig, "image")) == 2
    np.testing.assert_allclose(np.asarray(traces(fig, "map", facet=0)[0].z), maps["caap"].double().numpy())
    np.testing.assert_allclose(np.asarray(traces(fig, "map", facet=1)[0].z), maps["pixels"].double().numpy())
    assert traces(fig, "map", facet=0)[0].dx == 8.0 and traces(fig, "map", facet=1)[0].dx == 1.0
    assert {t.coloraxis for t in traces(fig, "map")} == {"coloraxis"}
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-3.0, 3.0)


def test_compare_maps_per_map_scales():
    maps = {"a": torch.tensor([[1.0, -0.5]]), "b": torch.tensor([[10.0, 4.0]])}
    fig = compare_maps(maps, shared_scale=False)
    a, b = traces(fig, "map", facet=0)[0], traces(fig, "map", facet=1)[0]
    assert (a.coloraxis, b.coloraxis) == ("coloraxis", "coloraxis2")
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-1.0, 1.0)
    assert (fig.layout.coloraxis2.cmin, fig.layout.coloraxis2.cmax) == (-10.0, 10.0)
    assert render_hover(b, 0, 1) == "b<br>row 0, col 1<br>attribution: 4"


def test_compare_maps_bad_input():
    with pytest.raises(ValueError, match=r"maps\['bad'\]: expected a 2-D array .*got shape \(2, 2, 2\)"):
        compare_maps({"ok": torch.rand(2, 2), "bad": torch.rand(2, 2, 2)})
    with pytest.raises(ValueError, match="maps: expected at least one map"):
        compare_maps({})


def _scores() -> torch.Tensor:
    s = torch.full((4, 4), math.nan)
    for i in range(4):
        for j in range(i, 4):
            s[i, j] = 0.1 * (i + 1) + 0.01 * j
    s[1, 2] = 0.95  # best when higher is better
    s[0, 1] = -0.3  # best when lower is better
    return s


def test_window_heatmap_marks_best_cell():
    s = _scores()
    fig = window_heatmap(s, metric_name="insertion AUC", highlight=(2, 3), title="windows")
    (hm,) = traces(fig, "grid")
    np.testing.assert_allclose(np.asarray(hm.z, dtype=float), s.double().numpy())  # NaN cells stay NaN
    (best,) = traces(fig, "best")
    assert (best.meta["start"], best.meta["end"]) == (1, 2)
    assert (best.x[0], best.y[0]) == (2.5, 1.5)  # cell centre: x = end, y = start
    assert "0.95" in best.name
    (hl,) = traces(fig, "highlight")
    assert (hl.x[0], hl.y[0]) == (3.5, 2.5)
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("end", "start")
    assert fig.layout.coloraxis.reversescale is False
    assert fig.layout.coloraxis.cmax == pytest.approx(0.95) and fig.layout.coloraxis.cmin == pytest.approx(-0.3)
    low = window_heatmap(s, metric_name="deletion AUC", higher_is_better=False)
    (best,) = traces(low, "best")
    assert (best.meta["start"], best.meta["end"]) == (0, 1)
    assert low.layout.coloraxis.reversescale is True


def test_window_heatmap_bad_input():
    with pytest.raises(ValueError, match="scores: expected at least one finite score"):
        window_heatmap(torch.full((2, 2), math.nan))
    with pytest.raises(ValueError, match=r"highlight: expected \(start, end\) inside .*got \(2, 0\)"):
        window_heatmap(_scores()[:2, :2], highlight=(2, 0))
    with pytest.raises(ValueError, match=r"end_labels: expected 4 labels"):
        window_heatmap(_scores(), end_labels=["a"])


def test_window_slider_steps_and_traces(image):
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(2, 3, generator=g) for _ in range(3)]
    maps[1][0, 0] = 5.0
    labels = ["L0-3", "L4-7", "L8-11"]
    fig = window_slider(maps, labels, image, title="caap")
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == labels
    heat = traces(fig, "map")
    assert len(heat) == 3 and len(traces(fig, "image")) == 1
    for i, (m, t) in enumerate(zip(maps, heat)):
        np.testing.assert_allclose(np.asarray(t.z), m.double().numpy())
        assert t.meta["step"] == i and t.coloraxis == "coloraxis"
    assert [t.visible for t in heat] == [True, False, False]
    for i, step in enumerate(slider.steps):
        visible = step.args[0]["visible"]
        assert visible[fig.data.index(traces(fig, "image")[0])] is True
        assert [visible[fig.data.index(t)] for t in heat] == [j == i for j in range(3)]
        assert step.args[1]["title.text"] == f"caap: {labels[i]}"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-5.0, 5.0)


def test_map_hover_nan_cells_escaping_and_large_maps(image):
    att = torch.tensor([[0.5, math.nan], [1.25, -3.0]])
    fig = window_slider([att, att * 2], ["L0-1", "%{z}<b>"], value_label="caap")
    a, b = traces(fig, "map", step=0)[0], traces(fig, "map", step=1)[0]
    assert render_hover(a, 0, 1) == "L0-1<br>row 0, col 1<br>caap: NaN"  # drawn blank, hovered as NaN
    assert render_hover(b, 1, 1) == "%&#123;z}&lt;b&gt;<br>row 1, col 1<br>caap: -6"
    assert b.hovertemplate.count("%{") == 3  # row, col, z: the caller's label is never a placeholder
    # Pixel-sized maps (> 64 x 64 cells) carry no per-cell data: the pointer's x, y.
    big = traces(attribution_overlay(torch.rand(3, 80, 80), torch.rand(80, 80), value_label="s"), "map")[0]
    assert big.customdata is None
    assert big.hovertemplate == "x %{x:.1f}, y %{y:.1f}<br>s: %{z:.4~g}<extra></extra>"


def test_window_slider_bad_input():
    with pytest.raises(ValueError, match=r"labels: expected 2 labels \(one per map\), got 1"):
        window_slider([torch.rand(2, 2), torch.rand(2, 2)], ["a"])
    with pytest.raises(ValueError, match=r"maps: expected maps of one shape"):
        window_slider([torch.rand(2, 2), torch.rand(3, 3)], ["a", "b"])
    with pytest.raises(ValueError, match=r"maps\[1\]: expected a 2-D array .*got shape \(4,\)"):
        window_slider([torch.rand(2, 2), torch.rand(4)], ["a", "b"])

"""Patch-grid, layer x head and path-patching figures: plotted values, labels, colour range, hover."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plot_test_helpers import decode_image_trace, render_hover, to_uint8, traces

from vit_patching.plotting.attribution import greyscale_underlay
from vit_patching.plotting import head_position_facets, layer_head_grid, layer_patch_grid, path_patching_heatmap

GRID = (3, 4)  # asymmetric on purpose: a column-major mix-up changes shapes and hover text
N_PREFIX = 2
PREFIX = ["CLS", "reg0"]


@pytest.fixture
def values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, N_PREFIX + GRID[0] * GRID[1], generator=g) - 0.5
    v[1, 0] = -2.5  # the largest |value| sits on a prefix token: the range must include it
    v[2, N_PREFIX + 1 * GRID[1] + 3] = 1.75  # a marker at row 1, col 3 of layer 2
    return v


def test_layer_patch_grid_values_labels_and_range(values):
    labels = ["first", "middle", "last"]
    fig = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, layer_labels=labels,
                           title="T", value_label="logit diff")
    for l in range(3):
        (grid,) = traces(fig, "grid", facet=l)
        (strip,) = traces(fig, "prefix", facet=l)
        np.testing.assert_allclose(np.asarray(grid.z), values[l, N_PREFIX:].reshape(GRID).double().numpy())
        np.testing.assert_allclose(np.asarray(strip.z), values[l, :N_PREFIX][None].double().numpy())
        assert list(strip.text[0]) == PREFIX
        assert grid.coloraxis == strip.coloraxis == "coloraxis"
    assert np.asarray(traces(fig, "grid", facet=2)[0].z)[1, 3] == pytest.approx(1.75)
    assert [a.text for a in fig.layout.annotations] == labels
    assert fig.layout.title.text == "T"
    assert fig.layout.coloraxis.colorbar.title.text == "logit diff"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == pytest.approx((-2.5, 2.5))
    # Image-like axes: row 0 at the top, square cells.
    grid0 = traces(fig, "grid", facet=0)[0]
    yaxis = fig.layout["yaxis" + grid0.yaxis[1:]]
    assert yaxis.range[0] > yaxis.range[1]
    assert yaxis.scaleanchor == grid0.xaxis and yaxis.scaleratio == 1
    assert yaxis.title.text == "row"


def test_layer_patch_grid_hover_is_row_major(values):
    fig = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX)
    grid = traces(fig, "grid", facet=2)[0]
    assert render_hover(grid, 1, 3) == f"layer: layer 2<br>row 1, col 3 (pos {N_PREFIX + 1 * GRID[1] + 3})<br>recovery: 1.75"
    z = np.asarray(grid.z)
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            expected = f"layer: layer 2<br>row {r}, col {c} (pos {N_PREFIX + r * GRID[1] + c})<br>recovery: {z[r, c]:.4g}"
            assert render_hover(grid, r, c) == expected
    # The repeated text lives once in the template; per cell only (row, col, pos) as a small integer array.
    assert grid.hovertemplate.count("layer: layer 2") == 1
    custom = np.asarray(grid.customdata)
    assert custom.dtype == np.uint8 and custom.shape == (*GRID, 3)
    assert np.asarray(grid.z).dtype == np.float32
    strip = traces(fig, "prefix", facet=1)[0]
    assert "reg0 (pos 1)" in strip.customdata[0][1]
    assert "CLS (pos 0)" in strip.customdata[0][0] and "-2.5" in strip.customdata[0][0]


def test_layer_patch_grid_zmid_and_default_labels(values):
    fig = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, zmid=1.0)
    m = float((values - 1.0).abs().max())
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == pytest.approx((1.0 - m, 1.0 + m))
    assert [a.text for a in fig.layout.annotations] == ["layer 0", "layer 1", "layer 2"]


def test_layer_patch_grid_without_prefix_has_no_strip():
    v = torch.randn(2, 6)
    fig = layer_patch_grid(v, grid_size=(2, 3), n_prefix=0, prefix_labels=[])
    assert traces(fig, "prefix") == []
    np.testing.assert_allclose(np.asarray(traces(fig, "grid", facet=1)[0].z), v[1].reshape(2, 3).double().numpy())


def test_layer_patch_grid_image_underlay(values):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 24, 32, generator=g)  # 3 x 4 patches of 8 x 8 pixels
    fig = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, image=image)
    images = traces(fig, "image")
    assert len(images) == 3
    np.testing.assert_array_equal(decode_image_trace(images[0]), greyscale_underlay(to_uint8(image)))   # default: grey
    colour = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, image=image,
                              image_style="colour")
    np.testing.assert_array_equal(decode_image_trace(traces(colour, "image")[0]), to_uint8(image))
    grid = traces(fig, "grid", facet=0)[0]
    assert (grid.dx, grid.dy, grid.x0, grid.y0) == (8.0, 8.0, 4.0, 4.0)
    # The image is drawn first (underneath) on the same axes.
    assert fig.data.index(images[0]) < fig.data.index(grid) and images[0].xaxis == grid.xaxis
    xaxis, yaxis = fig.layout["xaxis" + grid.xaxis[1:]], fig.layout["yaxis" + grid.yaxis[1:]]
    assert list(xaxis.range) == [0, 32] and list(yaxis.range) == [24, 0]
    # Faded scale: transparent in the middle, opaque-ish at the ends; the trace itself is opaque.
    scale = fig.layout.coloraxis.colorscale
    assert scale[len(scale) // 2][1].endswith(",0)") and scale[0][1].endswith(",0.8)")
    assert grid.opacity == 1.0
    plain = layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, image=image, fade=False)
    assert traces(plain, "grid", facet=0)[0].opacity == 0.5


def test_layer_patch_grid_bad_input(values):
    with pytest.raises(ValueError, match=r"values: expected pos = .*= 14 positions.*got 13"):
        layer_patch_grid(values[:, :13], grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX)
    with pytest.raises(ValueError, match=r"prefix_labels: expected 2 labels .*got 1"):
        layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=["CLS"])
    with pytest.raises(ValueError, match=r"layer_labels: expected 3 labels .*got 2"):
        layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, layer_labels=["a", "b"])
    with pytest.raises(ValueError, match=r"image: expected pixel values in \[0, 1\]"):
        layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, image=torch.full((3, 6, 8), 2.0))
    with pytest.raises(ValueError, match=r"image: expected 1 or 3 channels.*\(4, 6, 8\)"):
        layer_patch_grid(values, grid_size=GRID, n_prefix=N_PREFIX, prefix_labels=PREFIX, image=torch.rand(4, 6, 8))


def test_head_position_facets_selection():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(3, 1 + 2 * 3, 4, generator=g)
    fig = head_position_facets(v, grid_size=(2, 3), n_prefix=1, prefix_labels=["CLS"], layers=[0, 2], heads=[1, 3])
    pairs = [(0, 1), (0, 3), (2, 1), (2, 3)]
    assert [a.text for a in fig.layout.annotations] == [f"L{l} H{h}" for l, h in pairs]
    for i, (l, h) in enumerate(pairs):
        np.testing.assert_allclose(np.asarray(traces(fig, "grid", facet=i)[0].z), v[l, 1:, h].reshape(2, 3).double().numpy())
        np.testing.assert_allclose(np.asarray(traces(fig, "prefix", facet=i)[0].z), [[float(v[l, 0, h])]])
        assert render_hover(traces(fig, "grid", facet=i)[0], 1, 2).startswith(f"layer: L{l}<br>head: H{h}<br>row 1, col 2 (pos 6)<br>")
    shown = torch.stack([v[l, :, h] for l, h in pairs])
    assert fig.layout.coloraxis.cmax == pytest.approx(float(shown.abs().max()))
    # Facet rows are layers, columns heads: the second head's facet sits right of the first.
    x0 = [fig.layout["xaxis" + traces(fig, "grid", facet=i)[0].xaxis[1:]].domain[0] for i in range(4)]
    assert x0[0] == x0[2] < x0[1] == x0[3]


def test_head_position_facets_bad_input():
    v = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"heads: expected .*indices in \[0, 3\), got \[5\]"):
        head_position_facets(v, grid_size=(2, 2), n_prefix=1, prefix_labels=["CLS"], heads=[5])
    with pytest.raises(ValueError, match=r"max_facets=4 facets, got 2 layers x 3 heads = 6"):
        head_position_facets(v, grid_size=(2, 2), n_prefix=1, prefix_labels=["CLS"], max_facets=4)
    with pytest.raises(ValueError, match=r"head_labels: expected 3 labels"):
        head_position_facets(v, grid_size=(2, 2), n_prefix=1, prefix_labels=["CLS"], head_labels=["a"])


def test_layer_head_grid():
    v = torch.arange(12.0).reshape(3, 4) - 5
    fig = layer_head_grid(v, layer_labels=["a", "b", "c"], value_label="effect")
    (grid,) = traces(fig, "grid")
    np.testing.assert_allclose(np.asarray(grid.z), v.double().numpy())
    assert list(fig.layout.yaxis.ticktext) == ["a", "b", "c"]
    assert list(fig.layout.xaxis.ticktext) == ["H0", "H1", "H2", "H3"]
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert grid.customdata[2][1] == "layer: c<br>head: H1<br>effect: 4"
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-6.0, 6.0)
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]
    with pytest.raises(ValueError, match=r"head_labels: expected 4 labels \(one per head\), got 3"):
        layer_head_grid(v, head_labels=["x", "y", "z"])


def test_path_patching_heatmap():
    v = torch.tensor([[0.1, -0.4, 0.2], [0.3, 0.0, -0.05]])
    fig = path_patching_heatmap(v, ["L0H1", "L1H0"], ["L2H0", "L2H1", "logits"], title="paths")
    (grid,) = traces(fig, "grid")
    np.testing.assert_allclose(np.asarray(grid.z), v.double().numpy())
    assert list(fig.layout.yaxis.ticktext) == ["L0H1", "L1H0"]
    assert list(fig.layout.xaxis.ticktext) == ["L2H0", "L2H1", "logits"]
    assert (fig.layout.yaxis.title.text, fig.layout.xaxis.title.text) == ("sender", "receiver")
    assert "sender: L0H1<br>receiver: L2H1" in grid.customdata[0][1]
    assert fig.layout.coloraxis.cmax == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"receiver_labels: expected 3 labels \(one per receiver\), got 2"):
        path_patching_heatmap(v, ["a", "b"], ["c", "d"])


def test_rank_errors_name_the_argument():
    # Under the test suite's jaxtyping hook the annotation rejects the shape first (a TypeError naming the
    # parameter); without the hook the function's own check raises ValueError with expected/given.
    with pytest.raises(TypeError, match="values"):
        layer_head_grid(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"values: expected a 2-D array \[layer head\], got shape \(2, 3, 4\)"):
        layer_head_grid.__wrapped__(torch.zeros(2, 3, 4))


def test_numpy_input_is_accepted():
    v = np.linspace(-1, 1, 2 * 5).reshape(2, 5)
    fig = layer_patch_grid(v, grid_size=(2, 2), n_prefix=1, prefix_labels=["CLS"])
    np.testing.assert_allclose(np.asarray(traces(fig, "grid", facet=1)[0].z), v[1, 1:].reshape(2, 2))

"""attention_figure: each facet draws one query row of the cached pattern, patch keys as the grid, prefix keys above."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plot_test_helpers import decode_image_trace, traces

import vit_patching as vp
from vit_patching.plotting import attention_figure


@pytest.fixture(scope="module")
def run():
    model = vp.load_model("toy-conjunction")  # 4 register tokens, no CLS: prefix handling is not a lone CLS
    data = vp.load_dataset("conjunction", n=2, seed=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(data.images)
    return model, data, cache


def test_facets_are_the_query_rows_of_the_pattern(run):
    model, data, cache = run
    layout = model.layout
    q = layout.pos(2, 5)
    fig = attention_figure(cache, 1, query=(2, 5), batch=1, heads=[3, 0], image=data.pixels[1])
    pattern = cache["blocks.1.attn.hook_pattern"][1, :, q, :]  # [head, k_pos]
    assert [a.text for a in fig.layout.annotations] == ["L1 H3", "L1 H0"]
    for i, h in enumerate([3, 0]):
        (grid,) = traces(fig, "grid", facet=i)
        (strip,) = traces(fig, "prefix", facet=i)
        np.testing.assert_allclose(np.asarray(grid.z), layout.to_grid(pattern[h]).numpy(), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(strip.z)[0], pattern[h, : layout.n_prefix].numpy(), rtol=1e-6)
        assert list(strip.text[0]) == ["REG0", "REG1", "REG2", "REG3"]
        (mark,) = traces(fig, "query", facet=i)  # the query patch's cell centre, on this facet's grid axes
        assert (mark.xaxis, mark.yaxis) == (grid.xaxis, grid.yaxis)
        assert (mark.x[0], mark.y[0]) == (grid.x0 + 5 * grid.dx, grid.y0 + 2 * grid.dy)
    assert len(traces(fig, "image")) == 2
    # The picture is drawn in grey (BT.601 luma lifted to [64, 255], the underlay of every map figure), so no
    # image colour can be read as a value of the scale.
    drawn = decode_image_trace(traces(fig, "image")[0]).astype(float)
    rgb8 = np.round(np.clip(data.pixels[1].numpy().astype(np.float64), 0, 1) * 255)        # the 8-bit picture
    luma = 0.299 * rgb8[0] + 0.587 * rgb8[1] + 0.114 * rgb8[2]
    assert np.array_equal(drawn[..., 0], drawn[..., 1]) and np.array_equal(drawn[..., 0], drawn[..., 2])
    assert np.array_equal(drawn[..., 0], np.round(64 + 0.75 * luma))
    axis = fig.layout.coloraxis
    assert axis.cmin == 0.0 and axis.cmax == pytest.approx(float(pattern[[3, 0]].max()), rel=1e-6)
    assert axis.colorbar.title.text == "attention weight"
    assert axis.colorscale[0][1].endswith(",0)")  # zero weight is transparent over the image
    assert fig.layout.title.text == f"Attention of query P(2,5) (pos {q}) in block 1"


def test_prefix_query_and_negative_layer(run):
    model, _, cache = run
    fig = attention_figure(cache, -1, query=2)
    pattern = cache["blocks.3.attn.hook_pattern"][0, :, 2, :]
    assert len(fig.layout.annotations) == 4 and fig.layout.annotations[0].text == "L3 H0"
    np.testing.assert_allclose(np.asarray(traces(fig, "grid", facet=2)[0].z),
                               model.layout.to_grid(pattern[2]).numpy(), rtol=1e-6, atol=1e-8)
    mark = traces(fig, "query", facet=0)[0]
    strip = traces(fig, "prefix", facet=0)[0]
    assert (mark.xaxis, mark.x[0], mark.y[0]) == (strip.xaxis, 2, 0)
    assert fig.layout.coloraxis.colorscale[0][1] == "#440154"  # no image: plain Viridis


@pytest.mark.parametrize("kwargs, match", [
    (dict(layer=4), r"layer: expected a block index in \[-4, 4\), got 4"),
    (dict(layer=0, query=(8, 0)), r"query: expected a token position in \[0, 68\) or a \(row, col\) patch in the 8x8 grid, got \(8, 0\)"),
    (dict(layer=0, query=-1), r"query: .* got -1"),
    (dict(layer=0, batch=2), r"batch: expected an image index in \[0, 2\), got 2"),
    (dict(layer=0, heads=[4]), r"heads: expected head indices in \[0, 4\)"),
    (dict(layer=0, max_alpha=1.5), r"max_alpha: .*got 1.5"),
    (dict(layer=0, facet_px=0), r"facet_px: expected a positive int.*got 0"),
])
def test_bad_arguments_are_named(run, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention_figure(run[2], **kwargs)


def test_missing_pattern_is_named(run):
    model, data, _ = run
    with torch.no_grad():
        _, cache = model.run_with_cache(data.images, names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match="blocks.0.attn.hook_pattern"):
        attention_figure(cache, 0)

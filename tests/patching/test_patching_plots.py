"""PatchingResult.plot: plotted values, axes and labels equal the result; HTML renders, PNG exports."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patch_toys import metric, pair, tiny
from vit_patching.patching import layer_sweep, patch_heads, path_patch
from vit_patching.patching._plot import MIN_GRID_WIDTH_PX, MODEBAR_PX, NAN_COLOR
from vit_patching.plotting import save_png, screenshot_html


def _traces(fig, kind):
    return [t for t in fig.data if (t.meta or {}).get("kind") == kind]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


@pytest.fixture(scope="module")
def model():
    return tiny(depth=2, reg_tokens=1)  # CLS + REG0: a two-token prefix strip


@pytest.fixture(scope="module")
def sweep(model):
    clean, corrupted = pair(batch=1)
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return layer_sweep(model, clean, corrupted, metric(torch.tensor([3])), sites=("resid_pre", "mlp_out"),
                       progress=False, pixels=pixels)


def test_layer_grid_facets_equal_the_result(model, sweep):
    fig = sweep.plot()
    grids, prefixes = _traces(fig, "grid"), _traces(fig, "prefix")
    assert len(grids) == len(prefixes) == 2 * 2 and len(_traces(fig, "image")) == 4  # batch of one: underlay
    mean = sweep.mean()
    for f, (s, l) in enumerate([(s, l) for s in range(2) for l in range(2)]):
        np.testing.assert_allclose(grids[f].z, _np(model.layout.to_grid(mean[s, l])), equal_nan=True)
        np.testing.assert_allclose(prefixes[f].z, _np(mean[s, l, :2])[None], equal_nan=True)
        assert list(prefixes[f].text[0]) == ["CLS", "REG0"]
    assert [a.text for a in fig.layout.annotations][:4] == ["resid_pre L0", "resid_pre L1", "mlp_out L0", "mlp_out L1"]
    raw = sweep.plot(site="mlp_out", normalized=False, underlay=False)
    assert not _traces(raw, "image") and raw.layout.coloraxis.colorbar.title.text == sweep.metric
    np.testing.assert_allclose(_traces(raw, "grid")[1].z, _np(model.layout.to_grid(sweep.values[1, 1, :, 0])))


def test_layer_grid_of_a_position_subset_is_nan_elsewhere(model):
    clean, corrupted = pair(batch=2)
    res = layer_sweep(model, clean, corrupted, metric(), sites="attn_out", layers=[1], positions=[1, 4, 9],
                      progress=False)
    fig = res.plot(image=1)
    full = torch.full((model.layout.n_pos,), float("nan"))
    full[[1, 4, 9]] = res.normalized[0, 0, :, 1]
    np.testing.assert_allclose(_traces(fig, "grid")[0].z, _np(model.layout.to_grid(full)), equal_nan=True)
    np.testing.assert_allclose(_traces(fig, "prefix")[0].z, _np(full[:2])[None], equal_nan=True)
    with pytest.raises(ValueError, match=r"image must be an image index in \[0, 2\), got 2"):
        res.plot(image=2)
    with pytest.raises(ValueError, match=r"site must be one of \['attn_out'\], got 'z'"):
        res.plot(site="z")
    with pytest.raises(ValueError, match=r"kind='path' needs a result with axes \('sender', 'receiver'\)"):
        res.plot(kind="path")


def test_head_figures_equal_the_result(model):
    clean, corrupted = pair(batch=2)
    heads = patch_heads(model, clean, corrupted, metric(), sites=("z", "v"), progress=False)
    fig = heads.plot()
    np.testing.assert_allclose(fig.data[0].z, _np(heads.mean().flatten(0, 1)), equal_nan=True)
    assert list(fig.layout.yaxis.ticktext) == ["z L0", "z L1", "v L0", "v L1"]
    one = heads.plot(site="v")
    np.testing.assert_allclose(one.data[0].z, _np(heads.mean()[1]), equal_nan=True)
    assert list(one.layout.yaxis.ticktext) == ["L0", "L1"]

    by_pos = patch_heads(model, clean, corrupted, metric(), sites=("z", "pattern"), by_pos=True, progress=False)
    with pytest.raises(ValueError, match=r"kind='head_facets' shows one site; pass site="):
        by_pos.plot()
    facets = by_pos.plot(site="pattern")
    grids = _traces(facets, "grid")
    assert [a.text for a in facets.layout.annotations][:4] == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]
    mean = by_pos.mean()[1]  # [layer, pos, head]
    for f, (l, h) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_allclose(grids[f].z, _np(model.layout.to_grid(mean[l, :, h])), equal_nan=True)


def test_path_figures_equal_the_result(model):
    clean, corrupted = pair(batch=2)
    res = path_patch(model, clean, corrupted, metric(), receivers=["logits", "L1H0.q"], progress=False)
    fig = res.plot()
    np.testing.assert_allclose(fig.data[0].z, _np(res.mean()), equal_nan=True)
    assert list(fig.layout.yaxis.ticktext) == res.labels["sender"]
    assert list(fig.layout.xaxis.ticktext) == ["logits", "L1H0.q"]
    grid = res.plot(kind="layer_head", receiver=1)
    want = torch.stack([res.mean()[[1, 2], 1], res.mean()[[4, 5], 1]])  # L0H0, L0H1 / L1H0, L1H1
    np.testing.assert_allclose(grid.data[0].z, _np(want), equal_nan=True)
    assert "L1H0.q" in grid.layout.title.text


def test_html_renders_in_headless_chromium_and_png_exports(tmp_path, sweep):
    html = sweep.save_html(tmp_path / "sweep.html", site="resid_pre")
    assert "resid_pre L0" not in html.read_text(encoding="utf-8") and "layer_sweep" in html.read_text(encoding="utf-8")
    shot = screenshot_html(html, tmp_path / "shot.png", width=700, height=500)
    png = save_png(sweep.plot(), tmp_path / "sweep.png")
    for path in (shot, png):
        with Image.open(path) as im:
            px = np.asarray(im.convert("RGB")).astype(float)
        saturation = px.max(-1) - px.min(-1)
        # the image was drawn (contrast), and coloured cells over it: the image underneath is greyscale, so every
        # saturated pixel is a map cell (1.8 % of the page for this sweep's few strong cells)
        assert px.std() > 20 and (saturation > 60).mean() > 0.01


def test_figures_clear_the_modebar_are_wide_enough_and_show_nan_apart_from_zero(model):
    """The head grid's title used to sit under Plotly's modebar and be cut off ('head_patch (denoising, lo'), the
    2x2 grid was ~300 px wide, and NaN cells were white like zero on the diverging scale."""
    clean, corrupted = pair(batch=2)
    heads = patch_heads(model, clean, corrupted, "logit_diff", sites="z", progress=False)
    path = path_patch(model, clean, corrupted, metric(), receivers=["logits", "L1H0.q"], progress=False)
    sweep = layer_sweep(model, clean, corrupted, metric(), sites="resid_pre", positions=[0, 3], progress=False)
    by_pos = patch_heads(model, clean, corrupted, metric(), sites="z", by_pos=True, layers=[1], progress=False)
    figs = {"layer_head": heads.plot(), "path": path.plot(), "path_grid": path.plot(kind="layer_head", receiver=1),
            "layer_grid": sweep.plot(), "head_facets": by_pos.plot()}
    for kind, fig in figs.items():
        lay = fig.layout
        assert lay.title.pad.t >= MODEBAR_PX and lay.margin.t >= lay.title.pad.t + 20, kind  # title below it
        assert lay.width >= 7.5 * len(lay.title.text) + lay.margin.l, kind  # the whole title fits
        assert lay.plot_bgcolor == NAN_COLOR, kind  # NaN cells are transparent: grey shows, not white
    for kind in ("layer_head", "path", "path_grid"):
        assert figs[kind].layout.width >= MIN_GRID_WIDTH_PX, kind
    assert "grey: NaN" not in by_pos.plot(normalized=False).layout.coloraxis.colorbar.title.text  # no NaN: no note
    for kind in ("path", "path_grid", "layer_grid"):  # these hold NaN cells (not upstream / not swept)
        assert "grey: NaN" in figs[kind].layout.coloraxis.colorbar.title.text, kind
    # A 2-layer x 2-head grid gets the largest cells (80 px, the plotting default was 40), not just a wider margin.
    lay = figs["layer_head"].layout
    assert lay.width - lay.margin.l - lay.margin.r == 2 * 80 and lay.height - lay.margin.t - lay.margin.b == 2 * 80

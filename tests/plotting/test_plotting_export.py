"""Offline export: inline plotly.js HTML, headless Chromium screenshots, PNG through kaleido and fallback."""
from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import vit_patching.plotting.export as export
from vit_patching.plotting import layer_patch_grid, save_html, save_png, screenshot_html


@pytest.fixture(scope="module")
def fig() -> go.Figure:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 32, generator=g)
    return layer_patch_grid(torch.randn(2, 1 + 4 * 4, generator=g), grid_size=(4, 4), n_prefix=1,
                            prefix_labels=["CLS"], image=image, title="export test")


def _not_blank(path, size) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        px = np.asarray(im.convert("RGB")).astype(float)
    assert px.std() > 20  # a blank or single-colour page has (almost) no spread
    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 200
    saturation = px.max(-1) - px.min(-1)
    assert (saturation > 60).mean() > 0.05  # the coloured heatmaps/image rendered, not just text
    return px


def test_save_html_embeds_plotlyjs(tmp_path, fig):
    path = save_html(fig, tmp_path / "sub" / "fig.html")
    text = path.read_text(encoding="utf-8")
    # (plotly.js itself mentions cdn.plot.ly as the default topojson URL for maps; no script loads from it)
    assert 'src="https://cdn.plot.ly' not in text
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert len(text) > 1_000_000 and "export test" in text  # plotly.js (~4.5 MB) is inline


def test_save_html_directory_and_refused_modes(tmp_path, fig):
    path = save_html(fig, tmp_path / "fig.html", include_plotlyjs="directory")
    assert (tmp_path / "plotly.min.js").is_file()
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in path.read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=r"include_plotlyjs: expected True or 'directory' \(offline\), got 'cdn'"):
        save_html(fig, tmp_path / "cdn.html", include_plotlyjs="cdn")


def test_screenshot_html_renders_the_figure(tmp_path, fig):
    html = save_html(fig, tmp_path / "fig.html")
    png = screenshot_html(html, tmp_path / "shot.png", width=640, height=480)
    _not_blank(png, (640, 480))


def test_save_png_with_kaleido_has_requested_size(tmp_path, fig):
    path = save_png(fig, tmp_path / "fig.png", width=500, height=400, scale=2, engine="kaleido")
    _not_blank(path, (1000, 800))


def test_save_png_falls_back_to_chromium(tmp_path, fig, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kaleido unavailable")

    monkeypatch.setattr(export, "_png_with_kaleido", broken)
    path = save_png(fig, tmp_path / "fallback.png")  # default size: the figure's own
    _not_blank(path, (fig.layout.width, fig.layout.height))
    with pytest.raises(RuntimeError, match="kaleido PNG export failed"):
        save_png(fig, tmp_path / "strict.png", engine="kaleido")


def test_missing_chromium_says_how_to_install(tmp_path, monkeypatch, fig):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apt-get install -y chromium"):
        save_png(fig, tmp_path / "x.png")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"BROWSER_PATH: expected an executable Chromium, got .*nope"):
        export.find_chromium()
    with pytest.raises(FileNotFoundError, match=r"browser_path: expected an executable Chromium"):
        export.find_chromium(tmp_path / "other")

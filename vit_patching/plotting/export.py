"""Offline export: self-contained HTML, PNG through kaleido 1.x (or headless Chromium directly).

Nothing here needs the network. HTML embeds plotly.js (never a CDN link). PNG export drives a local
Chromium: kaleido 1.x is pointed at it explicitly, with MathJax disabled and plotly.js loaded from the
copy bundled in the ``plotly`` package (kaleido's defaults fetch both from CDNs). If kaleido is missing or
fails, the figure is written to a temporary HTML file and screenshotted by headless Chromium.

The browser is found, in order, from the ``browser_path`` argument, the ``BROWSER_PATH`` environment
variable (the variable kaleido/choreographer also honour), then ``chromium``/``chromium-browser``/
``google-chrome`` on ``PATH``. On Debian/Ubuntu: ``apt-get install -y chromium``.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal, Union

import plotly
import plotly.graph_objects as go
from PIL import Image

from vit_patching.files import atomic_write_bytes, atomic_write_text
from vit_patching.plotting._common import Number

__all__ = ["CHROMIUM_FLAGS", "find_chromium", "save_html", "save_png", "screenshot_html"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # needed when running as root (containers, CI)
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--hide-scrollbars",
    "--mute-audio",
)
"""Flags used for every headless Chromium run: offline, no sandbox (root), no GPU, no background work."""

_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian/Ubuntu) or set BROWSER_PATH"


def find_chromium(browser_path: PathLike | None = None) -> Path:
    """Locate a Chromium/Chrome executable for PNG export.

    Args:
        browser_path: explicit executable; else ``$BROWSER_PATH``; else the first of ``chromium``,
            ``chromium-browser``, ``google-chrome`` ... on ``PATH``.

    Raises:
        FileNotFoundError: if no browser is found (the message says how to install one).

    Example:
        >>> find_chromium().is_file()
        True
    """
    for source, candidate in (("browser_path", browser_path), ("BROWSER_PATH", os.environ.get("BROWSER_PATH"))):
        if candidate:
            path = Path(candidate)
            if path.is_file() and os.access(path, os.X_OK):
                return path
            raise FileNotFoundError(f"{source}: expected an executable Chromium, got {str(candidate)!r}; {_INSTALL_HINT}")
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise FileNotFoundError(f"No Chromium/Chrome found on PATH (looked for {list(_BROWSER_NAMES)}); {_INSTALL_HINT}")


def save_html(fig: go.Figure, path: PathLike, include_plotlyjs: Union[bool, str] = True) -> Path:
    """Write ``fig`` as a standalone HTML file that works offline.

    Args:
        fig: the figure.
        path: output file (parent directories are created).
        include_plotlyjs: ``True`` embeds plotly.js in the file (~4.5 MB); ``"directory"`` writes
            ``plotly.min.js`` next to it and references it. CDN links are refused: they break offline.

    Returns:
        The path written.

    Raises:
        ValueError: for any other ``include_plotlyjs`` (e.g. ``"cdn"``).

    Example:
        >>> import pathlib, tempfile
        >>> import plotly.graph_objects as go
        >>> path = save_html(go.Figure(go.Scatter(y=[1, 3, 2])), pathlib.Path(tempfile.mkdtemp()) / "fig.html")
        >>> path.stat().st_size > 1_000_000, "<script src=" in path.read_text()  # plotly.js inside: works offline
        (True, False)
    """
    if include_plotlyjs is not True and include_plotlyjs != "directory":
        raise ValueError(f"include_plotlyjs: expected True or 'directory' (offline), got {include_plotlyjs!r}")
    path = Path(path)
    page = fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True, config={"displaylogo": False})
    if include_plotlyjs == "directory":
        bundle = path.parent / "plotly.min.js"
        if not bundle.exists():
            atomic_write_bytes(bundle, _plotly_js_path().read_bytes())
    return atomic_write_text(path, page)  # a failed write leaves an existing file intact


def _plotly_js_path() -> Path:
    """The plotly.min.js shipped inside the plotly package (what ``include_plotlyjs=True`` embeds)."""
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _static_page(fig: go.Figure, width: int, height: int) -> str:
    """A bare HTML page (no margins, no mode bar, plotly.js inline) showing ``fig`` at width x height."""
    sized = go.Figure(fig).update_layout(width=width, height=height)
    div = sized.to_html(full_html=False, include_plotlyjs=True, config={"displayModeBar": False, "staticPlot": True})
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        "<style>html,body{margin:0;padding:0;background:white;overflow:hidden}</style></head>"
        f"<body>{div}</body></html>"
    )


def screenshot_html(
    html_path: PathLike,
    png_path: PathLike,
    width: int = 1000,
    height: int = 800,
    *,
    scale: Number = 1.0,
    browser_path: PathLike | None = None,
    time_budget_ms: int = 5000,
    timeout_s: Number = 60.0,
) -> Path:
    """Screenshot an HTML file with headless Chromium (no network needed for self-contained HTML).

    Runs ``chromium --headless --screenshot`` with `CHROMIUM_FLAGS`, a throwaway ``--user-data-dir``
    and ``--virtual-time-budget`` so scripts (plotly.js) finish rendering before the capture.

    Args:
        html_path: the page to render.
        png_path: output PNG (``width * scale`` x ``height * scale`` pixels).
        width, height: browser window size in CSS pixels.
        scale: device scale factor (2 for a sharper image).
        browser_path: Chromium executable (see `find_chromium`).
        time_budget_ms: virtual time the page gets to render.
        timeout_s: wall-clock limit for the browser process.

    Returns:
        The PNG path.

    Raises:
        FileNotFoundError: if ``html_path`` or Chromium is missing.
        RuntimeError: if Chromium fails or writes no image.

    Example:
        >>> import pathlib, tempfile
        >>> html = pathlib.Path(tempfile.mkdtemp()) / "page.html"
        >>> _ = html.write_text("<html><body style='background:#ff0000'></body></html>")
        >>> with Image.open(screenshot_html(html, html.with_suffix(".png"), 320, 200)) as im:
        ...     im.size, im.convert("RGB").getpixel((160, 100))
        ((320, 200), (255, 0, 0))
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"html_path: expected an existing HTML file, got {str(html_path)!r}")
    png_path = Path(png_path).resolve()
    chromium = find_chromium(browser_path)
    # Chromium writes into a fresh temporary folder (a stale file can never pass for a fresh screenshot); the
    # result then replaces png_path atomically, so a failed run leaves an existing PNG intact.
    with tempfile.TemporaryDirectory(prefix="vit_patching_chromium_") as profile:
        shot = Path(profile) / "screenshot.png"
        cmd = [
            str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={Path(profile) / 'profile'}",
            f"--window-size={int(width)},{int(height)}", f"--force-device-scale-factor={scale}",
            f"--virtual-time-budget={int(time_budget_ms)}", f"--screenshot={shot}", html_path.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"Chromium did not finish within timeout_s={timeout_s}: {' '.join(cmd)}") from e
        if proc.returncode != 0 or not shot.is_file():
            tail = (proc.stderr or "")[-2000:]
            raise RuntimeError(f"Chromium screenshot failed (exit code {proc.returncode}): {' '.join(cmd)}\n{tail}")
        atomic_write_bytes(png_path, shot.read_bytes())
    return png_path


def _png_with_kaleido(fig: go.Figure, width: int, height: int, scale: Number, chromium: Path, timeout_s: Number) -> bytes:
    import kaleido  # optional dependency (extra "export")

    return kaleido.calc_fig_sync(
        fig.to_dict(),
        opts=dict(format="png", width=width, height=height, scale=scale),
        # Everything local: the given browser, plotly.js from the plotly package, no MathJax (CDN).
        kopts=dict(path=str(chromium), mathjax=False, plotlyjs=str(_plotly_js_path()), timeout=timeout_s),
    )


def save_png(
    fig: go.Figure,
    path: PathLike,
    width: int | None = None,
    height: int | None = None,
    scale: Number = 1.0,
    *,
    engine: Literal["auto", "kaleido", "chromium"] = "auto",
    browser_path: PathLike | None = None,
    timeout_s: Number = 60.0,
) -> Path:
    """Write ``fig`` as a PNG, offline, with a local Chromium.

    Args:
        fig: the figure.
        path: output file (parent directories are created).
        width, height: size in layout pixels (default: the figure's own size, else 900 x 600).
        scale: resolution multiplier; the PNG is ``width * scale`` x ``height * scale`` pixels.
        engine: ``"kaleido"`` (kaleido 1.x driving the browser), ``"chromium"`` (screenshot of a
            temporary HTML page) or ``"auto"`` (kaleido, falling back to chromium if it is missing or fails).
        browser_path: Chromium executable (see `find_chromium`).
        timeout_s: limit for one export.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: if no Chromium is found.
        RuntimeError: if the export fails.

    Example:
        >>> import pathlib, tempfile
        >>> import plotly.graph_objects as go
        >>> png = save_png(go.Figure(go.Bar(y=[1, 2])), pathlib.Path(tempfile.mkdtemp()) / "bar.png", 400, 300)
        >>> with Image.open(png) as im:
        ...     im.size
        (400, 300)
    """
    if engine not in ("auto", "kaleido", "chromium"):
        raise ValueError(f"engine: expected 'auto', 'kaleido' or 'chromium', got {engine!r}")
    width = int(width or fig.layout.width or 900)
    height = int(height or fig.layout.height or 600)
    path = Path(path)
    chromium = find_chromium(browser_path)
    if engine in ("auto", "kaleido"):
        try:
            png = _png_with_kaleido(fig, width, height, scale, chromium, timeout_s)
        except Exception as e:  # noqa: BLE001 - any kaleido failure falls back to plain Chromium in "auto"
            if engine == "kaleido":
                raise RuntimeError(f"kaleido PNG export failed with browser {chromium}: {e!r}") from e
            logger.warning("kaleido PNG export failed (%r); falling back to a Chromium screenshot", e)
        else:
            return atomic_write_bytes(path, png)  # a failed write leaves an existing file intact
    with tempfile.TemporaryDirectory(prefix="vit_patching_png_") as tmp:
        html = Path(tmp) / "figure.html"
        html.write_text(_static_page(fig, width, height), encoding="utf-8")
        shot = screenshot_html(html, Path(tmp) / "figure.png", width, height, scale=scale, browser_path=chromium,
                               timeout_s=timeout_s)
        with Image.open(shot) as im:  # the window can be clipped by the OS; make the size contract hold
            want = (round(width * scale), round(height * scale))
            if im.size != want:
                raise RuntimeError(f"Chromium screenshot has size {im.size}, expected {want}")
        return atomic_write_bytes(path, shot.read_bytes())

"""Shared helpers for the figure functions: array conversion, argument checks, image handling.

Every figure function takes torch tensors or numpy arrays; they are converted once, here, to float64
numpy arrays so the plotting code never touches autograd or devices.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import torch
from jaxtyping import Float

ArrayLike = Union[torch.Tensor, np.ndarray]
"""What the figure functions accept for values: a torch tensor (any device) or a numpy array."""

Number = Union[int, float]
"""A plain number (beartype does not treat int as float)."""

# Plotly's default qualitative palette, repeated here so curves and markers agree across figures.
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)


def to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a float64 numpy array (detached, on CPU); ``name`` is used in errors."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float64)
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def check_ndim(x: np.ndarray, ndim: int, name: str, axes: str) -> None:
    """Raise ValueError unless ``x`` has ``ndim`` dimensions (``axes`` names them, for the message)."""
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array [{axes}], got shape {tuple(x.shape)}")


def check_labels(labels: Sequence[str] | None, n: int, name: str, what: str) -> None:
    """Raise ValueError unless ``labels`` is None or holds exactly ``n`` strings (one per ``what``)."""
    if labels is not None and len(labels) != n:
        raise ValueError(f"{name}: expected {n} labels (one per {what}), got {len(labels)}")


def labels_or_default(labels: Sequence[str] | None, n: int, name: str, what: str, prefix: str) -> list[str]:
    """Check ``labels`` against ``n`` and fall back to ``f"{prefix}{i}"``."""
    check_labels(labels, n, name, what)
    return [str(s) for s in labels] if labels is not None else [f"{prefix}{i}" for i in range(n)]


def check_grid(n_pos: int, grid_size: tuple[int, int], n_prefix: int, name: str) -> None:
    """Raise ValueError unless ``n_pos == n_prefix + grid_h * grid_w``."""
    grid_h, grid_w = grid_size
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid_size: expected two positive ints (grid_h, grid_w), got {grid_size}")
    if n_prefix < 0:
        raise ValueError(f"n_prefix: expected >= 0, got {n_prefix}")
    if n_pos != n_prefix + grid_h * grid_w:
        raise ValueError(
            f"{name}: expected pos = n_prefix + grid_h * grid_w = {n_prefix} + {grid_h} * {grid_w} = "
            f"{n_prefix + grid_h * grid_w} positions for grid_size={grid_size}, n_prefix={n_prefix}; "
            f"got {n_pos}"
        )


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def image_to_rgb(image: Float[ArrayLike, "channel height width"], name: str = "image") -> np.ndarray:
    """Convert a [channel, height, width] image in [0, 1] (1 or 3 channels) to a uint8 [height, width, 3] array.

    Raises:
        ValueError: if the channel count is not 1 or 3, or values fall outside [0, 1].
    """
    arr = to_numpy(image, name)
    check_ndim(arr, 3, name, "channel height width")
    if arr.shape[0] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels [channel height width], got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite pixel values in [0, 1], got NaN or inf")
    lo, hi = float(arr.min()), float(arr.max())
    # A small tolerance: images that went through normalise/denormalise round trips land a hair outside.
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"{name}: expected pixel values in [0, 1] (undo the model's normalisation first), "
            f"got range [{lo:.3g}, {hi:.3g}]"
        )
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)


ImageStyle = Literal["grey", "colour"]
IMAGE_STYLES = ("grey", "colour")


def greyscale_underlay(rgb: np.ndarray) -> np.ndarray:
    """The image as a light greyscale ``[height, width, 3]`` uint8 array, to draw under a red/blue map.

    A diverging map drawn over a colour image reads as the image's own red or blue objects; without colour
    under it, every hue in the figure is the map's. Luminance uses ITU-R BT.601 weights
    (``0.299 R + 0.587 G + 0.114 B``) and is lifted to ``[64, 255]`` (``64 + 0.75 * lum``) so that dark
    map colours stay visible over dark pixels.

    Example:
        >>> greyscale_underlay(np.array([[[255, 0, 0], [0, 0, 0]]], dtype=np.uint8))[0, :, 0].tolist()
        [121, 64]
    """
    lum = rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    grey = np.round(64 + 0.75 * lum).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def underlay_rgb(image: ArrayLike, image_style: str = "grey", name: str = "image") -> np.ndarray:
    """The checked image as drawn under a map: greyscale (``"grey"``, see `greyscale_underlay`) or as it is
    (``"colour"``); uint8 ``[height, width, 3]``."""
    check_choice(image_style, IMAGE_STYLES, "image_style")
    rgb = image_to_rgb(image, name)
    return greyscale_underlay(rgb) if image_style == "grey" else rgb


def esc(text: object) -> str:
    """A caller's string as Plotly text: ``<``, ``>`` and ``&`` escaped, so that Plotly's HTML-like markup
    (``<a href>``, ``<b>``, ``<br>``) in a label, a title or a file name is shown, never rendered.

    Every figure function passes each caller string through this once, at the point where it becomes text.
    """
    return html.escape(str(text), quote=True)


def template_safe(markup: str) -> str:
    """Already-escaped markup made safe inside a ``hovertemplate``: ``%{`` becomes ``%&#123;`` (shown as ``%{``),
    so that text from a caller is never read as a placeholder."""
    return markup.replace("%{", "%&#123;")


def hover_safe(text: object) -> str:
    """:func:`esc`, and ``%{`` neutralised (:func:`template_safe`): a caller string in a ``hovertemplate`` is shown
    as text, never as markup or a placeholder."""
    return template_safe(esc(text))


def fmt(v: float) -> str:
    """Format a value for hover text: 4 significant digits, NaN spelled out."""
    return "NaN" if math.isnan(v) else f"{v:.4g}"


def axis_ref(k: int) -> tuple[str, str]:
    """Trace axis references ('x', 'y') for axis pair number ``k`` (1-based, Plotly's numbering)."""
    return ("x", "y") if k == 1 else (f"x{k}", f"y{k}")


def layout_key(ref: str) -> str:
    """Layout key for an axis reference: 'x' -> 'xaxis', 'y3' -> 'yaxis3'."""
    return f"{ref[0]}axis{ref[1:]}"


def hex_to_rgba(color: str, alpha: Number) -> str:
    """'#RRGGBB' -> 'rgba(r,g,b,alpha)' (for translucent bands in the colour of a line)."""
    c = color.lstrip("#")
    r, g, b = (int(c[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"

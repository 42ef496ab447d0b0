"""Trace builders shared by the figure modules: image underlays and cell-grid heatmaps."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from vit_patching.plotting._common import Number, esc, fmt, hover_safe, template_safe
from vit_patching.plotting._facets import TICK_FONT, figure_title, top_margin
from vit_patching.plotting.colors import diverging_coloraxis

Z_FORMAT = ".4~g"
"""d3-format of a hovered value: 4 significant digits, trailing zeros trimmed (like Python's ``.4g``)."""


def png_data_uri(rgb: np.ndarray) -> str:
    """Encode a uint8 [height, width, 3] array as a PNG data URI (compact in HTML, unlike a z array)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_trace(rgb: np.ndarray, axes: tuple[str, str], name: str = "image") -> go.Image:
    """An image underlay in pixel coordinates: pixel (i, j) covers x in [j, j+1], y in [i, i+1]."""
    return go.Image(
        source=png_data_uri(rgb), x0=0.5, y0=0.5, dx=1, dy=1, xaxis=axes[0], yaxis=axes[1],
        hoverinfo="skip", name=esc(name), meta=dict(kind="image"),
    )


@dataclass(frozen=True)
class CellHover:
    """The hover of a cell heatmap: one ``hovertemplate`` for the whole trace and its per-cell ``customdata``.

    The repeated text (header, value label) lives once in the template; ``customdata`` holds only what differs
    per cell (numbers where possible), so that large grids stay small in the exported figure.
    """

    template: str
    customdata: np.ndarray | list | None = None


def index_array(*planes: np.ndarray) -> np.ndarray:
    """Stack non-negative integer [rows, cols] planes into [rows, cols, n] in the smallest unsigned dtype
    (Plotly serialises it as a compact typed array)."""
    stacked = np.stack(planes, axis=-1)
    top = int(stacked.max(initial=0))
    dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    return stacked.astype(dtype)


def grid_hover(grid: np.ndarray, header: str, value_label: str, pos_offset: int | None) -> CellHover:
    """Hover for a [rows, cols] grid: header (markup, its caller strings escaped by the caller), row, col,
    token position ``pos_offset + r * cols + c`` (if given) and value (``value_label`` is escaped here).

    Renders as ``"{header}<br>row r, col c (pos p)<br>{value_label}: {value}"``; ``customdata[r][c]`` is
    ``[r, c]`` or ``[r, c, p]`` and the value is the cell's ``z`` (a NaN cell reads ``NaN``, the trace's
    ``hovertemplatefallback``, see :func:`cell_heatmap`).
    """
    rows, cols = grid.shape
    r, c = np.indices((rows, cols))
    where = "row %{customdata[0]}, col %{customdata[1]}"
    planes = [r, c]
    if pos_offset is not None:
        where += " (pos %{customdata[2]})"
        planes.append(pos_offset + r * cols + c)
    head = f"{template_safe(header)}<br>" if header else ""
    template = f"{head}{where}<br>{hover_safe(value_label)}: %{{z:{Z_FORMAT}}}<extra></extra>"
    return CellHover(template, index_array(*planes))


def cell_heatmap(
    grid: np.ndarray,
    axes: tuple[str, str],
    *,
    cell: tuple[float, float],
    hover: CellHover | None,
    coloraxis: str = "coloraxis",
    opacity: Number = 1.0,
    name: str = "",
    meta: dict | None = None,
) -> go.Heatmap:
    """Heatmap of a [rows, cols] grid whose cell (r, c) spans [c*cell_w, (c+1)*cell_w] x [r*cell_h, (r+1)*cell_h].

    ``z`` is stored as float32: figures show 4 significant digits and colours, and float64 would double the
    exported size. NaN cells are drawn blank and their hover value reads ``NaN`` (``hovertemplatefallback``).
    """
    cell_h, cell_w = cell
    if hover is None:
        hover = CellHover(f"x %{{x:.1f}}, y %{{y:.1f}}<br>value: %{{z:{Z_FORMAT}}}<extra></extra>")
    kwargs = dict(hovertemplate=hover.template, hovertemplatefallback="NaN")
    if hover.customdata is not None:
        kwargs["customdata"] = hover.customdata
    return go.Heatmap(
        z=np.asarray(grid, dtype=np.float32), x0=cell_w / 2, dx=cell_w, y0=cell_h / 2, dy=cell_h, xaxis=axes[0],
        yaxis=axes[1], coloraxis=coloraxis, opacity=opacity, name=esc(name), meta=meta or {}, zsmooth=False, **kwargs,
    )


def colorbar_for(fig: go.Figure) -> dict:
    """Colour bar settings: at most ~450 px long, top-aligned with the plot area."""
    plot_h = fig.layout.height - fig.layout.margin.t - fig.layout.margin.b
    return dict(thickness=14, len=min(1.0, 450 / plot_h), y=1.0, yanchor="top")


def matrix_heatmap(
    arr: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    *,
    row_name: str,
    col_name: str,
    title: str,
    value_label: str,
    zmid: Number,
    colorscale: str,
    cell_px: Number | None,
    coloraxis: dict | None = None,
) -> go.Figure:
    """A labelled [rows, cols] heatmap with square cells, row 0 at the top.

    The colour axis is diverging around ``zmid`` unless ``coloraxis`` (a layout dict) is given.
    """
    n_rows, n_cols = arr.shape
    raw_title, raw_value_label = title, value_label  # escaped by figure_title / the colour axis
    row_labels, col_labels = [esc(s) for s in row_labels], [esc(s) for s in col_labels]
    row_name, col_name, value_label = esc(row_name), esc(col_name), esc(value_label)
    cell_px = cell_px or min(56.0, max(14.0, 420.0 / max(n_rows, n_cols)))
    long_x = max((len(s) for s in col_labels), default=1) > 3
    margin = dict(
        l=int(30 + 7 * max((len(s) for s in row_labels), default=1)),
        r=110, t=top_margin(title),
        b=int(45 + (6 * max(len(s) for s in col_labels) if long_x else 0)),
    )
    hover = [[f"{row_name}: {row_labels[r]}<br>{col_name}: {col_labels[c]}<br>{value_label}: {fmt(arr[r, c])}"
              for c in range(n_cols)] for r in range(n_rows)]
    hover = CellHover("%{customdata}<extra></extra>", hover)  # per-row/col labels: small grids, one string a cell
    fig = go.Figure(cell_heatmap(arr, ("x", "y"), cell=(1.0, 1.0), hover=hover, name=raw_title, meta=dict(kind="grid")))
    step_x = 1 if long_x or cell_px >= 18 else 2  # short labels ("H11") need ~18 px each
    fig.update_layout(
        width=int(margin["l"] + margin["r"] + n_cols * cell_px),
        height=int(margin["t"] + margin["b"] + n_rows * cell_px),
        margin=dict(margin, autoexpand=False), plot_bgcolor="white", paper_bgcolor="white",
        xaxis=dict(
            title=dict(text=col_name, font=dict(size=11)), range=[0, n_cols], tickmode="array",
            tickvals=[c + 0.5 for c in range(0, n_cols, step_x)], ticktext=col_labels[::step_x],
            tickangle=-45 if long_x else 0, showgrid=False, zeroline=False, tickfont=TICK_FONT,
            constrain="domain",
        ),
        yaxis=dict(
            title=dict(text=row_name, font=dict(size=11)), range=[n_rows, 0], tickmode="array",
            tickvals=[r + 0.5 for r in range(n_rows)], ticktext=row_labels, showgrid=False,
            zeroline=False, tickfont=TICK_FONT, scaleanchor="x", scaleratio=1, constrain="domain",
        ),
    )
    if title:
        fig.update_layout(title=figure_title(raw_title))
    if coloraxis is None:
        coloraxis = diverging_coloraxis(arr, zmid=zmid, colorscale=colorscale, title=raw_value_label)
    coloraxis["colorbar"] = {**coloraxis.get("colorbar", {}), **colorbar_for(fig)}
    fig.update_layout(coloraxis=coloraxis)
    return fig

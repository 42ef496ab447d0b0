"""Pixel-exact facet layout: a grid of small plots, each with a title and an optional strip above it.

``make_subplots`` spaces rows evenly and cannot give each facet a thin strip (the prefix tokens) that
sits tight on top of its grid, so the axes' domains are computed here, in pixels, and converted to
paper fractions. Fixing the figure size this way also keeps grid cells square.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from vit_patching.plotting._common import Number, axis_ref, esc, layout_key

TITLE_PX = 20  # height reserved for a facet's title
STRIP_GAP_PX = 6  # gap between a strip and the grid below it
TICK_FONT = dict(size=9)
#: Top margin of a figure with a title: the title (16 px) sits below Plotly's mode bar (about 30 px high, top
#: right), so that neither covers the other when the figure is narrow.
TITLE_MARGIN_PX = 72
#: Top margin without a title: room for the mode bar above the plots.
TOP_MARGIN_PX = 40


def top_margin(title: str) -> int:
    """The top margin for a figure with or without a title (see :data:`TITLE_MARGIN_PX`)."""
    return TITLE_MARGIN_PX if title else TOP_MARGIN_PX


@dataclass(frozen=True)
class Facet:
    """Axes of one facet: trace references and paper-fraction domains."""

    main: tuple[str, str]
    strip: tuple[str, str] | None
    x_domain: tuple[float, float]
    y_domain: tuple[float, float]


def figure_title(text: str) -> dict:
    """Layout title settings used by every figure: left-aligned with the plots, at the top (``text`` is escaped).

    The top margin of every figure (:data:`TITLE_MARGIN_PX`) keeps the title clear of Plotly's mode bar.
    """
    return dict(text=esc(text), x=0.0, xref="paper", y=1.0, yref="container", yanchor="top", pad=dict(t=38),
                font=dict(size=16))


def default_cols(n: int) -> int:
    """Facet columns for ``n`` facets when the caller gives none: a roughly square arrangement."""
    return max(1, min(n, math.ceil(math.sqrt(n))))


def facet_layout(
    fig: go.Figure,
    titles: Sequence[str],
    *,
    n_cols: int,
    content_px: tuple[Number, Number],
    strip_px: Number = 0.0,
    strip_w_px: Number = 0.0,
    h_gap_px: Number = 30.0,
    v_gap_px: Number = 30.0,
    margin_r: Number = 100.0,
    title: str = "",
    x_title: str = "",
    y_title: str = "",
) -> list[Facet]:
    """Lay out ``len(titles)`` facets on ``fig`` (axes, domains, titles, size) and return their axes.

    Args:
        fig: the figure to configure (its layout is updated in place).
        titles: one title per facet, drawn above it.
        n_cols: facets per row.
        content_px: (width, height) of each facet's main plot area in pixels.
        strip_px: height of the strip drawn above each main area (0 for none).
        strip_w_px: width of that strip, left-aligned with the main area.
        h_gap_px, v_gap_px: gaps between facets (room for tick labels).
        margin_r: right margin (room for the colour bar).
        title: figure title.
        x_title, y_title: axis titles, drawn on the bottom facet of each column / the first column.
    """
    n = len(titles)
    if n_cols < 1:
        raise ValueError(f"facet_cols: expected a positive int, got {n_cols}")
    n_cols = min(n_cols, n)
    n_rows = math.ceil(n / n_cols)
    cw, ch = content_px
    strip_block = strip_px + STRIP_GAP_PX if strip_px > 0 else 0.0
    block_h = TITLE_PX + strip_block + ch
    margin = dict(l=60, r=margin_r, t=top_margin(title), b=50 if x_title else 35)
    plot_w = n_cols * cw + (n_cols - 1) * h_gap_px
    plot_h = n_rows * block_h + (n_rows - 1) * v_gap_px
    fig.update_layout(
        width=int(round(plot_w + margin["l"] + margin["r"])),
        height=int(round(plot_h + margin["t"] + margin["b"])),
        margin=dict(margin, autoexpand=False),
        plot_bgcolor="white",
        paper_bgcolor="white",
    )
    if title:
        fig.update_layout(title=figure_title(title))

    def fx(px: Number) -> float:
        return min(max(px / plot_w, 0.0), 1.0)

    def fy(px_from_top: Number) -> float:
        return min(max(1.0 - px_from_top / plot_h, 0.0), 1.0)

    facets: list[Facet] = []
    per_facet = 2 if strip_px > 0 else 1
    for i, facet_title in enumerate(titles):
        r, c = divmod(i, n_cols)
        left = c * (cw + h_gap_px)
        top = r * (block_h + v_gap_px)
        main_top = top + TITLE_PX + strip_block
        main = axis_ref(per_facet * i + 1)
        x_domain = (fx(left), fx(left + cw))
        y_domain = (fy(main_top + ch), fy(main_top))
        has_below = i + n_cols < n
        fig.layout[layout_key(main[0])] = dict(
            domain=x_domain, anchor=main[1], showgrid=False, zeroline=False, constrain="domain",
            tickfont=TICK_FONT, ticks="outside", ticklen=3,
            title=dict(text=esc(x_title) if not has_below else "", font=dict(size=11), standoff=4),
        )
        fig.layout[layout_key(main[1])] = dict(
            domain=y_domain, anchor=main[0], showgrid=False, zeroline=False, constrain="domain",
            scaleanchor=main[0], scaleratio=1, tickfont=TICK_FONT, ticks="outside", ticklen=3,
            title=dict(text=esc(y_title) if c == 0 else "", font=dict(size=11), standoff=4),
        )
        strip = None
        if strip_px > 0:
            strip = axis_ref(per_facet * i + 2)
            strip_top = top + TITLE_PX
            fig.layout[layout_key(strip[0])] = dict(
                domain=(fx(left), fx(left + strip_w_px)), anchor=strip[1],
                showticklabels=False, showgrid=False, zeroline=False, ticks="",
            )
            fig.layout[layout_key(strip[1])] = dict(
                domain=(fy(strip_top + strip_px), fy(strip_top)), anchor=strip[0],
                showticklabels=False, showgrid=False, zeroline=False, ticks="",
            )
        fig.add_annotation(
            text=esc(facet_title), x=(x_domain[0] + x_domain[1]) / 2, y=fy(top), xref="paper", yref="paper",
            xanchor="center", yanchor="top", showarrow=False, font=dict(size=12),
        )
        facets.append(Facet(main=main, strip=strip, x_domain=x_domain, y_domain=y_domain))
    return facets


def cell_ticks(n: int, cell: Number, max_ticks: int = 8) -> dict:
    """Tick settings labelling cell indices at cell centres (cells of size ``cell`` starting at 0)."""
    step = max(1, math.ceil(n / max_ticks))
    idx = list(range(0, n, step))
    return dict(tickmode="array", tickvals=[(i + 0.5) * cell for i in idx], ticktext=[str(i) for i in idx])

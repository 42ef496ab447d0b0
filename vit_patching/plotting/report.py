"""Self-contained HTML reports: figures, tables, text and images, plus a settings table.

The report embeds plotly.js once in the page head and every figure as a ``<div>`` without its own copy,
so the file works offline and stays one file. Every string that comes from the caller (title, headings,
captions, text, table cells and headers, settings, image names) is HTML-escaped; figure JSON is escaped
by Plotly itself (``<`` is written as ``\\u003c``).
"""
from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import plotly.graph_objects as go
import torch

from vit_patching.files import atomic_write_text
from vit_patching.plotting._common import image_to_rgb
from vit_patching.plotting._traces import png_data_uri

__all__ = ["ReportSection", "render_report", "write_report"]

SectionKind = Literal["figure", "table", "text", "images"]
_KINDS = ("figure", "table", "text", "images")

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1f2933;background:#fff}
main{max-width:1200px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.7rem;margin:0 0 .6rem}h2{font-size:1.25rem;margin:2rem 0 .6rem;border-bottom:1px solid #e4e7eb;padding-bottom:.3rem}
nav ol{margin:.2rem 0 1rem;padding-left:1.4rem;columns:2}nav a{color:#2f5fa7;text-decoration:none}
table{border-collapse:collapse;font-size:.88rem;margin:.4rem 0}th,td{border:1px solid #d9dee3;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.caption{color:#52606d;font-size:.9rem;margin:.3rem 0 0}.gallery{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0}figure img{image-rendering:pixelated;border:1px solid #d9dee3;width:192px;height:auto}figcaption{font-size:.85rem;color:#52606d}
footer{margin-top:3rem;color:#9aa5b1;font-size:.8rem}
"""


@dataclass(frozen=True)
class ReportSection:
    """One section of a report: a heading and a figure, a table, text or a set of named images.

    Attributes:
        heading: section heading (escaped).
        kind: ``"figure"`` (a Plotly figure), ``"table"`` (a list of dicts or a pandas DataFrame),
            ``"text"`` (plain text; blank lines separate paragraphs) or ``"images"`` (a mapping
            name -> pixels ``[channel, height, width]`` in [0, 1]).
        content: the content matching ``kind``.
        caption: optional note under the content (escaped).

    Example:
        >>> ReportSection.text("Summary", "CAAP found 3 patches.").kind
        'text'
    """

    heading: str
    kind: SectionKind
    content: Any
    caption: str = field(default="")

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {list(_KINDS)}, got {self.kind!r}")
        ok = {
            "figure": isinstance(self.content, go.Figure),
            "table": _is_table(self.content),
            "text": isinstance(self.content, str),
            "images": isinstance(self.content, Mapping),
        }[self.kind]
        if not ok:
            expected = {
                "figure": "a plotly.graph_objects.Figure", "table": "a list of dicts or a pandas DataFrame",
                "text": "a str", "images": "a mapping name -> [channel, height, width] image",
            }[self.kind]
            raise TypeError(f"content: expected {expected} for kind={self.kind!r}, got {type(self.content).__name__}")

    @classmethod
    def figure(cls, heading: str, fig: go.Figure, caption: str = "") -> ReportSection:
        """A figure section.

        Example:
            >>> ReportSection.figure("Map", go.Figure(go.Heatmap(z=[[1, 2]]))).kind
            'figure'
        """
        return cls(heading, "figure", fig, caption)

    @classmethod
    def table(cls, heading: str, rows: Any, caption: str = "") -> ReportSection:
        """A table section from a list of dicts (columns: union of keys, first-seen order) or a DataFrame.

        Example:
            >>> ReportSection.table("Scores", [{"method": "caap", "auc": 0.7}]).content[0]["auc"]
            0.7
        """
        return cls(heading, "table", rows, caption)

    @classmethod
    def text(cls, heading: str, text: str, caption: str = "") -> ReportSection:
        """A text section (blank lines separate paragraphs).

        Example:
            >>> ReportSection.text("Notes", "one\\n\\ntwo").heading
            'Notes'
        """
        return cls(heading, "text", text, caption)

    @classmethod
    def images(cls, heading: str, images: Mapping[str, Any], caption: str = "") -> ReportSection:
        """A gallery of named images, each ``[channel, height, width]`` in [0, 1].

        Example:
            >>> sorted(ReportSection.images("Inputs", {"a": torch.zeros(3, 4, 4)}).content)
            ['a']
        """
        return cls(heading, "images", images, caption)


def _is_table(content: Any) -> bool:
    if hasattr(content, "to_dict") and hasattr(content, "columns"):  # a pandas DataFrame
        return True
    return isinstance(content, Sequence) and not isinstance(content, str) and all(isinstance(r, Mapping) for r in content)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> tuple[str, bool]:
    """Text for a table cell and whether it is numeric (right-aligned)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float):
        return ("" if math.isnan(value) else f"{value:.4g}"), True
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str), False
    return str(value), False


def _table_html(content: Any) -> str:
    if hasattr(content, "to_dict") and hasattr(content, "columns"):
        df = content
        if not (type(df.index).__name__ == "RangeIndex" and df.index.start == 0 and df.index.step == 1):
            df = df.reset_index()
        columns = [str(c) for c in df.columns]
        rows = [dict(zip(columns, r)) for r in df.itertuples(index=False, name=None)]
    else:
        columns = []
        for row in content:
            columns += [str(k) for k in row if str(k) not in columns]
        rows = [{str(k): v for k, v in row.items()} for row in content]
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text, numeric = _cell(row.get(c))
            cells.append(f"<td class=\"num\">{_esc(text)}</td>" if numeric else f"<td>{_esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _text_html(text: str) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join("<p>" + _esc(p).replace("\n", "<br>") + "</p>" for p in paragraphs)


def _images_html(images: Mapping[str, Any]) -> str:
    items = []
    for name, image in images.items():
        uri = png_data_uri(image_to_rgb(image, f"images[{name!r}]"))
        items.append(f"<figure><img src=\"{uri}\" alt=\"{_esc(name)}\"><figcaption>{_esc(name)}</figcaption></figure>")
    return f"<div class=\"gallery\">{''.join(items)}</div>"


def _setting_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def render_report(
    title: str,
    sections: Sequence[ReportSection],
    settings: Mapping[str, Any] | None = None,
) -> str:
    """Render a self-contained HTML report (plotly.js embedded once) and return it as a string.

    Args:
        title: page title and top heading.
        sections: the sections, in order (a table of contents links to each).
        settings: options the results were produced with, shown as a key/value table at the end.

    Returns:
        The HTML document.

    Example:
        >>> import plotly.graph_objects as go
        >>> page = render_report("CAAP", [ReportSection.figure("Map", go.Figure(go.Heatmap(z=[[1, 2]]))),
        ...                               ReportSection.table("Scores", [{"method": "caap", "auc": 0.71}])],
        ...                      settings={"model": "vit_tiny", "layers": [0, 11]})
        >>> page.count("<h2")
        3
    """
    parts = []
    toc = []
    has_figure = False
    for i, section in enumerate(sections):
        if not isinstance(section, ReportSection):
            raise TypeError(f"sections[{i}]: expected a ReportSection, got {type(section).__name__}")
        anchor = f"section-{i + 1}"
        toc.append(f"<li><a href=\"#{anchor}\">{_esc(section.heading)}</a></li>")
        if section.kind == "figure":
            has_figure = True
            body = section.content.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"figure-{i + 1}",
                config={"displaylogo": False, "responsive": True},
            )
        elif section.kind == "table":
            body = _table_html(section.content)
        elif section.kind == "text":
            body = _text_html(section.content)
        else:
            body = _images_html(section.content)
        caption = f"<p class=\"caption\">{_esc(section.caption)}</p>" if section.caption else ""
        parts.append(f"<section id=\"{anchor}\"><h2>{_esc(section.heading)}</h2>{body}{caption}</section>")
    if settings:
        toc.append("<li><a href=\"#settings\">Settings</a></li>")
        rows = "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(_setting_value(v))}</td></tr>" for k, v in settings.items()
        )
        parts.append(f"<section id=\"settings\"><h2>Settings</h2><table><tbody>{rows}</tbody></table></section>")
    script = ""
    if has_figure:
        from plotly.offline import get_plotlyjs

        script = f"<script type=\"text/javascript\">{get_plotlyjs()}</script>"
    from vit_patching import __version__

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style>{script}</head>\n<body><main>"
        f"<h1>{_esc(title)}</h1><nav><ol>{''.join(toc)}</ol></nav>\n"
        + "\n".join(parts)
        + f"\n<footer>Generated by vit_patching {_esc(__version__)}</footer></main></body></html>\n"
    )


def write_report(
    path: Union[str, os.PathLike],
    title: str,
    sections: Sequence[ReportSection],
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Render a report with `render_report` and write it (UTF-8) to ``path``; returns the path.

    The page is rendered first and then written to a temporary file in the same folder that replaces ``path``
    (:func:`vit_patching.files.atomic_write_text`): a write that fails halfway leaves an existing report intact.

    Raises:
        ValueError: if ``path`` is an existing folder.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "report.html"
        >>> write_report(path, "Run", [ReportSection.text("Notes", "ok")]) == path
        True
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected an HTML file path, got the existing folder {str(path)!r}")
    return atomic_write_text(path, render_report(title, sections, settings))

"""An offline HTML gallery of a dataset run: one row per image with its thumbnail, the CAAP map over it, and scores.

No JavaScript library and no network: images are inline base64 PNGs; a few lines of inline script sort the table
by any column. Every user-provided string (names, settings, title) is HTML-escaped.

Example:
    >>> write_gallery("out/gallery.html", "CAAP", rows, thumbs, maps, settings)   # doctest: +SKIP
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from vit_patching.checks import check_positive_number

from .sharding import atomic_write_bytes

__all__ = ["overlay_png", "png_base64", "write_gallery"]

_SORT_JS = """
function sortBy(col){const t=document.getElementById('g');const b=t.tBodies[0];const rows=[...b.rows];
const asc=t.dataset.col==col?t.dataset.asc!='1':false;t.dataset.col=col;t.dataset.asc=asc?'1':'0';
rows.sort((x,y)=>{const a=x.cells[col].dataset.v,c=y.cells[col].dataset.v;const na=parseFloat(a),nc=parseFloat(c);
const r=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?r:-r;});rows.forEach(r=>b.appendChild(r));}
"""


def png_base64(array: UInt8[Tensor, "h w channel"]) -> str:
    """Base64 PNG of a uint8 ``[h, w, C]`` image (for a ``data:image/png;base64,`` URI).

    Example:
        >>> png_base64(torch.zeros(2, 2, 3, dtype=torch.uint8))[:8]
        'iVBORw0K'
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_png(
    thumb: UInt8[Tensor, "channel h w"],
    patch_map: Float[Tensor, "gh gw"],
    alpha: float = 0.55,
    *,
    centre: bool = True,
    scale: int | float | None = None,
) -> str:
    """Base64 PNG of the map (diverging red-white-blue, symmetric about 0 after centring on its median) over the image.

    Blue above the median, red below: the convention of the report's Plotly ``RdBu`` figures (low red, high blue),
    so a gallery and a report of the same image agree. With ``centre=False`` the map is drawn as it is (0 white),
    and ``scale`` (default: the map's largest absolute value) is the value drawn at full colour, so that maps of
    one feature drawn with its largest activation share one colour scale.

    Example:
        >>> overlay_png(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.rand(2, 2))[:8]
        'iVBORw0K'
    """
    if scale is not None:
        check_positive_number(scale, "scale")
    img = thumb.float() / 255
    m = patch_map.float()
    if centre:
        m = m - m.median()
    m = m / (m.abs().max().clamp_min(1e-12) if scale is None else max(scale, 1e-12))  # [-1, 1]
    m = m.clamp(-1, 1)
    m = torch.nn.functional.interpolate(m[None, None], size=tuple(img.shape[-2:]), mode="nearest")[0, 0]
    pos, neg = m.clamp_min(0), (-m).clamp_min(0)
    colour = torch.stack([1 - pos, 1 - pos - neg, 1 - neg])  # blue for positive, red for negative (as RdBu)
    out = (1 - alpha) * img + alpha * colour
    return png_base64((out.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous())


def write_gallery(
    path: str | os.PathLike,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    thumbs: UInt8[Tensor, "n channel h w"],
    maps: Float[Tensor, "n gh gw"],
    settings: Mapping[str, Any],
    legend: str | None = None,
) -> Path:
    """Write the gallery (atomically) and return its path.

    Args:
        path: the HTML file.
        title: page title (escaped).
        rows: one mapping per image: the table columns (values escaped).
        thumbs: uint8 thumbnails ``[n, C, h, w]``.
        maps: patch maps ``[n, gh, gw]`` (a map with NaN, of an image that failed, is shown as "no map").
        settings: shown as escaped JSON.
        legend: what the overlay's colours mean (escaped); default: the map minus its median, blue above, red below.

    Example:
        >>> write_gallery("g.html", "demo", [{"name": "<a>"}], torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
        ...               torch.rand(1, 2, 2), {}).suffix
        '.html'
    """
    if not (len(rows) == thumbs.shape[0] == maps.shape[0]):
        raise ValueError(f"rows, thumbs, maps: expected one per image, got {len(rows)}, {thumbs.shape[0]}, {maps.shape[0]}")
    e = html.escape
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th onclick='sortBy({j + 2})'>{e(str(c))}</th>" for j, c in enumerate(cols))
    body = []
    for i, r in enumerate(rows):
        t = thumbs[i]
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t[:3]
        cells = "".join(
            f"<td data-v='{e(str(v), quote=True)}'>{e(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>"
            for v in r.values()
        )
        if bool(torch.isfinite(maps[i]).all()):
            overlay = f"<img src='data:image/png;base64,{overlay_png(t, maps[i])}'>"
        else:  # a failed image (non-finite outputs) has no map to draw
            overlay = "no map"
        body.append(
            f"<tr><td data-v='{i}'><img src='data:image/png;base64,{png_base64(t.permute(1, 2, 0).contiguous())}'></td>"
            f"<td data-v='{i}'>{overlay}</td>{cells}</tr>"
        )
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{cursor:pointer;background:#eee}img{width:96px;image-rendering:pixelated}</style>"
        f"<script>{_SORT_JS}</script></head><body><h1>{e(title)}</h1>"
        f"<p>{len(rows)} images. Click a column header to sort. "
        f"{e(legend or 'Overlay: CAAP map minus its median (blue above, red below).')}</p>"
        f"<details><summary>Settings</summary><pre>{e(json.dumps(settings, indent=1, default=str))}</pre></details>"
        f"<table id='g'><thead><tr><th>image</th><th>CAAP</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "</body></html>"
    )
    return atomic_write_bytes(path, doc.encode("utf-8"))

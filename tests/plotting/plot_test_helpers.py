"""Small helpers shared by the plotting tests (trace lookup by meta kind, PNG decoding, hover rendering)."""
from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
from PIL import Image


def traces(fig, kind: str, **meta) -> list:
    """Traces whose ``meta`` has ``kind`` (and the given extra meta entries)."""
    out = []
    for t in fig.data:
        m = t.meta or {}
        if m.get("kind") == kind and all(m.get(k) == v for k, v in meta.items()):
            out.append(t)
    return out


def decode_image_trace(trace) -> np.ndarray:
    """The uint8 [height, width, 3] pixels of a go.Image trace drawn from a PNG data URI."""
    prefix = "data:image/png;base64,"
    assert trace.source.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(trace.source[len(prefix):]))) as im:
        return np.asarray(im.convert("RGB"))


def to_uint8(image) -> np.ndarray:
    """A [3, H, W] tensor in [0, 1] as uint8 [H, W, 3], rounded the same way the plotting code documents."""
    return np.round(image.permute(1, 2, 0).double().numpy() * 255).astype(np.uint8)


_PLACEHOLDER = re.compile(r"%\{([a-z]+)(?:\[(\d+)\])?(?::([^}]*))?\}")


def render_hover(trace, r: int, c: int) -> str:
    """The hover text Plotly shows for heatmap cell (r, c): ``hovertemplate`` with its placeholders
    (``%{customdata}``, ``%{customdata[i]}``, ``%{z:fmt}``) filled from the trace, ``<extra>`` dropped.

    A missing value (a NaN ``z``, which Plotly cleans to a gap) reads the trace's ``hovertemplatefallback``,
    as in plotly.js; d3's ``~g`` (trailing zeros trimmed) is Python's ``g``.
    """
    z = float(np.asarray(trace.z, dtype=np.float64)[r, c])
    custom = trace.customdata[r][c] if trace.customdata is not None else None

    def fill(m: re.Match) -> str:
        name, index, spec = m.group(1), m.group(2), m.group(3)
        if name == "customdata":
            value = custom if index is None else custom[int(index)]
        elif name == "z":
            if math.isnan(z):
                return trace.hovertemplatefallback
            value = z
        else:
            raise AssertionError(f"unexpected placeholder {m.group(0)!r} in a heatmap hover")
        if spec:
            return format(value, spec.replace("~", ""))
        return str(int(value)) if isinstance(value, (int, np.integer)) else str(value)

    return _PLACEHOLDER.sub(fill, trace.hovertemplate).replace("<extra></extra>", "")

"""Small helpers shared by the plotting tests (trace lookup by meta kind, PNG decoding)."""
from __future__ import annotations

import base64
import io

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

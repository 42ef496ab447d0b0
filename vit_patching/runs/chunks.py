"""Chunk files of a dataset run: what a chunk holds, and the check that a saved chunk can be merged.

A chunk file (``chunks/000000-000016.safetensors``) holds one row per image of the chunk. Its tensors:

=================  =========  ==============================  ============================================
key                dtype      shape                           values
=================  =========  ==============================  ============================================
``map``            float32    ``[n, grid_h, grid_w]``         finite on rows whose status is 0
``target``         int64      ``[n]``                         ``[0, n_classes)`` (``-1`` on failed rows)
``label``          int64      ``[n]``                         ``>= -1`` (``-1``: no label)
``source_logits``  float32    ``[n, n_classes]``              finite on rows whose status is 0
``source_score``   float32    ``[n]``                         finite on rows whose status is 0
``neutral_score``  float32    ``[n]``                         finite on rows whose status is 0
``status``         uint8      ``[n]``                         0 = explained, 1 = failed (non-finite output)
``thumb``          uint8      ``[n, 1 | 3, h, w]``            thumbnail for the gallery
=================  =========  ==============================  ============================================

A coalition-CAAP chunk (``CAAPRunConfig.coalitions`` > 0; ``map`` holds Shapley values) has three keys more, finite
on rows whose status is 0: ``standard_error`` (float32 ``[n, grid_h, grid_w]``, each patch's standard error),
``v_all`` and ``v_empty`` (float32 ``[n]``: the game's value with every player pinned and with none; the map
sums to their difference). Single-patch chunks have none of them (chunks written before coalition CAAP existed
stay valid).

Its string metadata: ``fingerprint`` (model, settings, chunk range and the key of the inputs read),
``batch_size`` (rows per forward actually used), ``seconds``, and ``rows``: JSON lists of one string per
image: ``neutral`` (the neutral context used, ``neutral="auto"``'s choice), ``warning`` (the neutral-context
warning, global image index) and ``error`` (why the image failed).

The check (:func:`validate_chunk`) plays the part of the benchmark's
:func:`vit_patching.benchmark.runner.validate_partial` for these tensor files: a chunk that fails it is
recomputed, never merged.

Example:
    >>> import torch
    >>> validate_chunk({"map": torch.zeros(2, 2, 2)}, {}, n=2, n_classes=3, grid=(2, 2))
    "keys: expected ['label', 'map', 'neutral_score', 'source_logits', 'source_score', 'status', 'target', 'thumb'], got ['map']"
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["COALITION_KEYS", "ROW_FIELDS", "chunk_path", "read_chunk", "read_chunk_header", "row_strings", "validate_chunk"]

#: Per-image strings stored as JSON in a chunk's ``rows`` metadata.
ROW_FIELDS = ("neutral", "warning", "error")


def chunk_path(out_dir: Path, s: int, e: int) -> Path:
    """The file of chunk ``[s, e)`` in a run folder.

    Example:
        >>> chunk_path(Path("run"), 0, 16).as_posix()
        'run/chunks/000000-000016.safetensors'
    """
    return out_dir / "chunks" / f"{s:06d}-{e:06d}.safetensors"


def read_chunk_header(path: Path) -> dict[str, str] | None:
    """A chunk file's string metadata (the header only: cheap), or ``None`` if it is missing or unreadable.

    Example:
        >>> read_chunk_header(Path("no/such/chunk.safetensors")) is None
        True
    """
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # truncated / corrupt: the caller recomputes it
        return None


def read_chunk(path: Path, fingerprint: str) -> tuple[dict[str, Tensor], dict[str, str]] | str:
    """A chunk file's tensors and metadata if it reads and carries ``fingerprint``, else why not (a string).

    The contents are not checked here: each kind of run validates its own keys, shapes and values.

    Example:
        >>> read_chunk(Path("no/such/chunk.safetensors"), "abc")
        'missing'
    """
    from safetensors import safe_open

    if not path.is_file():
        return "missing"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("fingerprint") != fingerprint:
                return "stale fingerprint"
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as err:  # truncated / corrupt file: recompute it
        return "unreadable (" + " ".join(str(err).split()) + ")"


#: The tensors a coalition-CAAP chunk holds besides a single-patch chunk's.
COALITION_KEYS = ("standard_error", "v_all", "v_empty")


def _spec(n: int, n_classes: int, grid: tuple[int, int], coalition: bool = False
          ) -> dict[str, tuple[torch.dtype, tuple[int, ...] | None]]:
    spec = {
        "map": (torch.float32, (n, *grid)), "target": (torch.int64, (n,)), "label": (torch.int64, (n,)),
        "source_logits": (torch.float32, (n, n_classes)), "source_score": (torch.float32, (n,)),
        "neutral_score": (torch.float32, (n,)), "status": (torch.uint8, (n,)), "thumb": (torch.uint8, None),
    }
    if coalition:
        spec.update({"standard_error": (torch.float32, (n, *grid)), "v_all": (torch.float32, (n,)),
                     "v_empty": (torch.float32, (n,))})
    return spec


def validate_chunk(
    tensors: Mapping[str, Tensor], meta: Mapping[str, str], n: int, n_classes: int, grid: tuple[int, int],
    coalition: bool = False,
) -> str | None:
    """Why a loaded chunk cannot be merged (``None`` if it is complete and consistent).

    Checks the keys, dtypes and shapes (``n`` rows), finite values and target range on the rows explained, the
    status values, the thumbnails' layout and the per-image strings in the metadata. The fingerprint is
    checked by the caller (it needs the run's settings and images). ``coalition``: a coalition-CAAP chunk, which
    holds :data:`COALITION_KEYS` too (finite, standard errors >= 0, on the rows explained).

    Example:
        >>> validate_chunk({}, {}, n=1, n_classes=2, grid=(1, 1))[:5]
        'keys:'
    """
    spec = _spec(n, n_classes, grid, coalition)
    if sorted(tensors) != sorted(spec):
        return f"keys: expected {sorted(spec)}, got {sorted(tensors)}"
    for key, (dtype, shape) in spec.items():
        t = tensors[key]
        if t.dtype != dtype:
            return f"{key}: expected {dtype}, got {t.dtype}"
        if shape is not None and tuple(t.shape) != shape:
            return f"{key}: expected shape {list(shape)} ({n} images), got {list(t.shape)}"
    thumb = tensors["thumb"]
    if thumb.ndim != 4 or thumb.shape[0] != n or thumb.shape[1] not in (1, 3):
        return f"thumb: expected shape [{n}, 1 | 3, h, w], got {list(thumb.shape)}"
    status = tensors["status"]
    if not bool(((status == 0) | (status == 1)).all()):
        return f"status: expected 0 (explained) or 1 (failed), got {sorted(set(status.tolist()))}"
    ok = status == 0
    for key in ("map", "source_logits", "source_score", "neutral_score") + (COALITION_KEYS if coalition else ()):
        if not bool(torch.isfinite(tensors[key][ok]).all()):
            return f"{key}: expected finite values on the explained images, got NaN or infinity"
    if coalition and bool((tensors["standard_error"][ok] < 0).any()):
        return "standard_error: expected values >= 0 on the explained images, got a negative one"
    target, label = tensors["target"], tensors["label"]
    if not bool(((target[ok] >= 0) & (target[ok] < n_classes)).all()):
        return f"target: expected classes in [0, {n_classes}), got {sorted(set(target[ok].tolist()))[:10]}"
    if not bool((label >= -1).all()):
        return f"label: expected -1 (none) or a class index, got {sorted(set(label.tolist()))[:10]}"
    try:
        rows = json.loads(meta.get("rows", ""))
        batch_size = int(meta.get("batch_size", ""))
    except ValueError:
        return "metadata: expected 'rows' (JSON) and 'batch_size' (an int)"
    if batch_size < 1:
        return f"metadata 'batch_size': expected a positive int, got {batch_size}"
    if not isinstance(rows, dict) or sorted(rows) != sorted(ROW_FIELDS):
        return f"metadata 'rows': expected the lists {list(ROW_FIELDS)}"
    for key in ROW_FIELDS:
        value = rows[key]
        if not (isinstance(value, list) and len(value) == n and all(isinstance(v, str) for v in value)):
            return f"metadata 'rows'[{key!r}]: expected {n} strings (one per image)"
    failed = [i for i in range(n) if not bool(ok[i])]
    if any(not rows["error"][i] for i in failed):
        return "metadata 'rows'['error']: expected the reason on every failed image"
    return None


def row_strings(meta: Mapping[str, str]) -> dict[str, Any]:
    """The per-image strings of a validated chunk's metadata."""
    return json.loads(meta["rows"])

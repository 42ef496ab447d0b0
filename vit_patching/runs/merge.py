"""Merging a dataset run's chunks into ``maps.safetensors``, ``results.csv``, ``settings.json`` and ``gallery.html``.

**All or nothing.** The four files are written into ``out_dir/.merge-staging/``; when all four are complete a
``READY`` marker (the list of names) is written, then each file is renamed over its old version and the staging
folder removed. A merge that fails before ``READY`` (a full disk, an exception) removes the staging folder and
leaves the previous complete run as it was; a process killed between ``READY`` and the last rename leaves the
staging folder, and the next run or merge of that folder finishes the renames first. So a run folder never holds
maps of one run beside the table or gallery of another.

**Chunks that do not validate** (:func:`vit_patching.runs.chunks.validate_chunk`, fingerprint, batch size) are
recomputed here with a one-line warning, never merged.

**Memory.** The maps and the table hold every image (a few hundred bytes each); the gallery shows the first
:data:`GALLERY_MAX` images (its thumbnails are inlined in one HTML file), and only those thumbnails are kept.

**CSV cells** of text columns that begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a
leading ``'`` (OWASP's advice against CSV injection): spreadsheet programs show them as text instead of
evaluating a formula. Numbers are written as numbers (a negative score stays ``-0.5``).

Example:
    >>> paths = merge_caap_chunks(model, images, "out/caap")   # doctest: +SKIP
    >>> paths["table"].name
    'results.csv'
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .chunk_run import CAAPRunConfig, ChunkRun
from .chunks import row_strings
from .dataset import ImageSet
from .gallery import write_gallery
from .lock import run_lock
from .sharding import atomic_write_bytes, digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = ["GALLERY_MAX", "STAGING", "csv_text", "finish_staged_merge", "merge_caap_chunks", "merge_run", "scores_line"]

STAGING = ".merge-staging"
_OUTPUTS = {"maps": "maps.safetensors", "table": "results.csv", "settings": "settings.json", "gallery": "gallery.html"}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Images shown in the gallery (its thumbnails are held in memory and inlined in one HTML file); the table,
#: the maps and the CSV hold every image.
GALLERY_MAX = 1000


def csv_text(value: str) -> str:
    """A text cell that spreadsheet programs will not evaluate: a leading ``'`` before ``= + - @`` tab or CR.

    Example:
        >>> csv_text("=HYPERLINK(1)"), csv_text("cat.png")
        ("'=HYPERLINK(1)", 'cat.png')
    """
    return "'" + value if value.startswith(_FORMULA_START) else value


def finish_staged_merge(out_dir: str | os.PathLike, *, interrupted: bool = True) -> None:
    """Finish a merge killed during its renames (``READY`` written), or drop an unfinished staging folder.

    Example:
        >>> finish_staged_merge("out/caap")   # doctest: +SKIP
    """
    staging = Path(out_dir) / STAGING
    if not staging.is_dir():
        return
    ready = staging / "READY"
    if ready.is_file():
        for name in json.loads(ready.read_text()):
            if (staging / name).is_file():
                os.replace(staging / name, Path(out_dir) / name)
        if interrupted:
            logger.warning("finished the renames of a merge interrupted in %s", out_dir)
    shutil.rmtree(staging, ignore_errors=True)


def _rows(images: ImageSet, merged: dict[str, torch.Tensor], strings: dict[str, list[str]]) -> list[dict[str, Any]]:
    probs = merged["source_logits"].softmax(-1)
    pred = probs.argmax(-1)
    m = merged["map"].flatten(1)
    coalition = "standard_error" in merged  # coalition CAAP: the game's two ends and the mean standard error
    rows = []
    for i, name in enumerate(images.names):
        label = int(merged["label"][i])
        ok = int(merged["status"][i]) == 0
        num = (lambda v: float(v)) if ok else (lambda v: "")  # a failed image has no numbers
        rows.append({
            "index": i, "name": name, "label": "" if label < 0 else label,
            "predicted": int(pred[i]) if ok else "", "probability": round(float(probs[i, pred[i]]), 6) if ok else "",
            "target": int(merged["target"][i]) if ok else "", "source_score": num(merged["source_score"][i]),
            "neutral_score": num(merged["neutral_score"][i]), "map_max": num(m[i].max()),
            "map_mean": num(m[i].mean()), "map_min": num(m[i].min()),
            **({"v_all": num(merged["v_all"][i]), "v_empty": num(merged["v_empty"][i]),
                "mean_se": num(merged["standard_error"][i].mean())} if coalition else {}),
            "neutral": strings["neutral"][i],
            "status": "ok" if ok else "failed", "warning": strings["warning"][i], "error": strings["error"][i],
        })
    return rows


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_text(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows)
    return buf.getvalue().encode("utf-8")


def merge_caap_chunks(
    model: "HookedViT", images: ImageSet, out_dir: str | os.PathLike, cfg: CAAPRunConfig | None = None,
    *, title: str = "CAAP gallery", scores: str | None = None,
) -> dict[str, Path]:
    """Merge every chunk into ``maps.safetensors``, ``results.csv``, ``settings.json`` and ``gallery.html``.

    Chunks missing or not validating are computed first (see the module docstring). The four files change
    together or not at all. Holds the folder's lock (:func:`vit_patching.runs.lock.run_lock`).

    ``scores`` names the readout that produced the scores (``settings.json``'s ``"scores"`` and the gallery's
    "Scores: ..." line); default: ``model.readout.describe()``.

    Example:
        >>> paths = merge_caap_chunks(model, images, "out/caap")   # doctest: +SKIP
        >>> paths["table"].name
        'results.csv'
    """
    run = ChunkRun(model, images, cfg or CAAPRunConfig(), out_dir)
    with run_lock(run.out_dir, run.lock_digest, 1):
        return merge_run(run, title, scores)


def scores_line(model: "HookedViT", scores: str | None = None) -> str:
    """What produced a run's scores, for its settings and gallery: ``scores`` if given (the CLI's words, as in the
    single-image report), else the model's readout (``model.readout.describe()``).

    Example:
        >>> scores_line(load_model("toy-clip"))[:34]
        'ZeroShotHead (16 scores: a red cir'
    """
    if scores is not None:
        return scores
    readout = model.readout
    return "the model's output" if readout is None else readout.describe()


def merge_run(run: ChunkRun, title: str = "CAAP gallery", scores: str | None = None) -> dict[str, Path]:
    """:func:`merge_caap_chunks` of a :class:`ChunkRun` whose caller holds the folder's lock."""
    from safetensors.torch import save

    cfg, images, out = run.cfg, run.images, run.out_dir
    finish_staged_merge(out)
    parts = []
    for s, e in run.chunks:
        loaded = run.load(s, e)
        if loaded is None:
            run.compute(s, e)
            loaded = run.load(s, e)
            if loaded is None:  # pragma: no cover - a chunk just written that does not read back
                raise RuntimeError(f"chunk [{s}, {e}) in {str(out)!r} does not read back after computing it")
        if s >= GALLERY_MAX:  # past the gallery's rows: the thumbnails are not kept (memory bounded in n)
            loaded[0].pop("thumb")
        parts.append(loaded)
    tensors = [p[0] for p in parts]
    strings = {k: [v for p in parts for v in row_strings(p[1])[k]] for k in ("neutral", "warning", "error")}
    merged = {k: torch.cat([t[k] for t in tensors]).contiguous() for k in tensors[0] if k != "thumb"}
    rows = _rows(images, merged, strings)
    choices = Counter(r["neutral"] for r in rows if r["status"] == "ok")
    failed = [r["index"] for r in rows if r["status"] == "failed"]
    settings = {"method": cfg.method, "caap": run.settings, "scores": scores_line(run.model, scores), "model_digest": run.base["model"],
                "data": images.source,
                "chunk_size": cfg.chunk_size, "batch_size": run.batch_size(), "n_images": len(images),
                "neutral_choice": dict(sorted(choices.items())), "failed": failed,
                "n_warned": sum(bool(r["warning"]) for r in rows), "version": run.base["version"]}
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        atomic_write_bytes(staging / _OUTPUTS["maps"], save(merged, metadata={"fingerprint": digest(run.base)}))
        atomic_write_bytes(staging / _OUTPUTS["table"], _csv_bytes(rows))
        atomic_write_bytes(staging / _OUTPUTS["settings"], json.dumps(settings, indent=1, default=str).encode())
        shown = {**settings, "caap": {**run.settings, "direction": cfg.direction}}
        shown_n = min(len(rows), GALLERY_MAX)
        thumbs = torch.cat([t["thumb"] for t in tensors if "thumb" in t])[:shown_n]
        legend = f"Scores: {settings['scores']}. " + _legend(cfg.direction, choices, failed, cfg.method)
        if shown_n < len(rows):
            legend += f" Showing the first {shown_n} of {len(rows)} images; every image is in results.csv."
        write_gallery(staging / _OUTPUTS["gallery"], title, rows[:shown_n], thumbs, merged["map"][:shown_n], shown,
                      legend=legend)
        atomic_write_bytes(staging / "READY", json.dumps(list(_OUTPUTS.values())).encode())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finish_staged_merge(out, interrupted=False)  # the renames: from here on the new run is the run
    return {k: out / name for k, name in _OUTPUTS.items()}


def _legend(direction: str, choices: Counter, failed: list[int], method: str = "CAAP") -> str:
    if method != "CAAP":  # coalition CAAP: the map holds Shapley values, summing to v_all - v_empty per image
        game = ("v(S) = the score drop with the patches in S taken from the neutral" if direction == "noising" else
                "v(S) = the score of the neutral context with the patches in S taken from the image")
        text = (f"Method: {method}; direction: {direction} ({game}). Each patch's map value is its Shapley value "
                "(it sums to v_all - v_empty; mean_se: its mean standard error). Overlay: map minus its median; "
                "blue above, red below.")
    elif direction == "noising":
        text = ("Direction: noising (each neutral patch written into the image's run; the map is the score drop). "
                "Overlay: map minus its median; blue = a larger drop (the patch is needed), red = a smaller one.")
    else:
        text = ("Direction: denoising (each image patch written into the neutral context's run; the map is the "
                "patched score). Overlay: map minus its median; blue above, red below.")
    text += " Neutral context per image (column 'neutral'): " + ", ".join(f"{k} {v}" for k, v in sorted(choices.items()))
    text += "." if not failed else f". Failed (non-finite outputs, no map): images {failed[:20]}{' ...' if len(failed) > 20 else ''}."
    return text


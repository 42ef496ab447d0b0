"""CAAP over a whole image set: sharded across processes, resumable per chunk, merged into maps, a table, a gallery.

Layout of ``out_dir``::

    chunks/000000-000008.safetensors   one file per chunk of images (written atomically)
    maps.safetensors                   merged: map [n, gh, gw], target, label, source/neutral score, logits
    results.csv                        one row per image: name, label, prediction, probability, scores
    settings.json                      CAAP settings, model digest, data source, timing
    gallery.html                       offline gallery (thumbnails with overlays, sortable columns)

Why safetensors: it is already a dependency (weights), it cannot execute code on load (unlike pickle), it is
mmap-able, and it stores string metadata, which carries each chunk's fingerprint (model weights digest + CAAP
settings + the chunk's image bytes). A chunk whose file is missing, unreadable (killed mid-write, truncated) or
whose fingerprint differs (other model, settings or images) is recomputed; every other chunk is kept. Chunks
do not depend on the number of processes, so a sharded run writes the same numbers as one process.

Run sharded with ``torchrun --nproc_per_node 2 ...`` or ``accelerate launch ...`` (``RANK`` / ``WORLD_SIZE`` are
read from the environment; with ``MASTER_ADDR`` set, a gloo process group provides the barrier before rank 0
merges, otherwise rank 0 polls until every chunk is present).

Example:
    >>> from vit_patching.zoo import load_model
    >>> out = run_caap_dataset(load_model("toy-shapes"), zoo_images("shapes", n=16), "out/caap",
    ...                        CAAPRunConfig(chunk_size=8))
    >>> sorted(out)[:2]
    ['gallery', 'maps']
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vit_patching.checks import check_bool, check_choice, check_positive_int
from vit_patching.patching.caap import (
    DEFAULT_DIRECTION, DEFAULT_NEUTRAL, DEFAULT_READOUT, DIRECTIONS, NEUTRALS, READOUTS, SITES, caap, default_window,
)

from .dataset import ImageSet
from .gallery import write_gallery
from .sharding import atomic_write_bytes, chunk_ranges, digest, dist_rank_world, model_digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = ["CAAPRunConfig", "merge_caap_chunks", "run_caap_dataset", "run_caap_shard"]

#: Longest side of the thumbnails stored with each chunk (for the gallery; the maps keep full resolution).
THUMB_SIDE = 96


@dataclass
class CAAPRunConfig:
    """CAAP settings of a dataset run (see :func:`vit_patching.patching.caap.caap`) and its chunking.

    ``batch_size`` is a performance setting (rows per forward, an int or ``"auto"``) and not part of the chunk
    fingerprint; everything else is.
    """

    window: tuple[int, int] | None = None
    neutral: str = DEFAULT_NEUTRAL
    site: str = "resid_pre"
    readout: str = DEFAULT_READOUT
    include_prefix: bool = False
    upsample: str = "nearest"
    direction: str = DEFAULT_DIRECTION
    chunk_size: int = 16
    batch_size: int | str = 64

    def __post_init__(self) -> None:
        check_choice(self.neutral, [n for n in NEUTRALS if n != "mean_activations"], "neutral")
        check_choice(self.site, list(SITES), "site")
        check_choice(self.readout, READOUTS, "readout")
        check_bool(self.include_prefix, "include_prefix")
        check_choice(self.direction, DIRECTIONS, "direction")
        check_choice(self.upsample, ("nearest", "bilinear"), "upsample")
        check_positive_int(self.chunk_size, "chunk_size")
        if self.batch_size != "auto":
            check_positive_int(self.batch_size, "batch_size")

    def fingerprinted(self, n_layers: int) -> dict[str, Any]:
        """The settings that decide the numbers (window resolved), as stored in every chunk's fingerprint."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("chunk_size")  # the chunk range is part of the file name and of the image digest
        d["window"] = list(default_window(n_layers) if self.window is None else self.window)
        if d["direction"] == DEFAULT_DIRECTION:  # runs made before directions existed keep their fingerprints
            d.pop("direction")
        return d


def _chunk_path(out_dir: Path, s: int, e: int) -> Path:
    return out_dir / "chunks" / f"{s:06d}-{e:06d}.safetensors"


class _Run:
    def __init__(self, model: "HookedViT", images: ImageSet, cfg: CAAPRunConfig, out_dir: str | os.PathLike):
        from vit_patching import __version__

        self.model, self.images, self.cfg, self.out_dir = model, images, cfg, Path(out_dir)
        self.settings = cfg.fingerprinted(model.cfg.n_layers)
        self.base = {"model": model_digest(model), "settings": self.settings, "version": __version__}
        self.chunks = chunk_ranges(len(images), cfg.chunk_size)

    def fingerprint(self, s: int, e: int) -> str:
        return digest(self.base, s, e, self.images.chunk_key(s, e))

    def load(self, s: int, e: int) -> dict[str, Tensor] | None:
        """The chunk's tensors if its file exists, reads and carries the expected fingerprint; else ``None``."""
        from safetensors import safe_open

        path = _chunk_path(self.out_dir, s, e)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") != self.fingerprint(s, e):
                    logger.info("chunk [%d, %d): stale fingerprint, recomputing", s, e)
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # truncated / corrupt file: recompute it
            logger.warning("chunk [%d, %d): unreadable (%s), recomputing", s, e, err)
            return None

    def compute(self, s: int, e: int) -> None:
        from safetensors.torch import save

        from vit_patching.images import to_pixels

        model, cfg = self.model, self.cfg
        x, labels = self.images.load(model, s, e)
        batch_size = cfg.batch_size
        if batch_size == "auto":
            from vit_patching.patching.memory import auto_batch_size

            batch_size = auto_batch_size(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            attr = caap(
                model, x, None, tuple(self.settings["window"]), neutral=cfg.neutral, site=cfg.site,
                readout=cfg.readout, include_prefix=cfg.include_prefix, direction=cfg.direction, upsample=cfg.upsample,
                batch_size=batch_size,
            )
        seconds = time.perf_counter() - t0
        pix = to_pixels(x, model.cfg.data_config)
        scale = THUMB_SIDE / max(pix.shape[-2:])
        if scale < 1:
            pix = torch.nn.functional.interpolate(pix, scale_factor=scale, mode="area")
        tensors = {
            "map": attr.map.float().contiguous(), "target": attr.target.long().cpu().contiguous(),
            "label": (torch.full((e - s,), -1) if labels is None else labels).long().contiguous(),
            "source_logits": attr.source_logits.float().contiguous(),
            "source_score": attr.source_score.float().contiguous(),
            "neutral_score": attr.neutral_score.float().contiguous(),
            "thumb": (pix * 255).round().to(torch.uint8).contiguous(),
        }
        meta = {"fingerprint": self.fingerprint(s, e), "seconds": f"{seconds:.6f}", "batch_size": str(batch_size)}
        atomic_write_bytes(_chunk_path(self.out_dir, s, e), save(tensors, metadata=meta))


def run_caap_shard(
    model: "HookedViT",
    images: ImageSet,
    out_dir: str | os.PathLike,
    cfg: CAAPRunConfig | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    resume: bool = True,
    progress: bool = False,
    stop_after: int | None = None,
) -> dict[str, int]:
    """Compute and save this process's chunks (``rank, rank + world_size, ...``); skip those already valid.

    Args:
        model: a HookedViT with a classification head.
        images: the image set.
        out_dir: output folder (chunk files go to ``out_dir/chunks``).
        cfg: CAAP settings and chunking (default :class:`CAAPRunConfig`).
        rank: this process's index.
        world_size: number of processes.
        resume: keep chunks whose saved file validates; ``False`` recomputes every chunk.
        progress: tqdm bar over chunks (with ETA).
        stop_after: raise ``KeyboardInterrupt`` after computing this many chunks (simulates a kill; for tests).

    Returns:
        ``{"computed": k, "skipped": j}``.

    Example:
        >>> run_caap_shard(model, zoo_images("shapes", n=16), "out/caap", CAAPRunConfig(chunk_size=4), rank=1, world_size=2)
        {'computed': 2, 'skipped': 0}
    """
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    run = _Run(model, images, cfg or CAAPRunConfig(), out_dir)
    mine = run.chunks[rank::world_size]
    counts = {"computed": 0, "skipped": 0}
    from tqdm.auto import tqdm

    for s, e in tqdm(mine, desc=f"CAAP rank {rank}", unit="chunk", disable=not progress):
        if resume and run.load(s, e) is not None:
            counts["skipped"] += 1
            continue
        run.compute(s, e)
        counts["computed"] += 1
        if stop_after is not None and counts["computed"] >= stop_after:
            raise KeyboardInterrupt(f"stop_after={stop_after} chunks (simulated kill)")
    logger.info("rank %d/%d: %s", rank, world_size, counts)
    return counts


def merge_caap_chunks(
    model: "HookedViT", images: ImageSet, out_dir: str | os.PathLike, cfg: CAAPRunConfig | None = None,
    *, title: str = "CAAP gallery",
) -> dict[str, Path]:
    """Merge every chunk into ``maps.safetensors``, ``results.csv``, ``settings.json`` and ``gallery.html``.

    Raises:
        RuntimeError: naming the chunks that are missing or do not validate.

    Example:
        >>> paths = merge_caap_chunks(model, images, "out/caap")
        >>> paths["table"].name
        'results.csv'
    """
    from safetensors.torch import save

    cfg = cfg or CAAPRunConfig()
    run = _Run(model, images, cfg, out_dir)
    parts, bad = [], []
    for s, e in run.chunks:
        t = run.load(s, e)
        (bad.append(f"[{s}, {e})") if t is None else parts.append(t))
    if bad:
        raise RuntimeError(f"chunks missing or stale in {str(run.out_dir / 'chunks')!r}: {', '.join(bad[:10])}; run the shards first")
    merged = {k: torch.cat([p[k] for p in parts]).contiguous() for k in parts[0] if k != "thumb"}
    out = run.out_dir
    paths = {
        "maps": atomic_write_bytes(out / "maps.safetensors", save(merged, metadata={"fingerprint": digest(run.base)})),
    }
    probs = merged["source_logits"].softmax(-1)
    pred = probs.argmax(-1)
    m = merged["map"].flatten(1)
    rows = []
    for i, name in enumerate(images.names):
        label = int(merged["label"][i])
        rows.append({
            "index": i, "name": name, "label": "" if label < 0 else label, "predicted": int(pred[i]),
            "probability": round(float(probs[i, pred[i]]), 6), "target": int(merged["target"][i]),
            "source_score": float(merged["source_score"][i]), "neutral_score": float(merged["neutral_score"][i]),
            "map_max": float(m[i].max()), "map_mean": float(m[i].mean()), "map_min": float(m[i].min()),
        })
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths["table"] = atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    settings = {"caap": run.settings, "model_digest": run.base["model"], "data": images.source,
                "chunk_size": cfg.chunk_size, "n_images": len(images), "version": run.base["version"]}
    paths["settings"] = atomic_write_bytes(out / "settings.json", json.dumps(settings, indent=1, default=str).encode())
    thumbs = torch.cat([p["thumb"] for p in parts])
    settings["caap"] = {**run.settings, "direction": cfg.direction}
    if cfg.direction == "noising":
        legend = ("Direction: noising (each neutral patch written into the image's run; the map is the score drop). "
                  "Overlay: map minus its median; red = a larger drop (the patch is needed), blue = a smaller one.")
    else:
        legend = ("Direction: denoising (each image patch written into the neutral context's run; the map is the "
                  "patched score). Overlay: map minus its median; red above, blue below.")
    paths["gallery"] = write_gallery(out / "gallery.html", title, rows, thumbs, merged["map"], settings, legend=legend)
    return paths


def _wait_for_peers(run_dir: Path, check: Any, rank: int, world_size: int, timeout_s: float) -> None:
    import torch.distributed as dist

    if world_size == 1:
        return
    if dist.is_available() and "MASTER_ADDR" in os.environ:
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()
        return
    if rank != 0:  # only rank 0 merges
        return
    deadline = time.monotonic() + timeout_s  # plain RANK/WORLD_SIZE subprocesses: poll for the peers' files
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 waited {timeout_s:.0f} s for the other ranks' chunks in {str(run_dir)!r}")
        time.sleep(0.2)


def run_caap_dataset(
    model: "HookedViT",
    images: ImageSet,
    out_dir: str | os.PathLike,
    cfg: CAAPRunConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = False,
    title: str = "CAAP gallery",
    wait_timeout_s: float = 3600.0,
) -> dict[str, Path] | None:
    """This process's shard (rank/world from the environment), then, on rank 0, the merge.

    Returns:
        The written paths on rank 0 (``maps``, ``table``, ``settings``, ``gallery``); ``None`` on other ranks.

    Example:
        >>> paths = run_caap_dataset(model, zoo_images("shapes", n=16), "out/caap", CAAPRunConfig(chunk_size=8))
        >>> paths["gallery"].name
        'gallery.html'
    """
    cfg = cfg or CAAPRunConfig()
    rank, world = dist_rank_world()
    run_caap_shard(model, images, out_dir, cfg, rank=rank, world_size=world, resume=resume, progress=progress)
    run = _Run(model, images, cfg, out_dir)
    _wait_for_peers(run.out_dir, lambda: all(run.load(s, e) is not None for s, e in run.chunks), rank, world, wait_timeout_s)
    if rank != 0:
        return None
    return merge_caap_chunks(model, images, out_dir, cfg, title=title)

"""CAAP over a whole image set: sharded across processes, resumable per chunk, merged into maps, a table, a gallery.

Layout of ``out_dir``::

    chunks/000000-000008.safetensors   one file per chunk of images (written atomically; see runs.chunks)
    maps.safetensors                   merged: map [n, gh, gw], target, label, status, source/neutral score, logits
    results.csv                        one row per image: name, label, prediction, scores, neutral, status, warning
    settings.json                      CAAP settings, model digest, data source, batch size, neutral choices
    gallery.html                       offline gallery (thumbnails with overlays, sortable columns)
    .lock                              while a run writes the folder: its pid and host (see runs.lock)

Why safetensors: it is already a dependency (weights), it cannot execute code on load (unlike pickle), it is
mmap-able, and it stores string metadata, which carries each chunk's fingerprint (model weights digest + CAAP
settings + the chunk's image bytes) and per-image strings. A chunk whose file is missing, unreadable (killed
mid-write, truncated), whose fingerprint or batch size differs, or whose contents do not validate is recomputed;
every other chunk is kept. Chunks do not depend on the number of processes, so a sharded run writes the same
numbers as one process. Images are read or generated one chunk at a time: memory is bounded by the chunk.

Run sharded with ``torchrun --nproc_per_node 2 ...`` or ``accelerate launch ...`` (``RANK`` / ``WORLD_SIZE`` are
read from the environment). Each rank computes its chunks; rank 0 then waits for the other ranks' chunk files
and merges. It gives up, with one line, when no new chunk has appeared for ``wait_timeout_s`` seconds (default
:data:`DEFAULT_WAIT_TIMEOUT_S`, or the environment variable ``VIT_PATCHING_WAIT_TIMEOUT``; the CLI's
``--wait-timeout``): a rank that is missing or crashed never leaves rank 0 waiting silently.

Example:
    >>> from vit_patching.zoo import load_model
    >>> out = run_caap_dataset(load_model("toy-shapes"), zoo_images("shapes", n=16), "out/caap",
    ...                        CAAPRunConfig(chunk_size=8))
    >>> sorted(out)[:2]
    ['gallery', 'maps']
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from vit_patching.checks import check_positive_number

from .chunk_run import THUMB_SIDE, CAAPRunConfig, ChunkRun
from .dataset import ImageSet
from .lock import check_rank, compute_shard, run_lock
from .merge import finish_staged_merge, merge_caap_chunks, merge_run
from .sharding import dist_rank_world

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = [
    "CAAPRunConfig", "DEFAULT_WAIT_TIMEOUT_S", "PeerWaitError", "THUMB_SIDE", "WAIT_TIMEOUT_ENV", "merge_caap_chunks",
    "run_caap_dataset", "run_caap_shard", "wait_for_peers", "wait_timeout",
]

#: Seconds rank 0 waits for a new chunk of the other ranks before it gives up.
DEFAULT_WAIT_TIMEOUT_S = 1800.0
#: Environment variable overriding :data:`DEFAULT_WAIT_TIMEOUT_S`.
WAIT_TIMEOUT_ENV = "VIT_PATCHING_WAIT_TIMEOUT"


class PeerWaitError(TimeoutError):
    """Rank 0 waited too long for the other ranks' chunks (a rank is missing or crashed)."""


def wait_timeout(value: float | None = None, env: Mapping[str, str] | None = None) -> float:
    """The peer wait in seconds: ``value``, else ``$VIT_PATCHING_WAIT_TIMEOUT``, else the default.

    Example:
        >>> wait_timeout(None, {"VIT_PATCHING_WAIT_TIMEOUT": "60"}), wait_timeout(5.0, {})
        (60.0, 5.0)
    """
    env = os.environ if env is None else env
    if value is None and env.get(WAIT_TIMEOUT_ENV, "").strip():
        try:
            value = float(env[WAIT_TIMEOUT_ENV])
        except ValueError:
            raise ValueError(f"{WAIT_TIMEOUT_ENV}: expected seconds (a positive number), got {env[WAIT_TIMEOUT_ENV]!r}") from None
        return check_positive_number(value, WAIT_TIMEOUT_ENV)
    return DEFAULT_WAIT_TIMEOUT_S if value is None else check_positive_number(value, "wait_timeout_s")


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

    Raises:
        vit_patching.runs.lock.RunLockError: another run writes ``out_dir`` with other settings.

    Example:
        >>> run_caap_shard(model, zoo_images("shapes", n=16), "out/caap", CAAPRunConfig(chunk_size=4), rank=1, world_size=2)
        {'computed': 2, 'skipped': 0}
    """
    check_rank(rank, world_size)  # before the run is set up
    run = ChunkRun(model, images, cfg or CAAPRunConfig(), out_dir)
    return compute_shard(run, rank, world_size, resume=resume, progress=progress, stop_after=stop_after, desc="CAAP")


def wait_for_peers(run_dir: Path, count: Callable[[], int], total: int, world_size: int, timeout_s: float) -> None:
    """Rank 0: poll until ``count()`` (chunks present) reaches ``total``; fail after ``timeout_s`` without progress.

    A plain file poll for torchrun and bare ``RANK``/``WORLD_SIZE`` alike: unlike a collective barrier, it tells a
    slow rank (new chunks keep appearing) from a crashed one (none for ``timeout_s``). Shared by every sharded
    run (CAAP, :func:`vit_patching.circuits.dataset.score_edges_dataset`).

    Example:
        >>> wait_for_peers(Path("out"), lambda: 3, 3, 2, 1.0)   # every chunk present: returns at once
    """
    last, since = count(), time.monotonic()
    while last < total:
        time.sleep(min(0.2, timeout_s / 10))
        now = count()
        if now > last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > timeout_s:
            raise PeerWaitError(
                f"rank 0 of {world_size}: no new chunk from the other ranks for {timeout_s:g} s ({last}/{total} chunks "
                f"in {str(run_dir / 'chunks')!r}); a rank is missing or crashed (set the wait with --wait-timeout "
                f"or {WAIT_TIMEOUT_ENV})"
            )


def run_caap_dataset(
    model: "HookedViT",
    images: ImageSet,
    out_dir: str | os.PathLike,
    cfg: CAAPRunConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = False,
    title: str = "CAAP gallery",
    wait_timeout_s: float | None = None,
    scores: str | None = None,
) -> dict[str, Path] | None:
    """This process's shard (rank/world from the environment), then, on rank 0, the merge.

    Args:
        wait_timeout_s: rank 0 gives up (:class:`PeerWaitError`) when no chunk of the other ranks has appeared for
            this many seconds; default ``$VIT_PATCHING_WAIT_TIMEOUT`` or :data:`DEFAULT_WAIT_TIMEOUT_S`.
        scores: what produced the scores, for ``settings.json`` and the gallery (default: the model's readout,
            ``model.readout.describe()``).

    Returns:
        The written paths on rank 0 (``maps``, ``table``, ``settings``, ``gallery``); ``None`` on other ranks.

    Example:
        >>> paths = run_caap_dataset(model, zoo_images("shapes", n=16), "out/caap", CAAPRunConfig(chunk_size=8))
        >>> paths["gallery"].name
        'gallery.html'
    """
    cfg = cfg or CAAPRunConfig()
    timeout_s = wait_timeout(wait_timeout_s)
    rank, world = dist_rank_world()
    run = ChunkRun(model, images, cfg, out_dir)
    with run_lock(run.out_dir, run.lock_digest, world):
        if rank == 0:
            finish_staged_merge(run.out_dir)
        run_caap_shard(model, images, out_dir, cfg, rank=rank, world_size=world, resume=resume, progress=progress)
        if rank != 0:
            return None
        if world > 1:
            wait_for_peers(run.out_dir, lambda: sum(run.present(s, e) for s, e in run.chunks), len(run.chunks),
                           world, timeout_s)
        return merge_run(run, title, scores)

"""One writer per run folder: a lock file naming its holder (pid, host, settings digest, number of ranks).

``run_lock(out_dir, settings, world_size)`` creates ``out_dir/.lock`` (complete or not at all: written to a
temporary name and hard-linked to ``.lock``, which fails if it exists). A second process that finds the lock:

* joins it when the holder runs the same settings as one rank of the same sharded run (``world_size > 1`` on
  both sides, torchrun / accelerate / ``RANK``/``WORLD_SIZE``);
* joins it when the holder is this very process (a run calls the shard and the merge, both lock);
* removes it when the holder's pid is dead on this host (a killed run's stale lock), with a warning;
* else raises :class:`RunLockError` naming the holder and the lock file.

Only the process that created the lock removes it, when its run ends (also after an exception).

Example:
    >>> import tempfile
    >>> with run_lock(tempfile.mkdtemp(), "abc", 1) as held:
    ...     held.name
    '.lock'
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLockError", "run_lock"]

LOCK_NAME = ".lock"


class RunLockError(ValueError):
    """Another live process writes this run folder with other settings (the message names it)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _create(path: Path, record: dict[str, Any]) -> bool:
    fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        try:
            os.link(tmp, path)  # atomic, and fails if the lock exists: never a half-written lock
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike, settings: str, world_size: int) -> Iterator[Path]:
    """Hold (or join) the lock of ``out_dir`` for the duration of the block; yields the lock file's path.

    Args:
        out_dir: the run folder (created).
        settings: a digest of everything that decides the results (model, settings, images).
        world_size: number of ranks of this run (1 for a single process).

    Raises:
        RunLockError: a live process on this host, or any process on another host, holds the lock with other
            settings or as another single-process run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "settings": settings, "world_size": world_size, "since": time.time()}
    owned = False
    for _ in range(10):
        if _create(path, me):
            owned = True
            break
        holder = _read(path)
        if holder is None:  # vanished between the link and the read, or not a lock of ours: look again
            time.sleep(0.05)
            if path.exists() and _read(path) is None:
                raise RunLockError(f"{str(path)!r} exists but is not a readable run lock; remove it")
            continue
        same_host = holder.get("host") == host
        if same_host and holder["pid"] == os.getpid():
            break  # this process already holds it (the run's shard, then its merge)
        if same_host and not _alive(holder["pid"]):
            logger.warning("removed the stale lock %s of pid %d (no longer running)", path, holder["pid"])
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if holder.get("settings") == settings and world_size > 1 and holder.get("world_size") == world_size:
            break  # a rank of the same sharded run
        what = "other settings" if holder.get("settings") != settings else "the same settings, as another run"
        raise RunLockError(
            f"{str(out)!r} is being written by another run (pid {holder['pid']} on host {holder.get('host')!r}, "
            f"{what}); wait for it to finish or choose another folder (if that run is gone, remove {str(path)!r})"
        )
    else:  # pragma: no cover - needs ten lock races in a row
        raise RunLockError(f"could not take the lock {str(path)!r}")
    try:
        yield path
    finally:
        if owned:
            holder = _read(path)
            if holder is not None and holder["pid"] == os.getpid() and holder.get("host") == host:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def check_rank(rank: Any, world_size: Any) -> None:
    """``0 <= rank < world_size`` (ints), else a ValueError naming both."""
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")


def compute_shard(run: Any, rank: int, world_size: int, *, resume: bool, progress: bool, stop_after: int | None,
                  desc: str) -> dict[str, int]:
    """Compute this rank's chunks of ``run`` under the run's lock: every ``world_size``-th chunk from ``rank``,
    skipping valid saved ones when ``resume``. The one shard loop of the CAAP dataset runs and the circuit
    edge-score runs; ``run`` has ``out_dir``, ``lock_digest``, ``chunks``, ``load(s, e)`` (``None`` when the chunk
    must be computed) and ``compute(s, e)``.

    Returns:
        ``{"computed": k, "skipped": j}``.

    Raises:
        ValueError: a rank outside ``[0, world_size)``.
        RunLockError: another run writes ``run.out_dir`` with other settings.
        KeyboardInterrupt: after ``stop_after`` computed chunks (tests simulate a killed run with it).
    """
    from tqdm.auto import tqdm

    check_rank(rank, world_size)
    counts = {"computed": 0, "skipped": 0}
    with run_lock(run.out_dir, run.lock_digest, world_size):
        for s, e in tqdm(run.chunks[rank::world_size], desc=f"{desc} rank {rank}", unit="chunk", disable=not progress):
            if resume and run.load(s, e) is not None:
                counts["skipped"] += 1
                continue
            run.compute(s, e)
            counts["computed"] += 1
            if stop_after is not None and counts["computed"] >= stop_after:
                raise KeyboardInterrupt(f"stop_after={stop_after} chunks (simulated kill)")
    logger.info("rank %d/%d: %s", rank, world_size, counts)
    return counts

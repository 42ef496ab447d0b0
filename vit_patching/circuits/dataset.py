"""Edge scores over many image pairs: chunked, sharded over processes, resumable, merged into one exact mean.

Built from the CAAP data-set runs' parts (:mod:`vit_patching.runs`): chunks of ``chunk_size`` consecutive pairs
(:func:`~vit_patching.runs.sharding.chunk_ranges`), rank ``r`` of ``w`` computing chunks ``r, r + w, ...``
(``RANK`` / ``WORLD_SIZE`` from ``torchrun`` / ``accelerate launch``), one lock per folder
(:func:`~vit_patching.runs.lock.run_lock`), chunk files written atomically with a fingerprint, and rank 0 waiting
for its peers with a timeout (:func:`~vit_patching.runs.caap_run.wait_for_peers`) before it merges.

Layout of ``out_dir``::

    chunks/000000-000016.safetensors   one file per chunk of pairs
    edge_scores.safetensors            merged: the mean score of every edge, the sum, the count, metrics per pair

A chunk holds the scorer's per-pair edge scores **summed over the chunk's pairs** in float64 (``sum``,
``[sender, receiver]``, NaN where the graph has no edge), the number of pairs (``count``) and each pair's clean
and corrupted metric (``clean_score`` / ``corrupted_score``, float64 ``[n]``). The merge adds the sums and counts
in float64 and divides once, so the mean does not depend on how the pairs were chunked or sharded beyond the
rounding of each pair's own score. Each chunk's fingerprint is a digest of the model weights, the settings
(scorer, its keyword arguments, metric, ablation with a digest of its reference images) and the chunk's pairs
(their bytes); a chunk whose file is missing, unreadable, stale or does not validate (:func:`validate_edge_chunk`)
is recomputed, every other chunk is kept. Chunks do not depend on the number of processes, so 2 processes write
bitwise the same chunks and merged scores as 1 (tested).

What a chunk may not depend on is refused up front: metrics are names (``"logit_diff"``, ``"logit"``,
``"prob"``; they read each pair's own predictions), a callable metric cannot be fingerprinted; the ``mean`` /
``mean_positional`` / ``optimal`` ablations need an explicit ``reference`` set (by default they would average
over each chunk's own corrupted images); ``resample`` (a derangement within the batch) is refused.

A chunk runs the scorer on its pairs as one batch, so ``chunk_size`` is also the rows per forward pass: it
decides the last bits of each score (other batch shapes round differently) and is part of the run's identity.

Example:
    >>> from vit_patching.zoo import load_model
    >>> scores = score_edges_dataset(load_model("toy-shapes"), zoo_pairs("shapes", n=64), "out/edges",
    ...                              scorer="eap_ig", chunk_size=16, steps=5)
    >>> scores.top(3)
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vit_patching import __version__
from vit_patching.checks import check_bool, check_choice, check_finite, check_positive_int
from vit_patching.model import HookedViT
from vit_patching.patching.engine import result_dtype
from vit_patching.runs.caap_run import wait_for_peers, wait_timeout
from vit_patching.runs.chunks import chunk_path, read_chunk, read_chunk_header
from vit_patching.runs.lock import compute_shard, run_lock
from vit_patching.runs.sharding import atomic_write_bytes, chunk_ranges, digest, dist_rank_world, model_digest

from .common import METRIC_NAMES
from .eap import eap, eap_ig
from .graph import EdgeScores, Graph
from .interventions import Ablation, resolve_ablation
from .pairs import PairSet, folder_pairs, image_pairs, zoo_pairs
from .scorers import atp_graddrop, eap_ig_activations, information_flow_routes

logger = logging.getLogger(__name__)

__all__ = ["EdgeScoreRun", "MERGED_NAME", "SCORERS", "PairSet", "folder_pairs", "image_pairs", "load_edge_scores",
           "score_edges_dataset", "validate_edge_chunk", "zoo_pairs"]

#: Scorers a data-set run can use, by name (each ``fn(model, clean, corrupted, metric, **kwargs) -> EdgeScores``).
SCORERS: dict[str, Callable[..., EdgeScores]] = {
    "eap": eap, "eap_ig": eap_ig, "eap_ig_activations": eap_ig_activations, "atp_graddrop": atp_graddrop,
    "ifr": information_flow_routes,
}
#: The merged result's file name in ``out_dir``.
MERGED_NAME = "edge_scores.safetensors"
_PER_CHUNK_ONLY = ("ablation", "reference", "by_pos")  # set by the run itself, or not mergeable (by_pos)
_KEYS = ("clean_score", "corrupted_score", "count", "sum")


def _check_ablation(scorer: str, ablation: Any, reference: Tensor | None) -> Ablation:
    abl = resolve_ablation(ablation, reference)
    if "ablation" not in inspect.signature(SCORERS[scorer]).parameters:
        if abl.kind != "corrupted":
            raise ValueError(f"ablation: scorer {scorer!r} takes no ablation (expected 'corrupted'), got {abl.kind!r}")
        return abl
    if abl.kind == "resample":
        raise ValueError("ablation: expected one of ['corrupted', 'zero', 'mean', 'mean_positional', 'optimal'] for "
                         "a data-set run, got 'resample' (it draws partners within each chunk, so the scores would "
                         "depend on the chunking)")
    if abl.kind in ("mean", "mean_positional", "optimal") and abl.reference is None:
        raise ValueError(f"reference: expected reference images [N, C, H, W] for ablation {abl.kind!r} in a data-set "
                         "run (without them each chunk would average its own corrupted images), got None")
    if abl.fit_metric is not None:
        raise ValueError("ablation: expected fit_metric=None in a data-set run (a callable cannot be fingerprinted "
                         f"for resume), got {abl.fit_metric!r}")
    return abl


def _check_kwargs(scorer: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(SCORERS[scorer]).parameters
    allowed = sorted(k for k, p in params.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _PER_CHUNK_ONLY)
    for k, v in kwargs.items():
        if k not in allowed:
            raise ValueError(f"{k}: not a setting of scorer {scorer!r} in a data-set run; expected one of {allowed}")
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise ValueError(f"{k}: expected a plain value (int, float, str, bool or None: it is fingerprinted for "
                             f"resume), got {type(v).__name__}")
    return dict(sorted(kwargs.items()))


def validate_edge_chunk(tensors: dict[str, Tensor], meta: dict[str, str], n: int, graph: Graph) -> str | None:
    """Why a loaded edge-score chunk cannot be merged (``None`` if it is complete and consistent).

    Checks the keys, dtypes and shapes, ``count == n``, a finite sum on every edge and NaN off the graph's edges,
    finite metrics, the ``metric`` / ``method`` / ``options`` metadata, and the ``content`` digest of the tensors
    (a value edited after the chunk was written is caught even when it looks plausible). The fingerprint is
    checked by the caller.

    Example:
        >>> validate_edge_chunk({}, {}, 2, Graph.of(model))[:5]
        'keys:'
    """
    if sorted(tensors) != sorted(_KEYS):
        return f"keys: expected {sorted(_KEYS)}, got {sorted(tensors)}"
    spec = {"sum": (torch.float64, tuple(graph.mask.shape)), "count": (torch.int64, (1,)),
            "clean_score": (torch.float64, (n,)), "corrupted_score": (torch.float64, (n,))}
    for key, (dtype, shape) in spec.items():
        t = tensors[key]
        if t.dtype != dtype or tuple(t.shape) != shape:
            return f"{key}: expected {dtype} of shape {list(shape)}, got {t.dtype} of shape {list(t.shape)}"
    if int(tensors["count"]) != n:
        return f"count: expected {n} pairs, got {int(tensors['count'])}"
    total = tensors["sum"]
    if not bool(torch.isfinite(total[graph.mask]).all()) or not bool(total[~graph.mask].isnan().all()):
        return "sum: expected finite values on the graph's edges and NaN elsewhere"
    for key in ("clean_score", "corrupted_score"):
        if not bool(torch.isfinite(tensors[key]).all()):
            return f"{key}: expected finite values, got NaN or infinity"
    if meta.get("content") != _content(tensors):
        return "metadata 'content': the tensors do not match the digest they were written with"
    try:
        options = json.loads(meta.get("options", ""))
    except ValueError:
        return "metadata 'options': expected JSON"
    if not isinstance(options, dict) or not meta.get("metric") or not meta.get("method"):
        return "metadata: expected 'metric', 'method' and 'options' (a JSON object)"
    return None


def _content(tensors: dict[str, Tensor]) -> str:
    """The digest of a chunk's tensors, stored in its metadata when written."""
    return digest(*[tensors[k] for k in _KEYS])


class EdgeScoreRun:
    """One data-set run's chunks: fingerprints, computing and loading a chunk, this rank's shard and the merge.

    Arguments as :func:`score_edges_dataset` (checked here, before any compute).

    Example:
        >>> run = EdgeScoreRun(model, zoo_pairs("shapes", n=6), "out/edges", scorer="eap", chunk_size=2)
        >>> run.chunks
        [(0, 2), (2, 4), (4, 6)]
    """

    def __init__(self, model: HookedViT, pairs: PairSet, out_dir: str | os.PathLike, *, scorer: str = "eap_ig",
                 metric: str = "logit_diff", chunk_size: int = 16, ablation: str | Ablation = "corrupted",
                 reference: Tensor | None = None, **scorer_kwargs: Any):
        if not isinstance(model, HookedViT):
            raise TypeError(f"model: expected a HookedViT, got {type(model).__name__}")
        if not isinstance(pairs, PairSet):
            raise TypeError("pairs: expected a PairSet (zoo_pairs, folder_pairs, image_pairs), "
                            f"got {type(pairs).__name__}")
        check_choice(scorer, list(SCORERS), "scorer")
        if callable(metric):
            raise ValueError(f"metric: expected one of {list(METRIC_NAMES)} in a data-set run (a callable cannot be "
                             f"fingerprinted for resume), got {metric!r}")
        check_choice(metric, METRIC_NAMES, "metric")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.ablation = _check_ablation(scorer, ablation, reference)
        self.kwargs = _check_kwargs(scorer, scorer_kwargs)
        self.model, self.pairs, self.out_dir = model, pairs, Path(out_dir)
        self.scorer, self.metric, self.graph = scorer, metric, Graph.of(model)
        a = self.ablation
        ref = None if a.reference is None else digest(a.reference)
        abl = {"kind": a.kind, "reference": ref, "steps": a.steps, "lr": a.lr} if a.kind == "optimal" else \
            {"kind": a.kind, "reference": ref}
        self.settings = {"scorer": scorer, "metric": metric, "ablation": abl, "kwargs": self.kwargs}
        self.base = {"model": model_digest(model), "settings": self.settings, "version": __version__}
        self.chunks = chunk_ranges(len(pairs), self.chunk_size)
        self._keys: dict[tuple[int, int], str | None] = {}

    @property
    def lock_digest(self) -> str:
        """Everything that decides the results (model, settings, pairs, chunking): the lock's identity."""
        return digest(self.base, self.pairs.source, len(self.pairs), self.chunk_size)

    def expected_key(self, s: int, e: int) -> str | None:
        """The key of pairs ``[s, e)`` as they are now (cached for this run); ``None`` if they cannot be read."""
        if (s, e) not in self._keys:
            try:
                self._keys[(s, e)] = self.pairs.chunk_key(s, e)
            except OSError:
                self._keys[(s, e)] = None
        return self._keys[(s, e)]

    def fingerprint(self, s: int, e: int, key: str | None) -> str:
        return digest(self.base, s, e, key)

    def present(self, s: int, e: int) -> bool:
        """The chunk file exists and carries this run's fingerprint (cheap: the header only)."""
        meta = read_chunk_header(chunk_path(self.out_dir, s, e))
        return meta is not None and meta.get("fingerprint") == self.fingerprint(s, e, self.expected_key(s, e))

    def load(self, s: int, e: int) -> tuple[dict[str, Tensor], dict[str, str]] | None:
        """The chunk's tensors and metadata if its file reads, is this run's and validates; else ``None``."""
        path = chunk_path(self.out_dir, s, e)
        read = read_chunk(path, self.fingerprint(s, e, self.expected_key(s, e)))
        if isinstance(read, str):
            if read != "missing":
                logger.warning("chunk [%d, %d): %s, recomputing", s, e, read)
            return None
        problem = validate_edge_chunk(*read, e - s, self.graph)
        if problem is not None:
            logger.warning("chunk [%d, %d) in %s does not validate (%s); recomputing", s, e, path, problem)
            return None
        return read

    def compute(self, s: int, e: int) -> None:
        """Score pairs ``[s, e)`` as one batch and save the chunk (sum over its pairs) atomically."""
        from safetensors.torch import save

        clean, corrupted, key = self.pairs.load(self.model, s, e)
        kwargs = dict(self.kwargs)
        if "ablation" in inspect.signature(SCORERS[self.scorer]).parameters:
            kwargs["ablation"] = self.ablation
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = SCORERS[self.scorer](self.model, clean, corrupted, self.metric, **kwargs)
        for w in caught:  # the scorer numbers a chunk's pairs from 0: say which pairs they are
            warnings.warn(f"pairs [{s}, {e}) (chunk row i is pair {s} + i): {w.message}", w.category, stacklevel=2)
        per_pair = result.per_image.to(torch.float64)  # [sender receiver n]: each pair's own score, exactly
        check_finite(per_pair[self.graph.mask].T, f"edge scores of pairs [{s}, {e}) (rows: pair - {s})")
        tensors = {"sum": per_pair.sum(-1).contiguous(), "count": torch.tensor([e - s], dtype=torch.int64),
                   "clean_score": result.clean_score.to(torch.float64).contiguous(),
                   "corrupted_score": result.corrupted_score.to(torch.float64).contiguous()}
        meta = {"fingerprint": self.fingerprint(s, e, key), "content": _content(tensors),
                "seconds": f"{time.perf_counter() - t0:.6f}", "metric": result.metric, "method": result.method,
                "options": json.dumps(result.options, sort_keys=True, default=str)}
        atomic_write_bytes(chunk_path(self.out_dir, s, e), save(tensors, metadata=meta))

    def shard(self, rank: int = 0, world_size: int = 1, *, resume: bool = True, progress: bool = False,
              stop_after: int | None = None) -> dict[str, int]:
        """Compute and save this process's chunks (``rank, rank + world_size, ...``); skip those already valid.

        Args:
            rank: this process's index.
            world_size: number of processes.
            resume: keep chunks whose saved file validates; ``False`` recomputes every chunk.
            progress: tqdm bar over chunks.
            stop_after: raise ``KeyboardInterrupt`` after computing this many chunks (simulates a kill; tests).

        Returns:
            ``{"computed": k, "skipped": j}``.

        Example:
            >>> run.shard(rank=1, world_size=2)
            {'computed': 1, 'skipped': 0}
        """
        check_bool(resume, "resume")
        check_bool(progress, "progress")
        return compute_shard(self, rank, world_size, resume=resume, progress=progress, stop_after=stop_after,
                             desc="edge scores")

    def merge(self) -> EdgeScores:
        """Add every chunk's sums and counts (computing chunks missing or invalid), save and return the mean.

        Writes ``out_dir/edge_scores.safetensors`` atomically: ``scores`` (float64 mean), ``sum``, ``count``,
        ``clean_score``, ``corrupted_score``; metadata: senders, receivers, metric, method, options, settings.
        """
        from safetensors.torch import save

        total = torch.zeros(self.graph.mask.shape, dtype=torch.float64)
        count, clean, corrupted, meta = 0, [], [], {}
        with run_lock(self.out_dir, self.lock_digest, 1):  # joined when this process already holds it
            for s, e in self.chunks:
                loaded = self.load(s, e)
                if loaded is None:
                    self.compute(s, e)
                    loaded = self.load(s, e)
                    if loaded is None:  # pragma: no cover - a chunk just written that does not read back
                        raise RuntimeError(f"chunk [{s}, {e}) in {str(self.out_dir)!r} does not read back")
                tensors, meta = loaded
                total += tensors["sum"]
                count += int(tensors["count"])
                clean.append(tensors["clean_score"])
                corrupted.append(tensors["corrupted_score"])
            mean = total / count
            options = {**json.loads(meta["options"]), "scorer": self.scorer, "n_pairs": count,
                       "chunk_size": self.chunk_size, "pairs": self.pairs.source}
            out = {"scores": mean, "sum": total, "count": torch.tensor([count], dtype=torch.int64),
                   "clean_score": torch.cat(clean), "corrupted_score": torch.cat(corrupted)}
            info = {"fingerprint": self.lock_digest, "senders": json.dumps(self.graph.senders),
                    "receivers": json.dumps(self.graph.receivers), "metric": meta["metric"], "method": meta["method"],
                    "options": json.dumps(options, sort_keys=True, default=str),
                    "settings": json.dumps(self.base, sort_keys=True, default=str)}
            atomic_write_bytes(self.out_dir / MERGED_NAME, save(out, metadata=info))
        return _edge_scores(self.model, self.graph, out, info)


def _edge_scores(model: HookedViT, graph: Graph, out: dict[str, Tensor], info: dict[str, str]) -> EdgeScores:
    dtype = result_dtype(model.dtype)
    return EdgeScores(graph, out["scores"].to(dtype), None, out["clean_score"].to(dtype),
                      out["corrupted_score"].to(dtype), info["metric"], info["method"], None, json.loads(info["options"]))


def load_edge_scores(model: HookedViT, path: str | os.PathLike) -> EdgeScores:
    """The merged result of a data-set run (``out_dir/edge_scores.safetensors``) as :class:`EdgeScores` again.

    Raises:
        ValueError: ``path`` is not a merged edge-score file, or was computed with another model (weights digest).

    Example:
        >>> scores = load_edge_scores(model, "out/edges/edge_scores.safetensors")   # doctest: +SKIP
        >>> scores.options["n_pairs"]
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = dict(f.metadata() or {})
            out = {k: f.get_tensor(k) for k in f.keys()}
        settings = json.loads(info["settings"])
    except Exception as err:
        raise ValueError(f"path: expected a merged edge-score file ({MERGED_NAME}), got {str(path)!r} ({err})") from err
    if settings.get("model") != model_digest(model):
        raise ValueError(f"model: {str(path)!r} was computed with another model (weights digest "
                         f"{settings.get('model')}, this model's {model_digest(model)})")
    return _edge_scores(model, Graph.of(model), out, info)


def score_edges_dataset(
    model: HookedViT,
    pairs: PairSet,
    out_dir: str | os.PathLike,
    *,
    scorer: str = "eap_ig",
    metric: str = "logit_diff",
    chunk_size: int = 16,
    ablation: str | Ablation = "corrupted",
    reference: Tensor | None = None,
    resume: bool = True,
    progress: bool = True,
    wait_timeout_s: float | None = None,
    **scorer_kwargs: Any,
) -> EdgeScores | None:
    """Edge scores of ``scorer`` averaged over every pair of ``pairs``: this process's chunks, then on rank 0 the
    merge (module docstring).

    Args:
        model: A HookedViT.
        pairs: The (clean, corrupted) pairs: :func:`zoo_pairs`, :func:`folder_pairs`, :func:`image_pairs`.
        out_dir: The run folder (``chunks/`` and ``edge_scores.safetensors``).
        scorer: A name from :data:`SCORERS`.
        metric: ``"logit_diff"``, ``"logit"`` or ``"prob"`` (of each pair's own predictions).
        chunk_size: Pairs per chunk, scored as one batch.
        ablation: As the scorers' (``resample`` refused; ``mean`` / ``mean_positional`` / ``optimal`` need
            ``reference``); ``ifr`` takes none.
        reference: Reference images for the ablations that use them, the same for every chunk.
        resume: Keep chunks already saved that validate.
        progress: A tqdm bar over this rank's chunks.
        wait_timeout_s: Rank 0 gives up (:class:`~vit_patching.runs.caap_run.PeerWaitError`) when no chunk of the
            other ranks has appeared for this many seconds; default ``$VIT_PATCHING_WAIT_TIMEOUT`` or 1800.
        **scorer_kwargs: The scorer's own settings (``steps=5`` for ``eap_ig``), plain values.

    Returns:
        On rank 0 the mean :class:`~vit_patching.circuits.graph.EdgeScores` (``per_image`` None; ``clean_score``
        / ``corrupted_score`` of every pair); ``None`` on the other ranks.

    Raises:
        ValueError: a bad argument (named), before any compute.
        vit_patching.runs.lock.RunLockError: another run writes ``out_dir`` with other settings.

    Example:
        >>> scores = score_edges_dataset(model, zoo_pairs("shapes", n=32), "out/edges", scorer="eap",
        ...                              chunk_size=8, progress=False)
        >>> scores.options["n_pairs"]
        32
    """
    timeout_s = wait_timeout(wait_timeout_s)
    run = EdgeScoreRun(model, pairs, out_dir, scorer=scorer, metric=metric, chunk_size=chunk_size, ablation=ablation,
                       reference=reference, **scorer_kwargs)
    rank, world = dist_rank_world()
    with run_lock(run.out_dir, run.lock_digest, world):
        run.shard(rank, world, resume=resume, progress=progress)
        if rank != 0:
            return None
        if world > 1:
            wait_for_peers(run.out_dir, lambda: sum(run.present(s, e) for s, e in run.chunks), len(run.chunks),
                           world, timeout_s)
        return run.merge()

"""Running a benchmark: fixed chunks of images, one JSON file of per-image results per (method, chunk), resumable,
sharded over processes, merged in image order.

A process with rank ``r`` of ``w`` takes chunks ``r, r + w, r + 2w, ...``. A saved file is reused only if it
validates completely (a JSON object with every field, of the right type and one entry per image of its chunk) and
its fingerprint (model weights, chunk images, labels, masks, method settings, metric settings) matches; anything
else is recomputed, with a logged warning for files that exist but do not validate.

Example:
    >>> from vit_patching.benchmark import BenchmarkConfig, zoo_data
    >>> from vit_patching.zoo import load_model
    >>> import tempfile
    >>> model, data = load_model("toy-shapes"), zoo_data("toy-shapes", n=2)
    >>> cfg = BenchmarkConfig(methods=["random"], chunk_size=2)
    >>> out = tempfile.mkdtemp()
    >>> run_shard(model, data, cfg, out)
    {'computed': 1, 'skipped': 0}
    >>> merge(model, data, cfg, out).row("random", "insertion")["n"]
    2
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vit_patching import __version__
from vit_patching.attribution import get_method
from vit_patching.benchmark.config import CURVES, METRICS, SUBSTRATE_TEXT, BenchmarkConfig, chunk_ranges, pg_tolerance
from vit_patching.benchmark.data import BenchmarkData
from vit_patching.benchmark.scoring import evaluate_maps
from vit_patching.benchmark.stats import BenchmarkResult, summary_rows
from vit_patching.benchmark.substrate import resolve_insertion_substrate
from vit_patching.files import atomic_write_text
from vit_patching.images import normalization
from vit_patching.runs.sharding import digest, model_digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = ["merge", "metric_settings", "missing_partials", "model_digest", "run_shard", "validate_partial"]


def metric_settings(model: HookedViT, data: BenchmarkData, cfg: BenchmarkConfig) -> dict[str, Any]:
    """The metric protocol of a run, as recorded in its outputs (and in every chunk's fingerprint)."""
    step = "one patch per step" if cfg.unit == "patch" else "one image row of pixels per step"
    black = normalization(model.cfg.data_config) is not None
    if cfg.insertion_substrate not in SUBSTRATE_TEXT:
        raise ValueError(f"insertion_substrate: expected a resolved substrate {list(SUBSTRATE_TEXT)}, got "
                         f"{cfg.insertion_substrate!r} (resolve 'auto' with resolve_insertion_substrate first)")
    auto = f" ({cfg.insertion_auto})" if cfg.insertion_auto else ""
    return {
        "unit": cfg.unit,
        "target": cfg.target,
        "insertion": f"from {SUBSTRATE_TEXT[cfg.insertion_substrate]}{auto}, softmax prob of the target, {step}",
        "deletion": f"to {SUBSTRATE_TEXT[cfg.deletion_substrate]}, softmax prob of the target, {step}",
        "perturbation": "Chefer et al.: fractions 0.1..0.9, substrate "
        + ("black" if black else "zeros (no data config)")
        + ", top-1 vs " + ("ground-truth labels" if data.labels is not None else "the clean prediction"),
        "pointing_game_tolerance_px": pg_tolerance(cfg, data.images.shape[-2]),
        "localisation_maps": "pixel maps (patch-native maps: bilinear upsampling)",
        "ci": "95% Student-t interval of the mean over images",
    }


# ------------------------------------------------------------------------------------------ partial results
def _partial_path(out_dir: Path, method: str, start: int, end: int) -> Path:
    return out_dir / "partials" / method / f"{start:06d}-{end:06d}.json"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _numbers(x: Any) -> bool:
    return isinstance(x, list) and all(_is_number(v) for v in x)


def validate_partial(payload: Any, method: str, start: int, end: int, metrics: list[str]) -> str | None:
    """Why a loaded partial result cannot be used (``None`` if it is complete and consistent).

    Checks that it is a JSON object with every field, of the right type, for this method and chunk, with exactly
    ``end - start`` entries per image-indexed list and exactly the metrics and curves of the run.

    Example:
        >>> validate_partial([1, 2], "gae", 0, 2, ["insertion"])
        'expected a JSON object, got list'
    """
    if not isinstance(payload, dict):
        return f"expected a JSON object, got {type(payload).__name__}"
    need = {"fingerprint": str, "method": str, "start": int, "end": int, "seconds": (int, float), "settings": dict,
            "target": list, "metrics": dict, "curves": dict, "patch_maps": list}
    for key, kind in need.items():
        if key not in payload:
            return f"missing key {key!r}"
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            return f"{key!r}: expected {getattr(kind, '__name__', 'a number')}, got {type(payload[key]).__name__}"
    if (payload["method"], payload["start"], payload["end"]) != (method, start, end):
        return f"holds {payload['method']!r} [{payload['start']}, {payload['end']}), expected {method!r} [{start}, {end})"
    n = end - start
    if not (math.isfinite(payload["seconds"]) and payload["seconds"] >= 0):
        return f"'seconds': expected a finite number >= 0, got {payload['seconds']!r}"
    if sorted(payload["metrics"]) != sorted(metrics):
        return f"'metrics': expected {sorted(metrics)}, got {sorted(payload['metrics'])}"
    if sorted(payload["curves"]) != sorted(CURVES):
        return f"'curves': expected {sorted(CURVES)}, got {sorted(payload['curves'])}"
    lists = {"target": payload["target"], "patch_maps": payload["patch_maps"]}
    lists.update({f"metrics[{k!r}]": v for k, v in payload["metrics"].items()})
    lists.update({f"curves[{k!r}]": v for k, v in payload["curves"].items()})
    for key, value in lists.items():
        if not isinstance(value, list) or len(value) != n:
            got = len(value) if isinstance(value, list) else type(value).__name__
            return f"{key}: expected {n} entries (one per image), got {got}"
    for k, v in payload["metrics"].items():
        if not _numbers(v):
            return f"metrics[{k!r}]: expected numbers"
    for k, v in payload["curves"].items():
        if not all(_numbers(c) for c in v) or len({len(c) for c in v}) > 1:
            return f"curves[{k!r}]: expected one list of numbers of the same length per image"
    try:
        maps = torch.tensor(payload["patch_maps"], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return "'patch_maps': expected one [grid_h, grid_w] list of numbers per image"
    if maps.ndim != 3:
        return f"'patch_maps': expected one [grid_h, grid_w] list of numbers per image, got shape {tuple(maps.shape)}"
    return None


def _read_partial(path: Path) -> Any:
    """The decoded JSON of ``path``, ``None`` if it does not exist; raises ValueError if it cannot be decoded."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at line {e.lineno})") from None


class _Run:
    """Everything shared by the shards of one run: methods, fingerprints, chunks."""

    def __init__(self, model: HookedViT, data: BenchmarkData, cfg: BenchmarkConfig, out_dir: str | os.PathLike):
        if cfg.target == "label" and data.labels is None:
            raise ValueError("target: 'label' needs ground-truth labels; this data has none (use 'predicted')")
        # Before any method runs; the choice is part of the metric settings and so of every fingerprint.
        cfg = resolve_insertion_substrate(model, data, cfg)
        self.model, self.data, self.cfg = model, data, cfg
        self.out_dir = Path(out_dir)
        self.methods = {m: get_method(m, model, **cfg.method_options.get(m, {})) for m in cfg.methods}
        self.metric_settings = metric_settings(model, data, cfg)
        self.base = {"model": model_digest(model), "metrics": self.metric_settings, "version": __version__}
        self.chunks = chunk_ranges(len(data), cfg.chunk_size)
        self.metric_names = [k for k, spec in METRICS.items() if not spec.needs_masks or data.masks is not None]

    def fingerprint(self, method: str, s: int, e: int) -> str:
        data = self.data
        parts: list[Any] = [self.base, self.methods[method].settings, data.images[s:e]]
        parts += [None if t is None else t[s:e] for t in (data.labels, data.masks)]
        return digest(*parts)

    def load(self, method: str, s: int, e: int, *, warn: bool = True) -> dict[str, Any] | None:
        """The saved result of (method, chunk) if it validates and its fingerprint matches, else ``None``."""
        path = _partial_path(self.out_dir, method, s, e)
        try:
            payload = _read_partial(path)
        except (OSError, ValueError) as err:
            problem: str | None = str(err)
        else:
            if payload is None:
                return None
            problem = validate_partial(payload, method, s, e, self.metric_names)
        if problem is not None:
            if warn:
                logger.warning("ignoring invalid partial result %s (%s); it will be recomputed", path, problem)
            return None
        if payload["fingerprint"] != self.fingerprint(method, s, e):
            return None  # stale: other model, images or settings (not an error, the point of fingerprints)
        return payload

    def compute(self, method: str, s: int, e: int) -> dict[str, Any]:
        model, data, cfg = self.model, self.data, self.cfg
        images = data.images[s:e].to(device=model.device, dtype=model.dtype)
        labels = None if data.labels is None else data.labels[s:e]
        target = labels if cfg.target == "label" else None
        maps = self.methods[method].attribute(images, target, batch_size=cfg.batch_size)
        metrics, curves = evaluate_maps(
            model, images, maps, labels, None if data.masks is None else data.masks[s:e],
            unit=cfg.unit, batch_size=cfg.batch_size, pg_tolerance=self.metric_settings["pointing_game_tolerance_px"],
            insertion_substrate=cfg.insertion_substrate, deletion_substrate=cfg.deletion_substrate,
        )
        payload = {
            "fingerprint": self.fingerprint(method, s, e), "method": method, "start": s, "end": e,
            "seconds": maps.seconds, "device": str(model.device), "threads": torch.get_num_threads(),
            "settings": maps.settings, "target": maps.target.tolist(),
            "metrics": metrics, "curves": curves, "patch_maps": maps.patch_map.double().tolist(),
        }
        # Atomic: a reader (another shard's merge) never sees a half-written file.
        atomic_write_text(_partial_path(self.out_dir, method, s, e), json.dumps(payload, default=str))
        return payload


def run_shard(
    model: HookedViT,
    data: BenchmarkData,
    cfg: BenchmarkConfig,
    out_dir: str | os.PathLike,
    *,
    rank: int = 0,
    world_size: int = 1,
    resume: bool = True,
    progress: bool = False,
) -> dict[str, int]:
    """Compute and save every (method, chunk) of this process's shard: chunks ``rank, rank + world_size, ...``.

    Args:
        model: a HookedViT.
        data: the benchmark images.
        cfg: methods, metrics and chunking.
        out_dir: output folder (partial results go to ``out_dir/partials``).
        rank: this process's index.
        world_size: number of processes.
        resume: skip (method, chunk) pairs whose saved results validate and match; ``False`` recomputes them.
        progress: show a tqdm bar over (method, chunk) pairs.

    Returns:
        ``{"computed": k, "skipped": j}``.
    """
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    run = _Run(model, data, cfg, out_dir)
    mine = run.chunks[rank::world_size]
    with torch.no_grad():  # warm-up, so that one-off initialisation is not charged to the first method's time
        model(data.images[:1].to(device=model.device, dtype=model.dtype))
    todo = [(m, s, e) for m in cfg.methods for s, e in mine]
    counts = {"computed": 0, "skipped": 0}
    with tqdm(total=len(todo), desc=f"benchmark rank {rank}", unit="chunk", disable=not progress) as bar:
        for method, s, e in todo:
            bar.set_postfix_str(f"{method} [{s}:{e})")
            if resume and run.load(method, s, e) is not None:
                counts["skipped"] += 1
            else:
                run.compute(method, s, e)
                counts["computed"] += 1
            bar.update(1)
    logger.info("rank %d/%d: %s", rank, world_size, counts)
    return counts


def missing_partials(
    model: HookedViT, data: BenchmarkData, cfg: BenchmarkConfig, out_dir: str | os.PathLike
) -> list[tuple[str, int, int]]:
    """(method, start, end) of every chunk without a valid saved result."""
    run = _Run(model, data, cfg, out_dir)
    return [(m, s, e) for m in cfg.methods for s, e in run.chunks if run.load(m, s, e, warn=False) is None]


def merge(
    model: HookedViT,
    data: BenchmarkData,
    cfg: BenchmarkConfig,
    out_dir: str | os.PathLike,
    *,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
) -> BenchmarkResult:
    """Read every partial result of the run (waiting up to ``wait_s`` for other shards) and summarise.

    Raises:
        RuntimeError: if some (method, chunk) results are still missing or invalid after ``wait_s`` seconds.
    """
    run = _Run(model, data, cfg, out_dir)
    deadline = time.monotonic() + wait_s
    while True:
        last = time.monotonic() >= deadline
        payloads = {(m, s): run.load(m, s, e, warn=last) for m in cfg.methods for s, e in run.chunks}
        missing = [k for k, v in payloads.items() if v is None]
        if not missing or last:
            break
        logger.info("merge: waiting for %d chunk results from other processes", len(missing))
        time.sleep(poll_s)
    if missing:
        raise RuntimeError(
            f"out_dir: {len(missing)} (method, chunk) results are missing, invalid or stale, e.g. {missing[:3]}; "
            "run the remaining shards (or without --merge-only) first"
        )
    per_image: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, dict[str, list[list[float]]]] = {}
    patch_maps: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    method_settings: dict[str, Any] = {}
    for m in cfg.methods:
        parts = [payloads[(m, s)] for s, _ in run.chunks]
        per_image[m] = {k: [float(x) for p in parts for x in p["metrics"][k]] for k in run.metric_names}
        curves[m] = {k: [c for p in parts for c in p["curves"][k]] for k in CURVES}
        patch_maps[m] = torch.tensor([pm for p in parts for pm in p["patch_maps"]], dtype=torch.float64)
        seconds[m] = math.fsum(p["seconds"] for p in parts)
        method_settings[m] = parts[0]["settings"]
        if len(patch_maps[m]) != len(data):  # guaranteed by validation; a merge must never miscount images
            raise RuntimeError(f"merge: {m!r} has {len(patch_maps[m])} per-image results for {len(data)} images")
    rows = summary_rows(per_image, seconds, len(data))
    contexts = sorted({(str(p.get("device", "?")), str(p.get("threads", "?"))) for p in payloads.values()})
    timing = "; ".join(f"{d}, {t} torch thread(s) per process" for d, t in contexts)
    settings = {
        **data.source, **run.metric_settings, "chunk_size": cfg.chunk_size,
        "timing": f"attribution seconds per image (metrics excluded), measured on {timing}",
        "methods": method_settings,
    }
    return BenchmarkResult(rows, per_image, curves, patch_maps, seconds, settings)

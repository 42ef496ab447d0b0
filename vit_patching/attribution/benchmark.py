"""The attribution benchmark: methods x metrics on one model and one image set, sharded, resumable, merged.

The work is cut into fixed **chunks** of consecutive images (``chunk_size``); a process with rank ``r`` of ``w``
takes chunks ``r, r + w, r + 2w, ...``. For every (method, chunk) it computes the maps, scores them with the
metrics of :mod:`vit_patching.evaluation` and writes one JSON file of per-image results
(``partials/<method>/<first>-<last>.json``, written atomically). A file whose fingerprint (model weights, chunk
images, labels, masks, method settings, metric settings) matches is never recomputed, so an interrupted run
resumes where it stopped. Because chunks do not depend on the number of processes, a sharded run gives the
same per-image numbers, and the same table, as a single process. Merging reads every partial file in image
order and reports the mean with a 95 % Student-t confidence interval per method and metric.

Metrics (per image; the table shows the mean over images):

* ``insertion`` / ``deletion``: RISE games (:func:`~vit_patching.evaluation.insertion_auc` /
  :func:`~vit_patching.evaluation.deletion_auc`), by default with RISE's substrates (blur / zero = mean colour;
  ``insertion_substrate`` / ``deletion_substrate`` change them: where the blurred image keeps the class, as on the
  toy models, insertion from blur saturates at 1 and ``"zero"`` is the informative choice),
  softmax probability of the explained class, one patch per step (``unit="patch"``) or one image row of pixels.
* ``ins_minus_del``: insertion minus deletion.
* ``pos_perturbation`` / ``neg_perturbation``: Chefer et al.'s perturbation test
  (:func:`~vit_patching.evaluation.perturbation_test`, fractions 0.1..0.9, black substrate); per image the
  trapezoid of its 0/1 correctness curve x 100, whose mean is the set-level AUC.
* with masks: ``pointing_game`` (15 px tolerance scaled by ``H / 224``), ``energy_pg``, ``mask_iou`` (mean
  threshold) and ``mask_ap`` (foreground average precision), on the pixel maps.

Example:
    >>> cfg = BenchmarkConfig(methods=["rollout", "gae"], chunk_size=4)
    >>> data = zoo_data("toy-shapes", n=8, seed=0)
    >>> run_shard(model, data, cfg, "out/bench")            # rank/world default to a single process
    >>> result = merge(model, data, cfg, "out/bench")
    >>> result.rows[0]["method"], result.rows[0]["metric"]
    ('rollout', 'insertion')
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vit_patching.attribution.base import AttributionMaps, check_choice, check_positive_int, get_method

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "BenchmarkConfig",
    "BenchmarkData",
    "BenchmarkResult",
    "chunk_ranges",
    "evaluate_maps",
    "folder_data",
    "merge",
    "run_shard",
    "t_quantile",
    "update_docs",
    "zoo_data",
]


@dataclass(frozen=True)
class MetricSpec:
    """A column of the benchmark table."""

    label: str
    higher_is_better: bool
    needs_masks: bool = False


METRICS: dict[str, MetricSpec] = {
    "insertion": MetricSpec("Insertion AUC", True),
    "deletion": MetricSpec("Deletion AUC", False),
    "ins_minus_del": MetricSpec("Ins − Del", True),
    "pos_perturbation": MetricSpec("Pos. perturb. AUC", False),
    "neg_perturbation": MetricSpec("Neg. perturb. AUC", True),
    "pointing_game": MetricSpec("Pointing game", True, True),
    "energy_pg": MetricSpec("Energy PG", True, True),
    "mask_iou": MetricSpec("Mask IoU", True, True),
    "mask_ap": MetricSpec("Mask AP", True, True),
}
CURVES = ("insertion", "deletion", "pos_perturbation", "neg_perturbation")
_SUBSTRATES = ("blur", "zero", "mean")
_SUBSTRATE_TEXT = {
    "blur": "blur (k=11, sigma=5)", "zero": "zero (dataset-mean colour)", "mean": "each image's mean colour",
}


# --------------------------------------------------------------------------------------------------------- data
@dataclass
class BenchmarkData:
    """The images of a benchmark run, with optional labels and masks, all on the CPU.

    Attributes:
        images: normalised model inputs ``[n, C, H, W]``.
        labels: ground-truth classes ``[n]`` (scored by the perturbation test) or ``None`` (predicted classes).
        masks: evidence masks ``[n, H, W]`` (localisation metrics) or ``None``.
        names: one name per image (file names, or ``"0"``, ``"1"``, ... for generated data).
        pixels: images in [0, 1] for figures, or ``None``.
        source: a description recorded in the outputs (dataset, seed, folder, preprocessing).
    """

    images: Float[Tensor, "n channel height width"]
    labels: Int[Tensor, "n"] | None = None
    masks: Bool[Tensor, "n height width"] | None = None
    names: list[str] = field(default_factory=list)
    pixels: Float[Tensor, "n channel height width"] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if not self.names:
            self.names = [str(i) for i in range(n)]
        for name, t in (("labels", self.labels), ("masks", self.masks), ("pixels", self.pixels)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name}: expected {n} entries (one per image), got shape {tuple(t.shape)}")
        if len(self.names) != n:
            raise ValueError(f"names: expected {n} names, got {len(self.names)}")

    def __len__(self) -> int:
        return self.images.shape[0]


def zoo_data(model_name: str, n: int, seed: int = 0) -> BenchmarkData:
    """The shipped toy benchmark of zoo model ``model_name``: ``n`` held-out images with labels and masks.

    Example:
        >>> zoo_data("toy-shapes", n=4).masks.shape
        torch.Size([4, 64, 64])
    """
    from vit_patching.zoo import get_spec, load_dataset

    spec = get_spec(model_name)
    batch = load_dataset(spec.dataset, n=check_positive_int(n, "n"), seed=seed)
    return BenchmarkData(
        images=batch.images, labels=batch.labels.long(), masks=batch.masks.bool(), pixels=batch.pixels,
        source={"data": f"zoo dataset {spec.dataset!r}", "n": n, "seed": seed, "masks": "evidence masks"},
    )


_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def folder_data(model: Any, images_dir: str | os.PathLike, masks_dir: str | os.PathLike | None = None, n: int | None = None) -> BenchmarkData:
    """Images from a folder (sorted by name), preprocessed with the model's timm eval transform; optional masks.

    Masks are matched by file stem in ``masks_dir`` (any image format; non-zero = object) and go through the
    same resize and crop with nearest-neighbour interpolation.

    Example:
        >>> data = folder_data(model, "my_images/", "my_masks/", n=100)
    """
    from PIL import Image

    folder = Path(images_dir)
    if not folder.is_dir():
        raise ValueError(f"images_dir: expected a folder of images, got {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    if n is not None:
        files = files[: check_positive_int(n, "n")]
    if not files:
        raise ValueError(f"images_dir: expected image files ({', '.join(_IMAGE_EXT)}) in {str(folder)!r}, found none")
    pil = [Image.open(p) for p in files]
    images = model.preprocess(pil).cpu()
    masks = None
    if masks_dir is not None:
        by_stem = {p.stem: p for p in Path(masks_dir).iterdir() if p.suffix.lower() in _IMAGE_EXT}
        missing = [p.name for p in files if p.stem not in by_stem]
        if missing:
            raise ValueError(f"masks_dir: expected a mask for every image (same file stem), missing {missing[:5]}")
        masks = torch.stack([_mask_tensor(model, Image.open(by_stem[p.stem])) for p in files])
    dc = model.cfg.data_config or {}
    pixels = None
    if "mean" in dc and "std" in dc:
        mean, std = torch.tensor(dc["mean"]).view(1, -1, 1, 1), torch.tensor(dc["std"]).view(1, -1, 1, 1)
        pixels = (images * std + mean).clamp(0, 1)
    return BenchmarkData(
        images=images, masks=masks, names=[p.name for p in files], pixels=pixels,
        source={"data": f"folder {str(folder)!r}", "n": len(files), "masks": str(masks_dir) if masks_dir else "none",
                "preprocessing": "timm eval transform of the model's data config"},
    )


def _mask_tensor(model: Any, mask_image: Any) -> Tensor:
    from timm.data import create_transform

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.cfg.data_config.items()}
    cfg.update(interpolation="nearest", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return create_transform(**cfg, is_training=False)(mask_image.convert("RGB"))[0] > 0.5


# ------------------------------------------------------------------------------------------------------- config
@dataclass
class BenchmarkConfig:
    """What to run and how to score it.

    Attributes:
        methods: method names (see :func:`~vit_patching.attribution.available_methods`).
        method_options: per-method keyword options, e.g. ``{"rise": {"n_masks": 1000}}``.
        unit: faithfulness unit, ``"patch"`` (one patch per step, patch maps) or ``"pixel"`` (pixel maps).
        target: class explained, ``"predicted"`` (top-1, default) or ``"label"`` (ground truth; needs labels).
        chunk_size: images per chunk (the unit of sharding and of resuming).
        batch_size: forward-pass rows for the methods and the metrics.
        pg_tolerance: pointing-game tolerance in pixels; ``None`` = 15 px scaled by ``H / 224``.
        insertion_substrate: start image of the insertion game, ``"blur"`` (RISE), ``"zero"`` or ``"mean"``.
        deletion_substrate: what deleted units become, ``"zero"`` (RISE: the dataset-mean colour), ``"blur"``, ``"mean"``.
    """

    methods: list[str]
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    unit: str = "patch"
    target: str = "predicted"
    chunk_size: int = 8
    batch_size: int = 64
    pg_tolerance: int | float | None = None
    insertion_substrate: str = "blur"
    deletion_substrate: str = "zero"

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: expected at least one method name, got none")
        check_choice(self.unit, ("patch", "pixel"), "unit")
        check_choice(self.target, ("predicted", "label"), "target")
        check_positive_int(self.chunk_size, "chunk_size")
        check_positive_int(self.batch_size, "batch_size")
        check_choice(self.insertion_substrate, _SUBSTRATES, "insertion_substrate")
        check_choice(self.deletion_substrate, _SUBSTRATES, "deletion_substrate")
        unknown = set(self.method_options) - set(self.methods)
        if unknown:
            raise ValueError(f"method_options: options given for methods not in the run: {sorted(unknown)}")


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(n)`` in chunks of ``chunk_size``.

    Example:
        >>> chunk_ranges(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """A hash of the model's weights and config (decides whether saved partial results still apply)."""
    return _digest(*[v for _, v in sorted(model.state_dict().items())], repr(model.cfg))


def _metric_settings(model: Any, data: BenchmarkData, cfg: BenchmarkConfig) -> dict[str, Any]:
    h = data.images.shape[-2]
    dc = model.cfg.data_config or {}
    step = "one patch per step" if cfg.unit == "patch" else "one image row of pixels per step"
    return {
        "unit": cfg.unit,
        "target": cfg.target,
        "insertion": f"from {_SUBSTRATE_TEXT[cfg.insertion_substrate]}, softmax prob of the target, {step}",
        "deletion": f"to {_SUBSTRATE_TEXT[cfg.deletion_substrate]}, softmax prob of the target, {step}",
        "perturbation": "Chefer et al.: fractions 0.1..0.9, substrate "
        + ("black" if "mean" in dc and "std" in dc else "zero (no data config)")
        + ", top-1 vs " + ("ground-truth labels" if data.labels is not None else "the clean prediction"),
        "pointing_game_tolerance_px": _pg_tolerance(cfg, h),
        "localisation_maps": "pixel maps (patch-native maps: bilinear upsampling)",
        "ci": "95% Student-t interval of the mean over images",
    }


def _pg_tolerance(cfg: BenchmarkConfig, height: int) -> float:
    return float(cfg.pg_tolerance) if cfg.pg_tolerance is not None else float(round(15 * height / 224))


# ----------------------------------------------------------------------------------------------------- metrics
def evaluate_maps(
    model: Any,
    images: Float[Tensor, "batch channel height width"],
    maps: AttributionMaps,
    labels: Int[Tensor, "batch"] | None = None,
    masks: Bool[Tensor, "batch height width"] | None = None,
    *,
    unit: str = "patch",
    batch_size: int = 64,
    pg_tolerance: int | float = 15.0,
    insertion_substrate: str = "blur",
    deletion_substrate: str = "zero",
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """Per-image metric values and curves for one batch of maps (see the module docstring for the metrics).

    Args:
        model: the HookedViT the maps explain.
        images: the images (on the model's device).
        maps: the method's maps for ``images`` (``maps.target`` is the class scored by the RISE games).
        labels: ground truth for the perturbation test (``None``: the clean prediction).
        masks: evidence masks for the localisation metrics (``None``: skipped).
        unit: ``"patch"`` or ``"pixel"`` for the faithfulness games.
        batch_size: perturbed images per forward pass.
        pg_tolerance: pointing-game tolerance in pixels.
        insertion_substrate: insertion start image (``"blur"``, ``"zero"``, ``"mean"``).
        deletion_substrate: deletion replacement (``"zero"``, ``"blur"``, ``"mean"``).

    Returns:
        ``(metrics, curves)``: ``metrics[name]`` is one float per image (NaN where undefined, e.g. an empty mask),
        ``curves[name]`` one list per image.

    Example:
        >>> metrics, curves = evaluate_maps(model, images, get_method("gae", model).attribute(images))
        >>> sorted(metrics)[:2]
        ['deletion', 'ins_minus_del']
    """
    from vit_patching import evaluation as ev

    check_choice(unit, ("patch", "pixel"), "unit")
    dev = images.device
    fmap = (maps.patch_map if unit == "patch" else maps.pixel_map).to(dev)
    target = maps.target.to(dev)
    ins = ev.insertion_auc(model, images, fmap, target, unit=unit, substrate=insertion_substrate, batch_size=batch_size)
    dele = ev.deletion_auc(model, images, fmap, target, unit=unit, substrate=deletion_substrate, batch_size=batch_size)
    dc = model.cfg.data_config or {}
    substrate = ev.black_substrate(dc["mean"], dc["std"]) if "mean" in dc and "std" in dc else "zero"
    lab = None if labels is None else labels.to(dev)
    pos = ev.perturbation_test(model, images, fmap, lab, order="positive", unit=unit, substrate=substrate, batch_size=batch_size)
    neg = ev.perturbation_test(model, images, fmap, lab, order="negative", unit=unit, substrate=substrate, batch_size=batch_size)
    metrics: dict[str, Tensor] = {
        "insertion": ins.auc,
        "deletion": dele.auc,
        "ins_minus_del": ins.auc - dele.auc,
        "pos_perturbation": ev.trapezoid_auc(pos.correct.double()) * 100,
        "neg_perturbation": ev.trapezoid_auc(neg.correct.double()) * 100,
    }
    curves = {
        "insertion": ins.curves, "deletion": dele.curves,
        "pos_perturbation": pos.correct.double(), "neg_perturbation": neg.correct.double(),
    }
    if masks is not None:
        pix, m = maps.pixel_map, masks.cpu()
        pg = ev.pointing_game(pix, m, tolerance=pg_tolerance)
        metrics["pointing_game"] = torch.where(pg.valid, pg.hits.double(), torch.full_like(pg.hits, float("nan"), dtype=torch.float64))
        metrics["energy_pg"] = ev.energy_pointing_game(pix, m)
        metrics["mask_iou"] = ev.mask_iou(pix, m)
        metrics["mask_ap"] = ev.average_precision(ev.upsample_map(pix, tuple(m.shape[-2:])), m)
    return (
        {k: [float(x) for x in v.detach().cpu().double()] for k, v in metrics.items()},
        {k: v.detach().cpu().double().tolist() for k, v in curves.items()},
    )


# ---------------------------------------------------------------------------------------------------- sharding
def _partial_path(out_dir: Path, method: str, start: int, end: int) -> Path:
    return out_dir / "partials" / method / f"{start:06d}-{end:06d}.json"


def _chunk_fingerprint(base: dict[str, Any], method_settings: dict[str, Any], data: BenchmarkData, s: int, e: int) -> str:
    parts: list[Any] = [base, method_settings, data.images[s:e]]
    for t in (data.labels, data.masks):
        parts.append(None if t is None else t[s:e])
    return _digest(*parts)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)  # atomic: a reader never sees a half-written file


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class _Run:
    """Everything shared by the shards of one run: methods, fingerprints, chunks."""

    def __init__(self, model: Any, data: BenchmarkData, cfg: BenchmarkConfig, out_dir: str | os.PathLike):
        if cfg.target == "label" and data.labels is None:
            raise ValueError("target: 'label' needs ground-truth labels; this data has none (use 'predicted')")
        self.model, self.data, self.cfg = model, data, cfg
        self.out_dir = Path(out_dir)
        self.methods = {m: get_method(m, model, **cfg.method_options.get(m, {})) for m in cfg.methods}
        self.metric_settings = _metric_settings(model, data, cfg)
        from vit_patching import __version__

        self.base = {"model": model_digest(model), "metrics": self.metric_settings, "version": __version__}
        self.chunks = chunk_ranges(len(data), cfg.chunk_size)

    def fingerprint(self, method: str, s: int, e: int) -> str:
        return _chunk_fingerprint(self.base, self.methods[method].settings, self.data, s, e)

    def load(self, method: str, s: int, e: int) -> dict[str, Any] | None:
        payload = _read_json(_partial_path(self.out_dir, method, s, e))
        if payload is None or payload.get("fingerprint") != self.fingerprint(method, s, e):
            return None
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
        _write_json(_partial_path(self.out_dir, method, s, e), payload)
        return payload


def run_shard(
    model: Any,
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
        resume: skip (method, chunk) pairs whose saved results match; ``False`` recomputes them.
        progress: show a tqdm bar over (method, chunk) pairs.

    Returns:
        ``{"computed": k, "skipped": j}``.

    Example:
        >>> run_shard(model, data, cfg, "out/bench", rank=1, world_size=2)
        {'computed': 6, 'skipped': 0}
    """
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    run = _Run(model, data, cfg, out_dir)
    mine = run.chunks[rank::world_size]
    with torch.no_grad():  # warm-up, so that one-off initialisation is not charged to the first method's time
        model(data.images[:1].to(device=model.device, dtype=model.dtype))
    todo = [(m, s, e) for m in cfg.methods for s, e in mine]
    counts = {"computed": 0, "skipped": 0}
    from tqdm.auto import tqdm

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


# ------------------------------------------------------------------------------------------------------- merge
def _t_central_mass(x: float, df: int) -> float:
    """``P(|T| < x)`` for Student's t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(x / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + s * math.cos(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom.

    Exact (bisection on the closed-form CDF) up to ``df = 200``; above, the Cornish-Fisher expansion (error < 1e-9).

    Example:
        >>> round(t_quantile(0.975, 63), 4)
        1.9983
    """
    if not 0 < p < 1:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    check_positive_int(df, "df")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df <= 200:
        want, lo, hi = 2 * p - 1, 0.0, 1.0
        while _t_central_mass(hi, df) < want:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            if _t_central_mass(mid, df) < want:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-13 * max(1.0, hi):
                break
        return (lo + hi) / 2
    z = NormalDist().inv_cdf(p)
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(t / df ** (k + 1) for k, t in enumerate(terms))


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """``(mean, half-width of the Student-t interval, n)`` over the finite values (half-width NaN if n < 2)."""
    v = [x for x in values if math.isfinite(x)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = math.fsum(v) / n
    if n < 2:
        return mean, float("nan"), n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1))
    return mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n), n


@dataclass
class BenchmarkResult:
    """Merged benchmark results.

    Attributes:
        rows: one dict per (method, metric): ``method, metric, higher_is_better, mean, ci95, n, rank, n_methods``;
            plus one ``seconds_per_image`` row per method (rank by speed).
        per_image: ``per_image[method][metric]`` = values in image order.
        curves: ``curves[method][name]`` = per-image curves in image order.
        patch_maps: ``patch_maps[method]`` = ``[n, grid_h, grid_w]``.
        seconds: total attribution seconds per method.
        settings: run settings (data, metric settings, method settings).
    """

    rows: list[dict[str, Any]]
    per_image: dict[str, dict[str, list[float]]]
    curves: dict[str, dict[str, list[list[float]]]]
    patch_maps: dict[str, Tensor]
    seconds: dict[str, float]
    settings: dict[str, Any]

    def metrics(self) -> list[str]:
        """Metric names present, in table order."""
        present = {r["metric"] for r in self.rows}
        return [m for m in METRICS if m in present]

    def row(self, method: str, metric: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method and r["metric"] == metric:
                return r
        raise KeyError(f"no result for method {method!r} and metric {metric!r}")

    def paired(self, method: str = "caap") -> list[dict[str, Any]]:
        """``method`` against the best *other* method of every metric, paired over images.

        Returns one dict per metric: ``metric, versus, diff`` (mean of ``method - versus`` over the images where both
        are defined), ``ci95`` (Student-t half-width), ``n`` and ``verdict`` (``"better"``, ``"worse"`` or ``"no
        significant difference"`` at 95 %, in the metric's direction). Empty if ``method`` was not run.

        Example:
            >>> result.paired("caap")[0]["verdict"]
            'better'
        """
        if method not in self.per_image or len(self.per_image) < 2:
            return []
        out = []
        for metric in self.metrics():
            spec = METRICS[metric]
            others = [m for m in self.per_image if m != method and math.isfinite(self.row(m, metric)["mean"])]
            if not others:
                continue
            sign = 1 if spec.higher_is_better else -1
            versus = max(others, key=lambda m: sign * self.row(m, metric)["mean"])
            pairs = zip(self.per_image[method][metric], self.per_image[versus][metric])
            diff, ci, n = mean_ci([a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)])
            if math.isfinite(ci) and abs(diff) > ci:
                verdict = "better" if sign * diff > 0 else "worse"
            else:
                verdict = "no significant difference"
            out.append({"metric": metric, "versus": versus, "diff": diff, "ci95": ci, "n": n, "verdict": verdict})
        return out

    def notes(self) -> list[str]:
        """Warnings about uninformative settings (e.g. an insertion game that starts saturated)."""
        starts = [c[0] for m in self.curves.values() for c in m.get("insertion", [])]
        out = []
        if starts and math.fsum(starts) / len(starts) > 0.9:
            out.append(
                f"The insertion game starts saturated: the substrate image alone gives the explained class a mean "
                f"probability of {math.fsum(starts) / len(starts):.3f}, so insertion AUCs cannot separate methods; "
                "use another insertion substrate (e.g. --insertion-substrate zero)."
            )
        return out


def missing_partials(model: Any, data: BenchmarkData, cfg: BenchmarkConfig, out_dir: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(method, start, end) of every chunk without a valid saved result."""
    run = _Run(model, data, cfg, out_dir)
    return [(m, s, e) for m in cfg.methods for s, e in run.chunks if run.load(m, s, e) is None]


def merge(
    model: Any,
    data: BenchmarkData,
    cfg: BenchmarkConfig,
    out_dir: str | os.PathLike,
    *,
    wait_s: float = 0.0,
    poll_s: float = 2.0,
) -> BenchmarkResult:
    """Read every partial result of the run (waiting up to ``wait_s`` for other shards) and summarise.

    Raises:
        RuntimeError: if some (method, chunk) results are still missing after ``wait_s`` seconds.

    Example:
        >>> result = merge(model, data, cfg, "out/bench", wait_s=3600)
    """
    run = _Run(model, data, cfg, out_dir)
    deadline = time.monotonic() + wait_s
    while True:
        payloads = {(m, s): run.load(m, s, e) for m in cfg.methods for s, e in run.chunks}
        missing = [k for k, v in payloads.items() if v is None]
        if not missing or time.monotonic() >= deadline:
            break
        logger.info("merge: waiting for %d chunk results from other processes", len(missing))
        time.sleep(poll_s)
    if missing:
        raise RuntimeError(
            f"out_dir: {len(missing)} (method, chunk) results are missing or stale, e.g. {missing[:3]}; "
            "run the remaining shards (or without --merge-only) first"
        )
    per_image: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, dict[str, list[list[float]]]] = {}
    patch_maps: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    method_settings: dict[str, Any] = {}
    for m in cfg.methods:
        parts = [payloads[(m, s)] for s, _ in run.chunks]
        per_image[m] = {k: [x for p in parts for x in p["metrics"][k]] for k in parts[0]["metrics"]}
        curves[m] = {k: [c for p in parts for c in p["curves"][k]] for k in parts[0]["curves"]}
        patch_maps[m] = torch.tensor([pm for p in parts for pm in p["patch_maps"]], dtype=torch.float64)
        seconds[m] = math.fsum(p["seconds"] for p in parts)
        method_settings[m] = parts[0]["settings"]
    rows = _summary_rows(per_image, seconds, len(data))
    contexts = sorted({(str(p.get("device", "?")), str(p.get("threads", "?"))) for p in payloads.values()})
    timing = "; ".join(f"{d}, {t} torch thread(s) per process" for d, t in contexts)
    settings = {
        **data.source, **run.metric_settings, "chunk_size": cfg.chunk_size,
        "timing": f"attribution seconds per image (metrics excluded), measured on {timing}",
        "methods": method_settings,
    }
    return BenchmarkResult(rows, per_image, curves, patch_maps, seconds, settings)


def _summary_rows(per_image: dict[str, dict[str, list[float]]], seconds: dict[str, float], n: int) -> list[dict[str, Any]]:
    rows = []
    methods = list(per_image)
    metric_names = [k for k in METRICS if k in per_image[methods[0]]]
    for metric in metric_names:
        spec = METRICS[metric]
        stats = {m: mean_ci(per_image[m][metric]) for m in methods}
        for m in methods:
            mean, ci, count = stats[m]
            better = sum(
                1 for o in methods
                if math.isfinite(stats[o][0]) and (stats[o][0] > mean if spec.higher_is_better else stats[o][0] < mean)
            )
            rows.append({
                "method": m, "metric": metric, "higher_is_better": spec.higher_is_better, "mean": mean, "ci95": ci,
                "n": count, "rank": 1 + better if math.isfinite(mean) else None, "n_methods": len(methods),
            })
    for m in methods:
        rows.append({
            "method": m, "metric": "seconds_per_image", "higher_is_better": False, "mean": seconds[m] / n, "ci95": float("nan"),
            "n": n, "rank": 1 + sum(1 for o in methods if seconds[o] < seconds[m]), "n_methods": len(methods),
        })
    return rows


# ------------------------------------------------------------------------------------------------------ outputs
def write_csv(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """Long-format CSV: one row per (method, metric), floats written exactly (``repr``)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["method", "metric", "higher_is_better", "mean", "ci95", "n", "rank", "n_methods"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in result.rows:
            w.writerow(["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in cols])
    return path


def _fmt(mean: float, ci: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if metric in ("pos_perturbation", "neg_perturbation") else 3


def markdown_table(result: BenchmarkResult, highlight: str = "caap") -> str:
    """The results table in markdown: methods x metrics (mean ± 95 % CI, best in bold), seconds per image, and
    the rank of ``highlight`` per metric.

    Example:
        >>> print(markdown_table(result).splitlines()[0])
        | Method | Insertion AUC ↑ | ...
    """
    metrics = result.metrics()
    methods = list(result.per_image)
    header = ["Method"] + [f"{METRICS[k].label} {'↑' if METRICS[k].higher_is_better else '↓'}" for k in metrics] + ["s / image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in methods:
        cells = [f"**{m}**" if m == highlight else m]
        for k in metrics:
            r = result.row(m, k)
            text = _fmt(r["mean"], r["ci95"], _digits(k))
            cells.append(f"**{text}**" if r["rank"] == 1 else text)
        cells.append(f"{result.row(m, 'seconds_per_image')['mean']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    if highlight in methods:
        ranks = [f"{METRICS[k].label} {result.row(highlight, k)['rank']}/{len(methods)}" for k in metrics]
        paired = result.paired(highlight)
        speed = result.row(highlight, "seconds_per_image")["rank"]
        lines.append("")
        lines.append(f"Rank of `{highlight}` (1 = best, ties share a rank): " + "; ".join(ranks) + ".")
        lines += [
            "",
            f"`{highlight}` against the best other method of each metric (difference of means, paired over images, "
            "± 95 % CI):",
            "",
            f"| Metric | Best other method | {highlight} − other | Verdict |",
            "|---|---|---:|---|",
        ]
        for c in paired:
            d = _digits(c["metric"])
            text = f"{c['diff']:+.{d}f} ± {c['ci95']:.{d}f}" if math.isfinite(c["ci95"]) else f"{c['diff']:+.{d}f}"
            lines.append(f"| {METRICS[c['metric']].label} | {c['versus']} | {text} | {c['verdict']} |")
        lines.append("")
        lines.append(f"Speed rank of `{highlight}` (seconds per image, 1 = fastest): {speed}/{len(methods)}.")
    return "\n".join(lines)


def markdown_report(result: BenchmarkResult, title: str, highlight: str = "caap") -> str:
    """A markdown section: title, the table and the settings (data, metric protocol, method options)."""
    s = result.settings
    lines = [f"### {title}", "", markdown_table(result, highlight), ""]
    for note in result.notes():
        lines += [f"> **Note.** {note}", ""]
    lines += ["Settings:", ""]
    for k, v in s.items():
        if k != "methods":
            lines.append(f"- {k}: {v}")
    lines.append("- method options: " + "; ".join(
        f"`{m}` " + ", ".join(f"{k}={v}" for k, v in opts.items() if k not in ("method",))
        for m, opts in s["methods"].items()
    ))
    return "\n".join(lines) + "\n"


def figures(result: BenchmarkResult, data: BenchmarkData | None = None, n_examples: int = 3) -> dict[str, Any]:
    """Plotly figures: mean insertion / deletion / perturbation curves per method, and example maps."""
    from vit_patching.plotting import compare_maps, metric_curves

    labels = {
        "insertion": ("target probability", "fraction of units inserted"),
        "deletion": ("target probability", "fraction of units deleted"),
        "pos_perturbation": ("top-1 accuracy", "fraction removed, most relevant first"),
        "neg_perturbation": ("top-1 accuracy", "fraction removed, least relevant first"),
    }
    figs = {}
    for name, (y, x) in labels.items():
        curves = {m: torch.tensor(c[name]) for m, c in result.curves.items()}
        xs = None
        if name.endswith("perturbation"):
            xs = torch.linspace(0.1, 0.9, next(iter(curves.values())).shape[1])
        figs[name] = metric_curves(
            curves, xs, metric_name=y, x_label=x, title=METRICS[name].label + " curves",
            show_auc=not name.endswith("perturbation"),  # the table's AUC is x 100 on equally spaced fractions
            width=780, height=max(420, 100 + 30 * len(curves)),  # room for one legend entry per method
        )
    for i in range(min(n_examples, len(next(iter(result.patch_maps.values()))))):
        image = None if data is None or data.pixels is None else data.pixels[i]
        figs[f"maps_{i}"] = compare_maps(
            {m: pm[i] for m, pm in result.patch_maps.items()}, image, shared_scale=False, upsample="bilinear",
            title=f"image {i}" + ("" if data is None else f" ({data.names[i]})"),
        )
    return figs


def update_docs(path: str | os.PathLike, key: str, section: str, header: str = "# Attribution benchmark\n") -> Path:
    """Insert or replace the generated section ``key`` of a markdown file (between marker comments).

    Example:
        >>> update_docs("docs/benchmark.md", "toy-shapes", "### toy-shapes\\n...")
    """
    path = Path(path)
    start, end = f"<!-- benchmark:{key}:start -->", f"<!-- benchmark:{key}:end -->"
    block = f"{start}\n<!-- generated by scripts/benchmark_attribution.py --write-docs; do not edit by hand -->\n{section.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else header
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

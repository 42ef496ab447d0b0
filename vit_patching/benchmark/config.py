"""What a benchmark run computes: the metric columns, the run configuration and the chunking of the images.

Example:
    >>> cfg = BenchmarkConfig(methods=["rollout", "gae"], chunk_size=4)
    >>> cfg.insertion_substrate, cfg.deletion_substrate
    ('blur', 'zeros')
    >>> chunk_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vit_patching.checks import check_choice, check_positive_int, check_positive_number
from vit_patching.images import BASELINES, check_baseline
from vit_patching.runs.sharding import chunk_ranges  # re-exported: one chunking rule for every sharded run

__all__ = [
    "AUTO_SUBSTRATE", "CURVES", "METHOD_DEFAULTS", "METRICS", "RISE_BLUR", "SUBSTRATE_TEXT", "BenchmarkConfig", "MetricSpec", "check_substrate",
    "chunk_ranges", "pg_tolerance",
]


@dataclass(frozen=True)
class MetricSpec:
    """A column of the benchmark table."""

    label: str
    higher_is_better: bool
    needs_masks: bool = False
    #: The spread of the methods' means at or below which the metric cannot tell methods apart
    #: (non-discriminating): 0.01 on the [0, 1] metrics, 1.0 on the perturbation AUCs (x 100).
    resolution: float = 0.01


METRICS: dict[str, MetricSpec] = {
    "insertion": MetricSpec("Insertion AUC", True),
    "deletion": MetricSpec("Deletion AUC", False),
    "ins_minus_del": MetricSpec("Ins − Del", True),
    "pos_perturbation": MetricSpec("Pos. perturb. AUC", False, resolution=1.0),
    "neg_perturbation": MetricSpec("Neg. perturb. AUC", True, resolution=1.0),
    "pointing_game": MetricSpec("Pointing game", True, True),
    "energy_pg": MetricSpec("Energy PG", True, True),
    "mask_iou": MetricSpec("Mask IoU", True, True),
    "mask_ap": MetricSpec("Mask AP", True, True),
}
#: The metrics that also record a curve per image.
CURVES = ("insertion", "deletion", "pos_perturbation", "neg_perturbation")
#: RISE's insertion blur (kernel, sigma), whatever the image size.
RISE_BLUR = (11, 5.0)
#: ``insertion_substrate="auto"``: chosen per model and image set (:mod:`vit_patching.benchmark.substrate`).
AUTO_SUBSTRATE = "auto"
#: The benchmark's options of a method unless ``method_options`` says otherwise. ``caap_shapley``: 8
#: antithetic permutations (4 pairs, so every patch gets a standard error) over 2 x 2 blocks of patches: on an
#: 8 x 8 grid that is 16 players and (8 + 1) x 16 = 144 patched rows per image, about 2.25 x single-patch CAAP's
#: 64, where patches as players would cost 576 (9 x).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"caap_shapley": {"n_permutations": 8, "groups": 2, "seed": 0}}
#: How each substrate (a name of :data:`vit_patching.images.BASELINES`) is described in the outputs.
SUBSTRATE_TEXT = {
    "blur": f"blur (k={RISE_BLUR[0]}, sigma={RISE_BLUR[1]:g})",
    "zeros": "zeros (dataset-mean colour)",
    "black": "black pixels",
    "image_mean": "each image's mean colour",
}


def check_substrate(value: Any, name: str) -> str:
    """A substrate name from :data:`~vit_patching.images.BASELINES` (old ``"zero"``/``"mean"``: deprecated)."""
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected one of {list(BASELINES)}, got {value!r}")
    return check_baseline(value, name)


@dataclass
class BenchmarkConfig:
    """What to run and how to score it.

    Attributes:
        methods: method names (see :func:`~vit_patching.attribution.available_methods`).
        method_options: per-method keyword options, e.g. ``{"rise": {"n_masks": 1000}}``; over
            :data:`METHOD_DEFAULTS` for the methods of the run (``caap_shapley``: 8 permutations, 2 x 2 groups).
        unit: faithfulness unit, ``"patch"`` (one patch per step, patch maps) or ``"pixel"`` (pixel maps).
        target: class explained, ``"predicted"`` (top-1, default) or ``"label"`` (ground truth; needs labels).
        chunk_size: images per chunk (the unit of sharding and of resuming).
        batch_size: forward-pass rows for the methods and the metrics.
        pg_tolerance: pointing-game tolerance in pixels; ``None`` = 15 px scaled by ``H / 224``.
        insertion_substrate: start image of the insertion game, a name of
            :data:`~vit_patching.images.BASELINES`: ``"blur"`` (RISE, default), ``"zeros"``, ``"black"``,
            ``"image_mean"``; or ``"auto"``: the one whose start image gives the explained class the lowest mean
            probability on the selection images, resolved before any method runs
            (:func:`~vit_patching.benchmark.substrate.resolve_insertion_substrate`).
        deletion_substrate: what deleted units become: ``"zeros"`` (RISE: the dataset-mean colour, default),
            ``"blur"``, ``"black"``, ``"image_mean"``.
        insertion_auto: set when ``"auto"`` was resolved: how the substrate was chosen (the start probabilities of
            every candidate), recorded in the settings and the fingerprints.
    """

    methods: list[str]
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    unit: str = "patch"
    target: str = "predicted"
    chunk_size: int = 8
    batch_size: int = 64
    pg_tolerance: int | float | None = None
    insertion_substrate: str = "blur"
    deletion_substrate: str = "zeros"
    insertion_auto: str | None = None

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: expected at least one method name, got none")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods: expected distinct method names, got {self.methods}")
        check_choice(self.unit, ("patch", "pixel"), "unit")
        check_choice(self.target, ("predicted", "label"), "target")
        check_positive_int(self.chunk_size, "chunk_size")
        check_positive_int(self.batch_size, "batch_size")
        if self.pg_tolerance is not None:
            check_positive_number(self.pg_tolerance, "pg_tolerance", allow_zero=True)
        if self.insertion_substrate != AUTO_SUBSTRATE:
            self.insertion_substrate = check_substrate(self.insertion_substrate, "insertion_substrate")
        self.deletion_substrate = check_substrate(self.deletion_substrate, "deletion_substrate")
        unknown = set(self.method_options) - set(self.methods)
        if unknown:
            raise ValueError(f"method_options: options given for methods not in the run: {sorted(unknown)}")
        self.method_options = {
            m: {**METHOD_DEFAULTS.get(m, {}), **self.method_options.get(m, {})}
            for m in self.methods if m in METHOD_DEFAULTS or m in self.method_options
        }


def pg_tolerance(cfg: BenchmarkConfig, height: int) -> float:
    """The pointing-game tolerance in pixels: the configured one, else 15 px scaled by ``height / 224``.

    Example:
        >>> pg_tolerance(BenchmarkConfig(methods=["gae"]), 448)
        30.0
    """
    return float(cfg.pg_tolerance) if cfg.pg_tolerance is not None else float(round(15 * height / 224))

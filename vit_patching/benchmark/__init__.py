"""The attribution benchmark: methods x metrics on one model and one image set, sharded, resumable, merged.

An application built on the attribution methods (:mod:`vit_patching.attribution`) and the metrics
(:mod:`vit_patching.evaluation`); the command line is ``scripts/benchmark_attribution.py``.

* :mod:`~vit_patching.benchmark.data`: the images (:func:`zoo_data`, :func:`folder_data`).
* :mod:`~vit_patching.benchmark.config`: the metric columns and :class:`BenchmarkConfig`.
* :mod:`~vit_patching.benchmark.scoring`: :func:`evaluate_maps`, the per-image metrics of one batch of maps.
* :mod:`~vit_patching.benchmark.substrate`: ``insertion_substrate="auto"``, the insertion start image chosen per
  model (:func:`choose_insertion_substrate`, :func:`resolve_insertion_substrate`).
* :mod:`~vit_patching.benchmark.runner`: chunks, fingerprints, validated partial files, :func:`run_shard`,
  :func:`merge`.
* :mod:`~vit_patching.benchmark.stats`: Student-t intervals, ranks, paired comparisons (:class:`BenchmarkResult`),
  the non-discriminating-metric flag (:func:`is_discriminating`).
* :mod:`~vit_patching.benchmark.report`: CSV, markdown, figures, the docs section.

The work is cut into fixed **chunks** of consecutive images (``chunk_size``); because chunks do not depend on the
number of processes, a sharded run gives the same per-image numbers, and the same table, as a single process.

Example:
    >>> import tempfile
    >>> from vit_patching.zoo import load_model
    >>> model, data = load_model("toy-shapes"), zoo_data("toy-shapes", n=4, seed=0)
    >>> cfg = BenchmarkConfig(methods=["rollout", "random"], chunk_size=2)
    >>> out = tempfile.mkdtemp()
    >>> run_shard(model, data, cfg, out)
    {'computed': 4, 'skipped': 0}
    >>> result = merge(model, data, cfg, out)
    >>> result.rows[0]["method"], result.rows[0]["metric"]
    ('rollout', 'insertion')
"""
from vit_patching.benchmark.config import CURVES, METRICS, BenchmarkConfig, MetricSpec, chunk_ranges
from vit_patching.benchmark.data import BenchmarkData, folder_data, zoo_data
from vit_patching.benchmark.report import figures, markdown_report, markdown_table, update_docs, write_csv
from vit_patching.benchmark.runner import (
    merge,
    metric_settings,
    missing_partials,
    model_digest,
    run_shard,
    validate_partial,
)
from vit_patching.benchmark.scoring import evaluate_maps
from vit_patching.benchmark.stats import (
    CAAP_METHODS,
    BenchmarkResult,
    is_discriminating,
    mean_ci,
    selection_split,
    t_quantile,
)
from vit_patching.benchmark.substrate import SubstrateChoice, choose_insertion_substrate, resolve_insertion_substrate

__all__ = [
    "CURVES",
    "METRICS",
    "BenchmarkConfig",
    "BenchmarkData",
    "BenchmarkResult",
    "MetricSpec",
    "SubstrateChoice",
    "choose_insertion_substrate",
    "chunk_ranges",
    "evaluate_maps",
    "figures",
    "folder_data",
    "is_discriminating",
    "markdown_report",
    "markdown_table",
    "mean_ci",
    "merge",
    "metric_settings",
    "missing_partials",
    "model_digest",
    "resolve_insertion_substrate",
    "run_shard",
    "t_quantile",
    "update_docs",
    "validate_partial",
    "write_csv",
    "zoo_data",
]

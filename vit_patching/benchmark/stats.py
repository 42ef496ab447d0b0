"""Statistics of a benchmark: the merged result with ranks and paired tests (intervals: ``vit_patching.evaluation.statistics``).

Example:
    >>> round(t_quantile(0.975, 63), 4)
    1.9983
    >>> mean_ci([1.0, 2.0, 3.0])[0]
    2.0
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vit_patching.benchmark.config import METRICS
from vit_patching.evaluation.statistics import mean_ci, t_quantile

__all__ = ["BenchmarkResult", "mean_ci", "summary_rows", "t_quantile"]


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
            >>> per_image = {"caap": {"insertion": [0.9, 0.8, 0.85]}, "gae": {"insertion": [0.5, 0.45, 0.5]}}
            >>> rows = summary_rows(per_image, {"caap": 1.0, "gae": 1.0}, 3)
            >>> result = BenchmarkResult(rows, per_image, {}, {}, {"caap": 1.0, "gae": 1.0}, {})
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
                "use another insertion substrate (e.g. --insertion-substrate zeros)."
            )
        return out


def summary_rows(per_image: dict[str, dict[str, list[float]]], seconds: dict[str, float], n: int) -> list[dict[str, Any]]:
    """The table rows of :class:`BenchmarkResult`: mean, CI and rank per (method, metric), then time per image.

    Ties share a rank (1 + the number of strictly better methods).

    Example:
        >>> rows = summary_rows({"a": {"deletion": [0.2, 0.4]}, "b": {"deletion": [0.1, 0.1]}}, {"a": 1.0, "b": 4.0}, 2)
        >>> [(r["method"], r["metric"], r["rank"]) for r in rows]
        [('a', 'deletion', 2), ('b', 'deletion', 1), ('a', 'seconds_per_image', 1), ('b', 'seconds_per_image', 2)]
    """
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



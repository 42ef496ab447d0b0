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
from vit_patching.checks import check_fraction, check_positive_int
from vit_patching.evaluation.statistics import mean_ci, t_quantile

__all__ = [
    "BenchmarkResult", "CAAP_METHODS", "DEFAULT_SELECTION_FRACTION", "NON_DISCRIMINATING", "is_discriminating", "mean_ci", "selection_split", "summary_rows",
    "t_quantile",
]

#: The CAAP variants (denoising and noising): each is compared with the best method that is none of them.
CAAP_METHODS: tuple[str, ...] = ("caap", "caap_noising", "caap_shapley")
#: Appended to every verdict on a non-discriminating metric (:func:`is_discriminating`).
NON_DISCRIMINATING = " (non-discriminating metric)"
#: Share of the images (the first ones, by index) that chooses the best other method of each metric.
DEFAULT_SELECTION_FRACTION = 0.5


def selection_split(n: int, selection_fraction: float = DEFAULT_SELECTION_FRACTION,
                    selection_n: int | None = None) -> tuple[range, range]:
    """The selection and report image indices: the first ``k`` images by index select, the other ``n - k`` report.

    ``k = selection_n`` if given, else ``floor(selection_fraction * n)``. Deterministic and independent of the
    results, so choosing the best other method on the selection images cannot bias the test on the report
    images (choosing and testing on the same images favours the chosen method's luck: a winner's curse).

    Example:
        >>> selection_split(5), selection_split(5, selection_n=4)
        ((range(0, 2), range(2, 5)), (range(0, 4), range(4, 5)))
    """
    check_positive_int(n, "n")
    if selection_n is not None:
        k = check_positive_int(selection_n, "selection_n")
        if k >= n:
            raise ValueError(f"selection_n: expected fewer than the {n} images (some must be left to report on), got {k}")
    else:
        k = math.floor(check_fraction(selection_fraction, "selection_fraction", open_low=True, open_high=True) * n)
    return range(k), range(k, n)


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
        selection_fraction: share of the images (the first, by index) that chooses the best other method of
            each metric for :meth:`paired` (:func:`selection_split`); set at merge/report time.
        selection_n: number of selection images instead of a fraction (``None``: use the fraction).
    """

    rows: list[dict[str, Any]]
    per_image: dict[str, dict[str, list[float]]]
    curves: dict[str, dict[str, list[list[float]]]]
    patch_maps: dict[str, Tensor]
    seconds: dict[str, float]
    settings: dict[str, Any]
    selection_fraction: float = DEFAULT_SELECTION_FRACTION
    selection_n: int | None = None

    def metrics(self) -> list[str]:
        """Metric names present, in table order."""
        present = {r["metric"] for r in self.rows}
        return [m for m in METRICS if m in present]

    def row(self, method: str, metric: str) -> dict[str, Any]:
        for r in self.rows:
            if r["method"] == method and r["metric"] == metric:
                return r
        raise KeyError(f"no result for method {method!r} and metric {metric!r}")

    def is_discriminating(self, metric: str) -> bool:
        """Whether the methods' means on ``metric`` spread more than its resolution (:func:`is_discriminating`)."""
        means = [r["mean"] for r in self.rows if r["metric"] == metric and math.isfinite(r["mean"])]
        return is_discriminating(means, METRICS[metric].resolution)

    def paired(self, method: str = "caap") -> list[dict[str, Any]]:
        """``method`` against the best *other* method of every metric, chosen on the selection images and tested,
        paired, on the report images (:func:`selection_split` with :attr:`selection_fraction` /
        :attr:`selection_n`). "Other" excludes every CAAP variant (:data:`CAAP_METHODS`).

        Returns one dict per metric: ``metric, versus`` (best other method by its mean over the selection images;
        ties go to the earlier method), ``diff`` (mean of ``method - versus`` over the report images where both
        are defined), ``ci95`` (Student-t half-width), ``n`` (report images used), ``n_selection`` and ``verdict``
        (``"better"``, ``"worse"`` or ``"no significant difference"`` at 95 %, in the metric's direction; on a
        non-discriminating metric followed by ``" (non-discriminating metric)"``) and ``discriminating``. Empty if
        ``method`` was not run or there are fewer than 2 images (nothing to split).

        Example:
            >>> per_image = {"caap": {"insertion": [0.9, 0.8, 0.85]}, "gae": {"insertion": [0.5, 0.45, 0.5]}}
            >>> rows = summary_rows(per_image, {"caap": 1.0, "gae": 1.0}, 3)
            >>> result = BenchmarkResult(rows, per_image, {}, {}, {"caap": 1.0, "gae": 1.0}, {})
            >>> c = result.paired("caap")[0]
            >>> c["verdict"], c["n_selection"], c["n"]
            ('better', 1, 2)
        """
        if method not in self.per_image or len(self.per_image) < 2:
            return []
        n = len(next(iter(self.per_image[method].values()), []))
        if n < 2:
            return []
        select, report = selection_split(n, self.selection_fraction, self.selection_n)
        if not select:  # a fraction too small for this many images
            return []
        out = []
        for metric in self.metrics():
            spec = METRICS[metric]
            sign = 1 if spec.higher_is_better else -1
            sel_mean = {
                m: mean_ci([self.per_image[m][metric][i] for i in select])[0]
                for m in self.per_image if m != method and m not in CAAP_METHODS
            }
            others = [m for m, v in sel_mean.items() if math.isfinite(v)]
            if not others:
                continue
            versus = max(others, key=lambda m: sign * sel_mean[m])
            a, b = self.per_image[method][metric], self.per_image[versus][metric]
            pairs = [(a[i], b[i]) for i in report]
            diff, ci, count = mean_ci([x - y for x, y in pairs if math.isfinite(x) and math.isfinite(y)])
            if math.isfinite(ci) and abs(diff) > ci:
                verdict = "better" if sign * diff > 0 else "worse"
            else:
                verdict = "no significant difference"
            discriminating = self.is_discriminating(metric)
            if not discriminating:
                verdict += NON_DISCRIMINATING
            out.append({"metric": metric, "versus": versus, "diff": diff, "ci95": ci, "n": count,
                        "n_selection": len(select), "verdict": verdict, "discriminating": discriminating})
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


def is_discriminating(means: list[float], resolution: float) -> bool:
    """Whether a metric can tell the methods apart: the spread of their means exceeds ``resolution``.

    A metric on which every method's mean lies within ``resolution`` of every other's (0.01 on the [0, 1]
    metrics, 1.0 on the perturbation AUCs x 100: :attr:`~vit_patching.benchmark.config.MetricSpec.resolution`)
    is **non-discriminating**: a "no significant difference" there says nothing about the methods (e.g. an
    insertion game whose start image already gives the class). A spread of exactly ``resolution`` counts as
    within it (up to float rounding of the subtraction); fewer than two finite means cannot discriminate.

    Example:
        >>> is_discriminating([0.981, 0.990, 0.985], 0.01), is_discriminating([0.98, 0.991], 0.01)
        (False, True)
        >>> is_discriminating([0.98, 0.99], 0.01)  # 0.99 - 0.98 is 0.010000000000000009 in floats
        False
    """
    if len(means) < 2:
        return False
    return max(means) - min(means) > resolution * (1 + 1e-9)


def summary_rows(per_image: dict[str, dict[str, list[float]]], seconds: dict[str, float], n: int) -> list[dict[str, Any]]:
    """The table rows of :class:`BenchmarkResult`: mean, CI and rank per (method, metric), then time per image.

    Ties share a rank (1 + the number of strictly better methods). ``discriminating`` is
    :func:`is_discriminating` of the metric's means over all methods (``True`` on the time rows).

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
        finite = [v[0] for v in stats.values() if math.isfinite(v[0])]
        discriminating = is_discriminating(finite, spec.resolution)
        for m in methods:
            mean, ci, count = stats[m]
            better = sum(
                1 for o in methods
                if math.isfinite(stats[o][0]) and (stats[o][0] > mean if spec.higher_is_better else stats[o][0] < mean)
            )
            rows.append({
                "method": m, "metric": metric, "higher_is_better": spec.higher_is_better, "mean": mean, "ci95": ci,
                "n": count, "rank": 1 + better if math.isfinite(mean) else None, "n_methods": len(methods),
                "discriminating": discriminating,
            })
    for m in methods:
        rows.append({
            "method": m, "metric": "seconds_per_image", "higher_is_better": False, "mean": seconds[m] / n, "ci95": float("nan"),
            "n": n, "rank": 1 + sum(1 for o in methods if seconds[o] < seconds[m]), "n_methods": len(methods),
            "discriminating": True,
        })
    return rows



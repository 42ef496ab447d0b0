"""Outputs of a benchmark: CSV, markdown table and report, Plotly figures, and the generated docs section.

Every file is written atomically (:mod:`vit_patching.files`): a failed write leaves the previous file intact.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vit_patching.benchmark.config import METRICS
from vit_patching.benchmark.data import BenchmarkData
from vit_patching.benchmark.stats import CAAP_METHODS, BenchmarkResult, selection_split
from vit_patching.files import atomic_write_text

#: Marks a non-discriminating metric in the table header (footnote below the table).
MARKER = "†"

__all__ = ["MARKER", "figures", "markdown_report", "markdown_table", "update_docs", "write_csv"]


def write_csv(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """Long-format CSV: one row per (method, metric), floats written exactly (``repr``); written atomically."""
    cols = ["method", "metric", "higher_is_better", "mean", "ci95", "n", "rank", "n_methods", "discriminating"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols)
    for r in result.rows:
        w.writerow(["" if r[c] is None else repr(r[c]) if isinstance(r[c], float) else r[c] for c in cols])
    return atomic_write_text(path, buf.getvalue())


def _fmt(mean: float, ci: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if math.isfinite(ci) else f"{mean:.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if metric in ("pos_perturbation", "neg_perturbation") else 3


def markdown_table(result: BenchmarkResult, highlight: str | Sequence[str] = CAAP_METHODS) -> str:
    """The results table in markdown: methods x metrics (mean ± 95 % CI over all images, best in bold), seconds
    per image, and for each ``highlight`` method that was run its rank per metric and its paired comparison with
    the best other method (chosen on the selection images, tested on the report images:
    :meth:`BenchmarkResult.paired`). A non-discriminating metric (all means within the metric's resolution:
    :func:`~vit_patching.benchmark.stats.is_discriminating`) gets :data:`MARKER` in the header and a footnote, is
    left out of the rank lines, and its verdicts say so; a tally counts the verdicts on the discriminating metrics.

    Example:
        >>> from vit_patching.benchmark.stats import summary_rows
        >>> per_image = {"caap": {"deletion": [0.1, 0.2]}, "gae": {"deletion": [0.3, 0.5]}}
        >>> result = BenchmarkResult(summary_rows(per_image, {"caap": 1.0, "gae": 1.0}, 2), per_image, {}, {},
        ...                          {"caap": 1.0, "gae": 1.0}, {})
        >>> print(markdown_table(result).splitlines()[2])
        | **caap** | **0.150 ± 0.635** | 0.5000 |
    """
    metrics = result.metrics()
    methods = list(result.per_image)
    highlights = [highlight] if isinstance(highlight, str) else list(highlight)
    flat = [k for k in metrics if not result.is_discriminating(k)]
    header = ["Method"] + [
        f"{METRICS[k].label} {'↑' if METRICS[k].higher_is_better else '↓'}{' ' + MARKER if k in flat else ''}"
        for k in metrics
    ] + ["s / image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in methods:
        cells = [f"**{m}**" if m in highlights else m]
        for k in metrics:
            r = result.row(m, k)
            text = _fmt(r["mean"], r["ci95"], _digits(k))
            cells.append(f"**{text}**" if r["rank"] == 1 else text)
        cells.append(f"{result.row(m, 'seconds_per_image')['mean']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    n = len(next(iter(next(iter(result.per_image.values())).values()), []))
    lines += ["", f"Means ± 95 % CI over all {n} images (the comparisons below use the report images only)."]
    for k in flat:
        means = [result.row(m, k)["mean"] for m in methods if math.isfinite(result.row(m, k)["mean"])]
        d, res = _digits(k), METRICS[k].resolution
        span = f"{min(means):.{d}f}–{max(means):.{d}f}" if means else "n/a"
        lines += ["", f"{MARKER} {METRICS[k].label} is **non-discriminating** here: the means of all {len(methods)} "
                  f"methods lie within {res:g} of each other ({span}), so it cannot tell the methods apart; it is "
                  "left out of the rank summaries and its verdicts are marked."]
    for h in [h for h in highlights if h in methods]:
        ranks = [f"{METRICS[k].label} {result.row(h, k)['rank']}/{len(methods)}" for k in metrics if k not in flat]
        paired = result.paired(h)
        speed = result.row(h, "seconds_per_image")["rank"]
        skipped = f" Not ranked (non-discriminating): {', '.join(METRICS[k].label for k in flat)}." if flat else ""
        lines += ["", f"Rank of `{h}` (1 = best, ties share a rank): " + "; ".join(ranks) + "." + skipped]
        if paired:
            select, report = selection_split(n, result.selection_fraction, result.selection_n)
            excluded = ", ".join(f"`{m}`" for m in CAAP_METHODS)
            lines += [
                "",
                f"`{h}` against the best other method of each metric ({excluded} excluded), chosen by its mean "
                f"over the selection images (the first {len(select)} of {n}) and compared on the other "
                f"{len(report)} report images (difference of means, paired over images, ± 95 % CI):",
                "",
                f"| Metric | Best other method | {h} − other | Verdict |",
                "|---|---|---:|---|",
            ]
            for c in paired:
                d = _digits(c["metric"])
                text = f"{c['diff']:+.{d}f} ± {c['ci95']:.{d}f}" if math.isfinite(c["ci95"]) else f"{c['diff']:+.{d}f}"
                lines.append(f"| {METRICS[c['metric']].label} | {c['versus']} | {text} | {c['verdict']} |")
            counted = [c for c in paired if c["discriminating"]]
            tally = {v: sum(c["verdict"] == v for c in counted) for v in ("better", "worse", "no significant difference")}
            lines += ["", f"On the {len(counted)} discriminating metrics `{h}` is better on {tally['better']}, worse on "
                      f"{tally['worse']} and not significantly different on {tally['no significant difference']}."]
        lines += ["", f"Speed rank of `{h}` (seconds per image, 1 = fastest): {speed}/{len(methods)}."]
    return "\n".join(lines)


def markdown_report(result: BenchmarkResult, title: str, highlight: str | Sequence[str] = CAAP_METHODS) -> str:
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
    """Plotly figures: mean insertion / deletion / perturbation curves per method, and example maps.

    Image names (file names) go into the example maps' titles as plain text: the plotting functions escape
    every caller string, so a name such as ``<a href=...>x.png`` is shown, never rendered as a link.
    """
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
        >>> import tempfile, pathlib
        >>> doc = pathlib.Path(tempfile.mkdtemp()) / "benchmark.md"
        >>> _ = update_docs(doc, "toy-shapes", "### toy-shapes\\nv1")
        >>> _ = update_docs(doc, "toy-shapes", "### toy-shapes\\nv2")
        >>> "v2" in doc.read_text() and "v1" not in doc.read_text()
        True
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: expected a markdown file, got the folder {str(path)!r}")
    start, end = f"<!-- benchmark:{key}:start -->", f"<!-- benchmark:{key}:end -->"
    block = f"{start}\n<!-- generated by scripts/benchmark_attribution.py --write-docs; do not edit by hand -->\n{section.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else header
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    return atomic_write_text(path, text)

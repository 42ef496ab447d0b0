"""Measure how well ``caap_estimate`` (first-order CAAP) tracks exact ``caap`` on the shipped toy models.

Protocol (numbers recorded in docs/circuits_bench.md and the README's circuits section): for each shipped model,
``--n`` held-out images of its dataset (seed ``--seed``; the zoo's training seeds are 62-bit draws, so small
seeds are unseen), CAAP's defaults (window, ``zeros`` neutral, ``logit`` readout, the predicted class) for both
the estimate and the exact map. Per image: Spearman rank correlation of the two maps over the patches, whether
the exact map's top patch is among the estimate's top ``--k`` patches, and the overlap of the two top-``k`` sets.
Reported: the median (and min / max) over images. ``--windows`` adds other windows, e.g. ``0:1`` (one block,
where CAAP is a single activation patch and the estimate plain attribution patching).

Usage:
    python scripts/measure_caap_estimate.py [--n 8] [--seed 1] [--k 5] [--windows 0:1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench_circuits import spearman  # scripts/: the benchmark's Spearman (average ranks for ties)
from vit_patching.circuits import caap_estimate
from vit_patching.patching.caap import caap
from vit_patching.zoo import load_dataset, load_model
from vit_patching.zoo.registry import MODEL_SPECS

MODELS = ("toy-shapes", "toy-conjunction", "toy-relation")


def compare(model, images: torch.Tensor, window: tuple[int, int] | None, k: int) -> dict:
    """Per-image agreement of the estimate with exact CAAP over one window."""
    est = caap_estimate(model, images, window=window)
    exact = caap(model, images, est.target, est.window)
    e, x = est.map.reshape(len(images), -1).double(), exact.map.reshape(len(images), -1).double()
    rho = [spearman(e[i], x[i]) for i in range(len(images))]
    top_e, top_x = e.topk(k, dim=1).indices, x.topk(k, dim=1).indices
    hit = [bool((top_e[i] == top_x[i, 0]).any()) for i in range(len(images))]
    overlap = [len(set(top_e[i].tolist()) & set(top_x[i].tolist())) / k for i in range(len(images))]
    return {
        "window": list(est.window), "rho": rho, "rho_median": statistics.median(rho), "rho_min": min(rho),
        "rho_max": max(rho), "top1_in_topk": sum(hit) / len(hit), "topk_overlap": statistics.mean(overlap),
        "exact_forwards": exact.n_forwards,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--windows", default="", help="extra windows start:end, comma separated (default: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = [tuple(int(v) for v in w.split(":")) for w in args.windows.split(",") if w]
    out = {}
    print(f"{args.n} images per model (seed {args.seed}), defaults: zeros neutral, logit readout, predicted class")
    print("| model | window | median rho | min | max | exact top-1 in estimate top-k | top-k overlap "
          "| exact forwards |")
    print("|---|---|---|---|---|---|---|---|")
    for name in MODELS:
        model = load_model(name)
        images = load_dataset(MODEL_SPECS[name].dataset, n=args.n, seed=args.seed).images
        out[name] = []
        for window in [None, *extra]:
            r = compare(model, images, window, args.k)
            out[name].append(r)
            s, e = r["window"]
            print(f"| {name} | [{s}, {e}){' (default)' if window is None else ''} | {r['rho_median']:.2f} | "
                  f"{r['rho_min']:.2f} | {r['rho_max']:.2f} | {r['top1_in_topk']:.2f} | {r['topk_overlap']:.2f} | "
                  f"{r['exact_forwards']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "seed": args.seed, "k": args.k, "models": out}, f, indent=1)


if __name__ == "__main__":
    main()

"""Benchmark: coalition (Shapley) CAAP against single-patch CAAP, per image, side by side in one run.

Both on the same images of a shipped model, the same window and neutral; the whole call timed (process CPU
seconds with ``--clock cpu``, steadier on a shared machine). Prints seconds per image for each, the ratio, and the
patched rows per image (single-patch CAAP: ``N``; coalition CAAP: the distinct coalitions of ``n_permutations``
antithetic permutations plus the singletons, about ``(n_permutations + 1) * N``).

Usage:
    python scripts/bench_caap_shapley.py --model toy-shapes --images 4 --permutations 8 --groups 2 --threads 1 --clock cpu

``--groups 2`` (2x2 blocks of patches as players) with 8 permutations is the attribution benchmark's ``caap_shapley``
setting; ``--groups 1`` plays single patches.
"""
from __future__ import annotations

import argparse
import time

import torch

from vit_patching.patching.caap import caap
from vit_patching.patching.caap_shapley import caap_shapley
from vit_patching.zoo import load_dataset, load_model

DATASETS = {"toy-shapes": "shapes", "toy-conjunction": "conjunction", "toy-relation": "relation"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-shapes", choices=sorted(DATASETS))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--permutations", type=int, default=8)
    ap.add_argument("--groups", type=int, default=1, help="k x k blocks of patches as players (1: single patches)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    model = load_model(args.model)
    x = load_dataset(DATASETS[args.model], n=args.images, seed=1).images
    caap(model, x[:1], batch_size=args.batch_size)  # warm-up
    t0 = clock()
    single = caap(model, x, batch_size=args.batch_size)
    t1 = clock()
    shap = caap_shapley(model, x, n_permutations=args.permutations, groups=args.groups, batch_size=args.batch_size)
    t2 = clock()
    n = x.shape[0]
    s_single, s_shap = (t1 - t0) / n, (t2 - t1) / n
    rows = shap.settings["n_coalitions"]
    print(f"model {args.model}, {n} images, window {single.window}, {args.clock} clock, {args.threads} thread(s)")
    print(f"single-patch CAAP: {s_single:.4f} s/image ({single.map[0].numel()} rows/image)")
    print(f"coalition CAAP, {args.permutations} permutations, groups {args.groups}: {s_shap:.4f} s/image ({rows} rows/image)")
    print(f"ratio coalition / single: {s_shap / s_single:.1f}x (rows: {rows / single.map[0].numel():.1f}x)")


if __name__ == "__main__":
    main()

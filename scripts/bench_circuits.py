"""Benchmark: attribution patching (AtP/AtP*) against exact activation patching, side by side in one run, and
the time of EAP / EAP-IG over the full edge graph.

* Shipped models (``toy-shapes``, ``toy-conjunction``) on counterfactual pairs (tutorials 02 and 03): the exact
  layer sweep (resid_pre, resid_mid, attn_out, mlp_out, every layer and position) and head patching (z, q, k,
  v, pattern, every head) against their AtP estimates: times, speed-up and Spearman rank correlation of the
  cells (mean over images; ties get average ranks), over all cells and over the cells whose exact effect is
  at least 1% of the largest.
* A random ViT-S/16 at 224 (timm ``vit_small_patch16_224``, ``pretrained=False``): the exact resid_pre sweep
  over every layer and ``--vits-positions`` positions (CLS + the first patches; every position takes minutes on
  a CPU) and exact z/q/k/v/pattern head patching, against AtP, which estimates *every* cell in the same time.
* EAP and EAP-IG (``--ig-steps``) over the full graph of each model.
* MIB-style comparison (``compare_scorers``): EAP, EAP-IG and node-level AtP on the model whose circuit is known
  (``vit_patching.zoo.known_circuit``, ``--known-batch`` pairs, with the AUROC of each scorer for the known
  edges) and on the shipped models: CPR, CMD (MIB's share grid, corrupted-run ablation) and the scorer's time.

Usage:
    python scripts/bench_circuits.py [--batch 4] [--vits-batch 1] [--vits-positions 24] [--ig-steps 5]
        [--vits-head-sites z,q,k,v,pattern] [--threads 2] [--skip-vits] [--known-batch 8] [--only-mib]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd
import timm
import torch

from vit_patching.circuits import atp_heads, atp_layer_sweep, compare_scorers, default_scorers, eap, eap_ig
from vit_patching.model import HookedViT
from vit_patching.patching import layer_sweep, logit_diff, patch_heads, target_logit
from vit_patching.zoo import load_model
from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs
from vit_patching.zoo.datasets import (
    CLASS_HUES, PART_HUES, batch_from_scenes, conjunction_label, sample_scenes,
)


def shapes_pair(n: int):
    scenes = sample_scenes("shapes", n=n, seed=3)
    k = (scenes.labels + 1) % 4
    shape, colour = scenes.shape.clone(), scenes.colour.clone()
    shape[:, 0] = k
    colour[:, 0] = torch.tensor(list(CLASS_HUES.values()))[k]
    counter = dataclasses.replace(scenes, shape=shape, colour=colour, labels=k)
    return batch_from_scenes(scenes), batch_from_scenes(counter)


def conjunction_pair(n: int):
    scenes = sample_scenes("conjunction", n=n, seed=5)
    a, b = scenes.part_type[:, 0], scenes.part_type[:, 1]
    c = torch.tensor([next(t for t in range(4) if t not in (int(x), int(y))) for x, y in zip(a, b)])
    part_type, colour = scenes.part_type.clone(), scenes.colour.clone()
    part_type[:, 1] = c
    colour[:, 1] = torch.tensor(list(PART_HUES.values()))[c]
    counter = dataclasses.replace(scenes, part_type=part_type, colour=colour, labels=conjunction_label(a, c))
    return batch_from_scenes(scenes), batch_from_scenes(counter)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = pd.Series(a.flatten().double().numpy()).rank(method="average")
    rb = pd.Series(b.flatten().double().numpy()).rank(method="average")
    return float(ra.corr(rb))


def warm_up(model, c, x, metric) -> None:
    """One small call of every function timed below, so lazy imports and first-call costs are not timed."""
    c, x = c[:1], x[:1]
    layer_sweep(model, c, x, metric, sites="resid_pre", layers=[0], positions=[0], progress=False)
    patch_heads(model, c, x, metric, sites="z", layers=[0], heads=[0], progress=False)
    atp_layer_sweep(model, c, x, metric, sites="resid_pre", layers=[0])
    atp_heads(model, c, x, metric, layers=[0])
    eap_ig(model, c, x, metric, steps=1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare(rows: list, model_name: str, what: str, exact, est, t_exact: float, t_est: float) -> None:
    """Append the comparison rows (and print the headline one at once: a long run shows progress)."""
    e, a = exact.mean(normalized=False), est.mean(normalized=False)
    big = e.sub(exact.target_score.mean()).abs()
    keep = big >= 0.01 * big.max()
    rows.append({
        "model": model_name, "experiment": what, "cells": e.numel(), "exact_s": round(t_exact, 2),
        "atp_s": round(t_est, 2), "speedup": round(t_exact / t_est, 1), "spearman_all": round(spearman(e, a), 3),
        "spearman_effect>=1%": round(spearman(e[keep], a[keep]), 3),
    })
    print(rows[-1], flush=True)
    for k, site in enumerate(exact.labels["site"]):
        rows.append({"model": model_name, "experiment": f"  {what}: {site}", "cells": e[k].numel(),
                     "spearman_all": round(spearman(e[k], a[k]), 3)})


def mib_rows(ig_steps: int, batch: int, known_batch: int) -> list[dict]:
    """CPR / CMD / AUROC / time of every default scorer on the known-circuit model and the shipped models."""
    rows = []
    scorers = default_scorers(ig_steps)
    pairs = known_circuit_pairs(known_batch, seed=0)
    model = known_circuit_model()
    compare_scorers(model, pairs.clean[:1], pairs.corrupted[:1], pairs.metric(), scorers=scorers)  # warm-up
    res = compare_scorers(model, pairs.clean, pairs.corrupted, pairs.metric(), scorers=scorers,
                          known_edges=KNOWN_EDGES)
    rows += [{"model": "known-circuit", "images": known_batch, **r} for r in res.table.to_dict("records")]
    for name, make in (("toy-shapes", shapes_pair), ("toy-conjunction", conjunction_pair)):
        model = load_model(name)
        clean, corrupted = make(batch)
        metric = logit_diff(clean.labels, corrupted.labels)
        res = compare_scorers(model, clean.images, corrupted.images, metric, scorers=scorers)
        rows += [{"model": name, "images": batch, **r} for r in res.table.to_dict("records")]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="image pairs for the shipped models")
    ap.add_argument("--vits-batch", type=int, default=1, help="image pairs for ViT-S/16")
    ap.add_argument("--vits-positions", type=int, default=24, help="positions of the exact ViT-S resid_pre sweep")
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vits-head-sites", default="z,q,k,v,pattern", help="sites of the exact ViT-S head patching")
    ap.add_argument("--skip-vits", action="store_true")
    ap.add_argument("--known-batch", type=int, default=8, help="image pairs for the known-circuit model")
    ap.add_argument("--only-mib", action="store_true", help="only the MIB-style table (CPR, CMD, AUROC)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mib = pd.DataFrame(mib_rows(args.ig_steps, args.batch, args.known_batch)).round(4)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(mib.astype(object).fillna("").to_string(index=False), flush=True)
    if args.only_mib:
        return
    rows: list[dict] = []
    edge_rows: list[dict] = []

    for name, make in (("toy-shapes", shapes_pair), ("toy-conjunction", conjunction_pair)):
        model = load_model(name)
        clean, corrupted = make(args.batch)
        metric = logit_diff(clean.labels, corrupted.labels)
        c, x = clean.images, corrupted.images
        warm_up(model, c, x, metric)
        sites = ("resid_pre", "resid_mid", "attn_out", "mlp_out")
        exact, t_e = timed(lambda: layer_sweep(model, c, x, metric, sites=sites, batch_size=512, progress=False))
        est, t_a = timed(lambda: atp_layer_sweep(model, c, x, metric, sites=sites))
        compare(rows, name, "layer sweep", exact, est, t_e, t_a)
        exact, t_e = timed(lambda: patch_heads(model, c, x, metric, batch_size=512, progress=False))
        est, t_a = timed(lambda: atp_heads(model, c, x, metric))
        compare(rows, name, "head patching (AtP*)", exact, est, t_e, t_a)
        est, t_a = timed(lambda: atp_heads(model, c, x, metric, atp_star=False))
        compare(rows, name, "head patching (plain AtP)", exact, est, t_e, t_a)
        s, t1 = timed(lambda: eap(model, c, x, metric))
        _, t2 = timed(lambda: eap_ig(model, c, x, metric, steps=args.ig_steps))
        edge_rows.append({"model": name, "edges": int(s.graph.mask.sum()), "images": c.shape[0],
                          "eap_s": round(t1, 2), f"eap_ig{args.ig_steps}_s": round(t2, 2)})

    if not args.skip_vits:
        torch.manual_seed(0)
        timm_model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000).eval()
        model = HookedViT.from_timm(timm_model)
        g = torch.Generator().manual_seed(1)
        c = torch.randn(args.vits_batch, 3, 224, 224, generator=g)
        x = torch.randn(args.vits_batch, 3, 224, 224, generator=g)
        with torch.no_grad():
            metric = target_logit(model(c).argmax(-1))
        positions = list(range(args.vits_positions))
        head_sites = tuple(args.vits_head_sites.split(","))
        warm_up(model, c, x, metric)
        exact, t_e = timed(lambda: layer_sweep(model, c, x, metric, sites="resid_pre", positions=positions,
                                               batch_size=64, progress=False))
        full, t_a = timed(lambda: atp_layer_sweep(model, c, x, metric, sites="resid_pre"))  # every position
        est = atp_layer_sweep(model, c, x, metric, sites="resid_pre", positions=positions)
        compare(rows, "vit_small_patch16_224", f"resid_pre sweep, {len(positions)} of 197 positions (AtP: all 197)",
                exact, est, t_e, t_a)
        rows.append({"model": "vit_small_patch16_224", "experiment": "  full resid_pre sweep (extrapolated exact)",
                     "cells": full.mean().numel(), "exact_s": round(t_e * 197 / len(positions), 1),
                     "atp_s": round(t_a, 2), "speedup": round(t_e * 197 / len(positions) / t_a, 1)})
        exact, t_e = timed(lambda: patch_heads(model, c, x, metric, sites=head_sites, batch_size=64, progress=False))
        est, t_a = timed(lambda: atp_heads(model, c, x, metric, sites=head_sites))
        compare(rows, "vit_small_patch16_224", "head patching (AtP*)", exact, est, t_e, t_a)
        s, t1 = timed(lambda: eap(model, c, x, metric))
        _, t2 = timed(lambda: eap_ig(model, c, x, metric, steps=args.ig_steps))
        edge_rows.append({"model": "vit_small_patch16_224", "edges": int(s.graph.mask.sum()), "images": c.shape[0],
                          "eap_s": round(t1, 2), f"eap_ig{args.ig_steps}_s": round(t2, 2)})

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 70):
        print(pd.DataFrame(rows).astype(object).fillna("").to_string(index=False))
        print()
        print(pd.DataFrame(edge_rows).to_string(index=False))


if __name__ == "__main__":
    main()

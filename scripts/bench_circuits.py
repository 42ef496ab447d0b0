"""Benchmark of the circuit scorers against exact patching, side by side in one run (issue 26's table).

Models: the hand-built model whose circuit is known (``vit_patching.zoo.known_circuit``, ``--known-batch``
pairs), the shipped ``toy-shapes``, ``toy-conjunction`` and ``toy-relation`` on counterfactual pairs (the
tutorials' pairs, ``--batch`` of them) and a random ViT-S/16 at 224 (``--vits-batch`` random image pairs, the
metric the clean image's predicted-class logit).

1. **Edge scorers** (every scorer of ``vit_patching.circuits``; EAP-IG with ``--ig-steps``): each scorer's time
   (scoring only, after a warm-up call), the Spearman rank correlation of its image-mean edge scores with the
   exact per-edge effects (``exact_edge_scores``: ``m(clean) - m(clean without that edge)``; signed, average
   ranks for ties), the rank correlation of its node scores (sum of a node's outgoing edge scores) with the
   exact effect of removing each node (every edge out of it ablated at once), the AUROC for the known edges
   (known-circuit model), and CPR / CMD on MIB's share grid for each intervention (``--interventions``: the
   circuits are the scorer's top edges, scored once under corrupted-run patching, evaluated with every other edge
   ablated by that intervention; reference set: the corrupted images, for resample the clean images). On ViT-S/16
   (9163 edges) exact per-edge patching is refused as too costly (the row passes it would take are printed):
   there the references are exact node removal and the exact layer sweep of part 2.
2. **AtP against exact activation patching** (not in ``--quick``): the exact layer sweep (resid_pre, resid_mid,
   attn_out, mlp_out, every layer and position; on ViT-S resid_pre at ``--vits-positions`` positions) and head
   patching (z, q, k, v, pattern) against AtP / AtP*: times, speed-up and Spearman over all cells and over the
   cells whose exact effect is at least 1% of the largest.

``--quick`` (the smoke test, ``tests/circuits/test_bench_circuits.py``): part 1 on the known-circuit model only,
4 pairs, 2 EAP-IG steps, interventions corrupted and zero; part 2 on the known-circuit model.

Usage:
    python scripts/bench_circuits.py [--batch 4] [--known-batch 8] [--vits-batch 2] [--vits-positions 24]
        [--ig-steps 5] [--interventions corrupted,mean,zero,resample] [--threads 2] [--skip-vits] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import pandas as pd
import timm
import torch

from vit_patching.circuits import (
    Graph, atp_graddrop, atp_heads, atp_layer_sweep, atp_node_edges, cmd, cpr, eap, eap_ig, eap_ig_activations,
    edge_auroc, exact_edge_cost, exact_edge_scores, faithfulness_by_size, information_flow_routes, node_scores,
)
from vit_patching.circuits.common import resolve_metric
from vit_patching.circuits.evaluate import run_circuits
from vit_patching.model import HookedViT
from vit_patching.patching import layer_sweep, logit_diff, patch_heads, target_logit
from vit_patching.zoo import load_model
from vit_patching.zoo.datasets import (
    CLASS_HUES, PART_HUES, batch_from_scenes, conjunction_label, relation_label, sample_scenes,
)
from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs

MAX_EDGES = 2000  # exact per-edge patching above this many edges is refused (ViT-S/16: 9163)


# ---------------------------------------------------------------- counterfactual pairs (as in the tutorials)


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


def relation_pair(n: int):
    """Tutorial 05's pairs: "same colour" scenes, marked object 2 recoloured to another class hue."""
    scenes = sample_scenes("relation", n=4 * n + 8, seed=3)
    keep = torch.nonzero(scenes.labels == 1).flatten()[:n]
    scenes = dataclasses.replace(scenes, **{f.name: getattr(scenes, f.name)[keep] for f in dataclasses.fields(scenes)
                                            if isinstance(getattr(scenes, f.name), torch.Tensor)})
    a = scenes.part_type[:, 0]
    b = (a + 1) % 4
    part_type, colour = scenes.part_type.clone(), scenes.colour.clone()
    part_type[:, 1] = b
    colour[:, 1] = torch.tensor(list(CLASS_HUES.values()))[b]
    counter = dataclasses.replace(scenes, part_type=part_type, colour=colour, labels=relation_label(a, b))
    return batch_from_scenes(scenes), batch_from_scenes(counter)


PAIRS = {"toy-shapes": shapes_pair, "toy-conjunction": conjunction_pair, "toy-relation": relation_pair}


# ---------------------------------------------------------------- helpers


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = pd.Series(a.detach().flatten().double().numpy()).rank(method="average")
    rb = pd.Series(b.detach().flatten().double().numpy()).rank(method="average")
    return float(ra.corr(rb))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def scorers(ig_steps: int) -> dict[str, Callable]:
    return {
        "eap": eap,
        f"eap-ig{ig_steps}": lambda m, c, x, f: eap_ig(m, c, x, f, steps=ig_steps),
        f"eap-ig-act{ig_steps}": lambda m, c, x, f: eap_ig_activations(m, c, x, f, steps=ig_steps),
        "atp-graddrop": atp_graddrop,
        "ifr": information_flow_routes,
        "atp-nodes": atp_node_edges,
    }


def exact_node_effects(model, clean, corrupted, metric, batch_size: int = 64) -> torch.Tensor:
    """``m(clean) - m(clean with every edge out of node u ablated)`` per sender, image mean (run_circuits)."""
    graph = Graph.of(model)
    masks = graph.mask[None].repeat(len(graph.senders), 1, 1)
    for s in range(len(graph.senders)):
        masks[s, s, :] = False  # circuit s: the full graph without node s's outputs
    with torch.no_grad():
        fn, _ = resolve_metric(metric, model(clean), model(corrupted))
    values, clean_logits, _, _ = run_circuits(model, masks, clean, corrupted, fn, batch_size=batch_size)
    base = fn(clean_logits, torch.arange(clean.shape[0])).to(values.dtype)
    return (base[None] - values).mean(-1)


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (the docs page takes it as printed)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.astype(object).fillna("").itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- part 1: edge scorers


def edge_rows(name: str, model, clean, corrupted, metric, *, ig_steps: int, interventions: list[str],
              known_edges=None, batch_size: int = 64) -> list[dict]:
    n_edges = int(Graph.of(model).mask.sum())
    results: dict[str, tuple] = {}
    for sname, fn in scorers(ig_steps).items():
        results[sname] = timed(lambda: fn(model, clean, corrupted, metric))
    exact = None
    if n_edges <= MAX_EDGES:
        exact, t = timed(lambda: exact_edge_scores(model, clean, corrupted, metric, max_edges=MAX_EDGES))
        results["exact"] = (exact, t)
    if exact is not None:
        # float32 rounding (~1e-7 of the largest effect) is not an effect: such edges tie at 0 (the known
        # circuit's 106 edges without effect would otherwise be ranked by noise)
        ref = exact.scores[exact.graph.mask]
        ref = torch.where(ref.abs() <= 1e-6 * ref.abs().max(), torch.zeros_like(ref), ref)
    nodes_exact, t_nodes = timed(lambda: exact_node_effects(model, clean, corrupted, metric, batch_size))
    rows = []
    for sname, (s, t) in results.items():
        row = {"model": name, "edges": n_edges, "pairs": clean.shape[0], "scorer": sname, "time_s": round(t, 2)}
        mine = ref if s is exact else s.scores[s.graph.mask]
        row["rho_exact"] = round(spearman(mine, ref), 3) if exact is not None else None
        row["rho_nodes"] = round(spearman(node_scores(s), nodes_exact), 3)
        if known_edges is not None:
            row["auroc"] = round(edge_auroc(s, known_edges), 3)
        for kind in interventions:
            curve = faithfulness_by_size(model, s, clean, corrupted, metric, ablation=kind, batch_size=batch_size)
            row[f"cpr_{kind}"], row[f"cmd_{kind}"] = round(cpr(curve), 3), round(cmd(curve), 3)
        rows.append(row)
        print(row, flush=True)
    rows.append({"model": name, "edges": n_edges, "pairs": clean.shape[0], "scorer": "(exact node removal)",
                 "time_s": round(t_nodes, 2)})
    if exact is None:
        rows.append({"model": name, "edges": n_edges, "pairs": clean.shape[0],
                     "scorer": f"(exact per-edge: refused, {exact_edge_cost(model, clean.shape[0]):,} row passes)"})
    return rows


def vits_pair(batch: int):
    torch.manual_seed(0)
    model = HookedViT.from_timm(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000).eval())
    g = torch.Generator().manual_seed(1)
    c = torch.randn(batch, 3, 224, 224, generator=g)
    x = torch.randn(batch, 3, 224, 224, generator=g)
    with torch.no_grad():
        metric = target_logit(model(c).argmax(-1))
    return model, c, x, metric


def part1(args) -> pd.DataFrame:
    rows = []
    steps, kinds = args.ig_steps, args.interventions
    model, pairs = known_circuit_model(), known_circuit_pairs(args.known_batch, seed=0)
    for fn in scorers(steps).values():  # warm-up: lazy imports and first-call costs are not timed
        fn(model, pairs.clean[:2], pairs.corrupted[:2], pairs.metric())
    rows += edge_rows("known-circuit", model, pairs.clean, pairs.corrupted, pairs.metric(), ig_steps=steps,
                      interventions=kinds, known_edges=KNOWN_EDGES)
    for name in [] if args.quick else list(PAIRS):
        model = load_model(name)
        clean, corrupted = PAIRS[name](args.batch)
        metric = logit_diff(clean.labels, corrupted.labels)
        rows += edge_rows(name, model, clean.images, corrupted.images, metric, ig_steps=steps, interventions=kinds)
    if not args.skip_vits and not args.quick:
        model, c, x, metric = vits_pair(args.vits_batch)
        # run_circuits holds [rows, pos, senders, d_model] buffers: 64 rows of ViT-S are 1.2 GB each
        rows += edge_rows("vit_small_patch16_224", model, c, x, metric, ig_steps=steps, interventions=kinds,
                          batch_size=args.vits_rows)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- part 2: AtP vs exact activation patching


def warm_up(model, c, x, metric) -> None:
    """One small call of every function timed below, so lazy imports and first-call costs are not timed."""
    c, x = c[:1], x[:1]
    layer_sweep(model, c, x, metric, sites="resid_pre", layers=[0], positions=[0], progress=False)
    patch_heads(model, c, x, metric, sites="z", layers=[0], heads=[0], progress=False)
    atp_layer_sweep(model, c, x, metric, sites="resid_pre", layers=[0])
    atp_heads(model, c, x, metric, layers=[0])


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


def toy_models(args):
    """(name, model, clean, corrupted, metric) of the shipped models (``--quick``: the known-circuit model)."""
    if args.quick:
        pairs = known_circuit_pairs(args.known_batch, seed=0)
        yield "known-circuit", known_circuit_model(), pairs.clean, pairs.corrupted, pairs.metric()
        return
    for name, make in PAIRS.items():
        clean, corrupted = make(args.batch)
        yield name, load_model(name), clean.images, corrupted.images, logit_diff(clean.labels, corrupted.labels)


def part2(args) -> pd.DataFrame:
    rows: list[dict] = []
    for name, model, c, x, metric in toy_models(args):
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
    if not args.skip_vits and not args.quick:
        model, c, x, metric = vits_pair(args.vits_batch)
        positions = list(range(args.vits_positions))
        warm_up(model, c, x, metric)
        exact, t_e = timed(lambda: layer_sweep(model, c, x, metric, sites="resid_pre", positions=positions,
                                               batch_size=64, progress=False))
        full, t_a = timed(lambda: atp_layer_sweep(model, c, x, metric, sites="resid_pre"))  # every position
        est = atp_layer_sweep(model, c, x, metric, sites="resid_pre", positions=positions)
        compare(rows, "vit_small_patch16_224", f"resid_pre sweep, {len(positions)} of 197 positions (AtP: all 197)",
                exact, est, t_e, t_a)
        rows.append({"model": "vit_small_patch16_224", "experiment": "full resid_pre sweep (exact extrapolated)",
                     "cells": full.mean().numel(), "exact_s": round(t_e * 197 / len(positions), 1),
                     "atp_s": round(t_a, 2), "speedup": round(t_e * 197 / len(positions) / t_a, 1)})
        exact, t_e = timed(lambda: patch_heads(model, c, x, metric, sites=("z", "q"), batch_size=64, progress=False))
        est, t_a = timed(lambda: atp_heads(model, c, x, metric, sites=("z", "q")))
        compare(rows, "vit_small_patch16_224", "head patching z, q (AtP*)", exact, est, t_e, t_a)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="image pairs for the shipped models")
    ap.add_argument("--known-batch", type=int, default=8, help="image pairs for the known-circuit model")
    ap.add_argument("--vits-batch", type=int, default=2, help="image pairs for ViT-S/16 (resample needs 2)")
    ap.add_argument("--vits-positions", type=int, default=24, help="positions of the exact ViT-S resid_pre sweep")
    ap.add_argument("--vits-rows", type=int, default=8, help="rows per pass of ViT-S circuit evaluation (memory)")
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--interventions", default="corrupted,mean,zero,resample",
                    help="evaluation interventions for CPR / CMD")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-vits", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke test: the known-circuit model only, small")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.known_batch, args.ig_steps, args.interventions = 2, 4, 2, "corrupted,zero"
    args.interventions = args.interventions.split(",")
    torch.set_num_threads(args.threads)
    edges = part1(args)
    print("\nEdge scorers (time_s: scoring only; rho_*: Spearman with exact per-edge / exact node removal)")
    print(markdown(edges), flush=True)
    atp = part2(args)
    print("\nAtP vs exact activation patching")
    print(markdown(atp))
    return edges, atp


if __name__ == "__main__":
    main()

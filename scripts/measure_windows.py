#!/usr/bin/env python
"""Measure CAAP's layer-window choice on a zoo model: select on one split, confirm on another (issue 12).

Protocol (numbers recorded in docs/caap_defaults.md, section "Windows on the 8-block toy-relation"):

1. Selection split: ``--n`` held-out images of the model's dataset (seed ``--seed``). For each direction
   (``denoising``, ``noising``), ``select_window`` scores CAAP maps of every window ``[start, end)`` (neutral
   ``zeros``, readout ``logit``) by insertion AUC minus deletion AUC (zero substrates, softmax probability of the
   predicted class, ``--step`` patches per step) and the pointing game. Every window gets a 95 % Student-t
   interval over images, and a paired difference to the default window ``default_window(L)`` with its interval
   (``WindowSelection.intervals``).
2. Confirmation split: ``--n`` other images (seed ``--seed + 1``). The selection's best window, its runners-up
   (``--top``) and the default window are scored again; the paired difference best - default and its interval
   on these images decide whether the best window is *significantly* better than the default (interval above 0
   on both splits).
3. Directions against each other: at each direction's best window, on the confirmation split.

Usage:
    python scripts/measure_windows.py --model toy-relation --n 32 --step 2 --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def fmt(mean: float, ci: float) -> str:
    return f"{mean:+.3f} ± {ci:.3f}" if ci == ci else f"{mean:+.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-relation")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--step", type=int, default=2, help="patches per insertion/deletion step")
    ap.add_argument("--top", type=int, default=3, help="windows of the selection confirmed on the second split")
    ap.add_argument("--directions", default="denoising,noising")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vit_patching.patching.caap import default_window
    from vit_patching.patching.windows import select_window
    from vit_patching.zoo import get_spec, load_dataset, load_model

    model = load_model(args.model)
    L = model.cfg.n_layers
    spec = get_spec(args.model)
    default = default_window(L)
    select = load_dataset(spec.dataset, n=args.n, seed=args.seed)
    confirm = load_dataset(spec.dataset, n=args.n, seed=args.seed + 1)
    common = dict(eval_kwargs={"step": args.step})
    out: dict = {"settings": vars(args), "n_layers": L, "default": list(default), "directions": {}}
    print(f"# {args.model}: {L} layers, default window {default}, {args.n} + {args.n} images, step {args.step}")
    for direction in args.directions.split(","):
        t0 = time.time()
        sel = select_window(model, select.images, masks=select.masks, direction=direction, **common)
        iv = sel.intervals(reference=default)
        iv = iv.sort_values("ins_minus_del", ascending=False)
        top = [tuple(int(v) for v in w) for w in iv[["start", "end"]].to_numpy()[: args.top]]
        chosen = list(dict.fromkeys([*top, default]))
        chk = select_window(model, confirm.images, chosen, masks=confirm.masks, direction=direction, **common)
        civ = chk.intervals(reference=default)
        best = top[0]
        crow = civ[(civ.start == best[0]) & (civ.end == best[1])].iloc[0]
        srow = iv[(iv.start == best[0]) & (iv.end == best[1])].iloc[0]
        significant = bool(srow.diff_low > 0 and crow.diff_low > 0)
        res = {
            "selection": iv.to_dict(orient="records"), "confirmation": civ.to_dict(orient="records"),
            "best": list(best), "significant": significant, "seconds": time.time() - t0,
            "warnings": list(sel.warnings),
        }
        out["directions"][direction] = res
        print(f"\n## {direction} ({res['seconds']:.0f} s): best {best}, default {default}, "
              f"best significantly better than default on both splits: {significant}")
        print("selection split, top rows (ins - del mean ± 95% CI | paired diff to default ± CI | PG):")
        for _, r in iv.head(8).iterrows():
            print(f"  [{int(r.start)},{int(r.end)})  {fmt(r.ins_minus_del, r.ins_minus_del_ci)} | "
                  f"{fmt(r['diff'], r.diff_ci)} | {r.pointing_game:.3f}")
        d = iv[(iv.start == default[0]) & (iv.end == default[1])].iloc[0]
        print(f"  default [{default[0]},{default[1]}): {fmt(d.ins_minus_del, d.ins_minus_del_ci)}, rank "
              f"{int((iv.ins_minus_del > d.ins_minus_del).sum()) + 1} of {len(iv)}")
        print("confirmation split:")
        for _, r in civ.iterrows():
            print(f"  [{int(r.start)},{int(r.end)})  {fmt(r.ins_minus_del, r.ins_minus_del_ci)} | "
                  f"{fmt(r['diff'], r.diff_ci)} | {r.pointing_game:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()

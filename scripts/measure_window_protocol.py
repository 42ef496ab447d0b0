#!/usr/bin/env python
"""Run the window-selection protocol (issue 25) on zoo models: select on one split, confirm on another, Holm.

For each model and variant, :func:`~vit_patching.patching.window_protocol.confirm_window`:

1. **Selection split**: ``--n`` held-out images of the model's dataset (``load_dataset(dataset, n, seed=--seed)``).
   ``select_window`` scores the CAAP maps of every compared window (``--windows``; the default window
   ``default_window(L)`` is always one) by insertion AUC minus deletion AUC (zero substrates, softmax probability
   of the predicted class, ``--step`` patches per step) and the pointing game (half-patch tolerance). The
   ``--n-candidates`` windows with the largest paired difference to the default go on.
2. **Confirmation split**: ``--n`` other images (seed ``--seed + 1``): the candidates and the default again; each
   candidate gets a two-sided paired t-test against the default, Holm-corrected over the candidates compared.
3. **Decision**: the confirmed window with the largest difference, or "keep the default".

Variants: ``denoising`` and ``noising`` (single-patch CAAP, ``direction=``) and ``coalition`` (coalition CAAP,
denoising: ``select_window(..., coalitions=--coalitions, coalition_groups=--groups)``, i.e. ``caap_shapley`` maps).
Neutral ``zeros``, readout ``logit`` (the defaults). ``--coalition-windows`` may restrict the windows the
coalition variant compares (it costs more per window).

Writes ``<out>/<model>_<variant>.json`` (settings, seconds, load averages, both splits' per-window intervals,
the decision and its evidence) and ``.md`` (the table for docs/caap_defaults.md), each as soon as it is done
(written to a temporary name, then renamed).

Usage:
    python scripts/measure_window_protocol.py --model toy-relation --variants denoising,noising --n 64 --step 2 \\
        --threads 1 --out results/
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch


def parse_windows(text: str, n_layers: int) -> list[tuple[int, int]] | None:
    """``all`` (None = every window), ``start0`` (windows starting at block 0) or ``s:e,s:e,...``."""
    from vit_patching.patching.windows import all_windows

    if text == "all":
        return None
    if text == "start0":
        return [w for w in all_windows(n_layers) if w[0] == 0]
    return [tuple(int(v) for v in part.split(":")) for part in text.split(",")]


def fmt(mean: float, ci: float | None = None) -> str:
    if ci is None or not math.isfinite(ci):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} ± {ci:.3f}"


def fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def markdown(res: dict, top: int) -> str:
    """The selection's top windows and the default, with the confirmation split's evidence."""
    default = tuple(res["default"])
    sel = {(r["start"], r["end"]): r for r in res["selection"]}
    conf = {(r["start"], r["end"]): r for r in res["confirmation"]}
    ev = {tuple(e["window"]): e for e in res["decision"]["evidence"]}
    ranked = sorted(sel, key=lambda w: -sel[w]["ins_minus_del"])
    rank = ranked.index(default) + 1
    rows = [*(w for w in ranked[:top] if w != default), default]
    lines = [
        f"{res['model']}, {res['variant']} ({res['settings_line']}):",
        "",
        "| window | selection: ins - del | paired diff to default | PG | confirmation: ins - del "
        "| paired diff to default | p | Holm p | PG |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in rows:
        s = sel[w]
        name = f"[{w[0]}, {w[1]})" + (f" (default, rank {rank}/{len(ranked)})" if w == default else "")
        c = conf.get(w)
        e = ev.get(w)
        cells = [fmt(s["ins_minus_del"], s["ins_minus_del_ci"]), "0" if w == default else fmt(s["diff"], s["diff_ci"]),
                 f"{s.get('pointing_game', float('nan')):.2f}"]
        if c is None:
            cells += ["–"] * 5
        else:
            cells += [fmt(c["ins_minus_del"], c["ins_minus_del_ci"]), "0" if w == default else fmt(c["diff"], c["diff_ci"]),
                      fmt_p(e["p"]) if e else "–", fmt_p(e["p_holm"]) if e else "–",
                      f"{c.get('pointing_game', float('nan')):.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Decision: {res['decision']['message']}.", ""]
    return "\n".join(lines)


def decisions(results: list[dict]) -> str:
    """One row per model x variant: the candidates, the best confirmation difference and the decision."""
    lines = ["| model | variant | default | candidates (selection order) | best confirmation diff to default "
             "| Holm p | decision |", "|---|---|---|---|---:|---:|---|"]
    for res in results:
        d = res["decision"]
        lab = lambda w: f"[{w[0]}, {w[1]})"  # noqa: E731
        best = max(d["evidence"], key=lambda e: e["diff"])
        verdict = f"use {lab(d['window'])}" if d["better"] else f"keep {lab(res['default'])}"
        lines.append(f"| {res['model']} | {res['variant']} | {lab(res['default'])} | "
                     f"{', '.join(lab(w) for w in d['candidates'])} | {lab(best['window'])}: "
                     f"{fmt(best['diff'], best['diff_ci'])} | {fmt_p(best['p_holm'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def runs_table(results: list[dict]) -> str:
    """Wall time and machine load of each run (1-minute load averages at its start and end)."""
    lines = ["| model | variant | windows compared | wall time | load average at start / end |", "|---|---|---|---:|---:|"]
    for res in results:
        n = len(res["selection"])
        lines.append(f"| {res['model']} | {res['variant']} | {n} ({res['windows']}) | {res['seconds']:.0f} s | "
                     f"{res['loadavg_start'][0]:.1f} / {res['loadavg_end'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two runs may share --out
    tmp.write_text(text)
    os.replace(tmp, path)


MODELS = ("toy-shapes", "toy-conjunction", "toy-relation")
VARIANTS = ("denoising", "noising", "coalition")


def write_tables(out: Path) -> None:
    """Each JSON's markdown table, and decisions.md over every JSON in ``out`` (models and variants in order)."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    order = lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else len(MODELS), r["model"],  # noqa: E731
                       VARIANTS.index(r["variant"]))
    results.sort(key=order)
    for res in results:
        write_atomic(out / f"{res['model']}_{res['variant']}.md", markdown(res, res["settings"]["top"]))
    write_atomic(out / "decisions.md", decisions(results))
    write_atomic(out / "runs.md", runs_table(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-shapes,toy-conjunction,toy-relation", help="comma-separated zoo models")
    ap.add_argument("--variants", default="denoising,noising,coalition")
    ap.add_argument("--n", type=int, default=64, help="images per split")
    ap.add_argument("--seed", type=int, default=1, help="selection split seed (confirmation: seed + 1)")
    ap.add_argument("--step", type=int, default=2, help="patches per insertion/deletion step")
    ap.add_argument("--windows", default="all", help="'all', 'start0' or 's:e,s:e,...' (the default is added)")
    ap.add_argument("--coalition-windows", default=None, help="windows of the coalition variant (default: --windows)")
    ap.add_argument("--coalitions", type=int, default=8, help="permutations of coalition CAAP (antithetic pairs)")
    ap.add_argument("--groups", type=int, default=2, help="k x k patch blocks as coalition CAAP's players")
    ap.add_argument("--coalition-seed", type=int, default=0)
    ap.add_argument("--n-candidates", type=int, default=3, help="windows confirmed (the Holm family)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--top", type=int, default=5, help="selection rows in the markdown table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="window_protocol")
    ap.add_argument("--from-json", action="store_true",
                    help="only rewrite the .md files and decisions.md from the JSON files in --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_json:
        write_tables(out)
        return
    torch.set_num_threads(args.threads)

    from vit_patching.patching.caap import default_window
    from vit_patching.patching.window_protocol import confirm_window
    from vit_patching.zoo import get_spec, load_dataset, load_model

    out.mkdir(parents=True, exist_ok=True)
    for name in args.model.split(","):
        model = load_model(name)
        L = model.cfg.n_layers
        spec = get_spec(name)
        select = load_dataset(spec.dataset, n=args.n, seed=args.seed)
        confirm = load_dataset(spec.dataset, n=args.n, seed=args.seed + 1)
        default = default_window(L)
        for variant in args.variants.split(","):
            kwargs: dict = dict(eval_kwargs={"step": args.step})
            text = args.windows
            line = f"{args.n} + {args.n} images, steps of {args.step} patches"
            if variant == "coalition":
                kwargs.update(coalitions=args.coalitions, coalition_groups=args.groups,
                              coalition_seed=args.coalition_seed)
                text = args.coalition_windows or args.windows
                line += f", {args.coalitions} permutations, {args.groups}x{args.groups} groups"
            else:
                kwargs.update(direction=variant)
            windows = parse_windows(text, L)
            load0, t0 = os.getloadavg(), time.time()
            dec = confirm_window(model, select.images, confirm.images, windows, default=default,
                                 selection_masks=select.masks, confirmation_masks=confirm.masks,
                                 n_candidates=args.n_candidates, alpha=args.alpha, **kwargs)
            seconds, load1 = time.time() - t0, os.getloadavg()
            res = {
                "model": name, "variant": variant, "n_layers": L, "default": list(default), "windows": text,
                "settings": {k: v for k, v in vars(args).items() if k not in ("model", "variants", "out")},
                "settings_line": line + f", {args.threads} thread(s)",
                "seconds": seconds, "loadavg_start": list(load0), "loadavg_end": list(load1),
                "selection": dec.selection.intervals(reference=default).to_dict(orient="records"),
                "confirmation": dec.confirmation.intervals(reference=default).to_dict(orient="records"),
                "decision": {"window": list(dec.window), "better": dec.better, "diff": dec.diff,
                             "diff_ci": dec.diff_ci, "p_holm": dec.p_holm, "message": dec.message,
                             "candidates": [list(w) for w in dec.candidates],
                             "evidence": [{**e, "window": list(e["window"])} for e in dec.evidence],
                             "settings": dec.settings},
                "options": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                            for k, v in dec.selection.options.items()},
                "warnings": dec.selection.warnings,
            }
            stem = out / f"{name}_{variant}"
            write_atomic(stem.with_suffix(".json"), json.dumps(res, indent=1, default=float))
            write_tables(out)
            print(f"{name} {variant}: {seconds:.0f} s, load {load0[0]:.2f} -> {load1[0]:.2f}: {dec.message}",
                  flush=True)


if __name__ == "__main__":
    main()

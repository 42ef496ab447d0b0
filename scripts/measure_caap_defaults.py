"""Measure CAAP's defaults (neutral context, readout, layer window) on the shipped toy models.

Protocol (numbers recorded in docs/caap_defaults.md):

1. Selection split: ``--n`` held-out images of each model's dataset (seed ``--seed``). For every neutral context
   and every window ``[start, end)`` (logit readout), ``select_window`` scores the CAAP maps by insertion AUC
   (higher is better) and deletion AUC (lower is better), both from/to the zero (mean-colour) substrate, on the
   softmax probability of the predicted class, patch by patch in steps of ``--step`` patches, and by the
   pointing game (tolerance half a patch) against the evidence masks.
2. Readouts: the other readout (``prob`` for a ``logit`` sweep) at each neutral's best window; ``--readout prob``
   sweeps every window with ``prob``. ``delta_*`` readouts rank patches exactly like their plain versions, so their
   rank metrics are identical and are not re-measured.
3. Reference rows: a random map (also scored with RISE's blurred insertion substrate, and the class probability of
   the blurred and the zero image: why select_window's insertion starts from the zero image). The window [0, 1)
   in the sweep is single-patch pixel insertion (caap.md 6.1).
4. Confirmation split: the chosen defaults on a second, disjoint set of images (seed ``--seed + 1``).

Usage:
    python scripts/measure_caap_defaults.py [--n 32] [--step 2] [--threads 1] [--json out.json]
    python scripts/measure_caap_defaults.py --neutrals zeros --readout prob     # the prob readout, every window
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def load(name: str, weights: str | None):
    from vit_patching.model import HookedViT
    from vit_patching.zoo import load_model

    if weights is None:
        return load_model(name)
    from safetensors.torch import load_file

    from vit_patching.zoo.registry import build_timm_model

    m = build_timm_model(name)
    m.load_state_dict(load_file(weights), strict=True)
    return HookedViT.from_timm(m.eval())


def random_map_scores(model, batch, step: int, seed: int) -> dict[str, float]:
    """A random map's scores (zero substrates, as select_window), plus RISE's blurred insertion for reference."""
    from vit_patching.evaluation import deletion_auc, insertion_auc, make_substrate, pointing_game

    gh, gw = model.cfg.grid_size
    maps = torch.rand(batch.images.shape[0], gh, gw, generator=torch.Generator().manual_seed(seed))
    kw = dict(unit="patch", step=step)
    ins = insertion_auc(model, batch.images, maps, substrate="zeros", **kw).auc.double()
    dele = deletion_auc(model, batch.images, maps, substrate="zeros", **kw).auc.double()
    ins_blur = insertion_auc(model, batch.images, maps, substrate="blur", **kw).auc.double()
    pg = pointing_game(maps, batch.masks, tolerance=model.cfg.patch_size[0] / 2).accuracy
    with torch.no_grad():
        target = model(batch.images).argmax(-1)
        p_blur = model(make_substrate(batch.images, "blur")).softmax(-1).gather(1, target[:, None]).mean()
        p_zero = model(make_substrate(batch.images, "zeros")).softmax(-1).gather(1, target[:, None]).mean()
    return {"insertion_auc": float(ins.mean()), "deletion_auc": float(dele.mean()),
            "ins_minus_del": float((ins - dele).mean()), "pointing_game": pg,
            "insertion_auc_blur_substrate": float(ins_blur.mean()),
            "prob_of_blurred_image": float(p_blur), "prob_of_zero_image": float(p_zero)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="toy-shapes,toy-conjunction")
    ap.add_argument("--weights", default="", help="name=path.safetensors,... to measure unshipped weights")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--step", type=int, default=2, help="patches per insertion/deletion step")
    ap.add_argument("--neutrals", default="zeros,black,image_mean,blur,mean_activations")
    ap.add_argument("--readout", default="logit", choices=["logit", "prob"],
                    help="readout of the window sweep (stage 2 then checks the other one at the best window)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vit_patching.patching.windows import select_window
    from vit_patching.zoo import get_spec, load_dataset

    weights = dict(kv.split("=", 1) for kv in args.weights.split(",") if kv)
    other = "prob" if args.readout == "logit" else "logit"
    cols = ["insertion_auc", "deletion_auc", "ins_minus_del", "pointing_game"]
    out: dict = {"settings": vars(args), "models": {}}
    for name in args.models.split(","):
        t0 = time.time()
        model = load(name, weights.get(name))
        spec = get_spec(name)
        batch = load_dataset(spec.dataset, n=args.n, seed=args.seed)
        reference = load_dataset(spec.dataset, n=64, seed=args.seed + 100).images
        acc = float((model(batch.images).argmax(-1) == batch.labels).float().mean())
        res: dict = {"accuracy": acc, "neutrals": {}, "readouts": {}}
        print(f"\n## {name} (L={model.cfg.n_layers}, {args.n} images seed {args.seed}, accuracy {acc:.3f})")
        res["random_map"] = random_map_scores(model, batch, args.step, args.seed)
        print("random map: " + ", ".join(f"{k}={v:.4f}" for k, v in res["random_map"].items()))
        for neutral in args.neutrals.split(","):
            sel = select_window(
                model, batch.images, masks=batch.masks, neutral=neutral, readout=args.readout,
                reference=reference if neutral == "mean_activations" else None, eval_kwargs={"step": args.step},
            )
            # Standard error of the mean over images, per window (paired differences between windows are smaller).
            se = sel.per_image.groupby(["start", "end"], sort=False)["ins_minus_del"].sem().to_numpy()
            sel.table["ins_minus_del_se"] = se
            res["neutrals"][neutral] = {"table": sel.table.to_dict(orient="records"), "recommended": list(sel.recommended)}
            print(f"\n### neutral={neutral} (readout {args.readout}): recommended {sel.recommended}")
            print(sel.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            best = sel.recommended
            sel_p = select_window(
                model, batch.images, [best], masks=batch.masks, neutral=neutral, readout=other,
                reference=reference if neutral == "mean_activations" else None, eval_kwargs={"step": args.step},
            )
            row = sel_p.table.iloc[0]
            res["readouts"][neutral] = {"window": list(best), other: {c: float(row[c]) for c in cols}}
            print(f"readout {other} at {best}: " + ", ".join(f"{c}={row[c]:.4f}" for c in cols))
        # 4. The library's current defaults on a disjoint confirmation split.
        from vit_patching.patching.caap import DEFAULT_NEUTRAL, DEFAULT_READOUT, default_window

        confirm = load_dataset(spec.dataset, n=args.n, seed=args.seed + 1)
        w = default_window(model.cfg.n_layers)
        sel_c = select_window(
            model, confirm.images, [w], masks=confirm.masks, neutral=DEFAULT_NEUTRAL, readout=DEFAULT_READOUT,
            reference=reference if DEFAULT_NEUTRAL == "mean_activations" else None, eval_kwargs={"step": args.step},
        )
        row = sel_c.table.iloc[0]
        res["confirmation"] = {"seed": args.seed + 1, "neutral": DEFAULT_NEUTRAL, "readout": DEFAULT_READOUT,
                               "window": list(w), **{c: float(row[c]) for c in cols},
                               "random_map": random_map_scores(model, confirm, args.step, args.seed + 1)}
        print(f"\nconfirmation (seed {args.seed + 1}) defaults {DEFAULT_NEUTRAL}/{DEFAULT_READOUT}/{w}: "
              + ", ".join(f"{c}={row[c]:.4f}" for c in cols))
        out["models"][name] = res
        print(f"({time.time() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

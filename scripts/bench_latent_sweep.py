"""Benchmark: a latent sweep vs a position sweep on the same hook, side by side in one run.

On the shipped ``toy-shapes`` model, a random top-k SAE of the shipped size (``d_sae = 8 * d_model``, ``k`` as
given) is spliced with its error term at a middle residual hook (``blocks.{L // 2}.hook_resid_pre``). Then:

* the position sweep: :func:`~vit_patching.patching.layer_sweep` of that hook (every token position);
* the latent sweep: :func:`~vit_patching.patching.latent_sweep` over every latent (each latent at every position at
  once), and optionally ``--per-position-latents N`` latents one position at a time.

Both run through the same engine from the same cached residual, with the same batch size, images and metric;
each is timed ``--repeats`` times (min reported) after a warm-up. The rows differ: the latent sweep has
``d_sae`` cells per image, the position sweep ``n_pos``; the time per row is printed too.

Usage:
    python scripts/bench_latent_sweep.py [--images 8] [--k 32] [--batch-size 256] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from vit_patching.hook_names import get_act_name
from vit_patching.patching import latent_sweep, layer_sweep
from vit_patching.sae import SAEConfig, make_sae
from vit_patching.zoo import load_dataset, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy-shapes")
    ap.add_argument("--images", type=int, default=8, help="image pairs")
    ap.add_argument("--k", type=int, default=32, help="latents kept per token by the top-k SAE")
    ap.add_argument("--expansion", type=int, default=8, help="d_sae / d_model")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-position-latents", type=int, default=0,
                    help="also time a per-position sweep of this many latents")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cfg = model.cfg
    layer = cfg.n_layers // 2
    hook = get_act_name("resid_pre", layer)
    torch.manual_seed(0)
    sae = make_sae(SAEConfig("topk", cfg.d_model, args.expansion * cfg.d_model, hook_name=hook, k=args.k)).eval()
    data = load_dataset("shapes", n=2 * args.images, seed=0).images
    clean, corrupted = data[: args.images], data[args.images:]
    common = dict(batch_size=args.batch_size, progress=False)

    def timed(fn):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = fn()
            best = min(best, time.perf_counter() - t0)
        return res, best

    runs = {
        "position sweep (layer_sweep, one hook)": lambda: layer_sweep(
            model, clean, corrupted, "logit", sites="resid_pre", layers=[layer], **common),
        "latent sweep (every latent, all positions)": lambda: latent_sweep(
            model, clean, corrupted, "logit", hook=hook, **common),
    }
    if args.per_position_latents:
        runs[f"latent sweep ({args.per_position_latents} latents x every position)"] = lambda: latent_sweep(
            model, clean, corrupted, "logit", hook=hook, latents=range(args.per_position_latents),
            per_position=True, **common)
    with torch.no_grad(), model.saes([sae], use_error_term=True):
        print(f"model {args.model}: {cfg.n_layers} blocks, d_model {cfg.d_model}, {cfg.n_pos} tokens; SAE top-k "
              f"k={args.k}, d_sae={sae.d_sae} at {hook}; {args.images} image pairs, batch size {args.batch_size}, "
              f"{args.threads} threads, min of {args.repeats}")
        base = None
        for label, fn in runs.items():
            res, seconds = timed(fn)
            rows = res.values[..., 0].numel() * args.images
            base = seconds if base is None else base
            print(f"{label:<52} {rows:>7} rows  {seconds:8.3f} s  {1e6 * seconds / rows:8.1f} us/row  "
                  f"x{seconds / base:6.2f} vs position sweep")


if __name__ == "__main__":
    main()

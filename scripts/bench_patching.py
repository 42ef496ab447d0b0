"""Benchmark: our batched layer sweep vs TransformerLens's one-forward-per-cell loop, side by side in one run.

Both sweep resid_pre over every layer and every token position (CLS included) of the same HookedViT on the
same images with the same metric; TransformerLens gets an explicit ``index_df`` (its own axis inference would
take the pixel width as the position count). The values are checked to agree before the times are reported.

Usage:
    python scripts/bench_patching.py [--depth 6] [--width 192] [--img 64] [--patch 8] [--batch 4]
        [--batch-size 512] [--threads 2]

Prints both times and the ratio TransformerLens / ours (target >= 5 on CPU for the default 6-layer model).
TransformerLens runs as it is called (autograd on: ``generic_activation_patch`` does not disable it);
``--tl-no-grad`` wraps it in ``torch.no_grad()`` for the compute-only comparison.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import timm
import torch
from transformer_lens import patching as tlp

from vit_patching.model import HookedViT
from vit_patching.patching import layer_sweep, target_logit
from vit_patching.patching.memory import peak_memory, reset_peak_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--img", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="image pairs")
    ap.add_argument("--batch-size", type=int, default=512, help="our rows per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tl-no-grad", action="store_true",
                    help="run TransformerLens under torch.no_grad() (by default it runs as called: autograd on)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    timm_model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=args.img, patch_size=args.patch, depth=args.depth,
        embed_dim=args.width, num_heads=args.heads, num_classes=10,
    ).eval()
    model = HookedViT.from_timm(timm_model).to(args.device)
    g = torch.Generator().manual_seed(1)
    clean = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(args.device)
    corrupted = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(args.device)
    classes = model(clean).argmax(-1)
    metric = target_logit(classes)
    ids = torch.arange(args.batch, device=args.device)
    n_layers, n_pos = model.cfg.n_layers, model.layout.n_pos

    def ours():
        return layer_sweep(model, clean, corrupted, metric, sites="resid_pre", batch_size=args.batch_size,
                           progress=False)

    def theirs():
        _, clean_cache = model.run_with_cache(clean)
        index_df = pd.DataFrame([(l, p) for l in range(n_layers) for p in range(n_pos)], columns=["layer", "pos"])
        with torch.set_grad_enabled(not args.tl_no_grad):
            return tlp.get_act_patch_resid_pre(model, corrupted, clean_cache, lambda lg: metric(lg, ids).detach(),
                                               index_axis_names=None, index_df=index_df, reduce="none")

    ours()  # warm-up
    reset_peak_memory(args.device)
    t0 = time.perf_counter()
    res = ours()
    t_ours = time.perf_counter() - t0
    peak_ours = peak_memory(args.device)
    reset_peak_memory(args.device)
    t0 = time.perf_counter()
    tl = theirs()
    t_tl = time.perf_counter() - t0
    peak_tl = peak_memory(args.device)
    err = (res.values[0] - tl.values.view(n_layers, n_pos, -1).to(res.values)).abs().max().item()
    print(f"model: {n_layers} layers, width {args.width}, {args.img}x{args.img} patch {args.patch} -> {n_pos} positions; "
          f"{args.batch} image pairs; {n_layers * n_pos} cells; device {args.device}, {args.threads} threads")
    print(f"transformer_lens runs with autograd {'off (--tl-no-grad)' if args.tl_no_grad else 'on, as it is called'}")
    print(f"transformer_lens get_act_patch_resid_pre: {t_tl:8.2f} s  ({n_layers * n_pos} forwards)")
    print(f"vit_patching layer_sweep:                 {t_ours:8.2f} s  ({res.n_forwards} forwards of <= "
          f"{args.batch_size} rows, from cached prefixes)")
    print(f"max |difference| = {err:.2e}")
    print(f"speed-up (TransformerLens / ours): {t_tl / t_ours:.1f}x")
    kind = "allocated" if args.device.startswith("cuda") else "RSS (process)"
    print(f"peak {kind}: ours {peak_ours / 2**20:.0f} MiB, transformer_lens {peak_tl / 2**20:.0f} MiB")
    if err > 1e-3:
        raise SystemExit(f"results disagree by {err:.2e}")


if __name__ == "__main__":
    main()

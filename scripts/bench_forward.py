"""Benchmark: HookedViT (no hooks) vs timm on the same weights and batch, side by side in one run.

Usage:
    python scripts/bench_forward.py [--model vit_small_patch16_224] [--batch 8] [--repeats 10]

Prints per-forward times and the ratio HookedViT / timm (target <= 1.05 on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from vit_patching.model import HookedViT


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ref = timm.create_model(args.model, pretrained=False).eval().to(args.device, dtype)
    hooked = HookedViT.from_timm(ref)
    cfg = hooked.cfg
    x = torch.randn(args.batch, cfg.in_chans, *cfg.img_size, device=args.device, dtype=dtype)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_timm() -> None:
        ref(x)
        sync()

    def run_hooked() -> None:
        hooked(x)
        sync()

    with torch.inference_mode():
        err = (ref(x).float() - hooked(x).float()).abs().max().item()
        for fn in (run_timm, run_hooked):  # warm-up
            fn()
        # Interleave the two, alternating which goes first, so machine noise and cache effects hit both alike.
        t_timm, t_hooked = [], []
        for r in range(args.repeats):
            if r % 2:
                t_hooked += _time(run_hooked, 1)
                t_timm += _time(run_timm, 1)
            else:
                t_timm += _time(run_timm, 1)
                t_hooked += _time(run_hooked, 1)
    mt, mh = statistics.median(t_timm), statistics.median(t_hooked)
    print(f"model={args.model} batch={args.batch} device={args.device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"max |logit diff| = {err:.2e}")
    print(f"timm      median {mt * 1e3:8.1f} ms/forward  ({args.batch / mt:7.1f} img/s)")
    print(f"HookedViT median {mh * 1e3:8.1f} ms/forward  ({args.batch / mh:7.1f} img/s)")
    print(f"ratio HookedViT / timm = {mh / mt:.3f}")


if __name__ == "__main__":
    main()

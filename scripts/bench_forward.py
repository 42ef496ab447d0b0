"""Benchmark: HookedViT (no hooks) vs timm on the same weights and batch, side by side in one run.

Usage:
    python scripts/bench_forward.py [--model vit-s] [--model siglip-b] [--model dinov3-s] [--batch 8] [--repeats 10]

``--model`` takes a short name (vit-s, vit-b, siglip-b: attention-pool head and no CLS token, dinov3-s: RoPE,
registers and LayerScale, eva02-s: RoPE and SwiGLU) or any timm model name, and may be repeated. Prints
per-forward times and the ratio HookedViT / timm for each (target <= 1.05 on CPU). Weights are random: the
speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from vit_patching.model import HookedViT
from vit_patching.patching.memory import peak_memory, reset_peak_memory


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


MODELS = {
    "vit-s": "vit_small_patch16_224",
    "vit-b": "vit_base_patch16_224",
    "siglip-b": "vit_base_patch16_siglip_224",
    "dinov3-s": "vit_small_patch16_dinov3",
    "eva02-s": "eva02_small_patch14_224",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help=f"short name ({', '.join(MODELS)}) or timm name; repeatable "
                    "(default vit-s)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.exit(2, f"--threads: expected a positive integer, got {args.threads}\n")
        torch.set_num_threads(args.threads)
    names = [MODELS.get(m, m) for m in (args.model or ["vit-s"])]
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:  # before building anything
        ap.exit(2, f"--model: expected one of {', '.join(MODELS)} or a timm model name, got {unknown[0]!r}\n")
    for name in names:
        bench(name, args)


def bench(name: str, args: argparse.Namespace) -> None:
    """Time timm and its HookedViT conversion on one random batch, interleaved."""
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval().to(args.device, dtype)
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
        peaks = {}  # peak memory of one forward each (CPU: peak RSS of the process, CUDA: allocator peak)
        for label, fn in (("timm", run_timm), ("HookedViT", run_hooked)):
            reset_peak_memory(args.device)
            fn()
            peaks[label] = peak_memory(args.device)
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
    print(f"model={name} batch={args.batch} device={args.device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"max |logit diff| = {err:.2e}")
    print(f"timm      median {mt * 1e3:8.1f} ms/forward  ({args.batch / mt:7.1f} img/s)")
    print(f"HookedViT median {mh * 1e3:8.1f} ms/forward  ({args.batch / mh:7.1f} img/s)")
    print(f"ratio HookedViT / timm = {mh / mt:.3f}")
    kind = "allocated" if args.device.startswith("cuda") else "RSS"
    print(f"peak {kind}: timm {peaks['timm'] / 2**20:.0f} MiB, HookedViT {peaks['HookedViT'] / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()

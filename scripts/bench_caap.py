"""Benchmark: CAAP vs (a) a naive implementation and (b) the compute floor, side by side in one run.

* CAAP: ``vit_patching.patching.caap.caap`` (source run + neutral prefix once, N patched runs from block
  ``start``, batched over patches and images, fused attention), the whole call timed.
* (a) naive: the source run, the neutral run, then one full-depth ``run_with_hooks`` per patch (batch 1) that
  overwrites the patch token at every window layer.
* (b) floor: a plain timm forward of ``N * (L - start) / L`` images per source image (what the patched runs
  cost if hooks, caches and the skipped prefix were free), in batches of ``--batch-size``.

Targets: naive / CAAP >= L / (L - start); CAAP / floor <= 1.15. Both ratios are printed, with images
(source images explained) per second for each.

Usage:
    python scripts/bench_caap.py                                     # random ViT-B/16 at 224, CPU, fp32
    python scripts/bench_caap.py --device cuda --dtype bfloat16 --images 8 --batch-size 512 --repeats 3 --naive-patches 49
    python scripts/bench_caap.py --model toy-shapes --window 0:2     # a shipped zoo model
    python scripts/bench_caap.py --naive-patches 16                  # time 16 naive patches, extrapolate to N
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch


def build(name: str, device: str, dtype: torch.dtype):
    """(timm model, HookedViT) on ``device``/``dtype``: a zoo model or a random timm model."""
    import timm

    from vit_patching.model import HookedViT
    from vit_patching.zoo import available_models, load_timm_model

    if name in available_models():
        ref = load_timm_model(name)
    else:
        torch.manual_seed(0)
        ref = timm.create_model(name, pretrained=False).eval()
    ref = ref.to(device=device, dtype=dtype)
    return ref, HookedViT.from_timm(ref)


def naive_caap(model, images, window, batch_size: int) -> torch.Tensor:
    """One full-depth hooked forward per (image, patch), zeros neutral, logit of the predicted class."""
    layout = model.layout_for(images)
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(*window)]
    logits, cache = model.run_with_cache(images, names_filter=lambda n: n in hooks, return_cache_object=False)
    target = logits.argmax(-1)
    neutral = torch.zeros_like(images[:1])
    model(neutral)  # the neutral baseline run, as CAAP does
    out = torch.empty(images.shape[0], len(positions := layout.patch_positions()[:batch_size]))
    for b in range(images.shape[0]):
        for k, pos in enumerate(positions):
            def write(act, hook, b=b, pos=pos):
                act = act.clone()
                act[0, pos] = cache[hook.name][b, pos]
                return act

            out[b, k] = model.run_with_hooks(neutral, fwd_hooks=[(h, write) for h in hooks])[0, target[b]].float()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224", help="timm name (random weights) or zoo model")
    ap.add_argument("--window", default="4:12", help="start:end (end clipped to the depth)")
    ap.add_argument("--images", type=int, default=1, help="source images per CAAP call")
    ap.add_argument("--batch-size", type=int, default=64, help="patched rows / floor images per forward")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--naive-patches", type=int, default=0, help="time only this many naive patches and "
                    "extrapolate to all N (0 = run all)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default); "
                    "use 1 on a CPU shared with other jobs")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from vit_patching.patching.caap import caap

    dtype = getattr(torch, args.dtype)
    ref, model = build(args.model, args.device, dtype)
    L = model.cfg.n_layers
    s, e = (int(v) for v in args.window.split(":"))
    window = (s, min(e, L))
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, cfg.in_chans, *cfg.img_size, generator=g).to(args.device, dtype)
    N = model.layout_for(images).n_patches
    n_floor = math.ceil(args.images * N * (L - window[0]) / L)
    floor_x = torch.randn(min(args.batch_size, n_floor), cfg.in_chans, *cfg.img_size, generator=g).to(args.device, dtype)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    def run_caap():
        return caap(model, images, window=window, neutral="zeros", readout="logit", batch_size=args.batch_size)

    def run_floor():
        done = 0
        while done < n_floor:
            k = min(args.batch_size, n_floor - done)
            ref(floor_x[:k])
            done += k

    n_naive = N if args.naive_patches <= 0 else min(args.naive_patches, N)

    def run_naive():
        return naive_caap(model, images, window, n_naive)

    with torch.inference_mode():
        attr = run_caap()  # warm-up (and the reference values)
        run_floor()
        t_caap, t_floor, t_naive = [], [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            t_caap.append(timed(run_caap))
            t_floor.append(timed(run_floor))
            if not args.skip_naive:
                t_naive.append(timed(run_naive) * N / n_naive)
        err = float("nan")
        if not args.skip_naive:
            naive = run_naive()
            err = (attr.map.flatten(1)[:, :n_naive] - naive).abs().max().item()
    tc, tf = statistics.median(t_caap), statistics.median(t_floor)
    print(f"model={args.model} L={L} N={N} window={window} images={args.images} batch_size={args.batch_size} "
          f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} repeats={args.repeats}")
    if args.device.startswith("cuda"):
        print(f"gpu={torch.cuda.get_device_name()}")
    print(f"CAAP        {tc:9.3f} s   {args.images / tc:9.2f} img/s")
    print(f"(b) floor   {tf:9.3f} s   {args.images / tf:9.2f} img/s   ({n_floor} timm forwards)")
    print(f"CAAP / floor = {tc / tf:.3f}   (target <= 1.15)")
    if t_naive:
        tn = statistics.median(t_naive)
        extra = "" if n_naive == N else f", {n_naive} of {N} patches timed and extrapolated"
        print(f"(a) naive   {tn:9.3f} s   {args.images / tn:9.2f} img/s   (one hooked forward per patch{extra})")
        print(f"naive / CAAP = {tn / tc:.2f}   (target >= L/(L-start) = {L / (L - window[0]):.2f})")
        print(f"max |CAAP - naive| = {err:.2e}")
    import resource  # peak memory of the whole process (ru_maxrss is KiB on Linux)

    print(f"peak RSS = {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.device.startswith("cuda"):
        print(f"peak CUDA allocated = {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()

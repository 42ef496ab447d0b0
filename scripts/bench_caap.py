"""Benchmark: CAAP vs (a) a naive implementation and (b) the compute floor, side by side in one run.

* CAAP: ``vit_patching.patching.caap.caap`` (source run + neutral prefix once, N patched runs from block
  ``start``, batched over patches and images, fused attention, the last block computing only the CLS token the
  head reads), the whole call timed.
* (a) naive: the source run, the neutral run, then one full-depth ``run_with_hooks`` per patch (batch 1) that
  overwrites the patch token at every window layer.
* (b) floor: a plain timm forward of ``N * (L - start) / L`` images per source image (what the patched runs
  cost if hooks, caches and the skipped prefix were free), in batches of ``--batch-size``.

Targets: naive / CAAP >= L / (L - start); CAAP / floor <= 1.0. Both ratios are printed, with images
(source images explained) per second for each, and the peak memory of each side. ``--model`` may be repeated
(e.g. ViT-Ti, S and B side by side in one run; a summary table ends the output). ``--clock cpu`` times process
CPU seconds instead of wall seconds (steadier on a machine shared with other jobs; use it with ``--threads 1``).
``--breakdown`` also times CAAP's parts: the source run and neutral prefix (``prepare_caap``), the patched runs
(``caap_from_context``), and the same rows through the blocks with no hook at all (HookedViT with the full and
with the readout-only last block, and timm), which says how much of CAAP's time is hooks, writes and gathers
rather than the blocks themselves, and how much the readout-only last block saves.

Usage:
    python scripts/bench_caap.py                                     # random ViT-B/16 at 224, CPU, fp32
    python scripts/bench_caap.py --device cuda --dtype bfloat16 --images 8 --batch-size 512 --repeats 3 --naive-patches 49
    python scripts/bench_caap.py --model toy-shapes --window 0:2     # a shipped zoo model
    python scripts/bench_caap.py --naive-patches 16                  # time 16 naive patches, extrapolate to N
    python scripts/bench_caap.py --model vit_tiny_patch16_224 --model vit_small_patch16_224 \
        --model vit_base_patch16_224 --skip-naive --threads 1 --clock cpu --breakdown
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
    ap.add_argument("--model", action="append", help="timm name (random weights) or zoo model; repeatable "
                    "(default vit_base_patch16_224)")
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
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"], help="wall seconds or process CPU seconds")
    ap.add_argument("--breakdown", action="store_true", help="also time CAAP's parts (see above)")
    ap.add_argument("--warmup", default="full", choices=["full", "light"], help="full: one untimed CAAP call and "
                    "floor first; light: one 2-image forward of each model (large models on a busy machine)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.device != "cpu":
        ap.exit(2, "--clock: cpu time only measures CPU runs, use --clock wall with --device cuda\n")
    summary = [bench(name, args) for name in (args.model or ["vit_base_patch16_224"])]
    if len(summary) > 1:
        print("\nsummary (CAAP / floor, images/s, peak memory):")
        for row in summary:
            print("  " + row)


def bench(name: str, args: argparse.Namespace) -> str:
    """Time CAAP, the floor (and the naive loop) for one model; print the report, return a summary line."""
    from vit_patching.patching.caap import caap, caap_from_context, prepare_caap
    from vit_patching.patching.memory import peak_memory, reset_peak_memory

    dtype = getattr(torch, args.dtype)
    ref, model = build(name, args.device, dtype)
    L = model.cfg.n_layers
    s, e = (int(v) for v in args.window.split(":"))
    window = (min(s, L - 1), min(e, L))
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, cfg.in_chans, *cfg.img_size, generator=g).to(args.device, dtype)
    N = model.layout_for(images).n_patches
    n_floor = math.ceil(args.images * N * (L - window[0]) / L)
    floor_x = torch.randn(min(args.batch_size, n_floor), cfg.in_chans, *cfg.img_size, generator=g).to(args.device, dtype)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        t0 = clock()
        fn()
        sync()
        return clock() - t0

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

    parts = {}
    if args.breakdown:
        n_rows = args.images * N
        resid = torch.randn(min(args.batch_size, n_rows), cfg.n_pos, cfg.d_model, generator=g).to(args.device, dtype)

        def prepare():
            return prepare_caap(model, images, starts=[window[0]], layers=range(*window), neutral="zeros")

        def chunks(fn):
            for i in range(0, n_rows, args.batch_size):
                fn(resid[: min(args.batch_size, n_rows - i)])

        def hooked_blocks():  # the patched rows' blocks and head, no hook, no write, no gather
            chunks(lambda x: model(x, start_at_layer=window[0]))

        def hooked_readout_only():  # the same, the last block computing only the head's tokens (as CAAP runs)
            chunks(lambda x: model(x, start_at_layer=window[0], readout_only=not model.readout_only_blockers()))

        def timm_blocks():
            def run(x):
                for blk in ref.blocks[window[0]:]:
                    x = blk(x)
                ref.forward_head(ref.norm(x))
            chunks(run)

        parts = {"prepare (source run + neutral prefix)": prepare, "hooked blocks, no hooks": hooked_blocks,
                 "hooked blocks, readout-only last block": hooked_readout_only, "timm blocks": timm_blocks}

    peaks = {}
    with torch.inference_mode():
        if args.warmup == "full":
            attr = run_caap()  # warm-up (and the reference values)
            run_floor()
        else:
            ref(floor_x[:2])
            model(floor_x[:2])
            attr = None
        if args.breakdown:
            ctx = prepare()
            parts["patched runs (caap_from_context)"] = lambda: caap_from_context(
                model, ctx, window, readout="logit", batch_size=args.batch_size)
            for fn in parts.values():
                fn()
        t_caap, t_floor, t_naive, results = [], [], [], []
        t_parts = {k: [] for k in parts}
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            reset_peak_memory(args.device)
            t_caap.append(timed(lambda: results.append(run_caap())))
            peaks["caap"] = max(peaks.get("caap", 0), peak_memory(args.device))
            reset_peak_memory(args.device)
            t_floor.append(timed(run_floor))
            peaks["floor"] = max(peaks.get("floor", 0), peak_memory(args.device))
            for k, fn in parts.items():
                t_parts[k].append(timed(fn))
            if not args.skip_naive:
                t_naive.append(timed(run_naive) * N / n_naive)
        err = float("nan")
        if not args.skip_naive:
            naive = run_naive()
            attr = attr or results[0]
            err = (attr.map.flatten(1)[:, :n_naive] - naive).abs().max().item()
    tc, tf = statistics.median(t_caap), statistics.median(t_floor)
    unit = "CPU s" if args.clock == "cpu" else "s"
    print(f"model={name} L={L} N={N} window={window} images={args.images} batch_size={args.batch_size} "
          f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"clock={args.clock} warmup={args.warmup}")
    if args.device.startswith("cuda"):
        print(f"gpu={torch.cuda.get_device_name()}")
    kind = "allocated" if args.device.startswith("cuda") else "RSS"
    print(f"CAAP        {tc:9.3f} {unit}   {args.images / tc:9.3f} img/s   peak {kind} {peaks['caap'] / 2**20:.0f} MiB")
    print(f"(b) floor   {tf:9.3f} {unit}   {args.images / tf:9.3f} img/s   peak {kind} {peaks['floor'] / 2**20:.0f} MiB"
          f"   ({n_floor} timm forwards)")
    print(f"CAAP / floor = {tc / tf:.3f}   (target <= 1.0)")
    for k, v in t_parts.items():
        print(f"  part: {k:38s} {statistics.median(v):9.3f} {unit}   ({statistics.median(v) / tf:.3f} x floor)")
    if t_naive:
        tn = statistics.median(t_naive)
        extra = "" if n_naive == N else f", {n_naive} of {N} patches timed and extrapolated"
        print(f"(a) naive   {tn:9.3f} {unit}   {args.images / tn:9.3f} img/s   (one hooked forward per patch{extra})")
        print(f"naive / CAAP = {tn / tc:.2f}   (target >= L/(L-start) = {L / (L - window[0]):.2f})")
        print(f"max |CAAP - naive| = {err:.2e}")
    print(flush=True)
    return (f"{name:28s} CAAP/floor {tc / tf:6.3f}   CAAP {args.images / tc:8.3f} img/s   floor "
            f"{args.images / tf:8.3f} img/s   peak {kind} CAAP {peaks['caap'] / 2**20:.0f} MiB, "
            f"floor {peaks['floor'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

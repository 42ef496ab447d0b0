"""Benchmark: CAAP through a readout vs through the model's own classifier head, side by side in one run.

The same model (a random timm ViT, or a shipped zoo model) is explained by ``caap`` four ways: its classifier head,
a ``ZeroShotHead`` with as many classes as the head (random unit text embeddings over the pooled features), a
``LinearProbe(features="cls")`` (keeps the ``readout_only`` shortcut) and a ``LinearProbe(features="cls+mean")``
(reads every token: the shortcut is off, the last block computes every token). Runs are interleaved, repeated,
and the minimum per side is reported with its ratio to the classifier head (target for the zero-shot head:
<= 1.05). ``--clock cpu`` times process CPU seconds (steadier on a shared machine; use it with ``--threads 1``).

Usage:
    python scripts/bench_readouts.py                                         # random ViT-S/16 at 224, CPU
    python scripts/bench_readouts.py --model toy-shapes --repeats 5
    python scripts/bench_readouts.py --device cuda --dtype bfloat16 --model vit_base_patch16_224 --images 8
"""

from __future__ import annotations

import argparse
import logging
import time

import torch


def build(name: str, device: str, dtype: torch.dtype):
    """A HookedViT with a classifier head on ``device``/``dtype``: a zoo model or a random timm model."""
    import timm

    from vit_patching.model import HookedViT
    from vit_patching.zoo import available_models, load_model

    if name in available_models():
        return load_model(name).to(device=device, dtype=dtype)
    torch.manual_seed(0)
    return HookedViT.from_timm(timm.create_model(name, pretrained=False).eval().to(device=device, dtype=dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    logging.getLogger("vit_patching").setLevel(logging.ERROR)  # random inputs: the neutral-context warning is noise
    if args.threads:
        torch.set_num_threads(args.threads)
    from vit_patching.patching.caap import caap
    from vit_patching.readouts import LinearProbe, ZeroShotHead

    dtype = getattr(torch, args.dtype)
    model = build(args.model, args.device, dtype)
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    h, w = cfg.img_size
    images = torch.randn(args.images, 3, h, w, generator=g).to(args.device, dtype)
    k = cfg.n_classes
    text = torch.randn(k, cfg.d_model, generator=g)
    probe_w = torch.randn(k, cfg.d_model, generator=g) / cfg.d_model**0.5
    sides = {
        "classifier head": model,
        "ZeroShotHead": model.with_readout(ZeroShotHead(text, 100.0)),
        "LinearProbe cls": model.with_readout(LinearProbe(probe_w, torch.zeros(k), "cls", cfg.n_prefix)),
        "LinearProbe cls+mean": model.with_readout(
            LinearProbe(torch.cat([probe_w, probe_w], 1) / 2, torch.zeros(k), "cls+mean", cfg.n_prefix)),
    }
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    best = {name: float("inf") for name in sides}
    with torch.inference_mode():
        for m in sides.values():  # warm-up
            caap(m, images, batch_size=args.batch_size)
        for _ in range(args.repeats):
            for name, m in sides.items():
                sync()
                t0 = clock()
                caap(m, images, batch_size=args.batch_size)
                sync()
                best[name] = min(best[name], clock() - t0)
    base = best["classifier head"]
    print(f"model {args.model} ({cfg.n_layers} layers, {k} classes), {args.images} image(s), device {args.device}, "
          f"{args.dtype}, {args.clock} clock, min of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:22s} {t:8.3f} s   ratio to the classifier head {t / base:.3f}")


if __name__ == "__main__":
    main()

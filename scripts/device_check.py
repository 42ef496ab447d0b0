"""One device check: bench_forward, bench_patching, bench_caap on a GPU (fp32 and bf16; ViT-S/B/L-16 at 224,
random weights) plus CAAP and a layer sweep on the device compared with the CPU; prints one table.

    python scripts/device_check.py                      # on a CUDA machine, budget ~8 minutes
    python scripts/device_check.py --device cpu --quick # smoke test of every Python part on a CPU

Every step runs in a subprocess with a timeout, so one slow or failing step costs its row, not the run.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224")


def _step(name: str, args: list[str], patterns: dict[str, str], timeout: float) -> dict[str, str]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
        out, status = r.stdout + r.stderr, "ok" if r.returncode == 0 else f"exit {r.returncode}"
    except subprocess.TimeoutExpired as e:
        out, status = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    row = {"step": name, "status": status, "seconds": f"{time.perf_counter() - t0:.1f}"}
    for key, pat in patterns.items():
        m = re.search(pat, out)
        row[key] = m.group(1) if m else "-"
    if status != "ok":
        row["note"] = out.strip().splitlines()[-1][:100] if out.strip() else ""
    return row


def compare(device: str, quick: bool) -> list[dict[str, str]]:
    """CAAP and a layer sweep of the shipped toy model on ``device`` vs the CPU: max |difference|."""
    import torch

    from vit_patching.patching import layer_sweep
    from vit_patching.patching.caap import caap
    from vit_patching.zoo import load_dataset, load_model

    torch.manual_seed(0)
    n = 2 if quick else 8
    x = load_dataset("shapes", n=n, seed=0).images
    corrupted = load_dataset("shapes", n=n, seed=1).images
    cpu = load_model("toy-shapes")
    dev = load_model("toy-shapes").to(device)
    rows = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        a = caap(cpu, x, window=(0, 2)).map
        t1 = time.perf_counter()
        b = caap(dev, x.to(device), window=(0, 2)).map.cpu()
        t2 = time.perf_counter()
        rows.append({"step": f"CAAP toy-shapes x{n} {device} vs cpu", "status": "ok", "seconds": f"{t2 - t1:.2f}",
                     "max_abs_diff": f"{(a - b).abs().max().item():.2e}", "cpu_seconds": f"{t1 - t0:.2f}"})
        layers = [0] if quick else None
        t0 = time.perf_counter()
        s1 = layer_sweep(cpu, x, corrupted, sites="resid_pre", layers=layers, progress=False).values
        t1 = time.perf_counter()
        s2 = layer_sweep(dev, x.to(device), corrupted.to(device), sites="resid_pre", layers=layers, progress=False).values.cpu()
        t2 = time.perf_counter()
        rows.append({"step": f"layer sweep toy-shapes x{n} {device} vs cpu", "status": "ok", "seconds": f"{t2 - t1:.2f}",
                     "max_abs_diff": f"{(s1 - s2).abs().max().item():.2e}", "cpu_seconds": f"{t1 - t0:.2f}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="smallest settings, toy model only (smoke test)")
    ap.add_argument("--step-timeout", type=float, default=75.0, help="seconds per benchmark step")
    args = ap.parse_args()
    rows: list[dict[str, str]] = []
    models = ("toy-shapes",) if args.quick else MODELS
    dtypes = ("float32",) if args.quick else ("float32", "bfloat16")
    for dtype in dtypes:
        for m in models:
            short = m.replace("_patch16_224", "")
            if m != "toy-shapes":  # bench_forward compares with timm on timm names only
                rows.append(_step(f"forward {short} {dtype}", [
                    str(HERE / "bench_forward.py"), "--model", m, "--batch", "32", "--repeats", "5",
                    "--device", args.device, "--dtype", dtype,
                ], {"img_per_s": r"HookedViT median .*\(\s*([\d.]+) img/s", "ratio": r"ratio HookedViT / timm = ([\d.]+)"},
                    args.step_timeout))
            rows.append(_step(f"caap {short} {dtype}", [
                str(HERE / "bench_caap.py"), "--model", m, "--window", "0:2" if args.quick else "0:6",
                "--images", "1" if args.quick else "4", "--batch-size", "64" if args.quick else "512",
                "--repeats", "1" if args.quick else "2", "--skip-naive", "--device", args.device, "--dtype", dtype,
            ], {"img_per_s": r"CAAP .* ([\d.]+) img/s", "ratio": r"CAAP / floor = ([\d.]+)",
                "peak": r"peak (?:CUDA allocated|RSS) = ([\d.]+ GiB)"}, args.step_timeout))
    if not args.quick:
        rows.append(_step("patching engine vs TransformerLens", [
            str(HERE / "bench_patching.py"), "--device", args.device,
        ], {"ratio": r"speed-?up\D*([\d.]+)", "max_abs_diff": r"max \|difference\| = (\S+)"}, args.step_timeout))
    try:
        rows.extend(compare(args.device, args.quick))
    except Exception as e:  # a failing comparison is a row of the table, not a lost run
        rows.append({"step": "compare", "status": "error", "note": f"{type(e).__name__}: {e}"[:100]})
    keys = ["step", "status", "seconds", "img_per_s", "ratio", "peak", "max_abs_diff", "cpu_seconds", "note"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(r.get(k, "") for k in keys) + " |")


if __name__ == "__main__":
    main()

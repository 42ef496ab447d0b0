"""Check ``activation_bytes_per_row`` against the measured peak RSS growth of a no-grad forward on the CPU.

Each batch size runs in a fresh subprocess: load the model, run one row (warm-up: kernels, allocator pools),
record ``ru_maxrss``, run ``B`` rows, record it again; the growth divided by ``B - 1`` is the measured bytes per row.

    python scripts/measure_batch_memory.py --model vit_small_patch16_224 --batch 32
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _child(model_name: str, batch: int) -> None:
    import torch

    from vit_patching.model import HookedViT
    from vit_patching.patching.memory import activation_bytes_per_row

    torch.set_num_threads(1)
    model = HookedViT.from_timm(model_name, pretrained=False).eval()
    x = torch.randn(batch, 3, *model.cfg.img_size)
    with torch.inference_mode():
        model(x[:1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"model": model_name, "batch": batch, "measured_per_row": (after - before) / (batch - 1),
                      "estimate_per_row": activation_bytes_per_row(model.cfg)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.model, a.batch)
        return
    out = subprocess.run([sys.executable, __file__, "--child", "--model", a.model, "--batch", str(a.batch)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["estimate_over_measured"] = r["estimate_per_row"] / max(r["measured_per_row"], 1)
    print(json.dumps(r))


if __name__ == "__main__":
    main()

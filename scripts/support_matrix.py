"""Support matrix: convert every timm ViT architecture and check it against timm.

Builds each architecture of timm's ``vision_transformer``, ``deit`` and ``eva`` modules small (depth 2,
a 4x4 patch grid, narrow width where the constructor takes it), randomises every parameter (norm weights,
LayerScale gammas and biases included, so a dropped or swapped weight shows), converts it with
``HookedViT.from_timm`` and compares the logits and every block output with timm. Writes a markdown table,
one row per architecture: ``exact``, ``refused`` (with the reason), ``WRONG`` (converted but differs) or
``not built`` (timm could not build it; the reason is given), with the largest absolute difference.

Usage:
    python scripts/support_matrix.py [--filter SUBSTRING] [--out docs/support_matrix.md] [--atol 1e-5]

With ``--filter`` only matching names are run and the table is printed, not written (for iterating on one
family). Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from vit_patching.model import HookedViT, UnsupportedModelError  # noqa: E402

MODULES = ("vision_transformer", "deit", "eva")
GRID = 4  # patches per side of the small test image
BATCH = 2
MAX_PARAMS = 60e6  # larger reduced builds are reported as "not built" rather than swapping a shared machine


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default random values for every parameter (as tests/model/model_helpers.py does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_1", "gamma_2")) or "lambda" in name:
                val = 0.5 + torch.rand(p.shape, generator=g)
            elif p.ndim >= 2 and not name.endswith(("token", "pos_embed", "latent")):
                val = torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5
            elif "norm" in name and name.endswith("weight"):
                val = 1 + 0.3 * torch.randn(p.shape, generator=g)
            else:
                val = 0.3 * torch.randn(p.shape, generator=g)
            p.copy_(val.to(p.dtype))
    return model


def _patch_size(name: str) -> int:
    cfg = timm.models.get_pretrained_cfg(name)
    size = None
    for part in name.split("_"):
        if part.startswith("patch") and part[5:].isdigit():
            size = int(part[5:])
    if size is None and cfg is not None:
        size = 16
    return size or 16


def build(name: str) -> tuple[nn.Module, dict, tuple[int, int]]:
    """Build ``name`` as small as its constructor allows; returns (model, overrides used, image size)."""
    p = _patch_size(name)
    depth, img, narrow = dict(depth=2), dict(img_size=GRID * p), dict(embed_dim=64, num_heads=2)
    attempts = [{**depth, **img, **narrow}, {**depth, **img}, {**img, **narrow}, {**depth, **narrow}, depth, img, {}]
    errors = []
    while attempts:
        kwargs = attempts.pop(0)
        try:
            # Count parameters on the meta device first: a full-size giant must never be materialised.
            meta = timm.create_model(name, pretrained=False, num_classes=10, device="meta", **kwargs)
            n_params = sum(p.numel() for p in meta.parameters())
            if n_params > MAX_PARAMS:
                errors.append(f"{kwargs}: {n_params / 1e6:.0f}M parameters")
                continue
            m = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        except Exception as e:  # noqa: BLE001 - any constructor failure: try a less reduced build
            errors.append(f"{kwargs}: {type(e).__name__}: {str(e)[:120]}")
            if "num_kv_heads sequence" in str(e) and "num_kv_heads" not in kwargs:
                # Sapiens2 takes grouped-query heads per block: full heads in block 0, one kv head in block 1.
                attempts.insert(0, {**kwargs, "num_kv_heads": (2, 1)})
            continue
        img = getattr(getattr(m, "patch_embed", None), "img_size", None) or (224, 224)
        img = (img, img) if isinstance(img, int) else tuple(img)
        return m, kwargs, img
    raise RuntimeError("; ".join(errors))


@torch.no_grad()
def check(name: str, atol: float) -> dict:
    row = dict(name=name, status="", detail="", diff="", overrides="")
    try:
        m, kw, img = build(name)
    except Exception as e:  # noqa: BLE001
        row.update(status="not built", detail=str(e)[:200])
        return row
    row["overrides"] = ", ".join(f"{k}={v}" for k, v in kw.items()) or "full size"
    randomize_(m).eval()
    try:
        model = HookedViT.from_timm(m)
    except UnsupportedModelError as e:
        row.update(status="refused", detail=str(e).splitlines()[0][:300])
        return row
    except Exception as e:  # noqa: BLE001 - a crash in conversion is a bug, report it as such
        row.update(status="WRONG", detail=f"conversion crashed: {type(e).__name__}: {e}"[:300])
        return row
    x = torch.randn(BATCH, m.patch_embed.proj.in_channels if hasattr(m, "patch_embed") else 3, *img,
                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    outs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda mod, i, o: outs.append(o.clone())) for b in m.blocks]
    try:
        ref = m(x)
    finally:
        for h in handles:
            h.remove()
    try:
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    except Exception as e:  # noqa: BLE001
        row.update(status="WRONG", detail=f"forward crashed: {type(e).__name__}: {e}"[:300])
        return row
    if logits.shape != ref.shape or len(outs) != model.cfg.n_layers:
        row.update(status="WRONG", detail=f"shape {tuple(logits.shape)} vs {tuple(ref.shape)}")
        return row
    diffs = [(logits - ref).abs().max().item()]
    diffs += [(cache[f"blocks.{i}.hook_resid_post"] - o).abs().max().item() for i, o in enumerate(outs)]
    diff = max(diffs)
    row["diff"] = f"{diff:.1e}"
    row["status"] = "exact" if diff <= atol else "WRONG"
    if diff > atol:
        row["detail"] = f"logits diff {diffs[0]:.1e}, block diffs " + ", ".join(f"{d:.1e}" for d in diffs[1:])
    return row


def names(filter_: str | None) -> list[tuple[str, str]]:
    out = []
    for module in MODULES:
        for n in timm.list_models(module=module):
            if filter_ is None or filter_ in n:
                out.append((module, n))
    return out


def render(rows: list[dict], atol: float, seconds: float) -> str:
    counts = Counter(r["status"] for r in rows)
    lines = [
        "# HookedViT support matrix",
        "",
        f"Generated by `python scripts/support_matrix.py` with timm {timm.__version__} and torch {torch.__version__}"
        f" ({seconds:.0f} s). Every architecture of timm's {', '.join(f'`{m}`' for m in MODULES)} modules is built"
        " small (depth 2, a 4x4 patch grid, narrow width where the constructor takes it), randomised (norm weights,"
        " LayerScale gammas and biases included), converted with `HookedViT.from_timm` and compared with timm:"
        f" `exact` means logits and every block output agree within {atol:g}; `refused` means the conversion"
        " raised `UnsupportedModelError` (reason given); `WRONG` means it converted but differs.",
        "",
        "Notes on the families: RoPE models (`eva` module) carry the rotary table for their `img_size` (the"
        " converted model takes that size only); `attn.hook_q`/`hook_k` are before the rotation and"
        " `attn.hook_rot_q`/`hook_rot_k` after. Grouped-query attention is converted with each K/V head repeated"
        " for its query heads (as timm computes it). Gated MLPs have `mlp.hook_pre` (gate), `mlp.hook_pre_linear`"
        " and `mlp.hook_post`; MLP and attention sub-norms put `hook_mid` / `attn.hook_z_pre_norm` before the norm"
        " and `hook_post` / `hook_z` (what `W_out` / `W_O` read) after it. `global_pool='map'` models have"
        " `attn_pool.*` hooks; their logits are not linear in the residual stream, so linear logit attribution is"
        " refused for them.",
        "",
        "open_clip image towers (`HookedViT.from_open_clip`): every open_clip model config in"
        " [open_clip_matrix.md](open_clip_matrix.md).",
        "",
        f"**Total {len(rows)}: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("exact", "refused", "WRONG", "not built"))
        + "**",
        "",
    ]
    for module in MODULES:
        sub = [r for r in rows if r["module"] == module]
        if not sub:
            continue
        c = Counter(r["status"] for r in sub)
        lines += [f"## `{module}` ({len(sub)}: " + ", ".join(f"{c.get(s, 0)} {s}" for s in ("exact", "refused", "WRONG", "not built")) + ")", ""]
        lines += ["| architecture | status | max abs diff | built with | reason |", "|---|---|---|---|---|"]
        for r in sub:
            detail = r["detail"].replace("|", "\\|")
            lines.append(f"| `{r['name']}` | {r['status']} | {r['diff']} | {r['overrides']} | {detail} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--filter", default=None, help="only architectures whose name contains this")
    ap.add_argument("--out", default="docs/support_matrix.md")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--verbose", action="store_true", help="print a traceback for conversions that crash")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    rows = []
    for module, n in names(args.filter):
        t = time.time()
        try:
            row = check(n, args.atol)
        except Exception as e:  # noqa: BLE001
            if args.verbose:
                traceback.print_exc()
            row = dict(name=n, status="WRONG", detail=f"{type(e).__name__}: {e}"[:300], diff="", overrides="")
        row["module"] = module
        rows.append(row)
        print(f"{n:55s} {row['status']:9s} {row['diff']:8s} {time.time() - t:5.1f}s {row['detail'][:150]}",
              file=sys.stderr, flush=True)  # fmt: skip
    text = render(rows, args.atol, time.time() - t0)
    if args.filter:
        print(text)
    else:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

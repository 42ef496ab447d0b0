"""open_clip support matrix: convert the image tower of every open_clip model config and check it against open_clip.

For each name in ``open_clip.list_models()`` the image tower is built from the config's ``vision_cfg`` with random
weights (a tiny text tower: it is never converted), reduced to 2 blocks (open_clip's ``layers``; for timm trunks
``depth=2`` passed to ``timm.create_model``) and, for open_clip's own ViT, a 2x2 patch grid; every parameter is
randomised (``support_matrix.randomize_``). It is converted with ``HookedViT.from_open_clip`` and the embedding is
compared with ``encode_image(x)`` (``normalize=False``): ``exact`` within ``--rtol`` of the largest entry,
``refused`` (``UnsupportedModelError``, reason given), ``WRONG`` (converted but differs). Towers whose constructor
takes no depth (ResNets, ConvNeXt, FastViT, Swin trunks) are built full size on the meta device (no memory, no
compute) and only converted: they must be refused.

Usage:
    python scripts/open_clip_matrix.py [--filter SUBSTRING] [--out docs/open_clip_matrix.md] [--rtol 2e-6]

With ``--filter`` only matching names are run and the table is printed, not written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from functools import partial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from open_clip.model import CLIP, CustomTextCLIP  # noqa: E402

from support_matrix import randomize_  # noqa: E402  (scripts/ is on sys.path when run as a script)
from vit_patching.model import HookedViT, UnsupportedModelError  # noqa: E402

TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
DEPTH = 2
GRID = 2  # patches per side for open_clip's own VisionTransformer


def build(name: str, cfg: dict, meta: bool) -> tuple[torch.nn.Module, str]:
    """The tower's model (CLIP / CustomTextCLIP with a tiny text tower) and how it was reduced."""
    vision = dict(cfg["vision_cfg"])
    timm_trunk = bool(vision.get("timm_model_name"))
    cls = CustomTextCLIP if timm_trunk or cfg.get("custom_text") else CLIP
    how = "full size on meta" if meta else ""
    if not meta and not timm_trunk:
        vision["layers"] = DEPTH
        patch = vision.get("patch_size", 16)
        vision["image_size"] = GRID * patch
        how = f"layers={DEPTH}, image_size={GRID * patch}"
    create = open_clip.timm_model.timm.create_model
    if timm_trunk and not meta:
        open_clip.timm_model.timm.create_model = partial(timm.create_model, depth=DEPTH)
        how = f"trunk depth={DEPTH}"
    try:
        if meta:
            with torch.device("meta"):
                model = cls(cfg["embed_dim"], vision, TEXT, quick_gelu=cfg.get("quick_gelu", False))
        else:
            model = cls(cfg["embed_dim"], vision, TEXT, quick_gelu=cfg.get("quick_gelu", False))
            randomize_(model.visual)
    finally:
        open_clip.timm_model.timm.create_model = create
    return model.eval(), how


def image_size(model: torch.nn.Module) -> tuple[int, int]:
    visual = model.visual
    if hasattr(visual, "trunk"):
        return tuple(visual.trunk.patch_embed.img_size)
    return tuple(visual.image_size)


def run_one(name: str, rtol: float) -> tuple[str, str, str, str, str]:
    """(status, tower class, max relative difference, built with, reason)."""
    cfg = open_clip.get_model_config(name)
    reduced = not isinstance(cfg["vision_cfg"].get("layers"), (list, tuple))
    try:
        model, how = build(name, cfg, meta=not reduced)
    except TypeError as e:  # the trunk's constructor takes no depth: not a ViT
        if "depth" not in str(e):
            return "not built", "", "", "", str(e)[:150]
        model, how = build(name, cfg, meta=True)
    tower = type(model.visual).__name__
    if hasattr(model.visual, "trunk"):
        tower += f" ({type(model.visual.trunk).__name__})"
    try:
        hooked = HookedViT.from_open_clip(model)
    except UnsupportedModelError as e:
        return "refused", tower, "", how, str(e).replace("|", "/")[:200]
    if how.endswith("meta"):
        return "WRONG", tower, "", how, "converted a tower that was expected to be refused"
    x = torch.randn(1, 3, *image_size(model), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.encode_image(x)
        ref = ref[0] if isinstance(ref, tuple) else ref
        out = hooked(x)
    rel = float((out - ref).abs().max() / ref.abs().max())
    head = f"head_kind={hooked.cfg.head_kind}, {hooked.cfg.n_classes} outputs" if hooked.cfg.n_classes else "headless"
    return ("exact" if rel <= rtol else "WRONG"), tower, f"{rel:.1e}", how, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="")
    parser.add_argument("--out", default="docs/open_clip_matrix.md")
    parser.add_argument("--rtol", type=float, default=2e-6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [n for n in open_clip.list_models() if args.filter in n]
    start = time.time()
    rows = []
    for name in names:
        rows.append((name, *run_one(name, args.rtol)))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    counts = Counter(r[1] for r in rows)
    lines = [
        "# open_clip support matrix",
        "",
        f"Generated by `python scripts/open_clip_matrix.py` with open_clip {open_clip.__version__}, timm "
        f"{timm.__version__} and torch {torch.__version__} ({time.time() - start:.0f} s). Every model config of "
        "open_clip: its image tower built with random weights (randomised norm weights and biases), reduced as "
        "given, converted with `HookedViT.from_open_clip` and compared with `encode_image(x)`: `exact` means the "
        f"embedding is within {args.rtol:g} of open_clip's, relative to its largest entry; `refused` means the "
        "conversion raised `UnsupportedModelError` (reason given); `WRONG` means it converted but differs. "
        "Towers whose constructor takes no depth are built full size on the meta device and only converted. "
        "What maps to what: [families.md](families.md#open_clip).",
        "",
        f"**Total {len(rows)}: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("exact", "refused", "WRONG", "not built")) + "**",
        "",
        "| config | image tower | status | max rel diff | built with | head / reason |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| `{r[0]}` | {r[2]} | {r[1]} | {r[3]} | {r[4]} | {r[5]} |" for r in rows]
    text = "\n".join(lines)
    if args.filter:
        print(text)
        return
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

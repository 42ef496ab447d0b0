"""Command-line interface: ``vit-patching caap ...`` writes a self-contained HTML CAAP report.

The main job needs no image file and no network (the shipped default model and a sample of its dataset)::

    vit-patching caap --sample 0 --out report.html

Other uses::

    vit-patching caap --model toy-conjunction --sample 3 --window 1:3 --out conj.html
    vit-patching caap --model vit_base_patch16_224 --pretrained --image cat.jpg --target 281 --out cat.html
    vit-patching caap --model vit_tiny_patch16_224 --image cat.jpg --out random.html   # random weights

Example:
    >>> from vit_patching.cli import main
    >>> main(["caap", "--sample", "0", "--out", "/tmp/report.html"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["main", "build_parser"]


class _UsageError(Exception):
    """A user error, reported as ``vit-patching caap: error: ...`` with exit code 2."""


def _parse_window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END (two ints, e.g. 1:3), got {text!r}") from None
    return start, end


def _parse_batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vit-patching`` (one sub-command per job)."""
    from vit_patching.patching.caap import NEUTRALS, READOUTS, SITES
    from vit_patching.zoo import DEFAULT_MODEL, available_models

    parser = argparse.ArgumentParser(prog="vit-patching", description="Mechanistic interpretability for timm ViTs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "caap",
        help="CAAP attribution of one image, written as a self-contained HTML report",
        description="CAAP: each patch's source activations pinned into a neutral context over a layer window; "
        "the target-class score of each patched run is that patch's attribution.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a shipped model ({', '.join(available_models())}; default {DEFAULT_MODEL}) or a timm name")
    p.add_argument("--pretrained", action="store_true",
                   help="timm names only: load timm's pretrained weights (needs them cached or network); "
                   "without it a timm name gets random weights")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="image file to explain")
    src.add_argument("--sample", type=int, help="explain sample N of the shipped dataset matching the shipped model")
    src.add_argument("--images", type=Path, help="dataset run: every image of this folder (--out is then a folder)")
    src.add_argument("--dataset", choices=["shapes", "conjunction"], help="dataset run: --n images of a shipped set")
    p.add_argument("--n", "--n-images", dest="n", type=int, default=None,
                   help="dataset run: number of images (first N; --n-images under torchrun, which claims --n)")
    p.add_argument("--seed", type=int, default=0, help="dataset run with --dataset: generation seed (default 0)")
    p.add_argument("--chunk-size", type=int, default=16, help="dataset run: images per chunk (unit of resume)")
    p.add_argument("--no-resume", action="store_true", help="dataset run: recompute chunks already saved")
    p.add_argument("--no-progress", action="store_true", help="dataset run: no progress bar")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--window", type=_parse_window, default=None, help="layer window START:END (default: CAAP's)")
    p.add_argument("--neutral", choices=[n for n in NEUTRALS if n != "mean_activations"], default=None,
                   help="neutral context (default: CAAP's)")
    p.add_argument("--site", choices=list(SITES), default="resid_pre", help="patched activation (default resid_pre)")
    p.add_argument("--readout", choices=list(READOUTS), default=None, help="score of each patched run (default: CAAP's)")
    p.add_argument("--include-prefix", action="store_true", help="also pin CLS/register tokens to source values")
    p.add_argument("--upsample", choices=["nearest", "bilinear"], default="nearest", help="patch map -> image")
    p.add_argument("--top", type=int, default=10, help="number of top patches listed (default 10)")
    p.add_argument("--batch-size", type=_parse_batch_size, default=64,
                   help="patched rows per forward pass, or 'auto' (from free memory; default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", type=Path, required=True, help="path of the HTML report to write")
    p.add_argument("--title", default=None, help="report title")
    return parser


# ------------------------------------------------------------------------------------------------- inputs
def _load_model(name: str, pretrained: bool, device: str) -> tuple[Any, dict[str, Any]]:
    """(HookedViT, info) for a zoo or timm name; info records where the weights came from."""
    from vit_patching.model import HookedViT
    from vit_patching.zoo import available_models, get_spec, load_model

    if name in available_models():
        if pretrained:
            raise _UsageError(f"--pretrained applies to timm names only; {name!r} is a shipped model (always trained)")
        spec = get_spec(name)
        return load_model(name).to(device), {
            "weights": f"shipped ({spec.weights_path.name})", "random": False, "dataset": spec.dataset,
            "class_names": list(spec.class_names),
        }
    import timm

    if not timm.is_model(name):
        raise _UsageError(f"--model: expected a shipped model {available_models()} or a timm model name, got {name!r}")
    try:
        model = HookedViT.from_timm(name, pretrained=pretrained)
    except Exception as e:  # network / cache / unsupported architecture: one readable line
        raise _UsageError(f"--model: could not build {name!r} (pretrained={pretrained}): {e}") from e
    names = None
    if pretrained and model.cfg.n_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = [info.index_to_description(i) for i in range(1000)]
    info = {"weights": "timm pretrained" if pretrained else "random (untrained)", "random": not pretrained,
            "dataset": None, "class_names": names}
    return model.to(device), info


def _load_input(args: argparse.Namespace, model: Any, info: dict[str, Any]) -> tuple[Any, str, int | None]:
    """(normalised image [1, C, H, W], description, dataset label or None)."""
    if args.sample is not None:
        if info["dataset"] is None:
            raise _UsageError(f"--sample needs a shipped model (it picks a sample of that model's dataset); "
                              f"{args.model!r} is a timm model: use --image")
        from vit_patching.zoo import load_dataset

        batch = load_dataset(info["dataset"], n=args.sample + 1, seed=0)
        image = batch.images[args.sample : args.sample + 1].to(device=model.device, dtype=model.dtype)
        return image, f"sample {args.sample} of the shipped '{info['dataset']}' dataset (seed 0)", int(batch.labels[args.sample])
    path: Path = args.image
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            pil = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise _UsageError(f"--image: not a readable image file: {str(path)!r} ({e})") from e
    return model.preprocess(pil), f"image file {path}", None


def _class_label(k: int, names: Sequence[str] | None) -> str:
    return f"{k} ({names[k]})" if names and 0 <= k < len(names) else str(k)


# ------------------------------------------------------------------------------------------------- report
def _report_sections(attr: Any, model: Any, info: dict[str, Any], source: str, label: int | None, top: int) -> list:
    from vit_patching.plotting import ReportSection

    names = info["class_names"]
    t = int(attr.target[0])
    probs = attr.source_logits[0].softmax(-1)
    pred = int(probs.argmax())
    s, e = attr.window
    readout = attr.readout
    lines = [
        f"Input: {source}.",
        f"Model: {info['model']} ({info['weights']} weights), {model.cfg.n_layers} layers, "
        f"{model.cfg.grid_size[0]}x{model.cfg.grid_size[1]} patch grid.",
        f"Explained class: {_class_label(t, names)} ({attr.options['target_source']}); "
        f"predicted class: {_class_label(pred, names)} with probability {float(probs[pred]):.3f}"
        + (f"; dataset label: {_class_label(label, names)}." if label is not None else "."),
        f"Each patch's {attr.options['site']} activations from the input were pinned into the "
        f"'{attr.options['neutral']}' neutral context at blocks {s} to {e - 1} (window [{s}, {e})); its score is the "
        f"{readout} of the explained class in that patched run.",
    ]
    if info["random"]:
        lines.insert(0, "WARNING: this model has random (untrained) weights, so the map says nothing about a "
                        "trained network. Pass --pretrained to load timm's weights.")
    gh, gw = attr.map.shape[-2:]
    ph, pw = model.cfg.patch_size
    top_rows = [
        {"rank": r + 1, "row": row, "col": col, "pixels (y, x)": f"{row * ph}:{(row + 1) * ph}, {col * pw}:{(col + 1) * pw}",
         readout: value}
        for r, (row, col, value) in enumerate(attr.top_patches(0, k=top))
    ]
    m = attr.map[0]
    scores = [
        {"quantity": f"source {readout} (unpatched input)", "value": float(attr.source_score[0])},
        {"quantity": f"neutral {readout} (unpatched neutral context)", "value": float(attr.neutral_score[0])},
        {"quantity": "map maximum", "value": float(m.max())},
        {"quantity": "map mean", "value": float(m.mean())},
        {"quantity": "map minimum", "value": float(m.min())},
    ]
    top_classes = [
        {"class": _class_label(int(k), names), "probability": float(probs[k]), "logit": float(attr.source_logits[0, k])}
        for k in probs.argsort(descending=True)[: min(5, probs.numel())]
    ]
    return [
        ReportSection.text("Summary", "\n\n".join(lines)),
        ReportSection.figure("Attribution over the image", attr.overlay(0, title=f"CAAP window [{s}, {e})"),
                             caption=f"Patch map upsampled with '{attr.options['upsample']}'; hover for values."),
        ReportSection.figure("Patch-grid map", attr.plot(0, title=f"CAAP {readout}, {gh}x{gw} patches")),
        ReportSection.table(f"Top {len(top_rows)} patches", top_rows),
        ReportSection.table("Scores", scores),
        ReportSection.table("Model prediction on the input", top_classes),
        ReportSection.images("Input", {"input image": attr.pixels[0]}),
    ]


def _run_caap(args: argparse.Namespace) -> Path:
    import torch

    from vit_patching.patching.caap import DEFAULT_NEUTRAL, DEFAULT_READOUT, caap, default_window
    from vit_patching.plotting import write_report

    if args.top < 1:
        raise _UsageError(f"--top: expected a positive number of patches, got {args.top}")
    if args.batch_size != "auto" and args.batch_size < 1:
        raise _UsageError(f"--batch-size: expected a positive int, got {args.batch_size}")
    if args.sample is not None and args.sample < 0:
        raise _UsageError(f"--sample: expected a non-negative index, got {args.sample}")
    if args.image is not None and not args.image.is_file():
        raise _UsageError(f"--image: no such file: {str(args.image)!r}")
    model, info = _load_model(args.model, args.pretrained, args.device)
    info["model"] = args.model
    if args.batch_size == "auto":  # rows per forward from the free memory of the model's device
        from vit_patching.patching.memory import auto_batch_size

        args.batch_size = auto_batch_size(model)
    if info["random"]:
        logger.warning("%s has random weights (no --pretrained): the report explains an untrained model", args.model)
    image, source, label = _load_input(args, model, info)
    window = default_window(model.cfg.n_layers) if args.window is None else args.window
    neutral = args.neutral or DEFAULT_NEUTRAL
    readout = args.readout or DEFAULT_READOUT
    try:
        with torch.inference_mode():
            attr = caap(
                model, image, args.target, window, neutral=neutral, site=args.site, readout=readout,
                include_prefix=args.include_prefix, upsample=args.upsample, batch_size=args.batch_size,
            )
    except (ValueError, TypeError) as e:  # CAAP's errors name the argument (window, target, ...)
        raise _UsageError(str(e)) from e
    settings = {
        "model": args.model, "weights": info["weights"], "input": source, "target": int(attr.target[0]),
        "target source": attr.options["target_source"], "window": list(attr.window), "neutral": neutral,
        "site": args.site, "readout": readout, "include prefix": args.include_prefix, "upsample": args.upsample,
        "batch size": args.batch_size, "device": args.device, "patched forward passes": attr.n_forwards,
    }
    title = args.title or f"CAAP report: {args.model}"
    return write_report(args.out, title, _report_sections(attr, model, info, source, label, args.top), settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vit-patching`` console script; returns the exit code (2 for usage errors).

    Example:
        >>> main(["caap", "--sample", "0", "--out", "report.html"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="vit-patching: %(levelname)s: %(message)s")
    try:
        if args.command == "caap" and (args.images is not None or args.dataset is not None):
            from vit_patching.runs.command import run_dataset_command

            try:
                path = run_dataset_command(args, _load_model)
            except ValueError as e:
                raise _UsageError(str(e)) from e
            if path is None:  # a rank other than 0 of a sharded run
                return 0
        elif args.command == "caap":
            path = _run_caap(args)
    except _UsageError as e:
        parser.exit(2, f"vit-patching {args.command}: error: {e}\n")
    print(f"wrote {path}", file=sys.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

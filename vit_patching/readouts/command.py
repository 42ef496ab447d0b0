"""The CLI's readout options: ``--readout {head,zero-shot,probe,similarity}`` and what each needs.

``--readout`` also still accepts CAAP's score kinds (``logit``, ``prob``, ...: the option's former meaning,
now also spelled ``--score``), so existing command lines keep working.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import load_image
from ..model import HookedViT
from ..model.readout import Readout
from .probe import LinearProbe
from .zero_shot import EmbeddingSimilarity

MODEL_READOUTS = ("head", "zero-shot", "probe", "similarity")


class _ReadoutAction(argparse.Action):
    """``--readout X``: a model readout goes to ``scores_from``, a CAAP score kind to ``readout`` (as before)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option_string: Any = None) -> None:
        setattr(namespace, "scores_from" if value in MODEL_READOUTS else "readout", value)


def add_readout_arguments(parser: argparse.ArgumentParser, caap_scores: Sequence[str]) -> None:
    """Add ``--readout``, ``--score``, ``--classes``, ``--templates``, ``--probe`` and ``--reference``."""
    parser.set_defaults(scores_from="head", readout=None)
    parser.add_argument(
        "--readout", action=_ReadoutAction, choices=list(MODEL_READOUTS) + list(caap_scores),
        help="what produces the class scores: the model's head (default), zero-shot (--classes, a model with a "
             "text tower), probe (--probe FILE), similarity to --reference images; a CAAP score kind "
             f"({', '.join(caap_scores)}) is the same as --score")
    parser.add_argument("--score", dest="readout", choices=list(caap_scores), default=None,
                        help="score of each patched run (default: CAAP's)")
    parser.add_argument("--classes", default=None, help='--readout zero-shot: class prompts, "a red circle,..."')
    parser.add_argument("--templates", type=Path, default=None,
                        help="--readout zero-shot: file of prompt templates, one per line, each with {}")
    parser.add_argument("--probe", type=Path, default=None, help="--readout probe: a LinearProbe .safetensors file")
    parser.add_argument("--reference", type=Path, nargs="+", default=None,
                        help="--readout similarity: reference image files (one score each)")


def _templates(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--templates: expected a readable text file, got {str(path)!r} ({e})") from None
    temps = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    if not temps:
        raise ValueError(f"--templates: expected at least one template in {str(path)!r}, got none")
    bad = [t for t in temps if "{}" not in t]
    if bad:
        raise ValueError(f"--templates: expected one template with {{}} per line, got {bad[0]!r}")
    return temps


def build_readout(args: argparse.Namespace, model: HookedViT, info: dict[str, Any]) -> Readout | None:
    """The readout the options ask for (``None``: the model's own head); a ValueError names the option at fault.

    ``info`` is the CLI's model record; a loader whose model ships a text tower puts a callable
    ``info["zero_shot"](class_names, templates) -> ZeroShotHead`` there (open_clip models, CLIP-style zoo models).

    Example:
        >>> args = build_parser().parse_args(["caap", "--sample", "0", "--out", "r.html"])
        >>> build_readout(args, clf, {"model": "toy-shapes"}) is None  # --readout head: the model's own head
        True
    """
    kind = args.scores_from
    extra = {"--classes": args.classes, "--templates": args.templates, "--probe": args.probe,
             "--reference": args.reference}
    needs = {"zero-shot": ("--classes", "--templates"), "probe": ("--probe",), "similarity": ("--reference",)}
    for opt, value in extra.items():
        if value is not None and opt not in needs.get(kind, ()):
            owner = next(k for k, v in needs.items() if opt in v)
            raise ValueError(f"{opt}: applies to --readout {owner}, got --readout {kind}")
    if kind == "head":
        return None
    if extra[needs[kind][0]] is None:
        raise ValueError(f"--readout {kind}: expected {needs[kind][0]} too")
    if kind == "zero-shot":
        names = [c.strip() for c in args.classes.split(",")]
        if len(names) < 2 or not all(names):
            raise ValueError(f"--classes: expected at least two comma-separated class prompts, got {args.classes!r}")
        templates = _templates(args.templates) if args.templates is not None else ["{}"]
        make = info.get("zero_shot")
        if make is None:
            raise ValueError(
                f"--readout zero-shot: expected a model that ships a text tower (a CLIP-style shipped model or an "
                f"open_clip model), got {info.get('model', 'this model')!r}, which has none; from Python, attach "
                "model.with_readout(ZeroShotHead(text_embeddings, logit_scale)) with your own text embeddings")
        return make(names, templates)
    if kind == "probe":
        if not args.probe.is_file():
            raise ValueError(f"--probe: no such file: {str(args.probe)!r}")
        return LinearProbe.load(args.probe)
    for path in args.reference:
        if not path.is_file():
            raise ValueError(f"--reference: no such file: {str(path)!r}")
    refs = model.preprocess([load_image(p) for p in args.reference])
    return EmbeddingSimilarity(refs, model=model, class_names=[p.name for p in args.reference])


def attach_from_args(args: argparse.Namespace, model: HookedViT, info: dict[str, Any]) -> HookedViT:
    """``model`` with the readout of the options attached; ``info`` gains ``readout`` (a line for the report) and,
    for a readout with names, its ``class_names``."""
    readout = build_readout(args, model, info)
    if readout is None:
        if model.readout is None:
            raise ValueError(f"--readout: the model {info.get('model', '')!r} outputs features, not class scores "
                             "(no classifier head); choose --readout zero-shot, probe or similarity")
        info["readout"] = info.get("readout") or "the model's classifier head"  # a loader may name its own
        return model
    scored = model.with_readout(readout)
    info["readout"] = readout.describe()
    info["class_names"] = readout.class_names
    return scored

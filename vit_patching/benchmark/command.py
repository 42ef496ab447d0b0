"""Attribution benchmark: every method x every faithfulness / localisation metric, with 95 % CIs and time per image.

Shipped toy benchmark (default):

    python scripts/benchmark_attribution.py --model toy-shapes --n 64 --methods all --out out/bench

Any timm ViT on an image folder (optional masks, matched by file stem):

    python scripts/benchmark_attribution.py --model vit_base_patch16_224 --pretrained --images DIR [--masks DIR]

Sharded over processes or GPUs (each process takes every world_size-th chunk; rank 0 merges):

    accelerate launch --multi_gpu --num_processes 2 scripts/benchmark_attribution.py ...   # GPUs, or CPU (gloo)
    torchrun --nproc_per_node 2 scripts/benchmark_attribution.py ...

(``accelerate launch --cpu`` starts a single process unless MPI is set up; on CPUs use one of the lines above.)
Across machines without a launcher: ``--rank R --world-size W`` per job, then one ``--merge-only`` run.

Writes to ``--out``: ``results.csv``, ``results.md``, ``curves.html`` (+ ``curves_*.png`` when Chromium is
available), ``settings.json`` and ``partials/`` (one JSON per method and chunk). Existing files are replaced
atomically; a rerun skips finished chunks (partial files that do not validate are recomputed, with a warning).
``--write-docs docs/benchmark.md`` puts the table into that file's section for this model.

User errors (a bad option value, a missing folder, an unusable ``--out`` or ``--device``) print one line naming
the option and exit with status 2, before any model is run.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vit_patching.attribution import available_methods, get_method
from vit_patching.benchmark.config import AUTO_SUBSTRATE, BenchmarkConfig
from vit_patching.benchmark.data import folder_data, zoo_data
from vit_patching.benchmark.report import figures, markdown_report, update_docs, write_csv
from vit_patching.benchmark.runner import merge, run_shard
from vit_patching.benchmark.stats import DEFAULT_SELECTION_FRACTION, selection_split
from vit_patching.checks import OneLineArgumentParser
from vit_patching.cli import check_device, pretrained_weights_file
from vit_patching.files import atomic_write_text, check_output_file
from vit_patching.images import BASELINES
from vit_patching.model import HookedViT
from vit_patching.zoo import available_models, load_model

PROG = "benchmark_attribution.py"
_SUBSTRATES = (*BASELINES, "zero", "mean")  # the last two: deprecated spellings of zeros / image_mean


class UsageError(Exception):
    """A user error: reported as one line, exit status 2."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = OneLineArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-shapes", help="zoo model (toy-shapes, toy-conjunction, toy-relation) or a timm ViT name")
    p.add_argument("--pretrained", action="store_true", help="timm models: load timm's pretrained weights")
    p.add_argument("--model-kwargs", default="{}", help="timm models: create_model kwargs as JSON, e.g. {\"img_size\": 384}")
    p.add_argument("--model-seed", type=int, default=0, help="timm models without --pretrained: init seed")
    p.add_argument("--images", help="folder of images (required for timm models)")
    p.add_argument("--masks", help="folder of masks matched by file stem (optional)")
    p.add_argument("--n", type=int, default=64, help="number of images (zoo: generated; folder: first n)")
    p.add_argument("--seed", type=int, default=0, help="zoo dataset seed")
    p.add_argument("--methods", default="all", help="'all' or a comma-separated list of method names")
    p.add_argument("--exclude", default="", help="comma-separated methods to leave out of 'all'")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. rise.n_masks=1000 (repeatable; VALUE is a Python literal)")
    p.add_argument("--unit", choices=("patch", "pixel"), default="patch", help="faithfulness unit")
    p.add_argument("--target", choices=("predicted", "label"), default="predicted", help="class to explain")
    p.add_argument("--chunk-size", type=int, default=8, help="images per chunk (sharding and resume unit)")
    p.add_argument("--batch-size", type=int, default=64, help="forward rows per pass")
    p.add_argument("--pg-tolerance", type=float, default=None, help="pointing-game tolerance in px (default 15*H/224)")
    p.add_argument("--insertion-substrate", choices=(*_SUBSTRATES, AUTO_SUBSTRATE), default="blur",
                   metavar="{" + ",".join((*BASELINES, AUTO_SUBSTRATE)) + "}",
                   help="insertion start image (RISE: blur); auto: the one giving the explained class the lowest mean "
                        "probability on the selection images, chosen per model before any method runs")
    p.add_argument("--deletion-substrate", choices=_SUBSTRATES, default="zeros", metavar="{" + ",".join(BASELINES) + "}",
                   help="what deleted patches become (RISE: zeros = dataset-mean colour)")
    p.add_argument("--selection-fraction", type=float, default=DEFAULT_SELECTION_FRACTION,
                   help="share of the images (the first, by index) that chooses the best other method of each metric; "
                        "the paired test uses the rest (default 0.5)")
    p.add_argument("--selection-n", type=int, default=None,
                   help="number of selection images instead of --selection-fraction")
    p.add_argument("--out", default="out/bench", help="output folder (existing result files in it are replaced)")
    p.add_argument("--no-resume", action="store_true", help="recompute chunks that already have results")
    p.add_argument("--merge-only", action="store_true", help="only merge existing partial results")
    p.add_argument("--merge-wait", type=float, default=24 * 3600, help="rank 0: seconds to wait for other shards")
    p.add_argument("--rank", type=int, default=None, help="manual sharding: this job's rank")
    p.add_argument("--world-size", type=int, default=None, help="manual sharding: number of jobs")
    p.add_argument("--device", default=None, help="torch device (default: the launcher's, else cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-png", action="store_true", help="skip PNG export of the figures")
    p.add_argument("--write-docs", metavar="PATH", help="insert/replace this model's table in a markdown file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def parse_options(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--option METHOD.KEY=VALUE`` values as ``{method: {key: value}}`` (VALUE a Python literal, else a string).

    Example:
        >>> parse_options(["rise.n_masks=10", "caap.window=(1, 3)"], ["rise", "caap"])
        {'rise': {'n_masks': 10}, 'caap': {'window': (1, 3)}}
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise UsageError(f"--option: expected METHOD.KEY=VALUE, got {item!r}")
        if method not in methods:
            raise UsageError(f"--option: {item!r} sets an option of {method!r}, which is not in --methods {methods}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare string such as blur
        out.setdefault(method, {})[name] = parsed
    return out


def _positive(value: int | float | None, name: str, *, allow_zero: bool = False) -> None:
    if value is not None and not (value >= 0 if allow_zero else value > 0):
        raise UsageError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value}")


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every check that needs no model: raises :class:`UsageError` naming the option. Returns parsed values."""
    for name in ("n", "chunk_size", "batch_size", "threads", "world_size"):
        _positive(getattr(args, name), "--" + name.replace("_", "-"))
    _positive(args.merge_wait, "--merge-wait", allow_zero=True)
    _positive(args.pg_tolerance, "--pg-tolerance", allow_zero=True)
    _positive(args.selection_n, "--selection-n")
    if not 0 < args.selection_fraction < 1:
        raise UsageError(f"--selection-fraction: expected a number in (0, 1), got {args.selection_fraction}")
    if args.selection_n is not None and args.selection_n >= args.n and not args.images:
        raise UsageError(f"--selection-n: expected fewer than --n = {args.n} images, got {args.selection_n}")
    if (args.rank is None) != (args.world_size is None):
        raise UsageError("--rank: --rank and --world-size go together")
    if args.rank is not None and not 0 <= args.rank < args.world_size:
        raise UsageError(f"--rank: expected 0 <= rank < --world-size = {args.world_size}, got {args.rank}")
    known = available_methods()
    exclude = [m for m in args.exclude.split(",") if m]
    bad = [m for m in exclude if m not in known]
    if bad:
        raise UsageError(f"--exclude: expected method names from {known}, got {bad}")
    methods = [m for m in known if m not in exclude] if args.methods == "all" else [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in known]
    if not methods or bad:
        raise UsageError(f"--methods: expected 'all' or names from {known}, got {args.methods!r}")
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods: expected distinct names, got {args.methods!r}")
    options = parse_options(args.option, methods)
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise UsageError(f"--model-kwargs: expected a JSON object, got {args.model_kwargs!r} ({e.msg})") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--model-kwargs: expected a JSON object, got {args.model_kwargs!r}")
    zoo = args.model in available_models()
    if not zoo:
        import timm

        if not timm.is_model(args.model):
            raise UsageError(f"--model: expected a zoo model {available_models()} or a timm model name, got {args.model!r}")
        if not args.images:
            raise UsageError(f"--images: a timm model ({args.model!r}) needs an image folder")
    for flag, folder in (("--images", args.images), ("--masks", args.masks)):
        if folder is not None and not Path(folder).is_dir():
            raise UsageError(f"{flag}: expected a folder, got {'a file' if Path(folder).exists() else 'a missing path'}: {folder!r}")
    if args.masks and not args.images:
        raise UsageError("--masks: needs --images (the shipped data sets bring their own masks)")
    if args.target == "label" and args.images:
        raise UsageError("--target: 'label' needs ground-truth labels; an image folder has none (use 'predicted')")
    out = Path(args.out)
    try:
        check_output_file(out / "results.md", "--out")  # the folder itself may not exist yet
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out: expected a folder, got the existing file {args.out!r}")
        if args.write_docs is not None:
            check_output_file(args.write_docs, "--write-docs")
        device = None if args.device is None else check_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return {"methods": methods, "options": options, "model_kwargs": kwargs, "device": device}


def distributed_context(args: argparse.Namespace, device: Any) -> tuple[int, int, Any]:
    """(rank, world_size, device): manual flags, else accelerate's PartialState (gloo on CPU), else env, else 1."""
    if args.rank is not None:
        return args.rank, args.world_size, device or torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        try:
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            return state.process_index, state.num_processes, device or state.device
        except ImportError:
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return rank, world, device or torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    return 0, 1, device or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_and_data(args: argparse.Namespace, device: Any, model_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The model (on ``device``) and the benchmark images; user errors (unreadable files, ...) as UsageError."""
    from PIL import Image

    try:
        if args.model in available_models():
            model = load_model(args.model)
            if args.images:
                data = folder_data(model, args.images, args.masks, n=args.n)
                data.source["model"] = args.model
            else:
                data = zoo_data(args.model, n=args.n, seed=args.seed)
                data.source["model"] = f"zoo {args.model} (shipped weights)"
            return model.to(device), data
        if args.pretrained:  # from the local cache, or one download attempt: never a minute of retries
            try:
                model_kwargs = {**model_kwargs, "pretrained_cfg_overlay": {"file": str(pretrained_weights_file(args.model))}}
            except ValueError as e:
                raise UsageError(str(e)) from None
        torch.manual_seed(args.model_seed)
        try:
            model = HookedViT.from_timm(args.model, pretrained=args.pretrained, **model_kwargs)
        except Exception as e:  # network, cache, bad kwargs, unsupported architecture: one line
            raise UsageError(f"--model: could not build {args.model!r} with {model_kwargs}: {e}") from e
        data = folder_data(model, args.images, args.masks, n=args.n)
    except Image.DecompressionBombError as e:  # not an OSError
        raise UsageError(f"--images: an image is too large to open safely ({e})") from e
    except (OSError, ValueError) as e:  # unreadable image, missing mask, ...
        flag = "--masks" if str(e).startswith("masks_dir") else "--images"
        raise UsageError(f"{flag}: {e}") from e
    init = "pretrained" if args.pretrained else f"random init, seed {args.model_seed}"
    data.source["model"] = f"timm {args.model} ({init}) {model_kwargs or ''}".strip()
    return model.to(device), data


_NOT_REPRODUCING = {"--merge-only": 0, "--no-png": 0, "--no-progress": 0, "--write-docs": 1, "--merge-wait": 1, "--out": 1}


def reproduce_command(argv: list[str]) -> str:
    """The command line that recomputes these results (output-only flags dropped).

    Example:
        >>> reproduce_command(["--n", "8", "--out", "x", "--no-png"])
        'python scripts/benchmark_attribution.py --n 8'
    """
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=", 1)[0]
        if name in _NOT_REPRODUCING:
            skip = _NOT_REPRODUCING[name] if "=" not in a else 0
            continue
        out.append(a)
    return "python scripts/benchmark_attribution.py " + " ".join(shlex.quote(a) for a in out)


def write_outputs(result: Any, data: Any, args: argparse.Namespace, out: Path) -> str:
    """Every output file of a merged run (each written atomically); returns the markdown report."""
    from vit_patching.plotting import ReportSection, find_chromium, save_png, write_report

    result.settings = {"command": reproduce_command(sys.argv[1:] if args.argv is None else list(args.argv)),
                       **result.settings}
    # Chosen at report time from the per-image results (partials and their fingerprints do not depend on it).
    result.selection_fraction, result.selection_n = args.selection_fraction, args.selection_n
    try:
        select, report = selection_split(len(data), args.selection_fraction, args.selection_n)
    except ValueError as e:
        raise UsageError(f"--{str(e).split(':')[0].replace('_', '-')}: {str(e).split(':', 1)[1].strip()}") from e
    result.settings["best_other_selection"] = (
        f"first {len(select)} images choose the best other method per metric, the other {len(report)} are tested"
    )
    write_csv(result, out / "results.csv")
    title = f"{args.model}: attribution benchmark ({len(data)} images)"
    md = markdown_report(result, title)
    atomic_write_text(out / "results.md", md)
    atomic_write_text(out / "settings.json", json.dumps(result.settings, indent=2, default=str))
    figs = figures(result, data)
    sections = [ReportSection.figure(k.replace("_", " "), f) for k, f in figs.items()]
    write_report(out / "curves.html", title, sections, settings={k: v for k, v in result.settings.items() if k != "methods"})
    if not args.no_png:
        try:
            find_chromium()
            for k, f in figs.items():
                if not k.startswith("maps"):
                    save_png(f, out / f"curves_{k}.png")
        except (FileNotFoundError, RuntimeError) as e:
            logging.getLogger(__name__).warning("PNG export skipped: %s", e)
    if args.write_docs:
        update_docs(args.write_docs, args.model, md)
    return md


def run(args: argparse.Namespace) -> int:
    """Check the arguments, compute this process's shard, and (rank 0) merge and write the outputs."""
    checked = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = distributed_context(args, checked["device"])
    model, data = load_model_and_data(args, device, checked["model_kwargs"])
    try:
        cfg = BenchmarkConfig(
            methods=checked["methods"], method_options=checked["options"], unit=args.unit, target=args.target,
            chunk_size=args.chunk_size, batch_size=args.batch_size, pg_tolerance=args.pg_tolerance,
            insertion_substrate=args.insertion_substrate, deletion_substrate=args.deletion_substrate,
        )
    except ValueError as e:
        raise UsageError(f"--{str(e).split(':')[0].replace('_', '-')}: {str(e).split(':', 1)[1].strip()}") from e
    for m in cfg.methods:  # bad method options fail here, before any chunk is computed
        try:
            get_method(m, model, **cfg.method_options.get(m, {}))
        except (TypeError, ValueError) as e:
            raise UsageError(f"--option: {m}: {e}") from e
    out = Path(args.out)
    start = time.perf_counter()
    if not args.merge_only:
        counts = run_shard(model, data, cfg, out, rank=rank, world_size=world, resume=not args.no_resume,
                           progress=not args.no_progress)
        print(f"rank {rank}/{world}: {counts['computed']} chunks computed, {counts['skipped']} resumed "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if rank != 0 or (args.world_size is not None and not args.merge_only and world > 1):
        return 0  # manual shards: merge in a separate --merge-only run
    try:
        result = merge(model, data, cfg, out, wait_s=args.merge_wait if world > 1 else 0.0)
    except RuntimeError as e:
        raise UsageError(f"--merge-only: {e}" if args.merge_only else str(e)) from e
    print(write_outputs(result, data, args, out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/benchmark_attribution.py``: 0 on success, 2 (one line on stderr) on a user error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.no_progress:  # progress as log lines instead of bars (ours only, not every library's)
        logging.getLogger("vit_patching").setLevel(logging.INFO)
    try:
        return run(args)
    except UsageError as e:
        print(f"{PROG}: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2

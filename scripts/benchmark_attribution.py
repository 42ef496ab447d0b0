#!/usr/bin/env python
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
available), ``settings.json`` and ``partials/`` (one JSON per method and chunk). A rerun skips finished chunks.
``--write-docs docs/benchmark.md`` puts the table into that file's section for this model.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-shapes", help="zoo model (toy-shapes, toy-conjunction) or a timm ViT name")
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
    p.add_argument("--insertion-substrate", choices=("blur", "zero", "mean"), default="blur",
                   help="insertion start image (RISE: blur; use zero where the blurred image keeps the class)")
    p.add_argument("--deletion-substrate", choices=("zero", "blur", "mean"), default="zero",
                   help="what deleted patches become (RISE: zero = dataset-mean colour)")
    p.add_argument("--out", default="out/bench", help="output folder")
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


def parse_options(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise SystemExit(f"--option: expected METHOD.KEY=VALUE, got {item!r}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare string such as blur
        out.setdefault(method, {})[name] = parsed
    return out


def distributed_context(args, torch):
    """(rank, world_size, device): manual flags, else accelerate's PartialState (gloo on CPU), else env, else 1."""
    if args.rank is not None or args.world_size is not None:
        if args.rank is None or args.world_size is None:
            raise SystemExit("--rank and --world-size go together")
        return args.rank, args.world_size, torch.device(args.device or "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        try:
            from accelerate import PartialState

            state = PartialState(cpu=not torch.cuda.is_available())
            return state.process_index, state.num_processes, torch.device(args.device) if args.device else state.device
        except ImportError:
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
            dev = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
            return rank, world, torch.device(dev)
    return 0, 1, torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model_and_data(args, device):
    from vit_patching.attribution.benchmark import folder_data, zoo_data
    from vit_patching.zoo import available_models, load_model

    if args.model in available_models():
        model = load_model(args.model)
        if args.images:
            data = folder_data(model, args.images, args.masks, n=args.n)
            data.source["model"] = args.model
        else:
            data = zoo_data(args.model, n=args.n, seed=args.seed)
            data.source["model"] = f"zoo {args.model} (shipped weights)"
        return model.to(device), data
    import torch

    from vit_patching.model import HookedViT

    if not args.images:
        raise SystemExit(f"--images: a timm model ({args.model!r}) needs an image folder")
    kwargs = json.loads(args.model_kwargs)
    torch.manual_seed(args.model_seed)
    model = HookedViT.from_timm(args.model, pretrained=args.pretrained, **kwargs)
    data = folder_data(model, args.images, args.masks, n=args.n)
    data.source["model"] = f"timm {args.model} ({'pretrained' if args.pretrained else f'random init, seed {args.model_seed}'}) {kwargs or ''}".strip()
    return model.to(device), data


_NOT_REPRODUCING = {"--merge-only": 0, "--no-png": 0, "--no-progress": 0, "--write-docs": 1, "--merge-wait": 1, "--out": 1}


def reproduce_command(argv: list[str]) -> str:
    """The command line that recomputes these results (output-only flags dropped)."""
    import shlex

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


def write_outputs(result, data, args, out: Path) -> None:
    from vit_patching.attribution.benchmark import figures, markdown_report, update_docs, write_csv
    from vit_patching.plotting import ReportSection, find_chromium, save_png, write_report

    result.settings = {"command": reproduce_command(sys.argv[1:] if args.argv is None else args.argv), **result.settings}
    write_csv(result, out / "results.csv")
    title = f"{args.model}: attribution benchmark ({len(data)} images)"
    md = markdown_report(result, title)
    (out / "results.md").write_text(md)
    (out / "settings.json").write_text(json.dumps(result.settings, indent=2, default=str))
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
            print(f"PNG export skipped: {e}")
    if args.write_docs:
        update_docs(args.write_docs, args.model, md)
    print(md)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.no_progress:  # progress as log lines instead of bars (ours only, not every library's)
        logging.getLogger("vit_patching").setLevel(logging.INFO)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from vit_patching.attribution import available_methods
    from vit_patching.attribution.benchmark import BenchmarkConfig, merge, run_shard

    rank, world, device = distributed_context(args, torch)
    model, data = load_model_and_data(args, device)
    exclude = {m for m in args.exclude.split(",") if m}
    methods = [m for m in available_methods() if m not in exclude] if args.methods == "all" else [m for m in args.methods.split(",") if m]
    cfg = BenchmarkConfig(
        methods=methods, method_options=parse_options(args.option), unit=args.unit, target=args.target,
        chunk_size=args.chunk_size, batch_size=args.batch_size, pg_tolerance=args.pg_tolerance,
        insertion_substrate=args.insertion_substrate, deletion_substrate=args.deletion_substrate,
    )
    out = Path(args.out)
    start = time.perf_counter()
    if not args.merge_only:
        counts = run_shard(model, data, cfg, out, rank=rank, world_size=world, resume=not args.no_resume,
                           progress=not args.no_progress)
        print(f"rank {rank}/{world}: {counts['computed']} chunks computed, {counts['skipped']} resumed "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if rank != 0 or (args.world_size is not None and not args.merge_only and world > 1):
        return 0  # manual shards: merge in a separate --merge-only run
    result = merge(model, data, cfg, out, wait_s=args.merge_wait if world > 1 else 0.0)
    write_outputs(result, data, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dataset mode of ``vit-patching caap``: ``--images DIR`` or ``--dataset NAME --n N`` with ``--out DIR``.

Run it sharded with ``torchrun --nproc_per_node 2 -m vit_patching.cli caap --dataset shapes --n-images 64 --out run/``
(``--n-images``: torchrun claims abbreviations of ``--n``).

Every argument that can be checked without a model is checked before the model is built (the output folder,
``--n``, ``--seed``, the chunking and CAAP settings, each image file's name and header), so that a user error
never waits for compute; errors name the CLI option (``--out``, ``--images``, ...).

Example:
    >>> from vit_patching.cli import main
    >>> main(["caap", "--dataset", "shapes", "--n", "8", "--out", "run/"])   # doctest: +SKIP
    0
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vit_patching.checks import check_positive_int, check_seed, check_window
from vit_patching.files import check_output_dir, list_image_files

from .caap_run import CAAPRunConfig, run_caap_dataset, wait_timeout
from .dataset import folder_images, zoo_images
from .lock import RunLockError

__all__ = ["check_dataset_classes", "check_image_files", "run_dataset_command"]


def _shown(path: Path) -> str:
    """``path`` as text that can be printed and written anywhere: undecodable bytes as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_utf8(path: Path, what: str) -> None:
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 (rename it): '{_shown(path)}'") from None


def check_image_files(files: Sequence[Path], name: str = "--images") -> None:
    """Refuse, before any compute, a file whose name is not valid UTF-8 or whose header PIL cannot read.

    Only headers are read (PIL opens lazily), so this costs milliseconds per file; PIL's decompression-bomb
    guard already acts on the header's size. A file name that is not UTF-8 would be computed and then fail the
    UTF-8 results table and gallery, throwing the finished run away.

    Raises:
        ValueError: naming ``name`` and the file.

    Example:
        >>> check_image_files([Path("missing.png")])
        Traceback (most recent call last):
        ...
        ValueError: --images: not a readable image file: 'missing.png' ([Errno 2] No such file or directory: 'missing.png')
    """
    from PIL import Image, UnidentifiedImageError

    for p in files:
        _check_utf8(p, f"{name}: file name")
        try:
            with Image.open(p):
                pass
        except Image.DecompressionBombError as e:  # not an OSError: PIL's guard against huge images
            raise ValueError(f"{name}: image too large to open safely: {str(p)!r} ({e})") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{name}: not a readable image file: {str(p)!r} ({e})") from None


def check_dataset_classes(dataset: str, model_name: str, n_classes: int) -> None:
    """Refuse a shipped dataset whose labels are not classes of the model (``--model toy-relation --dataset shapes``).

    A dataset's classes are those of the shipped model trained on it (the zoo registry records which dataset
    each model was trained on).

    Raises:
        ValueError: naming ``--dataset`` and ``--model`` and, for a shipped model, the dataset it was trained on.

    Example:
        >>> check_dataset_classes("shapes", "toy-relation", 2)
        Traceback (most recent call last):
        ...
        ValueError: --dataset: 'shapes' has 4 classes but --model 'toy-relation' has 2 (a dataset run's labels must be classes of the model); toy-relation was trained on --dataset relation
    """
    from vit_patching.zoo.clip import CLIP_MODELS
    from vit_patching.zoo.datasets import dataset_class_names
    from vit_patching.zoo.registry import MODEL_SPECS

    names = dataset_class_names(dataset)
    if len(names) == n_classes:
        return
    trained_on = {**{k: v.dataset for k, v in MODEL_SPECS.items()}, **CLIP_MODELS}
    hint = f"; {model_name} was trained on --dataset {trained_on[model_name]}" if model_name in trained_on else ""
    raise ValueError(f"--dataset: {dataset!r} has {len(names)} classes but --model {model_name!r} has {n_classes} "
                     f"(a dataset run's labels must be classes of the model){hint}")


def run_dataset_command(args: argparse.Namespace, load_model: Callable[..., tuple[Any, dict[str, Any]]]) -> Path | None:
    """Run the dataset mode; ``ValueError`` names the bad option. Returns the gallery path (rank 0) or ``None``.

    Args:
        args: parsed ``vit-patching caap`` arguments (``--device`` already checked).
        load_model: ``load_model(name, pretrained, device) -> (model, info)`` of the CLI (``vit_patching.cli.main``
            passes its own).

    Example:
        >>> from vit_patching.cli import build_parser
        >>> args = build_parser().parse_args(["caap", "--dataset", "shapes", "--n", "4", "--out", "run/"])
        >>> run_dataset_command(args, load_model).name   # doctest: +SKIP
        'gallery.html'
    """
    from vit_patching.patching.caap import DEFAULT_NEUTRAL, DEFAULT_READOUT

    args.out = check_output_dir(args.out, "--out", subfolders=("chunks",))
    _check_utf8(args.out, "--out: folder name")  # safetensors opens UTF-8 paths only: its chunks could not be read
    if args.images is not None:
        _check_utf8(args.images, "--images: folder name")
    if args.target is not None:
        raise ValueError("--target: a dataset run explains each image's predicted class; drop --target")
    cfg = CAAPRunConfig(  # its checks name the parameters; the CLI turns them into option names
        window=args.window, neutral=args.neutral or DEFAULT_NEUTRAL, site=args.site,
        readout=args.readout or DEFAULT_READOUT, include_prefix=args.include_prefix, upsample=args.upsample,
        direction=args.direction, chunk_size=args.chunk_size, batch_size=args.batch_size,
        coalitions=args.coalitions, coalition_groups=args.coalition_groups, coalition_seed=args.coalition_seed,
    )
    if args.n is not None:
        check_positive_int(args.n, "--n")
    try:
        timeout_s = wait_timeout(getattr(args, "wait_timeout", None))
    except ValueError as e:
        raise ValueError(str(e).replace("wait_timeout_s", "--wait-timeout")) from None
    if args.images is not None:
        files = list_image_files(args.images, "--images", args.n)
        check_image_files(files)
    else:
        if args.n is None:
            raise ValueError("--n: expected the number of images of --dataset to explain, got none")
        check_seed(args.seed, "--seed")
    model, info = load_model(args.model, args.pretrained, args.device)
    if cfg.window is not None:
        check_window(cfg.window, model.cfg.n_layers, "--window")
    if args.dataset is not None:
        check_dataset_classes(args.dataset, args.model, model.cfg.n_classes)
        images = zoo_images(args.dataset, n=args.n, seed=args.seed)
    else:
        images = folder_images(args.images, n=args.n)
    try:  # a PeerWaitError (a TimeoutError: no user error) reaches the CLI, which reports it with status 1
        paths = run_caap_dataset(
            model, images, args.out, cfg, resume=not args.no_resume, progress=not args.no_progress,
            title=args.title or f"{'Coalition CAAP' if cfg.coalitions else 'CAAP'} gallery: {args.model} "
                                f"({info['weights']} weights)", wait_timeout_s=timeout_s,
            scores=info.get("readout"),
        )
    except RunLockError as e:
        raise ValueError(f"--out: {e}") from None
    return None if paths is None else paths["gallery"]

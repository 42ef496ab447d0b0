"""The dataset mode of ``vit-patching caap``: ``--images DIR`` or ``--dataset NAME --n N`` with ``--out DIR``.

Run it sharded with ``torchrun --nproc_per_node 2 -m vit_patching.cli caap --dataset shapes --n-images 64 --out run/``
(``--n-images``: torchrun claims abbreviations of ``--n``).

Example:
    >>> from vit_patching.cli import main
    >>> main(["caap", "--dataset", "shapes", "--n", "8", "--out", "run/"])   # doctest: +SKIP
    0
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .caap_run import CAAPRunConfig, PeerWaitError, run_caap_dataset, wait_timeout
from .dataset import folder_images, zoo_images
from .lock import RunLockError

__all__ = ["run_dataset_command"]


def run_dataset_command(args: argparse.Namespace, load_model: Callable[..., tuple[Any, dict[str, Any]]]) -> Path | None:
    """Run the dataset mode; ``ValueError`` names the bad argument. Returns the gallery path (rank 0) or ``None``.

    Args:
        args: parsed ``vit-patching caap`` arguments.
        load_model: ``load_model(name, pretrained, device) -> (model, info)`` of the CLI.
    """
    from vit_patching.patching.caap import DEFAULT_NEUTRAL, DEFAULT_READOUT

    if not str(args.out).strip():
        raise ValueError(f"--out: expected a folder path for a dataset run, got {str(args.out)!r}")
    args.out = Path(args.out)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out: expected a folder for a dataset run, got the file {str(args.out)!r}")
    if args.target is not None:
        raise ValueError("--target: a dataset run explains each image's predicted class; drop --target")
    try:
        timeout_s = wait_timeout(getattr(args, "wait_timeout", None))
    except ValueError as e:
        raise ValueError(str(e).replace("wait_timeout_s", "--wait-timeout")) from None
    model, info = load_model(args.model, args.pretrained, args.device)
    if args.images is not None:
        images = folder_images(args.images, n=args.n)
    else:
        if args.n is None:
            raise ValueError("--n: expected the number of images of --dataset to explain, got none")
        images = zoo_images(args.dataset, n=args.n, seed=args.seed)
    cfg = CAAPRunConfig(
        window=args.window, neutral=args.neutral or DEFAULT_NEUTRAL, site=args.site,
        readout=args.readout or DEFAULT_READOUT, include_prefix=args.include_prefix, upsample=args.upsample,
        direction=args.direction,
        chunk_size=args.chunk_size, batch_size=args.batch_size,
    )
    if cfg.window is not None:
        from vit_patching.checks import check_window

        check_window(cfg.window, model.cfg.n_layers, "--window")
    try:
        paths = run_caap_dataset(
            model, images, args.out, cfg, resume=not args.no_resume, progress=not args.no_progress,
            title=args.title or f"CAAP gallery: {args.model} ({info['weights']} weights)", wait_timeout_s=timeout_s,
        )
    except PeerWaitError as e:  # a launch problem, reported like a user error: one line, status 2
        raise ValueError(str(e)) from None
    except RunLockError as e:
        raise ValueError(f"--out: {e}") from None
    return None if paths is None else paths["gallery"]

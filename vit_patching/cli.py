"""Command-line interface: ``vit-patching caap ...`` writes a self-contained HTML CAAP report.

The main job needs no image file and no network (the shipped default model and a sample of its dataset)::

    vit-patching caap --sample 0 --out report.html

Other uses::

    vit-patching caap --model toy-conjunction --sample 3 --window 1:3 --out conj.html
    vit-patching caap --model vit_base_patch16_224 --pretrained --image cat.jpg --target 281 --out cat.html
    vit-patching caap --model vit_tiny_patch16_224 --image cat.jpg --out random.html   # random weights
    vit-patching caap --model toy-conjunction --sample 3 --coalitions 8 --interactions 5 --out shapley.html

Example:
    >>> from vit_patching.cli import main
    >>> main(["caap", "--sample", "0", "--out", "/tmp/report.html"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vit_patching.checks import OneLineArgumentParser, check_choice, check_window
from vit_patching.cli_coalition import (
    add_coalition_arguments, check_coalition_options, coalition_sections, run_single, single_settings,
)
from vit_patching.files import check_output_file, load_image

logger = logging.getLogger(__name__)

__all__ = [
    "IO_FAULTS", "MAX_SAMPLE", "OPTION_OF_PARAMETER", "build_parser", "check_device", "cli_message", "main",
    "pretrained_weights_file",
]

#: ``--sample`` indices above this are refused (the chunk seeds before the sample are drawn one by one).
MAX_SAMPLE = 10**9


class _UsageError(Exception):
    """A user error, reported in one line as ``vit-patching caap: error: ...`` with exit code ``status``."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


#: Library parameter names -> the CLI options that set them: errors raised by shared checks name parameters
#: (``chunk_size: expected a positive int``); the CLI reports them under the option the user typed.
OPTION_OF_PARAMETER = {
    "n": "--n", "chunk_size": "--chunk-size", "batch_size": "--batch-size", "seed": "--seed", "window": "--window",
    "neutral": "--neutral", "site": "--site", "readout": "--readout", "upsample": "--upsample",
    "direction": "--direction", "target": "--target", "include_prefix": "--include-prefix", "images": "--images",
    "image": "--image", "top": "--top", "device": "--device", "coalitions": "--coalitions",
    "n_permutations": "--coalitions", "coalition_groups": "--coalition-groups", "groups": "--coalition-groups",
    "coalition_seed": "--coalition-seed", "k": "--interactions", "kind": "--interaction-kind",
}

#: errno values of an I/O fault (exit status 1) rather than a user's choice of path (status 2).
IO_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def cli_message(text: str) -> str:
    """``text`` in one line, its leading library parameter name (``chunk_size:``) replaced by the CLI option.

    Example:
        >>> cli_message("chunk_size: expected a positive int, got 0")
        '--chunk-size: expected a positive int, got 0'
    """
    head, sep, rest = " ".join(str(text).split()).partition(": ")
    return f"{OPTION_OF_PARAMETER.get(head, head)}{sep}{rest}"


def _write_error(e: OSError, option: str, path: Path, note: str = "") -> _UsageError:
    """One line for a failed write under ``path``: status 1 for an I/O fault (a full disk), else 2."""
    status = 1 if e.errno in IO_FAULTS else 2
    return _UsageError(f"{option}: could not write {str(path)!r}: {e.strerror or e}{note}", status)


def _parse_window(text: str) -> tuple[int, int]:
    try:
        start, end = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END (two ints, e.g. 1:3), got {text!r}") from None
    return start, end


def check_device(text: str, name: str = "--device") -> Any:
    """The ``torch.device`` named by ``text``, if this machine has it; else a ValueError naming ``name``.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("bogus")
        Traceback (most recent call last):
        ...
        ValueError: --device: expected cpu, cuda, cuda:N or mps, got 'bogus'
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected cpu, cuda, cuda:N or mps, got {text!r}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{name}: {text!r} asked for, but no CUDA GPU is available here (use cpu)")
        if device.index is not None and device.index >= n:
            raise ValueError(f"{name}: expected a GPU index below {n} (GPUs here: {n}), got {text!r}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}: {text!r} asked for, but MPS is not available here (use cpu)")
        return device
    raise ValueError(f"{name}: expected cpu, cuda, cuda:N or mps, got {text!r}")


def _parse_batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vit-patching`` (one sub-command per job)."""
    from vit_patching.patching.caap import DEFAULT_DIRECTION, DIRECTIONS, NEUTRALS, READOUTS, SITES
    from vit_patching.readouts.command import add_readout_arguments
    from vit_patching.zoo import DEFAULT_MODEL, available_datasets, available_models

    parser = OneLineArgumentParser(prog="vit-patching", description="Mechanistic interpretability for timm ViTs.")
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
    src.add_argument("--sample", type=int,
                     help="explain sample N of the shipped dataset matching the shipped model (seed 0; only that "
                     "sample is generated)")
    src.add_argument("--images", type=Path, help="dataset run: every image of this folder (--out is then a folder)")
    src.add_argument("--dataset", choices=available_datasets(),
                     help="dataset run: --n images of a shipped set (its labels must be classes of --model)")
    p.add_argument("--n", "--n-images", dest="n", type=int, default=None,
                   help="dataset run: number of images (first N; --n-images under torchrun, which claims --n)")
    p.add_argument("--seed", type=int, default=0, help="dataset run with --dataset: generation seed (default 0)")
    p.add_argument("--chunk-size", type=int, default=16, help="dataset run: images per chunk (unit of resume)")
    p.add_argument("--no-resume", action="store_true", help="dataset run: recompute chunks already saved")
    p.add_argument("--no-progress", action="store_true", help="dataset run: no progress bar")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                   help="sharded dataset run: rank 0 gives up when no chunk of the other ranks appears for this "
                        "long (default $VIT_PATCHING_WAIT_TIMEOUT or 1800)")
    p.add_argument("--target", type=int, default=None,
                   help="class index to explain, 0 <= TARGET < number of classes (default: the predicted class)")
    p.add_argument("--window", type=_parse_window, default=None, help="layer window START:END (default: CAAP's)")
    p.add_argument("--neutral", choices=[n for n in NEUTRALS if n != "mean_activations"], default=None,
                   help="neutral context (default: CAAP's)")
    p.add_argument("--site", choices=list(SITES), default="resid_pre", help="patched activation (default resid_pre)")
    add_readout_arguments(p, READOUTS)  # --readout {head,zero-shot,probe,similarity} or a CAAP score, --score, ...
    p.add_argument("--include-prefix", action="store_true", help="also pin CLS/register tokens to source values")
    p.add_argument("--direction", default=DEFAULT_DIRECTION, metavar="{" + ",".join(DIRECTIONS) + "}",
                   help="denoising (default): each patch of the input into the neutral context, map = restored "
                        "score; noising: each neutral patch into the input, map = score drop")
    p.add_argument("--upsample", choices=["nearest", "bilinear"], default="nearest", help="patch map -> image")
    add_coalition_arguments(p)  # --coalitions N, --coalition-groups K, --coalition-seed, --interactions K, ...
    p.add_argument("--top", type=int, default=10, help="number of top patches listed (default 10)")
    p.add_argument("--batch-size", type=_parse_batch_size, default=64,
                   help="patched rows per forward pass, or 'auto' (from free memory; default 64)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or mps")
    p.add_argument("--out", required=True,
                   help="path of the HTML report to write; an existing file is replaced (atomically: a failed "
                   "write leaves it intact)")
    p.add_argument("--title", default=None, help="report title")
    return parser


# ------------------------------------------------------------------------------------------------- inputs
def _scored_model(args: argparse.Namespace, model: Any, info: dict[str, Any]) -> Any:
    """``model`` with the readout of ``--readout`` attached (``info["readout"]`` names it for the report)."""
    from vit_patching.readouts.command import attach_from_args

    info.setdefault("model", args.model)
    try:
        return attach_from_args(args, model, info)
    except (ValueError, TypeError, OSError) as e:  # they name the option (--probe, --classes, ...)
        raise _UsageError(str(e)) from None


def _scored_loader(args: argparse.Namespace) -> Any:
    """:func:`_load_model` followed by :func:`_scored_model`, for dataset runs."""
    def load(name: str, pretrained: bool, device: str) -> tuple[Any, dict[str, Any]]:
        model, info = _load_model(name, pretrained, device)
        return _scored_model(args, model, info), info

    return load


def _shipped_models() -> list[str]:
    """Every shipped model name: the classifiers and the zero-shot (image-text) models."""
    from vit_patching.zoo import available_models, zero_shot_models

    return sorted(available_models() + zero_shot_models())


def _load_model(name: str, pretrained: bool, device: str) -> tuple[Any, dict[str, Any]]:
    """(HookedViT, info) for a zoo or timm name; info records where the weights came from."""
    from vit_patching.model import HookedViT
    from vit_patching.zoo import available_models, get_spec, load_model, zero_shot_models

    if name in zero_shot_models():  # image tower + text tower: zero-shot scores over its captions by default
        if pretrained:
            raise _UsageError(f"--pretrained applies to timm names only; {name!r} is a shipped model (always trained)")
        from vit_patching.zoo.clip import CLIP_MODELS, load_open_clip_model, zero_shot_head

        oc = load_open_clip_model(name)
        tower = HookedViT.from_open_clip(oc)
        head = zero_shot_head(oc, name)
        return tower.with_readout(head).to(device), {
            "weights": f"shipped ({name}.safetensors)", "random": False, "dataset": CLIP_MODELS[name],
            "class_names": list(head.class_names), "readout": head.describe(),
            "zero_shot": lambda classes, templates: zero_shot_head(oc, name, classes, templates).to(device),
        }
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
        raise _UsageError(f"--model: expected a shipped model {_shipped_models()} or a timm model name, got {name!r}")
    kwargs = {"pretrained_cfg_overlay": {"file": str(_cached_or_fail(name))}} if pretrained else {}
    try:
        model = HookedViT.from_timm(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # corrupt weights / unsupported architecture: one readable line
        raise _UsageError(f"--model: could not build {name!r} (pretrained={pretrained}): {e}") from e
    names = None
    if pretrained and model.cfg.n_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        names = [info.index_to_description(i) for i in range(1000)]
    info = {"weights": "timm pretrained" if pretrained else "random (untrained)", "random": not pretrained,
            "dataset": None, "class_names": names}
    return model.to(device), info


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens (through a proxy: assumed yes, the proxy decides)."""
    if any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def pretrained_weights_file(name: str) -> Path:
    """timm's pretrained weights of ``name`` as a local file: from the cache, else downloaded once.

    Raises:
        ValueError: naming ``--pretrained``, if the weights are not cached and cannot be downloaded.

    huggingface_hub retries an unreachable hub for about a minute, warning at every retry, before it fails
    (even with ``HF_HUB_OFFLINE``), so the cache is looked at first and the network tried at most once.
    """
    import timm
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ValueError(f"--pretrained: timm has no Hugging Face weights for {name!r}")
    repo, _, revision = hub_id.partition("@")
    files = ("model.safetensors", "pytorch_model.bin")
    for filename in files:
        cached = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    if _offline():
        raise ValueError(f"--pretrained: the weights of {name!r} ({repo}) are not in the local Hugging Face cache "
                          "and HF_HUB_OFFLINE is set; download them once with network access")
    if not _reachable(constants.ENDPOINT):
        raise ValueError(f"--pretrained: the weights of {name!r} ({repo}) are not in the local Hugging Face cache "
                          f"and {constants.ENDPOINT} cannot be reached; download them once with network access")
    try:
        return Path(hf_hub_download(repo, files[0], revision=revision or None))
    except Exception as e:  # noqa: BLE001 - any hub failure is one line for the user
        raise ValueError(f"--pretrained: could not download the weights of {name!r} ({repo}): {e}") from e


def _cached_or_fail(name: str) -> Path:
    try:
        return pretrained_weights_file(name)
    except ValueError as e:
        raise _UsageError(str(e)) from None


def _read_image(path: Path) -> Any:
    """The ``--image`` file as an upright 8-bit RGB PIL image (before the model is built: errors come first)."""
    from PIL import Image, UnidentifiedImageError

    if path.is_dir():
        raise _UsageError(f"--image: expected an image file, got a directory: {str(path)!r}")
    if not path.is_file():
        raise _UsageError(f"--image: no such file: {str(path)!r}")
    try:
        return load_image(path)
    except Image.DecompressionBombError as e:  # not an OSError: PIL's guard against huge images
        raise _UsageError(f"--image: image too large to open safely: {str(path)!r} ({e})") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _UsageError(f"--image: not a readable image file: {str(path)!r} ({e})") from e


def _load_input(args: argparse.Namespace, model: Any, info: dict[str, Any], pil: Any) -> tuple[Any, str, int | None]:
    """(normalised image [1, C, H, W], description, dataset label or None)."""
    if args.sample is not None:
        if info["dataset"] is None:
            raise _UsageError(f"--sample needs a shipped model (it picks a sample of that model's dataset); "
                              f"{args.model!r} is a timm model: use --image")
        from vit_patching.zoo.datasets import generate_sample

        batch = generate_sample(info["dataset"], args.sample, seed=0)  # only that sample, not all before it
        image = batch.images.to(device=model.device, dtype=model.dtype)
        return image, f"sample {args.sample} of the shipped '{info['dataset']}' dataset (seed 0)", int(batch.labels[0])
    return model.preprocess(pil), f"image file {args.image}", None


def _run_caap(args: argparse.Namespace) -> Path:
    from vit_patching.patching.caap import DEFAULT_NEUTRAL, DEFAULT_READOUT, default_window
    from vit_patching.cli_report import report_sections
    from vit_patching.plotting import write_report

    # Every argument that can be checked without the model is checked first, so that no error waits for compute.
    try:
        args.out = check_output_file(args.out, "--out")
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if args.top < 1:
        raise _UsageError(f"--top: expected a positive number of patches, got {args.top}")
    if args.batch_size != "auto" and args.batch_size < 1:
        raise _UsageError(f"--batch-size: expected a positive int, got {args.batch_size}")
    if args.sample is not None and not 0 <= args.sample < MAX_SAMPLE:
        raise _UsageError(f"--sample: expected an index in [0, {MAX_SAMPLE}), got {args.sample}")
    if args.target is not None and args.target < 0:
        raise _UsageError(f"--target: expected a class index >= 0, got {args.target}")
    if args.model not in _shipped_models():
        import timm

        if not timm.is_model(args.model):
            raise _UsageError(f"--model: expected a shipped model {_shipped_models()} or a timm model name, "
                              f"got {args.model!r}")
        if args.sample is not None:
            raise _UsageError(f"--sample needs a shipped model (it picks a sample of that model's dataset); "
                              f"{args.model!r} is a timm model: use --image")
    pil = None if args.image is None else _read_image(args.image)
    model, info = _load_model(args.model, args.pretrained, args.device)
    info["model"] = args.model
    model = _scored_model(args, model, info)
    if args.target is not None and args.target >= model.cfg.n_classes:
        raise _UsageError(f"--target: expected a class index in [0, {model.cfg.n_classes}) for {args.model!r}, "
                          f"got {args.target}")
    if args.window is not None:
        try:
            check_window(args.window, model.cfg.n_layers, "--window")
        except ValueError as e:
            raise _UsageError(str(e)) from None
    if args.batch_size == "auto":  # rows per forward from the free memory of the model's device
        from vit_patching.patching.memory import auto_batch_size

        args.batch_size = auto_batch_size(model)
    if info["random"]:
        logger.warning("%s has random weights (no --pretrained): the report explains an untrained model", args.model)
    image, source, label = _load_input(args, model, info, pil)
    window = default_window(model.cfg.n_layers) if args.window is None else args.window
    neutral = args.neutral or DEFAULT_NEUTRAL
    readout = args.readout or DEFAULT_READOUT
    try:  # single-patch or coalition CAAP, and the interactions asked for
        attr, inter = run_single(args, model, image, window, neutral, readout)
    except (ValueError, TypeError) as e:  # CAAP's errors name the argument (window, target, ...)
        raise _UsageError(str(e)) from e
    settings = {
        "model": args.model, "weights": info["weights"], "input": source, "target": int(attr.target[0]),
        "target source": attr.options["target_source"], "window": list(attr.window), "neutral": neutral,
        "site": args.site, "readout": readout, "scores from": info.get("readout") or model.readout.describe(), "include prefix": args.include_prefix, "direction": attr.direction, "upsample": args.upsample,
        "batch size": args.batch_size, "device": args.device, "patched forward passes": attr.n_forwards,
        **single_settings(args),
    }
    title = args.title or f"CAAP report: {args.model}"
    sections = report_sections(attr, model, info, source, label, args.top)
    sections[-1:-1] = coalition_sections(attr, inter)  # before the input image
    try:
        return write_report(args.out, title, sections, settings)  # atomic: a failed write keeps the old report
    except OSError as e:
        raise _write_error(e, "--out", args.out) from e


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vit-patching`` console script; returns 0 on success.

    Errors are one line on stderr and end the process: status 2 for a user error (a bad option, an unusable
    path or file, named in the message), 1 for an I/O fault (a full disk) or a rank whose peers never came.

    Example:
        >>> main(["caap", "--sample", "0", "--out", "report.html"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="vit-patching: %(levelname)s: %(message)s")
    try:
        path = _run_command(args)
    except _UsageError as e:  # one line, whatever a library put in its message, naming CLI options
        parser.exit(e.status, f"vit-patching {args.command}: error: {cli_message(str(e))}\n")
    if path is None:  # a rank other than 0 of a sharded run
        return 0
    print(f"wrote {path}", file=sys.stdout)
    return 0


def _run_command(args: argparse.Namespace) -> Path | None:
    """Run the parsed command; every user error is raised as a :class:`_UsageError`."""
    from vit_patching.patching.caap import DIRECTIONS

    # Checked here, before either mode (single image or dataset run), so that these errors come before any model.
    try:
        check_choice(args.direction, DIRECTIONS, "--direction")
        check_coalition_options(args, dataset=args.images is not None or args.dataset is not None)
        args.device = str(check_device(args.device))
    except ValueError as e:
        raise _UsageError(str(e)) from None
    if args.images is None and args.dataset is None:
        return _run_caap(args)
    from vit_patching.runs.command import run_dataset_command

    try:
        return run_dataset_command(args, _scored_loader(args))
    except ValueError as e:
        raise _UsageError(str(e)) from e
    except TimeoutError as e:  # an OSError too, but no write failed: a rank waited in vain for its peers
        raise _UsageError(str(e), status=1) from e
    except OSError as e:  # a full disk or an unwritable file inside --out while the run writes its results
        raise _write_error(e, "--out", args.out, " (finished chunks are kept: run the same command again to "
                           "resume)") from e


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

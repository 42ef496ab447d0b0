"""Read and write SAELens's on-disk SAE format: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

sae-lens itself cannot be installed beside TransformerLens 4 (it pins ``transformer-lens<4``), so this is our own
reader of its documented layout (``docs/sae.md`` has the field table). Both SAELens 6 configs (hook name under
``metadata``) and older ones (top-level ``hook_name`` / ``hook_point``, top-k's ``activation_fn_kwargs.k``) load;
SAELens 6's layout is written. Weights are safetensors only (never unpickled) and each file is written to a
temporary name and renamed.

Example:
    >>> save_saelens(sae, "my_sae")                 # my_sae/cfg.json, my_sae/sae_weights.safetensors
    >>> again = load_saelens("my_sae")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vit_patching.files import PathLike, atomic_write_bytes, atomic_write_text
from vit_patching.sae.saes import DTYPES, SAE, SAE_CLASSES, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens 6 decides from metadata.sae_lens_version whether a cfg.json needs its pre-6 conversion; we write the
# 6.x layout, so we say so.
LAYOUT_VERSION = "6.0.0"


def _cfg_error(folder: Path, key: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{folder / CFG_FILE}: {key}: expected {expected}, got {got!r}")


def _read_cfg(folder: Path) -> SAEConfig:
    try:
        raw = json.loads((folder / CFG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder / CFG_FILE}: expected a readable JSON file, got {type(err).__name__}: {err}") \
            from None
    if not isinstance(raw, dict):
        raise _cfg_error(folder, "cfg.json", "a JSON object", type(raw).__name__)
    for key in ("d_in", "d_sae"):
        if key not in raw:
            raise _cfg_error(folder, key, "a positive int (the key is missing)", None)
    arch = raw.get("architecture", "standard")  # SAELens's default for configs that predate the key
    if arch not in SAE_CLASSES:
        raise _cfg_error(folder, "architecture", f"one of {list(SAE_CLASSES)}", arch)
    meta = dict(raw.get("metadata") or raw.get("meta") or {})
    hook = meta.pop("hook_name", None) or raw.get("hook_name") or raw.get("hook_point")
    k = raw.get("k")
    if k is None and arch == "topk":
        k = (raw.get("activation_fn_kwargs") or {}).get("k")  # SAELens < 6
        if k is None:
            raise _cfg_error(folder, "k", "the number of latents a top-k SAE keeps (the key is missing)", None)
    norm = raw.get("normalize_activations", "none")
    if norm is None or isinstance(norm, bool):  # older SAELens: a bool (True = the April-update scaling)
        norm = "expected_average_only_in" if norm else "none"
    dtype = str(raw.get("dtype", "float32")).removeprefix("torch.")
    try:
        return SAEConfig(
            architecture=arch, d_in=raw["d_in"], d_sae=raw["d_sae"], hook_name=hook,
            apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True), normalize_activations=norm,
            reshape_activations=raw.get("reshape_activations", "none"), k=k,
            rescale_acts_by_decoder_norm=raw.get("rescale_acts_by_decoder_norm", False),
            positions=raw.get("positions", "all"), dtype=dtype, metadata=meta)
    except (TypeError, ValueError) as err:  # the config's own check names the field
        raise ValueError(f"{folder / CFG_FILE}: {err}") from None


def load_saelens(folder: PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE saved in SAELens's format (by SAELens or by :func:`save_saelens`).

    Args:
        folder: The folder holding ``cfg.json`` and ``sae_weights.safetensors``.
        device: Where to put the weights.

    Returns:
        The SAE (:class:`~vit_patching.sae.saes.SAE` of the stored architecture), in eval mode.

    Raises:
        ValueError: naming the file and field when a file is missing or unreadable, a config field is missing or
            invalid (unknown ``architecture``, ...), or a tensor is missing, unexpected or of the wrong shape.

    Example:
        >>> sae = load_saelens("saes/blocks.3.hook_resid_post")
        >>> sae.cfg.hook_name
        'blocks.3.hook_resid_post'
    """
    folder = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"folder: expected an SAELens folder with {CFG_FILE} and {WEIGHTS_FILE}, "
                             f"got {str(folder)!r} without {name}")
    cfg = _read_cfg(folder)
    try:
        tensors = load_file(folder / WEIGHTS_FILE)
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{folder / WEIGHTS_FILE}: expected a safetensors file, got {err}") from None
    sae = SAE_CLASSES[cfg.architecture](cfg)
    expected = sae.param_shapes()
    for key, shape in expected.items():
        if key not in tensors:
            raise ValueError(f"{folder / WEIGHTS_FILE}: {key}: expected a tensor of shape {list(shape)} for a "
                             f"{cfg.architecture!r} SAE, got none (tensors: {sorted(tensors)})")
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{folder / WEIGHTS_FILE}: {key}: expected shape {list(shape)} (d_in={cfg.d_in}, "
                             f"d_sae={cfg.d_sae}), got {list(tensors[key].shape)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE}: expected only {sorted(expected)} for a {cfg.architecture!r} "
                         f"SAE, got also {unexpected}")
    with torch.no_grad():
        for key in expected:
            getattr(sae, key).copy_(tensors[key].to(DTYPES[cfg.dtype]))
    return sae.to(device).eval()


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` dictionary :func:`save_saelens` writes for ``sae`` (SAELens 6 layout).

    Example:
        >>> saelens_cfg(sae)["metadata"]["hook_name"]
        'blocks.3.hook_resid_post'
    """
    cfg = sae.cfg
    out: dict[str, Any] = {
        "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype,
        "device": "cpu", "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations, "reshape_activations": cfg.reshape_activations,
    }
    if cfg.k is not None:
        out["k"] = cfg.k
    if cfg.rescale_acts_by_decoder_norm:  # written only when on: older SAELens configs have no such key
        out["rescale_acts_by_decoder_norm"] = True
    out["positions"] = cfg.positions  # ours; SAELens ignores keys its config class does not have
    out["metadata"] = {**cfg.metadata, "hook_name": cfg.hook_name,
                       "sae_lens_version": cfg.metadata.get("sae_lens_version", LAYOUT_VERSION)}
    return out


def save_saelens(sae: nn.Module, folder: PathLike) -> Path:
    """Write ``sae`` in SAELens's format: ``folder/cfg.json`` and ``folder/sae_weights.safetensors``.

    Args:
        sae: One of this project's SAEs (:func:`~vit_patching.sae.saes.make_sae`, :func:`load_saelens`).
        folder: Created if missing; files already there are replaced, each atomically.

    Returns:
        The folder.

    Example:
        >>> save_saelens(sae, "my_sae")
        PosixPath('my_sae')
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"sae: expected a vit_patching SAE (make_sae / load_saelens), got {type(sae).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder: expected a folder (created if missing), got the file {str(folder)!r}")
    tensors = {k: getattr(sae, k).detach().cpu().contiguous() for k in sae.param_shapes()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(tensors))
    atomic_write_text(folder / CFG_FILE, json.dumps(saelens_cfg(sae), indent=2) + "\n")
    return folder

"""``batch_size="auto"``: rows per forward pass from a memory budget and an estimate of activation bytes per row.

The estimate counts the tensors alive at the peak of one transformer block in a no-grad forward (everything before
the block is freed, the patching engine keeps only the readout): the residual in and out, the layer-norm output,
the fused qkv output and its per-head copies, the attention output and projection (``11 * n_pos * d_model``), the
MLP hidden layer before and after the activation (``2 * n_pos * d_mlp``) and, in case attention is not fused,
the scores and the softmax (``2 * n_heads * n_pos**2``), times the element size, times :data:`SAFETY` for allocator
slack. ``scripts/measure_batch_memory.py`` checks it against the measured peak RSS growth on CPU.

The budget is ``max_memory`` bytes when given, else :data:`DEFAULT_FRACTION` of the memory free now (CUDA:
``torch.cuda.mem_get_info``; CPU: psutil if installed, else ``MemAvailable`` of ``/proc/meminfo``). Model weights
are already loaded, so they are not in the free memory and are not subtracted again.

Experiments hold more than one block's activations, and say so through two numbers (in elements, counted from
:func:`hook_shape` by the experiment itself, since only it knows what it keeps): ``held_elements``, the caches it
allocates once for the whole call (e.g. the target run's residual entering every block), subtracted from the
budget; and ``extra_elements_per_row``, what it keeps per row of a chunk besides the block (the gathered prefix,
the values written, path patching's recorded receiver inputs ...), added to the per-row estimate. Every
experiment resolves ``batch_size="auto"`` once, before its caches are computed, with
:func:`resolve_batch_size`.

Example:
    >>> from vit_patching.zoo import load_model
    >>> auto_batch_size(load_model("toy-shapes"), max_memory=64 * 2**20)
    1024
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from vit_patching.checks import check_batch_size, check_fraction, check_positive_int
from vit_patching.hook_names import site_suffix

if TYPE_CHECKING:
    from vit_patching.model import HookedViT, ViTConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FRACTION", "MAX_ROWS", "SAFETY", "activation_bytes_per_row", "auto_batch_size", "batch_size_for_budget",
    "check_memory_args", "free_memory", "hook_elements", "hook_shape", "peak_memory", "reset_peak_memory",
    "resolve_batch_size",
]

#: Share of the free memory used when no ``max_memory`` is given (room for the caller's other tensors).
DEFAULT_FRACTION = 0.5
#: Multiplier on the counted tensors for allocator slack and temporaries not counted.
SAFETY = 1.5
#: Upper bound on the chosen rows: larger forwards no longer get faster and make progress bars coarse.
MAX_ROWS = 4096


def activation_bytes_per_row(cfg: "ViTConfig", dtype: torch.dtype = torch.float32, n_pos: int | None = None) -> int:
    """Estimated peak activation bytes of one row (one image) in a no-grad forward (see the module docstring).

    Example:
        >>> from vit_patching.model import ViTConfig
        >>> cfg = ViTConfig(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096, n_classes=1000,
        ...                       img_size=(224, 224), patch_size=(16, 16))
        >>> activation_bytes_per_row(cfg) // 2**20     # ViT-L/16 at 224, fp32: MiB per image
        20
    """
    n = cfg.n_pos if n_pos is None else check_positive_int(n_pos, "n_pos")
    elements = n * (11 * cfg.d_model + 2 * cfg.d_mlp) + 2 * cfg.n_heads * n * n
    return int(SAFETY * elements * torch.empty((), dtype=dtype).element_size())


# Per-row activation shape by hook suffix (after ``blocks.{l}.``); "model"/"mlp"/"head" stand for d_model, d_mlp,
# d_head, "pos" for the token count, "heads" for n_heads.
_SHAPES: dict[str, tuple[str, ...]] = {
    **{s: ("pos", "model") for s in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                     "hook_mlp_out", "hook_mlp_in", "hook_embed", "hook_pos_embed")},
    **{s: ("pos", "mlp") for s in ("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear", "mlp.hook_mid")},
    **{s: ("pos", "heads", "head") for s in ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
                                             "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_z_pre_norm")},
    **{s: ("pos", "heads", "model") for s in ("attn.hook_result", "hook_q_input", "hook_k_input", "hook_v_input",
                                              "hook_attn_in")},
    **{s: ("heads", "pos", "pos") for s in ("attn.hook_attn_scores", "attn.hook_pattern")},
}


def hook_shape(cfg: "ViTConfig", hook: str, n_pos: int | None = None) -> tuple[int, ...]:
    """Shape of one row (one image) of a hook's activation, without the batch axis.

    Example:
        >>> from vit_patching.model import ViTConfig
        >>> cfg = ViTConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=128, n_classes=10,
        ...                 img_size=(32, 32), patch_size=(8, 8))
        >>> hook_shape(cfg, "blocks.0.hook_q_input"), hook_shape(cfg, "blocks.1.attn.hook_pattern")
        ((17, 2, 32), (2, 17, 17))
    """
    dims = _SHAPES.get(site_suffix(hook))
    if dims is None:
        raise ValueError(f"hook: expected a hook with a known per-row shape ({sorted(_SHAPES)}), got {hook!r}")
    n = cfg.n_pos if n_pos is None else n_pos
    size = {"pos": n, "model": cfg.d_model, "mlp": cfg.d_mlp, "head": cfg.d_head, "heads": cfg.n_heads}
    return tuple(size[d] for d in dims)


def hook_elements(cfg: "ViTConfig", hook: str, n_pos: int | None = None, index: tuple[Any, ...] = ()) -> int:
    """Elements of one row of ``hook``, or of the slice a site takes (``index``: one entry per leading axis,
    ``None`` = the whole axis, anything else = one index, as :meth:`Site.index` gives it).

    Example:
        >>> hook_elements(cfg, "blocks.0.hook_resid_pre"), hook_elements(cfg, "blocks.0.hook_resid_pre", index=(3,))
        (544, 32)
    """
    shape = hook_shape(cfg, hook, n_pos)
    kept = [d for k, d in enumerate(shape) if k >= len(index) or index[k] is None]
    return math.prod(kept)


def free_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free now on ``device`` (CUDA: ``mem_get_info``; CPU: psutil, else ``/proc/meminfo``).

    Example:
        >>> free_memory("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("free_memory: neither psutil nor /proc/meminfo is available; pass max_memory")


def reset_peak_memory(device: torch.device | str = "cpu") -> bool:
    """Start a new peak for :func:`peak_memory` (CUDA: the allocator's peak; CPU: the process's peak RSS, where
    Linux lets it be reset). Returns whether the peak was reset (else it is the process's peak so far).

    Example:
        >>> isinstance(reset_peak_memory("cpu"), bool)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(device: torch.device | str = "cpu") -> int:
    """Peak bytes since the last :func:`reset_peak_memory` (or the process start): CUDA the allocator's peak,
    CPU the peak resident set (``VmHWM`` of ``/proc/self/status``, else ``ru_maxrss``). For benchmarks.

    Example:
        >>> peak_memory("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def auto_batch_size(
    model: "HookedViT",
    *,
    max_memory: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    n_pos: int | None = None,
    max_rows: int = MAX_ROWS,
    held_elements: int = 0,
    extra_elements_per_row: int = 0,
) -> int:
    """Rows per forward pass that fit ``max_memory`` bytes (default ``fraction`` of the free memory).

    Args:
        model: the HookedViT (its config, dtype and device decide the estimate and where free memory is read).
        max_memory: budget in bytes of what the call allocates (its caches and one chunk's activations);
            ``None`` = ``fraction`` x free memory of the model's device.
        fraction: share of the free memory used when ``max_memory`` is ``None``.
        n_pos: tokens per row (default the model's; differs for dynamic image sizes).
        max_rows: upper bound on the result.
        held_elements: activation elements the experiment caches once for the whole call (subtracted from the
            budget; see the module docstring).
        extra_elements_per_row: elements it keeps per row besides one block's activations.

    Returns:
        ``min(max_rows, (budget - held) // per_row)``, at least 1 (with a logged warning when even the caches do
        not fit the budget).

    Example:
        >>> auto_batch_size(model, max_memory=2**30)          # doctest: +SKIP
        512
    """
    max_rows = check_batch_size(max_rows, "max_rows")
    if max_memory is None:
        budget = check_fraction(fraction, "fraction", open_low=True) * free_memory(model.device)
    else:
        budget = check_positive_int(max_memory, "max_memory")
    return batch_size_for_budget(model.cfg, int(budget), model.dtype, n_pos=n_pos, max_rows=max_rows,
                                 held_elements=held_elements, extra_elements_per_row=extra_elements_per_row)


def batch_size_for_budget(
    cfg: "ViTConfig",
    budget: int,
    dtype: torch.dtype = torch.float32,
    *,
    n_pos: int | None = None,
    max_rows: int = MAX_ROWS,
    held_elements: int = 0,
    extra_elements_per_row: int = 0,
) -> int:
    """Rows per forward for a model config and a budget in bytes (no model needed; arguments as
    :func:`auto_batch_size`).

    Example:
        >>> batch_size_for_budget(model.cfg, 2**30) >= 1     # doctest: +SKIP
        True
    """
    size = torch.empty((), dtype=dtype).element_size()
    per_row = activation_bytes_per_row(cfg, dtype, n_pos) + int(extra_elements_per_row) * size
    left = check_positive_int(budget, "budget") - int(held_elements) * size
    if left < per_row:
        logger.warning("batch_size='auto': %d bytes of budget leave room for less than one row (%d bytes cached, "
                       "%d per row): running one row per forward", budget, int(held_elements) * size, per_row)
    return max(1, min(check_batch_size(max_rows, "max_rows"), int(left // per_row)))


def check_memory_args(batch_size: Any, max_memory: Any, name: str = "batch_size") -> Any:
    """Validate ``batch_size`` (a positive int or ``"auto"``) and ``max_memory`` (``None`` or a positive int of
    bytes) before any compute; return ``batch_size``.

    Example:
        >>> check_memory_args("auto", None), check_memory_args(8, 2**20)
        ('auto', 8)
    """
    check_batch_size(batch_size, name, allow_auto=True)
    if max_memory is not None:
        check_positive_int(max_memory, "max_memory")
    return batch_size


def resolve_batch_size(
    batch_size: Any,
    model: "HookedViT",
    *,
    max_memory: int | None = None,
    name: str = "batch_size",
    **kwargs: Any,
) -> int:
    """``batch_size`` itself if it is a positive int, :func:`auto_batch_size` for ``"auto"`` (``max_memory`` and
    ``kwargs``, e.g. ``held_elements``, passed on); else a ValueError naming ``name`` (or ``max_memory``).

    Example:
        >>> resolve_batch_size(32, model), resolve_batch_size("auto", model, max_memory=2**20) >= 1
        (32, True)
    """
    check_memory_args(batch_size, max_memory, name)
    if batch_size == "auto":
        return auto_batch_size(model, max_memory=max_memory, **kwargs)
    return batch_size

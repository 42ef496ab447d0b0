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

Example:
    >>> from vit_patching.zoo import load_model
    >>> auto_batch_size(load_model("toy-shapes"), max_memory=64 * 2**20)
    1024
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vit_patching.checks import check_batch_size, check_fraction, check_positive_int

if TYPE_CHECKING:
    from vit_patching.model import HookedViT, ViTConfig

__all__ = [
    "DEFAULT_FRACTION", "MAX_ROWS", "SAFETY", "activation_bytes_per_row", "auto_batch_size", "batch_size_for_budget",
    "free_memory",
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


def auto_batch_size(
    model: "HookedViT",
    *,
    max_memory: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    n_pos: int | None = None,
    max_rows: int = MAX_ROWS,
) -> int:
    """Rows per forward pass that fit ``max_memory`` bytes (default ``fraction`` of the free memory).

    Args:
        model: the HookedViT (its config, dtype and device decide the estimate and where free memory is read).
        max_memory: activation budget in bytes; ``None`` = ``fraction`` x free memory of the model's device.
        fraction: share of the free memory used when ``max_memory`` is ``None``.
        n_pos: tokens per row (default the model's; differs for dynamic image sizes).
        max_rows: upper bound on the result.

    Returns:
        ``min(max_rows, budget // activation_bytes_per_row)``, at least 1.

    Example:
        >>> auto_batch_size(model, max_memory=2**30)          # doctest: +SKIP
        512
    """
    max_rows = check_batch_size(max_rows, "max_rows")
    if max_memory is None:
        budget = check_fraction(fraction, "fraction", open_low=True) * free_memory(model.device)
    else:
        budget = check_positive_int(max_memory, "max_memory")
    return batch_size_for_budget(model.cfg, int(budget), model.dtype, n_pos=n_pos, max_rows=max_rows)


def batch_size_for_budget(
    cfg: "ViTConfig", budget: int, dtype: torch.dtype = torch.float32, *, n_pos: int | None = None, max_rows: int = MAX_ROWS
) -> int:
    """Rows per forward for a model config and an activation budget in bytes (no model needed).

    Example:
        >>> batch_size_for_budget(model.cfg, 2**30) >= 1     # doctest: +SKIP
        True
    """
    per_row = activation_bytes_per_row(cfg, dtype, n_pos)
    return max(1, min(check_batch_size(max_rows, "max_rows"), int(check_positive_int(budget, "budget") // per_row)))


def resolve_batch_size(batch_size: Any, model: "HookedViT", **kwargs: Any) -> int:
    """``batch_size`` itself if it is a positive int, :func:`auto_batch_size` for ``"auto"``; else a ValueError.

    Example:
        >>> resolve_batch_size(32, model), resolve_batch_size("auto", model, max_memory=2**20) >= 1
        (32, True)
    """
    if batch_size == "auto":
        return auto_batch_size(model, **kwargs)
    return check_batch_size(batch_size)

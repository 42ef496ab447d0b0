"""Generic machinery for sharded, resumable runs: chunks, fingerprints, atomic writes, rank/world from the env.

The work is cut into fixed chunks of consecutive items; rank ``r`` of ``w`` takes chunks ``r, r + w, ...``.
Because chunks do not depend on ``w``, a sharded run computes exactly the same chunks as one process. Each chunk
file carries a fingerprint (model weights + settings + chunk inputs); a file whose fingerprint does not match, or
that cannot be read, is recomputed. The same scheme is used by :mod:`vit_patching.attribution.benchmark`
(integrator's note: that module can import these helpers instead of its private copies).

Example:
    >>> chunk_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    >>> dist_rank_world({"RANK": "1", "WORLD_SIZE": "2"})
    (1, 2)
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vit_patching.checks import check_positive_int
from vit_patching.files import atomic_write_bytes  # re-exported: the runs write chunks through it

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["atomic_write_bytes", "chunk_ranges", "digest", "dist_rank_world", "model_digest"]


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(n)`` in chunks of ``chunk_size``.

    Example:
        >>> chunk_ranges(3, 5)
        [(0, 3)]
    """
    check_positive_int(chunk_size, "chunk_size")
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def digest(*parts: Any) -> str:
    """A short blake2b hex digest of tensors (dtype, shape and bytes), bytes and JSON-able values.

    Example:
        >>> digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})
        True
    """
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, Tensor):
            t = p.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            # reshape: a 0-dim tensor (a readout's logit_scale) cannot be viewed as bytes; same bytes otherwise
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(p, (bytes, bytearray)):
            h.update(bytes(p))
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_digest(model: "HookedViT") -> str:
    """A digest of the model's weights and config: saved chunks of another model never validate.

    Example:
        >>> len(model_digest(model))
        24
    """
    return digest(*[v for _, v in sorted(model.state_dict().items())], repr(model.cfg))


def dist_rank_world(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from ``torchrun`` / ``accelerate launch`` (``RANK`` / ``WORLD_SIZE``), else ``(0, 1)``.

    Raises:
        ValueError: for non-integer values or a rank outside ``[0, world_size)``.

    Example:
        >>> dist_rank_world({})
        (0, 1)
    """
    env = os.environ if env is None else env
    try:
        rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE: expected integers, got {env.get('RANK')!r}, {env.get('WORLD_SIZE')!r}") from None
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"RANK, WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got {rank}, {world}")
    return rank, world

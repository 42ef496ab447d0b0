"""Argument checks shared by every experiment, attribution method, metric and the CLI (captum's
``attr/_utils/common.py`` in spirit): one place, one error style.

Every check raises ``ValueError`` (``TypeError`` for a wrong kind of object) with a message of the form
``"{argument}: expected {what}, got {value!r}"``, and returns the checked value so callers can write
``batch_size = check_batch_size(batch_size)``. The check that an argument is a :class:`HookedViT` that outputs class scores
lives beside the class (:func:`vit_patching.model.check_scores`).

Example:
    >>> check_choice("logit", ("logit", "prob"), "readout")
    'logit'
    >>> check_batch_size(True)
    Traceback (most recent call last):
    ...
    ValueError: batch_size: expected a positive int (rows per forward pass), got True
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NonFiniteError", "OneLineArgumentParser", "check_finite", "check_finite_number", "check_bool", "check_batch_size",
    "check_block_size", "check_choice", "check_coalition_settings", "check_coalitions", "check_fraction", "check_indices",
    "check_names",
    "check_positive_int", "check_positive_number", "check_seed", "check_window", "is_int",
]


def is_int(value: Any) -> bool:
    """True for a Python int that is not a bool (``True`` is an int to Python, never to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


def check_names(value: str | Sequence[str], choices: Sequence[str], name: str) -> list[str]:
    """A non-empty list of distinct names from ``choices`` (a single string is one name)."""
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"{name}: expected at least one of {list(choices)}, got {value!r}")
    for n in names:
        check_choice(n, choices, name)
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: expected distinct names, got {names}")
    return names


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is a bool (not 0/1 or a string), else raise a TypeError naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` if it is a positive int, else raise a ValueError naming ``name``."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def check_batch_size(value: Any, name: str = "batch_size", *, allow_auto: bool = False) -> Any:
    """Return ``value`` if it is a positive int number of rows per forward pass (or ``"auto"`` when
    ``allow_auto``: rows chosen from a memory budget, see :mod:`vit_patching.patching.memory`)."""
    if allow_auto and isinstance(value, str) and value == "auto":
        return value
    if not is_int(value) or value < 1:
        extra = " or 'auto'" if allow_auto else ""
        raise ValueError(f"{name}: expected a positive int (rows per forward pass){extra}, got {value!r}")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """Return ``value`` if it is a non-negative int seed."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {value!r}")
    return value


def check_positive_number(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return float(value)


def check_finite_number(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number (any sign), else raise a ValueError naming ``name``.

    Example:
        >>> check_finite_number(float("nan"), "threshold")
        Traceback (most recent call last):
        ...
        ValueError: threshold: expected a finite number, got nan
    """
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def check_fraction(value: Any, name: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """Return ``value`` as a float if it lies in [0, 1] (ends excluded when asked), else raise a ValueError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    lo_ok = v > 0 if open_low else v >= 0
    hi_ok = v < 1 if open_high else v <= 1
    if not (ok and lo_ok and hi_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return v


def check_indices(values: int | Sequence[int] | None, n: int, name: str, what: str) -> list[int]:
    """Checked, distinct indices into ``range(n)`` (all of them when ``values`` is None).

    Example:
        >>> check_indices(None, 3, "layers", "layer"), check_indices(2, 3, "layers", "layer")
        ([0, 1, 2], [2])
    """
    if values is None:
        return list(range(n))
    out = [values] if isinstance(values, int) and not isinstance(values, bool) else values
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise ValueError(f"{name}: expected {what} indices in [0, {n}), got {values!r}")
    out = list(out)
    if not out:
        raise ValueError(f"{name}: expected at least one {what} index in [0, {n}), got {values!r}")
    for v in out:
        if not is_int(v) or not 0 <= v < n:
            raise ValueError(f"{name}: expected {what} indices in [0, {n}), got {v!r} in {values!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct indices, got {out}")
    return out


def check_window(window: Any, n_layers: int, name: str = "window") -> tuple[int, int]:
    """Validate a layer window ``(start, end)`` with ``0 <= start < end <= n_layers``; return it as ints.

    Example:
        >>> check_window([1, 3], 4)
        (1, 3)
    """
    if not isinstance(window, (tuple, list)) or len(window) != 2 or not all(is_int(v) for v in window):
        raise ValueError(f"{name}: expected a pair of ints (start, end), got {window!r}")
    start, end = int(window[0]), int(window[1])
    if not 0 <= start < end <= n_layers:
        what = "empty" if start == end else "reversed" if end < start else "out of range"
        raise ValueError(
            f"{name}: expected 0 <= start < end <= n_layers = {n_layers} (layers [start, end) are patched), "
            f"got {window!r} ({what})"
        )
    return start, end


def check_coalitions(value: Any, name: str = "coalitions") -> int:
    """0 (single-patch CAAP) or an even number >= 4 of antithetic permutations for coalition CAAP.

    Coalition CAAP samples permutations in antithetic pairs (a permutation and its reverse), so the count is even;
    its standard error is the spread over the pairs, which needs two pairs at least (four permutations).

    Example:
        >>> check_coalitions(8), check_coalitions(0)
        (8, 0)
        >>> check_coalitions(3)
        Traceback (most recent call last):
        ...
        ValueError: coalitions: expected 0 (single-patch CAAP) or an even number >= 4 of permutations (antithetic pairs; the standard error needs two pairs), got 3
    """
    if not is_int(value) or value < 0 or value in (1, 2) or value % 2:
        raise ValueError(f"{name}: expected 0 (single-patch CAAP) or an even number >= 4 of permutations (antithetic "
                         f"pairs; the standard error needs two pairs), got {value!r}")
    return value


def check_coalition_settings(
    coalitions: Any, groups: Any, seed: Any,
    names: tuple[str, str, str] = ("coalitions", "coalition_groups", "coalition_seed"),
) -> None:
    """Coalition CAAP's three settings, as a run configuration or the CLI takes them (``names`` in that order).

    ``groups`` (k x k patch blocks as players) and ``seed`` only mean something with ``coalitions`` > 0, so a
    changed one without it is refused rather than silently ignored.

    Example:
        >>> check_coalition_settings(8, 2, 0)
        >>> check_coalition_settings(0, 2, 0)
        Traceback (most recent call last):
        ...
        ValueError: coalition_groups/coalition_seed: they set coalition CAAP; add coalitions N (N >= 4)
    """
    check_coalitions(coalitions, names[0])
    check_positive_int(groups, names[1])
    check_seed(seed, names[2])
    if not coalitions and (groups != 1 or seed != 0):
        raise ValueError(f"{names[1]}/{names[2]}: they set coalition CAAP; add {names[0]} N (N >= 4)")


def check_block_size(value: Any, grid: Sequence[int], name: str = "groups") -> int:
    """A positive int ``k`` that divides both sides of the patch grid ``grid`` (k x k blocks of patches tile it).

    Example:
        >>> check_block_size(2, (8, 8))
        2
        >>> check_block_size(3, (8, 8))
        Traceback (most recent call last):
        ...
        ValueError: groups: expected a block side that divides the 8x8 patch grid (1, 2, 4, 8), got 3
    """
    gh, gw = (int(g) for g in grid)
    divisors = [k for k in range(1, min(gh, gw) + 1) if gh % k == 0 and gw % k == 0]
    if not is_int(value) or value not in divisors:
        raise ValueError(f"{name}: expected a block side that divides the {gh}x{gw} patch grid "
                         f"({', '.join(map(str, divisors))}), got {value!r}")
    return value


class NonFiniteError(ValueError):
    """A model output or a map holds NaN or infinity.

    Attributes:
        what: What was non-finite (``"logits"``, ``"CAAP map"``, ...).
        indices: The batch rows (images) that hold a non-finite value, in order.
    """

    def __init__(self, what: str, indices: Sequence[int], message: str):
        super().__init__(message)
        self.what = what
        self.indices = list(indices)


def check_finite(value: Any, what: str) -> Any:
    """Return the tensor ``value`` if every entry is finite, else raise :class:`NonFiniteError` naming ``what``
    and the batch rows (first axis) that hold NaN or infinity.

    A NaN in the weights or the inputs propagates silently through every experiment; results read from such a
    run ("class 0 with probability nan") are never meaningful, so they are refused where they are produced.

    Example:
        >>> import torch
        >>> check_finite(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "logits")
        Traceback (most recent call last):
        ...
        vit_patching.checks.NonFiniteError: logits: expected finite values, got NaN or infinity in batch row(s) [0]
    """
    import torch  # local: the other checks are plain Python and the CLI parses arguments before importing torch

    if value.device.type == "meta":  # meta tensors hold no values
        return value
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return value
    rows = (~finite).reshape(finite.shape[0], -1).any(dim=1) if finite.ndim else (~finite).reshape(1)
    indices = [int(i) for i in torch.nonzero(rows).flatten()]
    raise NonFiniteError(what, indices, f"{what}: expected finite values, got NaN or infinity in batch row(s) {indices}")


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line, ``prog: error: message``, exit status 2, no usage block.

    The command-line tools' user errors are one line each; argparse's own (a bad value, a missing option) would
    print the whole usage block first. ``--help`` still prints the usage. Sub-command parsers made with
    ``add_subparsers`` are of this class too (argparse uses the parent's class).

    Example:
        >>> OneLineArgumentParser(prog="tool").parse_args(["--bogus"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """

    def error(self, message: str):  # argparse's hook for every parsing error
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")

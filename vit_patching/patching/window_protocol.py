"""A window-selection protocol that holds on new images: select on one split, confirm on another.

:func:`~vit_patching.patching.windows.select_window` recommends the best *mean* window on the images it scored;
with many windows and few images that best mean is often noise (the 8-block study in ``docs/caap_defaults.md``:
four windows beat the default on the selection split, none on the confirmation split). The protocol:

1. **Selection split**: every candidate window and the default are scored on the same images; the
   ``n_candidates`` windows with the largest paired difference to the default (per image: window minus default,
   in the criterion's better direction) are kept.
2. **Confirmation split**: those candidates and the default are scored on other images; each candidate gets a
   two-sided paired t-test against the default, and the p-values are Holm-corrected for the number of candidates
   compared (:func:`vit_patching.evaluation.statistics.holm`).
3. **Decision**: the candidate with the largest confirmation difference among those better than the default at
   the corrected level ``alpha``; if none is, the default stays.

:func:`decide_window` runs steps 1-3 on per-image scores (any source); :func:`confirm_window` scores the splits
with ``select_window`` and calls it.

Example:
    >>> sel = {(0, 2): [0.1, 0.2, 0.3, 0.2], (1, 2): [0.5, 0.6, 0.7, 0.6]}
    >>> conf = {(0, 2): [0.2, 0.1, 0.3, 0.2], (1, 2): [0.6, 0.5, 0.8, 0.6]}
    >>> decide_window(sel, conf, default=(0, 2)).window
    (1, 2)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jaxtyping import Float, Int, Shaped
from torch import Tensor

from vit_patching.checks import check_choice, check_fraction, check_positive_int, check_window
from vit_patching.evaluation.statistics import holm, paired_ci, paired_t_test
from vit_patching.model import HookedViT

from .caap import default_window
from .windows import CRITERIA, all_windows, select_window

__all__ = ["WindowDecision", "confirm_window", "decide_window"]

Window = tuple[int, int]


def _label(w: Window) -> str:
    return f"[{w[0]}, {w[1]})"


@dataclass
class WindowDecision:
    """The protocol's decision and its evidence.

    Attributes:
        window: The window to use (the default when none is confirmed better).
        default: The default window compared against.
        better: Whether ``window`` is confirmed better than the default.
        diff, diff_ci: Paired difference ``window - default`` on the confirmation split (in the criterion's
            units, sign as measured) and its half-width at ``1 - alpha`` (NaN when none is better).
        p_holm: Holm-corrected p-value of that difference (NaN when none is better).
        candidates: The windows carried from the selection to the confirmation split, best first.
        evidence: One row per candidate: ``window``, ``selection_diff``, ``selection_ci``, ``diff``, ``diff_ci``,
            ``p``, ``p_holm``, ``n``, ``better``.
        message: The decision in words.
        settings: ``criterion``, ``higher_is_better``, ``alpha``, ``n_candidates``, split sizes.
        selection, confirmation: The :class:`~vit_patching.patching.windows.WindowSelection` of each split
            (set by :func:`confirm_window`, for tables and figures; ``None`` from :func:`decide_window`).
    """

    window: Window
    default: Window
    better: bool
    diff: float
    diff_ci: float
    p_holm: float
    candidates: list[Window]
    evidence: list[dict[str, Any]]
    message: str
    settings: dict[str, Any] = field(default_factory=dict)
    selection: Any = None
    confirmation: Any = None

    def to_dataframe(self):
        """The evidence as a ``pandas.DataFrame`` (one row per candidate)."""
        import pandas as pd

        return pd.DataFrame(self.evidence)


def _check_scores(scores: Any, name: str) -> dict[Window, list[float]]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(f"{name}: expected a non-empty mapping {{(start, end): per-image scores}}, got {type(scores).__name__}")
    out = {}
    lengths = set()
    for w, v in scores.items():
        if not (isinstance(w, tuple) and len(w) == 2):
            raise ValueError(f"{name}: expected (start, end) window keys, got {w!r}")
        vals = [float(x) for x in v]
        lengths.add(len(vals))
        out[(int(w[0]), int(w[1]))] = vals
    if len(lengths) != 1:
        raise ValueError(f"{name}: expected the same images (as many scores) for every window, got lengths {sorted(lengths)}")
    return out


def decide_window(
    selection: Mapping[Window, Sequence[float]],
    confirmation: Mapping[Window, Sequence[float]],
    default: Window,
    *,
    n_candidates: int = 3,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    criterion: str = "score",
) -> WindowDecision:
    """Select candidate windows on one split and confirm them against the default on another (Holm-corrected).

    Args:
        selection: Per-image scores of every window on the selection split ``{(start, end): [score per image]}``
            (the same images, in the same order, for every window); must hold ``default``.
        confirmation: The same on the confirmation split; must hold ``default`` and the candidates chosen.
        default: The window to beat.
        n_candidates: Windows carried to the confirmation split (the Holm family size).
        alpha: Family-wise error rate of the confirmation tests.
        higher_is_better: Whether a larger score is better (``False`` for deletion AUC).
        criterion: Name of the score, for the message.

    Returns:
        A :class:`WindowDecision`.

    Raises:
        ValueError: A split without the default or a candidate, unequal image counts, a bad ``alpha`` or
            ``n_candidates``.

    Example:
        >>> same = {(0, 2): [0.1, 0.2, 0.3], (1, 2): [0.1, 0.2, 0.3]}
        >>> decide_window(same, same, default=(0, 2)).message
        'no window is better than the default [0, 2): keep the default (1 candidate tested on 3 confirmation images, Holm-corrected at alpha = 0.05)'
    """
    sel = _check_scores(selection, "selection")
    conf = _check_scores(confirmation, "confirmation")
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    alpha = check_fraction(alpha, "alpha", open_low=True, open_high=True)
    default = (int(default[0]), int(default[1]))
    for name, d in (("selection", sel), ("confirmation", conf)):
        if default not in d:
            raise ValueError(f"{name}: expected scores of the default window {default}, got windows {sorted(d)}")
    sign = 1.0 if higher_is_better else -1.0
    ranked = []
    for w, v in sel.items():
        if w == default:
            continue
        d, ci, _ = paired_ci(v, sel[default], 1 - alpha)
        ranked.append((sign * d if math.isfinite(d) else -math.inf, w, d, ci))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    chosen = ranked[:n_candidates]
    missing = [w for _, w, _, _ in chosen if w not in conf]
    if missing:
        raise ValueError(f"confirmation: expected scores of the candidate windows {missing}, got windows {sorted(conf)}")
    tests = [paired_t_test(conf[w], conf[default], 1 - alpha) for _, w, _, _ in chosen]
    ps = [1.0 if not math.isfinite(p) else p for _, _, p, _ in tests]
    adjusted = holm(ps) if ps else []
    evidence = []
    for (_, w, sd, sci), (d, ci, p, n), ph in zip(chosen, tests, adjusted):
        evidence.append({"window": w, "selection_diff": sd, "selection_ci": sci, "diff": d, "diff_ci": ci, "p": p,
                         "p_holm": ph, "n": n, "better": bool(ph <= alpha and sign * d > 0)})
    n_conf = len(conf[default])
    settings = {"criterion": criterion, "higher_is_better": higher_is_better, "alpha": alpha,
                "n_candidates": n_candidates, "n_selection": len(sel[default]), "n_confirmation": n_conf}
    winners = [e for e in evidence if e["better"]]
    family = f"{len(evidence)} candidate{'s' if len(evidence) != 1 else ''} tested on {n_conf} confirmation images, Holm-corrected at alpha = {alpha:g}"
    if not winners:
        return WindowDecision(default, default, False, math.nan, math.nan, math.nan, [w for _, w, _, _ in chosen],
                              evidence, f"no window is better than the default {_label(default)}: keep the default ({family})",
                              settings)
    best = max(winners, key=lambda e: sign * e["diff"])
    msg = (f"window {_label(best['window'])} is better than the default {_label(default)} by {best['diff']:+.3g} "
           f"+- {best['diff_ci']:.3g} {criterion} on the confirmation split (Holm p = {best['p_holm']:.3g}; {family})")
    return WindowDecision(best["window"], default, True, best["diff"], best["diff_ci"], best["p_holm"],
                          [w for _, w, _, _ in chosen], evidence, msg, settings)


def _per_window(sel: Any, metric: str) -> dict[Window, list[float]]:
    wide = sel.per_image.pivot_table(index="image", columns=["start", "end"], values=metric, dropna=False)
    return {(int(s), int(e)): wide[(s, e)].tolist() for s, e in wide.columns}


def confirm_window(
    model: HookedViT,
    selection_images: Float[Tensor, "batch channel height width"],
    confirmation_images: Float[Tensor, "batch2 channel height width"],
    windows: Sequence[Window] | None = None,
    *,
    default: Window | None = None,
    selection_masks: Shaped[Tensor, "batch height width"] | None = None,
    confirmation_masks: Shaped[Tensor, "batch2 height width"] | None = None,
    selection_target: int | Int[Tensor, " batch"] | None = None,
    confirmation_target: int | Int[Tensor, " batch2"] | None = None,
    criterion: str = "ins_minus_del",
    n_candidates: int = 3,
    alpha: float = 0.05,
    **select_kwargs: Any,
) -> WindowDecision:
    """Run the protocol with :func:`~vit_patching.patching.windows.select_window` on two image splits.

    Args:
        model: A HookedViT with a classification head.
        selection_images, confirmation_images: Two disjoint sets of held-out images.
        windows: Candidate windows (``None`` = all ``L (L + 1) / 2``); the default is added if missing.
        default: The window to beat (``None`` = :func:`~vit_patching.patching.caap.default_window`).
        selection_masks, confirmation_masks: Evidence masks (needed for ``criterion="pointing_game"``).
        selection_target, confirmation_target: Classes to explain (``None`` = the predictions).
        criterion: A :data:`~vit_patching.patching.windows.CRITERIA` name.
        n_candidates, alpha: As for :func:`decide_window`.
        **select_kwargs: CAAP and metric options for ``select_window`` (``neutral``, ``direction``, ``eval_kwargs``,
            ``batch_size``, ``coalitions``, ...), the same on both splits.

    Returns:
        A :class:`WindowDecision` whose ``selection`` and ``confirmation`` are the two splits'
        :class:`~vit_patching.patching.windows.WindowSelection` (every window's scores, maps and intervals).

    Example:
        >>> dec = confirm_window(model, images[:2], images[2:4], [(0, 1), (0, 2), (1, 2)], n_candidates=1,
        ...                      eval_kwargs={"step": 8})   # a 4-block model: default [0, 2)
        >>> dec.default, len(dec.evidence), dec.settings["n_confirmation"], len(dec.confirmation.table)
        ((0, 2), 1, 2, 2)
    """
    check_choice(criterion, list(CRITERIA), "criterion")
    L = model.cfg.n_layers
    default = default_window(L) if default is None else check_window(default, L, name="default")
    windows = all_windows(L) if windows is None else [check_window(w, L, name=f"windows[{k}]") for k, w in enumerate(windows)]
    if default not in windows:
        windows = [*windows, default]
    if len(windows) < 2:
        raise ValueError(f"windows: expected at least one window besides the default {default}, got {windows}")
    model.check_images(confirmation_images, "confirmation_images")
    metric, higher = CRITERIA[criterion]
    first = select_window(model, selection_images, windows, target=selection_target, masks=selection_masks,
                          criterion=criterion, **select_kwargs)
    sel = _per_window(first, metric)
    ranked = decide_window(sel, {default: sel[default], **sel}, default, n_candidates=n_candidates, alpha=alpha,
                           higher_is_better=higher, criterion=criterion).candidates
    second = select_window(model, confirmation_images, [*ranked, default], target=confirmation_target,
                           masks=confirmation_masks, criterion=criterion, **select_kwargs)
    decision = decide_window(sel, _per_window(second, metric), default, n_candidates=n_candidates, alpha=alpha,
                             higher_is_better=higher, criterion=criterion)
    decision.selection, decision.confirmation = first, second
    return decision

"""The window-selection protocol (select on one split, confirm on another, Holm-corrected) and its statistics:
known answers on synthetic scores, and one end-to-end run on the shipped toy model."""
from __future__ import annotations

import doctest
import math

import pytest
from caap_toys import tiny_images, tiny_model

from vit_patching.evaluation import statistics
from vit_patching.evaluation.statistics import holm, paired_t_test
from vit_patching.patching import window_protocol
from vit_patching.patching.window_protocol import confirm_window, decide_window

DEFAULT = (0, 2)
# Per-image noise shared by every window of a split (the image effect that pairing removes).
BASE_SEL = [0.1, 0.5, -0.2, 0.3, 0.0, 0.4, -0.1, 0.2]
BASE_CONF = [0.3, -0.1, 0.2, 0.0, 0.6, 0.1, -0.3, 0.4]
# Paired differences with mean 0.58125 and a two-sided p of 0.0333 (8 images).
DIFFS = [0.5, 1.5, 0.2, 1.1, -0.45, 0.9, 0.1, 0.8]


def shifted(base, shift, jitter=0.0):
    return [b + shift + jitter * ((-1) ** k) * (k % 3) for k, b in enumerate(base)]


def plus(base, diffs):
    return [b + d for b, d in zip(base, diffs)]


def test_holm_known_answer():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    with pytest.raises(ValueError, match="p_values: expected probabilities in \\[0, 1\\], got 1.5"):
        holm([0.1, 1.5])


def test_paired_t_test_known_answers():
    # df = 1: P(|T| < t) = 2 atan(t) / pi; diffs [1, 3]: mean 2, sd sqrt(2), t = 2.
    d, hw, p, n = paired_t_test([1.0, 3.0], [0.0, 0.0])
    assert (d, n) == (2.0, 2) and p == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, abs=1e-12)
    # df = 2: P(|T| < t) = t / sqrt(t^2 + 2); diffs [1, 2, 3]: t = 2 sqrt(3).
    assert paired_t_test([1.0, 2.0, 3.0], [0.0] * 3)[2] == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-12)
    assert paired_t_test(DIFFS, [0.0] * 8)[2] == pytest.approx(0.0333075, abs=1e-6)
    assert paired_t_test([1.0, 1.0], [1.0, 1.0])[2] == 1.0 and math.isnan(paired_t_test([1.0], [0.0])[2])


def test_a_known_better_window_is_confirmed():
    sel = {DEFAULT: BASE_SEL, (0, 1): shifted(BASE_SEL, 0.01, 0.02), (1, 2): shifted(BASE_SEL, 0.3, 0.05),
           (1, 3): shifted(BASE_SEL, -0.2, 0.05)}
    conf = {DEFAULT: BASE_CONF, (0, 1): shifted(BASE_CONF, 0.0, 0.02), (1, 2): shifted(BASE_CONF, 0.25, 0.05),
            (1, 3): shifted(BASE_CONF, -0.2, 0.05)}
    dec = decide_window(sel, conf, DEFAULT, n_candidates=2, criterion="ins_minus_del")
    assert dec.better and dec.window == (1, 2) and dec.candidates == [(1, 2), (0, 1)]
    want = [c - b for c, b in zip(conf[(1, 2)], BASE_CONF)]
    assert dec.diff == pytest.approx(sum(want) / 8, abs=1e-12) and dec.diff == pytest.approx(0.25, abs=0.02)
    assert dec.diff_ci == pytest.approx(statistics.paired_ci(conf[(1, 2)], BASE_CONF)[1], abs=1e-12)
    assert dec.message.startswith(f"window [1, 2) is better than the default [0, 2) by +{dec.diff:.3g} +- {dec.diff_ci:.3g}")
    rows = {tuple(r["window"]): r for r in dec.evidence}
    assert rows[(0, 1)]["better"] is False and rows[(1, 2)]["p_holm"] <= 0.05
    # Deletion-like scores (lower is better): negated, the same window wins with the negated difference.
    low = decide_window({k: [-x for x in v] for k, v in sel.items()}, {k: [-x for x in v] for k, v in conf.items()},
                        DEFAULT, n_candidates=2, higher_is_better=False)
    assert low.window == (1, 2) and low.better and low.diff == pytest.approx(-dec.diff, abs=1e-12)


def test_no_better_window_keeps_the_default():
    same_sel = {DEFAULT: BASE_SEL, (0, 1): BASE_SEL, (1, 2): shifted(BASE_SEL, 0.0, 0.05)}
    same_conf = {DEFAULT: BASE_CONF, (0, 1): BASE_CONF, (1, 2): shifted(BASE_CONF, 0.0, 0.05)}
    dec = decide_window(same_sel, same_conf, DEFAULT)
    assert not dec.better and dec.window == DEFAULT and math.isnan(dec.diff)
    assert dec.message.startswith("no window is better than the default [0, 2): keep the default (2 candidates")
    # Better on the selection split only (the best mean there is noise): not confirmed.
    lucky = decide_window({**same_sel, (1, 2): shifted(BASE_SEL, 0.5, 0.05)}, same_conf, DEFAULT, n_candidates=1)
    assert lucky.candidates == [(1, 2)] and not lucky.better


def test_holm_correction_counts_the_windows_compared():
    # Three candidates, each better on the confirmation split with p = 0.033: alone it passes alpha = 0.05, but
    # Holm over three gives 3 * 0.033 = 0.0999 and no window is confirmed.
    sel = {DEFAULT: BASE_SEL, **{(1, e): shifted(BASE_SEL, 0.5 + 0.1 * e) for e in (2, 3, 4)}}
    conf = {DEFAULT: BASE_CONF, **{(1, e): plus(BASE_CONF, DIFFS) for e in (2, 3, 4)}}
    one = decide_window(sel, conf, DEFAULT, n_candidates=1)
    assert one.better and one.window == (1, 4) and one.p_holm == pytest.approx(0.0333075, abs=1e-6)
    three = decide_window(sel, conf, DEFAULT, n_candidates=3)
    assert not three.better and [r["p_holm"] for r in three.evidence] == pytest.approx([0.0999226] * 3, abs=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="selection: expected scores of the default window \\(0, 2\\)"):
        decide_window({(0, 1): [1.0]}, {(0, 2): [1.0]}, DEFAULT)
    with pytest.raises(ValueError, match="confirmation: expected scores of the candidate windows \\[\\(0, 1\\)\\]"):
        decide_window({DEFAULT: [1.0, 2.0], (0, 1): [2.0, 3.0]}, {DEFAULT: [1.0]}, DEFAULT)
    with pytest.raises(ValueError, match="selection: expected the same images"):
        decide_window({DEFAULT: [1.0, 2.0], (0, 1): [2.0]}, {DEFAULT: [1.0]}, DEFAULT)
    with pytest.raises(ValueError, match="alpha"):
        decide_window({DEFAULT: [1.0], (0, 1): [1.0]}, {DEFAULT: [1.0], (0, 1): [1.0]}, DEFAULT, alpha=1.5)


def test_confirm_window_end_to_end_and_doctests():
    from vit_patching.patching.windows import select_window

    model = tiny_model(seed=1)  # 4 blocks: default window [0, 2)
    x = tiny_images(8, seed=3)
    a, b = x[:4], x[4:]
    windows = [(0, 1), (1, 2), (2, 4)]
    kw = dict(eval_kwargs={"step": 8})
    dec = confirm_window(model, a, b, windows, n_candidates=2, **kw)
    assert dec.default == (0, 2) and len(dec.candidates) == 2 and dec.settings["n_confirmation"] == 4
    # The evidence is select_window's per-image scores, paired, on each split.
    for split, images in (("selection", a), ("confirmation", b)):
        per_image = select_window(model, images, [*windows, (0, 2)], **kw).per_image
        wide = per_image.pivot_table(index="image", columns=["start", "end"], values="ins_minus_del")
        for row in dec.evidence:
            want = statistics.paired_ci(wide[row["window"]].tolist(), wide[(0, 2)].tolist(), 0.95)
            key = "selection_diff" if split == "selection" else "diff"
            assert row[key] == pytest.approx(want[0], abs=1e-12)
    result = doctest.testmod(window_protocol, extraglobs=dict(model=model, images=x),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 5
    with pytest.raises(ValueError, match="windows: expected at least one window besides the default"):
        confirm_window(model, a, b, [(0, 2)])

"""Metric curves (mean, band, AUC) and the shared colour-scale helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plot_test_helpers import traces

from vit_patching.plotting import curve_auc, diverging_coloraxis, metric_curves, symmetric_range
from vit_patching.plotting.colors import faded_colorscale, overlay_colors


def test_metric_curves_mean_band_and_auc():
    batch = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.1, 0.2], [0.3, 0.3, 0.3]])
    line = torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0])
    fig = metric_curves({"caap": batch, "line": line}, metric_name="prob", x_label="fraction kept")
    (caap,) = traces(fig, "curve", name="caap")
    mean = batch.double().mean(0).numpy()
    np.testing.assert_allclose(np.asarray(caap.y), mean)
    np.testing.assert_allclose(np.asarray(caap.x), [0.0, 0.5, 1.0])
    # Trapezoid by hand on x = 0, 0.5, 1.
    auc = 0.25 * (mean[0] + mean[1]) + 0.25 * (mean[1] + mean[2])
    assert caap.meta["auc"] == pytest.approx(auc)
    assert caap.name == f"caap (AUC {auc:.3f})"
    sem = batch.double().std(0, unbiased=True).numpy() / math.sqrt(3)
    (upper,) = traces(fig, "band", name="caap", part="upper")
    (lower,) = traces(fig, "band", name="caap", part="lower")
    np.testing.assert_allclose(np.asarray(upper.y), mean + sem)
    np.testing.assert_allclose(np.asarray(lower.y), mean - sem)
    assert lower.fill == "tonexty" and fig.data.index(upper) + 1 == fig.data.index(lower)
    (single,) = traces(fig, "curve", name="line")
    assert single.meta["auc"] == pytest.approx(0.25 * (0.25 + 0.75 + 1.0 + 1.0))  # dx = 0.25
    assert traces(fig, "band", name="line") == []
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("fraction kept", "prob")


def test_metric_curves_custom_x_std_band_and_errors():
    x = torch.tensor([0.0, 0.1, 0.4])
    y = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    fig = metric_curves({"m": y}, x, band="std", show_auc=False)
    (curve,) = traces(fig, "curve")
    np.testing.assert_allclose(np.asarray(curve.x), x.double().numpy())
    assert curve.name == "m"
    np.testing.assert_allclose(np.asarray(traces(fig, "band", part="upper")[0].y), 2.0 + y.double().std(0).numpy())
    assert curve_auc(torch.tensor([2.0, 2.0, 2.0]), x) == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"curves\['m'\]: expected 3 steps to match x, got 4"):
        metric_curves({"m": torch.rand(4)}, x)
    with pytest.raises(ValueError, match=r"curves\['m'\]: expected \[step\] or \[batch, step\], got shape \(1, 2, 3\)"):
        metric_curves({"m": torch.rand(1, 2, 3)})
    with pytest.raises(ValueError, match="curves: expected at least one curve"):
        metric_curves({})


def test_symmetric_range():
    assert symmetric_range(torch.tensor([0.5, -2.0]), np.array([1.0, math.nan])) == (-2.0, 2.0)
    assert symmetric_range(torch.tensor([3.0, 0.0]), zmid=1.0) == (-1.0, 3.0)
    assert symmetric_range(torch.zeros(3)) == (-1.0, 1.0)  # degenerate: a usable default
    assert symmetric_range(torch.tensor([math.nan])) == (-1.0, 1.0)
    axis = diverging_coloraxis(torch.tensor([[0.25, -0.75]]), title="v")
    assert (axis["cmin"], axis["cmax"], axis["colorbar"]["title"]["text"]) == (-0.75, 0.75, "v")


def test_faded_colorscale_and_overlay_colors():
    scale = faded_colorscale("RdBu", 0.6, n=5)
    alphas = [float(c.rsplit(",", 1)[1].rstrip(")")) for _, c in scale]
    assert alphas[0] == alphas[-1] == pytest.approx(0.6) and alphas[2] == 0.0
    assert alphas[1] == pytest.approx(0.6 * math.sqrt(0.5), abs=1e-4)
    assert [t for t, _ in scale] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert overlay_colors("RdBu", 0.4, over_image=True, fade=False) == ("RdBu", 0.4)
    faded, opacity = overlay_colors("RdBu", None, over_image=True, fade=True)
    assert opacity == 1.0 and faded[0][1].endswith(",0.8)")


def test_faithfulness_axis_keeps_the_empty_circuit():
    """A size of 0 (the empty circuit) is drawn: the axis is linear then, logarithmic otherwise."""
    from vit_patching.plotting.curves import faithfulness_vs_size

    with_empty = faithfulness_vs_size([0, 10, 100], [0.0, 0.5, 0.9], ablation="corrupted", metric="logit_diff")
    without = faithfulness_vs_size([1, 10, 100], [0.1, 0.5, 0.9], ablation="corrupted", metric="logit_diff")
    assert with_empty.layout.xaxis.type == "linear" and list(with_empty.data[0].x) == [0, 10, 100]
    assert without.layout.xaxis.type == "log"

"""Plotly figures, offline HTML/PNG export and HTML reports for vit_patching results.

Every figure function is pure: tensors (or numpy arrays) and labels in, a
``plotly.graph_objects.Figure`` out; nothing is shown or printed. Result objects' ``.plot()`` methods
call these. Importing this subpackage imports plotly; ``import vit_patching`` alone does not.

Example:
    >>> import torch
    >>> from vit_patching.plotting import layer_patch_grid
    >>> fig = layer_patch_grid(torch.randn(4, 1 + 7 * 7), grid_size=(7, 7), n_prefix=1, prefix_labels=["CLS"])
    >>> len(fig.layout.annotations)  # one title per layer facet
    4
"""
from vit_patching.plotting.attention import attention_figure
from vit_patching.plotting.attribution import (
    attribution_overlay,
    compare_maps,
    patch_map,
    window_heatmap,
    window_slider,
)
from vit_patching.plotting.colors import (
    DIVERGING,
    SEQUENTIAL,
    diverging_coloraxis,
    faded_colorscale,
    faded_sequential_colorscale,
    sequential_coloraxis,
    symmetric_range,
)
from vit_patching.plotting.curves import curve_auc, metric_curves
from vit_patching.plotting.export import CHROMIUM_FLAGS, find_chromium, save_html, save_png, screenshot_html
from vit_patching.plotting.grids import head_position_facets, layer_head_grid, layer_patch_grid, path_patching_heatmap
from vit_patching.plotting.report import ReportSection, render_report, write_report

__all__ = [
    "CHROMIUM_FLAGS",
    "DIVERGING",
    "SEQUENTIAL",
    "ReportSection",
    "attention_figure",
    "attribution_overlay",
    "compare_maps",
    "curve_auc",
    "diverging_coloraxis",
    "faded_colorscale",
    "faded_sequential_colorscale",
    "find_chromium",
    "head_position_facets",
    "layer_head_grid",
    "layer_patch_grid",
    "metric_curves",
    "patch_map",
    "path_patching_heatmap",
    "render_report",
    "save_html",
    "save_png",
    "screenshot_html",
    "sequential_coloraxis",
    "symmetric_range",
    "window_heatmap",
    "window_slider",
    "write_report",
]

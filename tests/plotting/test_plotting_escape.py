"""Every caller string a figure shows (titles, facet titles, axis and colour-bar titles, legend names, tick
labels, hover text, slider labels) is escaped: Plotly renders ``<a href>``, ``<b>``, ``<br>`` in text as markup."""
from __future__ import annotations

import torch

from vit_patching.plotting import (
    attribution_overlay,
    compare_maps,
    head_position_facets,
    layer_head_grid,
    layer_patch_grid,
    metric_curves,
    patch_map,
    path_patching_heatmap,
    window_heatmap,
    window_slider,
)

EVIL = '<a href="https:example.com">x</a><b>'


def _strings(obj, path=""):
    """Every string in a figure's JSON, except ``meta`` (not shown) and images' data URIs."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("meta", "source"):
                yield from _strings(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        yield path, obj


def _check(fig, min_escaped: int = 1) -> None:
    strings = list(_strings(fig.to_plotly_json()))
    raw = [(p, s) for p, s in strings if "<a" in s or "<b>" in s]
    assert not raw, raw[:5]
    assert sum("&lt;a href=&quot;https:example.com&quot;&gt;" in s for _, s in strings) >= min_escaped


def test_every_figure_function_escapes_caller_strings():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 16, 16, generator=g)
    _check(attribution_overlay(image, torch.rand(4, 4, generator=g), title=EVIL, value_label=EVIL), 3)
    _check(patch_map(torch.rand(4, 4, generator=g), title=EVIL, value_label=EVIL), 3)
    _check(compare_maps({EVIL: torch.rand(4, 4, generator=g), "b": torch.rand(4, 4, generator=g)}, image, title=EVIL,
                        value_label=EVIL), 4)
    _check(window_heatmap(torch.rand(3, 3, generator=g), metric_name=EVIL, start_labels=[EVIL, "1", "2"],
                          end_labels=["1", "2", EVIL], title=EVIL, highlight=(0, 2)), 5)
    _check(window_slider([torch.rand(4, 4, generator=g), torch.rand(4, 4, generator=g)], [EVIL, "b"], title=EVIL,
                         value_label=EVIL), 4)
    _check(metric_curves({EVIL: torch.rand(5, 6, generator=g)}, metric_name=EVIL, x_label=EVIL, title=EVIL), 4)
    _check(layer_patch_grid(torch.rand(2, 1 + 4, generator=g), grid_size=(2, 2), n_prefix=1, prefix_labels=[EVIL],
                            layer_labels=[EVIL, "l1"], title=EVIL, value_label=EVIL), 5)
    _check(head_position_facets(torch.rand(1, 5, 2, generator=g), grid_size=(2, 2), n_prefix=1, prefix_labels=[EVIL],
                                layer_labels=[EVIL], head_labels=["h0", EVIL], title=EVIL, value_label=EVIL), 5)
    _check(layer_head_grid(torch.rand(2, 2, generator=g), layer_labels=[EVIL, "L1"], title=EVIL, value_label=EVIL), 4)
    _check(path_patching_heatmap(torch.rand(1, 2, generator=g), [EVIL], ["r0", EVIL], title=EVIL, value_label=EVIL), 4)


def test_hover_templates_never_interpolate_caller_strings():
    fig = metric_curves({"%{y}": torch.rand(6)}, metric_name="%{x}")
    template = fig.data[-1].hovertemplate
    assert template.count("%{") == 2  # only the code's own x and y placeholders

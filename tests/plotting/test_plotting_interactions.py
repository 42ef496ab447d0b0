"""The interaction figure: the strongest pairs as lines, coloured as the package's RdBu maps (blue positive)."""
import numpy as np
import plotly.colors
import torch

from vit_patching.plotting.interactions import interaction_figure


def test_pairs_are_drawn_strongest_first_in_the_maps_colours():
    matrix = torch.tensor([[0.0, 2.0, -1.0], [2.0, 0.0, 0.5], [-1.0, 0.5, 0.0]])
    fig = interaction_figure(torch.rand(3, 16, 16), (2, 2), torch.tensor([0, 1, 3]), matrix, n_pairs=2,
                             title="<b>x</b>")
    lines = [t for t in fig.data if t.type == "scatter" and t.mode == "lines" and not t.showlegend]
    assert [t.name for t in lines] == ["0-1", "0-3"]                  # |2| then |-1|; the 0.5 pair is left out
    rdbu = plotly.colors.get_colorscale("RdBu")
    assert lines[0].line.color == rdbu[-1][1] and lines[1].line.color == rdbu[0][1]   # positive blue, negative red
    assert lines[0].line.width > lines[1].line.width
    legend = {t.name: t.line.color for t in fig.data if t.type == "scatter" and t.showlegend}
    assert legend and all(("positive" in k) == (v == rdbu[-1][1]) for k, v in legend.items())
    assert fig.layout.title.text == "&lt;b&gt;x&lt;/b&gt;"
    # patch 0 is cell (0, 0) and patch 3 cell (1, 1) of the 2x2 grid over 16 px: centres 4.5 and 12.5 (pixel units)
    assert np.allclose([lines[1].x[0], lines[1].y[0], lines[1].x[1], lines[1].y[1]], [4.5, 4.5, 12.5, 12.5])

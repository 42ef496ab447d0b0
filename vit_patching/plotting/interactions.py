"""The strongest pairwise patch interactions drawn over the image: a line between the two patches' centres,
its width and colour by the interaction's value.

Example:
    >>> import torch
    >>> fig = interaction_figure(torch.rand(3, 32, 32), (4, 4), [0, 5, 10], torch.tensor([[0, 1.0, -0.5], [1.0, 0, 0.2], [-0.5, 0.2, 0]]))
    >>> [t.type for t in fig.data].count("scatter")   # 3 pairs, the patch markers, 2 legend entries
    6
"""
from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from jaxtyping import Float, Int

from vit_patching.plotting._common import ArrayLike, esc, fmt, hover_safe, to_numpy, underlay_rgb
from vit_patching.plotting._traces import image_trace

__all__ = ["interaction_figure"]


# The ends of Plotly's RdBu, as every map figure of the package draws them: blue = positive, red = negative.
POSITIVE, NEGATIVE = "rgb(5,48,97)", "rgb(103,0,31)"


def interaction_figure(
    image: Float[ArrayLike, "channel height width"],
    grid_size: tuple[int, int],
    patches: Sequence[int] | Int[ArrayLike, " k"],
    matrix: Float[ArrayLike, "k k"],
    *,
    n_pairs: int = 10,
    title: str = "",
    value_label: str = "interaction",
    size_px: int = 420,
    image_style: str = "grey",
) -> go.Figure:
    """The ``n_pairs`` pairs with the largest ``|interaction|`` drawn as lines between patch centres.

    Args:
        image: pixels ``[channel, height, width]`` in [0, 1].
        grid_size: the patch grid ``(grid_h, grid_w)``.
        patches: flat (row-major) patch index of each row of ``matrix``.
        matrix: symmetric ``[k, k]`` pairwise interactions (the diagonal is not drawn).
        n_pairs: how many pairs to draw, strongest first.
        title: figure title; value_label: what a value is (hover and colour bar).
        size_px: the panel's longer side in pixels; image_style: ``"grey"`` or ``"colour"``.

    Raises:
        ValueError: ``matrix`` is not ``[k, k]`` with ``k = len(patches)``, or a patch is off the grid.

    Example:
        >>> import torch
        >>> m = torch.tensor([[0.0, 2.0, 0.1], [2.0, 0.0, -1.0], [0.1, -1.0, 0.0]])
        >>> fig = interaction_figure(torch.rand(3, 32, 32), (4, 4), [0, 5, 15], m, n_pairs=2)
        >>> [t.name for t in fig.data if t.type == "scatter" and t.mode == "lines" and not t.showlegend]  # 2.0, -1.0
        ['0-5', '5-15']
    """
    m = to_numpy(matrix, "matrix").astype(float)
    k = len(patches)
    if m.shape != (k, k):
        raise ValueError(f"matrix: expected shape [{k}, {k}] (one row per patch), got {list(m.shape)}")
    gh, gw = grid_size
    if any(not 0 <= int(p) < gh * gw for p in patches):
        raise ValueError(f"patches: expected flat indices in [0, {gh * gw}), got {list(patches)}")
    rgb = underlay_rgb(image, image_style)
    h, w = rgb.shape[:2]
    ch, cw = h / gh, w / gw
    centre = [((int(p) % gw + 0.5) * cw + 0.5, (int(p) // gw + 0.5) * ch + 0.5) for p in patches]
    pairs = sorted(((abs(m[i, j]), i, j) for i in range(k) for j in range(i + 1, k)), key=lambda t: -t[0])[:max(0, n_pairs)]
    vmax = max([a for a, _, _ in pairs] + [1e-12])
    fig = go.Figure()
    fig.add_trace(image_trace(rgb, ("x", "y")))
    for a, i, j in pairs:
        v = m[i, j]
        colour = POSITIVE if v >= 0 else NEGATIVE
        (x0, y0), (x1, y1) = centre[i], centre[j]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", line=dict(width=1 + 7 * a / vmax, color=colour),
            opacity=0.35 + 0.65 * a / vmax, name=esc(f"{int(patches[i])}-{int(patches[j])}"), showlegend=False,
            hovertemplate=f"patches {int(patches[i])} & {int(patches[j])}<br>{hover_safe(value_label)}: {fmt(v)}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(
        x=[c[0] for c in centre], y=[c[1] for c in centre], mode="markers+text", text=[str(int(p)) for p in patches],
        textposition="top center", marker=dict(size=8, color="black"), showlegend=False, name="patches",
        hovertemplate="patch %{text}<extra></extra>",
    ))
    for colour, what in ((POSITIVE, "positive: the pair does more together (synergy)"),
                         (NEGATIVE, "negative: less together (redundancy)")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=4), name=what,
                                 showlegend=True, hoverinfo="skip"))
    fig.update_xaxes(range=[0.5, w + 0.5], visible=False, constrain="domain")
    fig.update_yaxes(range=[h + 0.5, 0.5], visible=False, scaleanchor="x")
    fig.update_layout(title=esc(title), width=size_px, height=size_px, margin=dict(l=10, r=10, t=40, b=10),
                      meta=dict(value_label=esc(value_label)))
    return fig

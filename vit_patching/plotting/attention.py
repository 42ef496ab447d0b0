"""Attention patterns drawn over the image: where one query token looks, for every head of a layer."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from transformer_lens import ActivationCache

from vit_patching.checks import check_fraction, check_indices, check_positive_int, is_int
from vit_patching.hook_names import get_act_name
from vit_patching.plotting._common import ArrayLike, Number, to_numpy
from vit_patching.plotting.colors import SEQUENTIAL, faded_sequential_colorscale, sequential_coloraxis
from vit_patching.plotting.grids import head_position_facets

__all__ = ["attention_figure"]

def _query_pos(query: int | tuple[int, int], layout, n_pos: int) -> int:
    """Sequence position of ``query``: a position, or ``(row, col)`` of a patch."""
    if is_int(query) and 0 <= query < n_pos:
        return int(query)
    if isinstance(query, tuple) and len(query) == 2 and all(is_int(v) for v in query):
        gh, gw = layout.grid_size
        if 0 <= query[0] < gh and 0 <= query[1] < gw:
            return layout.pos(int(query[0]), int(query[1]))
    raise ValueError(
        f"query: expected a token position in [0, {n_pos}) or a (row, col) patch in the "
        f"{layout.grid_size[0]}x{layout.grid_size[1]} grid, got {query!r}"
    )


def attention_figure(
    cache: ActivationCache,
    layer: int,
    query: int | tuple[int, int] = 0,
    *,
    batch: int = 0,
    heads: int | Sequence[int] | None = None,
    image: Float[ArrayLike, "channel height width"] | None = None,
    title: str | None = None,
    max_alpha: Number = 0.85,
    facet_px: int = 150,
) -> go.Figure:
    """One facet per head: the attention weights of one query token over every key, drawn as the patch grid.

    Each facet is row ``query`` of ``blocks.{layer}.attn.hook_pattern`` for image ``batch``: the patch keys as a
    grid (over ``image``, drawn in grey, when given), the prefix keys (CLS, registers) as a strip above it. The
    query is marked with a white, black-edged cross. Colours are a sequential scale from 0 (transparent over an
    image) to the largest weight shown, shared by every facet.

    Args:
        cache: ``run_with_cache`` output of a HookedViT (needs that layer's ``hook_pattern``).
        layer: Block index (negative counts from the end).
        query: The query token: a sequence position (``0`` = the first prefix token, e.g. CLS) or the
            ``(row, col)`` of a patch.
        batch: Which image of the cache.
        heads: Heads to show (default all).
        image: Optional underlay, pixels ``[channel, height, width]`` in [0, 1] (e.g. ``batch.pixels[0]``).
        title: Figure title (default names the layer and the query).
        max_alpha: Opacity of the largest weight over an image.
        facet_px: Size in pixels of each facet's longer side.

    Returns:
        A Plotly figure; each facet's grid trace has ``meta={"kind": "grid", "facet": i}``.

    Raises:
        ValueError: a bad ``layer``, ``query``, ``batch``, ``heads``, ``max_alpha`` or ``facet_px``.
        KeyError: the cache lacks the pattern.

    Example:
        >>> import vit_patching as vp
        >>> model = vp.load_model("toy-shapes")
        >>> data = vp.load_dataset("shapes", n=1, seed=1)
        >>> _, cache = model.run_with_cache(data.images)
        >>> fig = attention_figure(cache, 0, query=0, image=data.pixels[0])   # CLS's attention in block 0
        >>> [a.text for a in fig.layout.annotations]
        ['L0 H0', 'L0 H1', 'L0 H2', 'L0 H3']
    """
    max_alpha = check_fraction(max_alpha, "max_alpha")
    facet_px = check_positive_int(facet_px, "facet_px")
    model = cache.model
    n_layers = model.cfg.n_layers
    if not is_int(layer) or not -n_layers <= layer < n_layers:
        raise ValueError(f"layer: expected a block index in [-{n_layers}, {n_layers}), got {layer!r}")
    layer = int(layer) % n_layers
    name = get_act_name("pattern", layer)
    if name not in cache.cache_dict:
        raise KeyError(f"the cache lacks {name!r}: run run_with_cache without a names_filter that drops it")
    pattern = cache[name]  # [batch, head, q_pos, k_pos]
    n_batch, n_heads, n_pos, _ = pattern.shape
    if not is_int(batch) or not 0 <= batch < n_batch:
        raise ValueError(f"batch: expected an image index in [0, {n_batch}), got {batch!r}")
    layout = model.layout
    if layout.n_pos != n_pos:
        raise ValueError(f"cache: expected {layout.n_pos} positions (the model's default input), got {n_pos}")
    q = _query_pos(query, layout, n_pos)
    sel = check_indices(heads, n_heads, "heads", "head")
    if image is not None:  # drawn in grey by head_position_facets (image_style="grey": plotting._common's underlay)
        image = to_numpy(image, "image")
    weights = pattern[batch, :, q, :].detach().float().cpu().numpy()  # [head, k_pos]
    label = layout.label(q)
    fig = head_position_facets(
        weights.T[None], grid_size=layout.grid_size, n_prefix=layout.n_prefix,
        prefix_labels=list(layout.prefix_labels), heads=sel, layer_labels=[f"L{layer}"], image=image,
        title=title if title is not None else f"Attention of query {label} (pos {q}) in block {layer}",
        value_label="attention weight", facet_px=facet_px, fade=False, opacity=1.0,
    )
    # Weights are probabilities: a sequential scale from 0, not a diverging one centred on 0.
    bar = {k: v for k, v in fig.layout.coloraxis.colorbar.to_plotly_json().items() if k != "title"}
    axis = sequential_coloraxis(np.append(weights[sel], 0.0), title="attention weight", colorbar=bar)
    if image is not None:
        axis["colorscale"] = faded_sequential_colorscale(SEQUENTIAL, max_alpha)
    fig.update_layout(coloraxis=axis)
    _mark_query(fig, q, layout, len(sel))
    return fig


def _mark_query(fig: go.Figure, q: int, layout, n_facets: int) -> None:
    """A white, black-edged cross (visible on any colour) on the query's cell, grid or prefix strip, of each facet."""
    for i in range(n_facets):
        kind = "grid" if q >= layout.n_prefix else "prefix"
        (trace,) = [t for t in fig.data if (t.meta or {}).get("kind") == kind and t.meta.get("facet") == i]
        if kind == "grid":
            r, c = layout.row_col(q)
            x, y = trace.x0 + c * trace.dx, trace.y0 + r * trace.dy
        else:
            x, y = q, 0
        fig.add_trace(go.Scatter(
            x=[x], y=[y], mode="markers",
            marker=dict(symbol="x", size=11, color="white", line=dict(width=1.5, color="black")),
            xaxis=trace.xaxis, yaxis=trace.yaxis, showlegend=False, hoverinfo="skip", name="query",
            meta=dict(kind="query", facet=i),
        ))

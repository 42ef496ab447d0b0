"""Result objects of patching experiments: values with named axes, baselines and options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from . import _plot
from .metrics import recovery


@dataclass
class PatchingResult:
    """Patched metric values over named axes, per image, with the unpatched baselines.

    Attributes:
        values: Raw metric ``[*axes, batch]``.
        axes: Names of the leading axes, e.g. ``("site", "layer", "pos")``.
        labels: Tick labels per axis name.
        target_score: Unpatched target-run metric ``[batch]`` (0 after normalisation).
        source_score: Unpatched source-run metric ``[batch]`` (1 after normalisation).
        metric: Metric name.
        direction: ``"denoising"`` (source = clean written into corrupted) or ``"noising"``.
        kind: Experiment name (``"layer_sweep"``, ``"head_patch"``, ``"path_patch"``, ...).
        options: Settings used (grid size, prefix labels, batch size, ...).
        n_forwards: Patched forward passes run.

    Example:
        >>> res.normalized.shape, res.mean().shape       # [*axes, batch], [*axes]
        >>> res.to_dataframe().head()
    """

    values: Float[Tensor, "..."]
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    target_score: Float[Tensor, " batch"]
    source_score: Float[Tensor, " batch"]
    metric: str
    direction: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    n_forwards: int = 0

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.axes) + 1:
            raise ValueError(f"values must be [*{self.axes}, batch], got shape {tuple(self.values.shape)}")
        for k, a in enumerate(self.axes):
            if a in self.labels and len(self.labels[a]) != self.values.shape[k]:
                raise ValueError(f"{len(self.labels[a])} labels for axis {a!r} of size {self.values.shape[k]}")

    @property
    def normalized(self) -> Float[Tensor, "..."]:
        """Recovery: 0 = unpatched target run, 1 = unpatched source run, per image."""
        return recovery(self.values, self.target_score, self.source_score)

    @property
    def clean_score(self) -> Float[Tensor, " batch"]:
        """Unpatched metric of the clean run (the source when denoising, the target when noising)."""
        return self.source_score if self.direction == "denoising" else self.target_score

    @property
    def corrupted_score(self) -> Float[Tensor, " batch"]:
        """Unpatched metric of the corrupted run."""
        return self.target_score if self.direction == "denoising" else self.source_score

    def mean(self, normalized: bool = True) -> Float[Tensor, "..."]:
        """Mean over images (NaN-aware for normalised values)."""
        v = self.normalized if normalized else self.values
        return v.nanmean(dim=-1)

    def to_dataframe(self):
        """Long table: one row per cell and image, with axis labels, raw value and recovery."""
        import pandas as pd

        shape = self.values.shape
        grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
        cols: dict[str, Any] = {}
        for k, a in enumerate(self.axes):
            idx = grids[k].reshape(-1)
            cols[a] = idx.numpy()
            if a in self.labels:
                cols[f"{a}_label"] = [self.labels[a][i] for i in idx.tolist()]
        cols["image"] = grids[-1].reshape(-1).numpy()
        cols["value"] = self.values.reshape(-1).numpy()
        cols["recovery"] = self.normalized.reshape(-1).numpy()
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ figures
    def plot(
        self,
        kind: str | None = None,
        *,
        site: str | None = None,
        receiver: int = 0,
        image: int | None = None,
        normalized: bool = True,
        underlay: bool = True,
        **kwargs: Any,
    ):
        """A Plotly figure of the result (returns ``plotly.graph_objects.Figure``; nothing is shown).

        Kinds (default from the axes): ``"layer_grid"`` — one patch grid per (site, layer), the prefix tokens in
        a strip, over the image when ``options["pixels"]`` holds it (axes ``site, layer, pos``);
        ``"layer_head"`` — layer x head heatmap (axes ``site, layer, head``; for a path result whose senders
        are single heads, the effect of each head through receiver ``receiver``); ``"head_facets"`` — patch
        grids per (layer, head) (axes ``site, layer, pos, head``); ``"path"`` — sender x receiver heatmap.

        Args:
            kind: Figure kind (see above).
            site: Show only this site (default: every site, as facet rows / stacked rows; ``head_facets``
                needs one site when there are several).
            receiver: Receiver column for ``kind="layer_head"`` on a path result.
            image: Show this image's values (default the mean over images).
            normalized: Plot recovery (0 = target run, 1 = source run) instead of the raw metric.
            underlay: Draw the image under patch grids when the result carries ``options["pixels"]`` (the
                image shown is ``image``, or the only one of a batch of one).
            **kwargs: Passed to the plotting function (``title``, ``facet_px``, ``zmid``, ...).

        Example:
            >>> fig = layer_sweep(model, clean, corrupted).plot(site="resid_pre")
            >>> fig.write_html("sweep.html")
        """
        return _plot.plot_result(self, kind, site=site, receiver=receiver, image=image, normalized=normalized,
                                 underlay=underlay, **kwargs)

    def save_html(self, path: Any, **plot_kwargs: Any) -> Any:
        """Write :meth:`plot` (with ``plot_kwargs``) as a standalone, offline HTML file; returns the path.

        Example:
            >>> res.save_html("heads.html", kind="layer_head")
        """
        from vit_patching.plotting import save_html

        return save_html(self.plot(**plot_kwargs), path)

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape))
        return (
            f"{type(self).__name__}(kind={self.kind!r}, {dims}, batch={self.values.shape[-1]}, "
            f"metric={self.metric!r}, direction={self.direction!r}, forwards={self.n_forwards})"
        )

"""CAAP results: :class:`Attribution` (maps, patched logits, the neutral-context diagnosis) and
:func:`compare_attributions`. The run itself lives in :mod:`vit_patching.patching.caap`.

:class:`Attribution` is an :class:`~vit_patching.maps.AttributionMaps` (the one attribution-maps
result type of the package): ``patch_map``/``pixel_map``/``target``/``method``/``settings`` as for every method,
plus CAAP's extras. ``map`` and ``options`` are CAAP's historical names for ``patch_map`` and ``settings``.
Both types bring patch maps to pixels with :data:`vit_patching.images.DEFAULT_UPSAMPLE` (bilinear) unless told
otherwise.

Example:
    >>> from vit_patching.patching.caap import caap
    >>> attr = caap(model, images, window=(0, 2))
    >>> isinstance(attr, AttributionMaps), attr.map is attr.patch_map
    (True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.maps import AttributionMaps
from vit_patching.checks import check_choice

__all__ = [
    "Attribution", "DEFAULT_DIRECTION", "DEFAULT_WARN_SHARE", "DIRECTIONS", "READOUTS", "caap_map_values",
    "caap_readout", "centred_maps", "compare_attributions", "neutral_warnings", "predicts_threshold",
]

READOUTS: tuple[str, ...] = ("logit", "prob", "delta_logit", "delta_prob")
#: ``"denoising"``: the source's patch written into the neutral run, map = the patched score (how much the patch
#: alone restores). ``"noising"``: the neutral's patch written into the source run, map = the score drop
#: ``source - patched`` (how much removing the patch breaks). Positive = evidence for the class in both.
DIRECTIONS: tuple[str, ...] = ("denoising", "noising")
DEFAULT_DIRECTION = "denoising"
#: Warn when the neutral run gives the explained class more than this share of the source run's probability.
DEFAULT_WARN_SHARE = 0.5


def caap_readout(
    logits: Float[Tensor, "... batch n_classes"],
    target: Int[Tensor, " batch"],
    readout: str,
    neutral_logits: Float[Tensor, "batch n_classes"],
) -> Float[Tensor, "... batch"]:
    """CAAP's readout of ``logits`` for class ``target`` per image (``delta_*``: minus the neutral run's value).

    Example:
        >>> lg = torch.tensor([[0.0, 2.0]])
        >>> caap_readout(lg, torch.tensor([1]), "delta_logit", torch.tensor([[0.0, 0.5]]))
        tensor([1.5000])
    """

    def score(lg: Tensor) -> Tensor:
        lg = lg.float()
        if readout.endswith("prob"):
            lg = lg.softmax(dim=-1)
        return lg.gather(-1, target.to(lg.device).expand(*lg.shape[:-1])[..., None])[..., 0]

    out = score(logits)
    if readout.startswith("delta_"):
        out = out - score(neutral_logits)
    return out


def caap_map_values(
    patched_logits: Float[Tensor, "... batch n_classes"],
    target: Int[Tensor, " batch"],
    readout: str,
    neutral_logits: Float[Tensor, "batch n_classes"],
    source_logits: Float[Tensor, "batch n_classes"],
    direction: str = DEFAULT_DIRECTION,
) -> Float[Tensor, "... batch"]:
    """CAAP's attribution values from patched logits: the patched readout (denoising) or the drop
    ``readout(source) - readout(patched)`` (noising; ``delta_*`` readouts give the same drop as the plain ones,
    as the neutral's value cancels).

    Example:
        >>> src, pat = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 1.0]])
        >>> caap_map_values(pat, torch.tensor([1]), "logit", src * 0, src, "noising")
        tensor([2.])
    """
    patched = caap_readout(patched_logits, target, readout, neutral_logits)
    if direction == "denoising":
        return patched
    return caap_readout(source_logits, target, readout, neutral_logits) - patched


def predicts_threshold(n_classes: int) -> float:
    """The probability from which a neutral context's top class counts as a prediction: ``max(min(2 / C, 0.5), 1.5 / C)``.

    Twice a uniform guess, capped at 0.5 (so a 1000-class model's neutral "predicts" from p = 0.002, a 4-class
    model's from 0.5); with two classes the top class always has p >= 0.5, so there the bar is 1.5 x uniform = 0.75.

    Example:
        >>> [predicts_threshold(c) for c in (2, 3, 4, 1000)]
        [0.75, 0.5, 0.5, 0.002]
    """
    return max(min(2.0 / n_classes, 0.5), 1.5 / n_classes)


def neutral_warnings(
    neutral_logits: Float[Tensor, "batch n_classes"],
    source_logits: Float[Tensor, "batch n_classes"],
    target: Int[Tensor, " batch"],
    neutral: str,
    warn_share: float = DEFAULT_WARN_SHARE,
    where: str = "",
    direction: str = DEFAULT_DIRECTION,
) -> list[str]:
    """Why a neutral context may make CAAP maps hard to read (empty if it is a good neutral for every image).

    Two cases, reported with the image indices: the neutral run already predicts the explained class (its top
    class, with a probability of at least ``predicts_threshold(n_classes)``: a near-uniform neutral whose
    top class happens to be the explained one is not a prediction), or it gives the class more than
    ``warn_share`` of the source run's probability above chance (``p_neutral - 1/C > warn_share * (p_source -
    1/C)``: with two classes an undecided neutral's 0.5 is chance, not half the evidence). The diagnosis is the same for both directions; what it means
    differs: denoising maps then show what moves a context that already says the class, noising maps have small
    drops (writing a patch of a context that says the class into the source takes little evidence away).

    Example:
        >>> lg = torch.tensor([[3.0, 0.0]])
        >>> neutral_warnings(lg, lg, torch.tensor([0]), "zeros")[0][:60]
        "CAAP neutral 'zeros' already predicts the explained class fo"
    """
    p0 = neutral_logits.float().softmax(-1)
    ps = source_logits.float().softmax(-1)
    t = target[:, None].to(p0.device)
    p0_t, ps_t = p0.gather(1, t)[:, 0], ps.gather(1, t)[:, 0]
    predicts = (p0.argmax(-1) == t[:, 0]) & (p0_t >= predicts_threshold(p0.shape[-1]))
    chance = 1.0 / p0.shape[-1]
    high = (p0_t - chance > warn_share * (ps_t - chance)) & ~predicts
    out = []

    def listed(mask: Tensor) -> str:
        idx = mask.nonzero()[:, 0].tolist()
        return f"{len(idx)}/{mask.numel()} images {idx[:10]}{' ...' if len(idx) > 10 else ''}"

    if direction == "noising":
        meaning = ("noising writes that context's patches into the source, so the score drops are small and the "
                   "map understates the evidence")
    else:
        meaning = "the map shows what moves the score of a context that already says the class, not evidence for it"
    if bool(predicts.any()):
        out.append(
            f"CAAP neutral {neutral!r}{where} already predicts the explained class for {listed(predicts)} (neutral "
            f"p(class) up to {float(p0_t[predicts].max()):.3g}): {meaning}; try neutral='auto' or another neutral"
        )
    if bool(high.any()):
        squeezed = "the drops are small" if direction == "noising" else "the map's range is compressed"
        out.append(
            f"CAAP neutral {neutral!r}{where} gives the explained class more than {warn_share:g} of the source's "
            f"probability above chance for {listed(high)}: {squeezed}; try neutral='auto' or another neutral"
        )
    return out


@dataclass(kw_only=True, repr=False, eq=False)
class Attribution(AttributionMaps):
    """CAAP maps for a batch of images, with the patched logits of every class, the settings used and a
    diagnosis of the neutral context.

    A subclass of :class:`~vit_patching.maps.AttributionMaps` (``patch_map``, ``pixel_map``,
    ``target``, ``method="caap"``, ``settings``, ``seconds``); ``map`` is ``patch_map`` and ``options`` is
    ``settings``. ``pixel_map`` is upsampled with ``options["upsample"]``, by default
    :data:`vit_patching.images.DEFAULT_UPSAMPLE` (bilinear), the rule of every other method and metric.

    Attributes:
        patch_map: Attribution per patch ``[batch, grid_h, grid_w]`` (row-major patch grid); alias ``map``.
        pixel_map: ``map`` upsampled to the image ``[batch, height, width]`` (``options["upsample"]``).
        target: Class explained per image ``[batch]``.
        window: Layer window ``(start, end)``, blocks ``start..end-1`` patched.
        direction: ``"denoising"`` (source patch into the neutral run; ``map`` = the patched readout) or
            ``"noising"`` (neutral patch into the source run; ``map`` = ``source_score`` minus the patched
            readout, the drop). Positive = evidence for the class in both.
        settings: Neutral, site, readout, prefix policy, upsampling, target source, batch size, ...; alias ``options``.
        neutral_score: Readout of the unpatched neutral run ``[batch]`` (0 for ``delta_*`` readouts).
        source_score: Readout of the unpatched source run ``[batch]`` (same units as ``map``).
        patched_logits: Logits of every patched run ``[batch, grid_h, grid_w, n_classes]`` (maps for any class).
        neutral_logits: Unpatched neutral logits ``[batch, n_classes]`` (for ``mean_activations``: of the
            window's start).
        source_logits: Unpatched source logits ``[batch, n_classes]``.
        pixels: Source images in [0, 1] ``[batch, channel, height, width]`` for overlays.
        n_forwards: Patched forward passes run.
        neutral_prediction: Class the neutral run predicts, per image ``[batch]``.
        neutral_prediction_prob: Its softmax probability in the neutral run ``[batch]``.
        neutral_target_score: The explained class's score in the neutral run ``[batch]``, in the readout's units
            (logit for ``logit``/``delta_logit``, probability for ``prob``/``delta_prob``).
        neutral_target_prob: The explained class's probability in the neutral run ``[batch]``.
        neutral_choice: The neutral used per image (``neutral="auto"`` picks one per image).
        warnings: Why the neutral context may make the map hard to read (it already predicts the explained
            class, or gives it more than ``options["neutral_warn_share"]`` of the source's probability).

    Example:
        >>> attr = caap(model, images, window=(1, 3))
        >>> len(attr.top_patches(0, k=3))     # [(row, col, value), ...], best first
        3
        >>> fig = attr.overlay(0)             # fig.show() in a notebook
    """

    method: str = "caap"
    window: tuple[int, int]
    direction: str = DEFAULT_DIRECTION
    neutral_score: Float[Tensor, " batch"]
    source_score: Float[Tensor, " batch"]
    patched_logits: Float[Tensor, "batch grid_h grid_w n_classes"]
    neutral_logits: Float[Tensor, "batch n_classes"]
    source_logits: Float[Tensor, "batch n_classes"]
    pixels: Float[Tensor, "batch channel height width"]
    n_forwards: int = 0
    neutral_prediction: Int[Tensor, " batch"]
    neutral_prediction_prob: Float[Tensor, " batch"]
    neutral_target_score: Float[Tensor, " batch"]
    neutral_target_prob: Float[Tensor, " batch"]
    neutral_choice: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def map(self) -> Float[Tensor, "batch grid_h grid_w"]:
        """CAAP's name for ``patch_map``."""
        return self.patch_map

    @property
    def options(self) -> dict[str, Any]:
        """CAAP's name for ``settings``."""
        return self.settings

    @property
    def readout(self) -> str:
        return self.settings["readout"]

    @property
    def value_label(self) -> str:
        """What a map value is: the readout (denoising) or ``"{readout} drop"`` (noising)."""
        return f"{self.readout.removeprefix('delta_')} drop" if self.direction == "noising" else self.readout

    @property
    def score_label(self) -> str:
        """A colour-bar title that says what a map value is: ``"CAAP score (logit)"``, or with noising
        ``"CAAP score drop (logit)"`` (the readout in brackets)."""
        return f"CAAP score {'drop ' if self.direction == 'noising' else ''}({self.readout})"

    @classmethod
    def cat(cls, parts: Sequence["Attribution"]) -> "Attribution":
        """Concatenate CAAP results of the same window and settings along the batch (seconds, forwards add up).

        Example:
            >>> both = Attribution.cat([caap(model, images[:1], window=(0, 2)), caap(model, images[1:], window=(0, 2))])
        """
        if not parts:
            raise ValueError("parts: expected at least one Attribution, got an empty sequence")
        first = parts[0]
        keys = ("readout", "site", "neutral", "include_prefix", "upsample", "direction")
        for p in parts[1:]:
            if p.window != first.window or any(p.settings.get(k) != first.settings.get(k) for k in keys):
                raise ValueError(f"parts: expected one window and settings {list(keys)}, got {first!r} and {p!r}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if isinstance(values[0], Tensor):
                kwargs[f.name] = torch.cat(values)
            elif f.name in ("neutral_choice", "warnings"):
                kwargs[f.name] = [v for vs in values for v in vs]
            elif f.name in ("seconds", "n_forwards"):
                kwargs[f.name] = sum(values)
            else:
                kwargs[f.name] = values[0]
        kwargs["settings"] = dict(first.settings)
        return cls(**kwargs)

    def for_class(
        self, target: int | Int[Tensor, " batch"] | None = None, readout: str | None = None
    ) -> Float[Tensor, "batch grid_h grid_w"]:
        """Maps for another class (or readout) from the same patched runs, no new forward pass.

        Example:
            >>> attr = caap(model, images, window=(0, 2))
            >>> attr.for_class(2, readout="prob").shape
            torch.Size([2, 8, 8])
        """
        readout = self.readout if readout is None else readout
        check_choice(readout, READOUTS, "readout")
        batch, n_classes = self.source_logits.shape
        if target is None:
            t = self.target
        else:
            if isinstance(target, int) and not isinstance(target, bool) and not 0 <= target < n_classes:
                raise ValueError(f"target: expected class indices in [0, {n_classes}), got {target!r}")
            t = torch.as_tensor(target)
            if t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
            t = t.expand(batch) if t.ndim == 0 else t
            if t.shape != (batch,) or bool(((t < 0) | (t >= n_classes)).any()):
                raise ValueError(f"target: expected {batch} class indices in [0, {n_classes}), got {target!r}")
        logits = self.patched_logits.flatten(1, 2).transpose(0, 1)  # [N, batch, n_classes]
        out = caap_map_values(logits, t, readout, self.neutral_logits, self.source_logits, self.direction)
        return out.transpose(0, 1).reshape(self.map.shape)

    def top_patches(self, i: int = 0, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring patches of image ``i`` as ``(row, col, value)``, best first (ties: raster order)."""
        self._check_index(i)
        flat = self.map[i].flatten()
        order = torch.sort(flat, descending=True, stable=True).indices[: max(0, int(k))]
        gw = self.map.shape[-1]
        return [(int(j) // gw, int(j) % gw, float(flat[j])) for j in order]

    def to_dataframe(self):
        """Long table: one row per image and patch with row, col, value and the image's neutral diagnosis
        (``neutral``, ``neutral_prediction``, ``neutral_prediction_prob``, ``neutral_target_score``,
        ``neutral_target_prob``)."""
        import pandas as pd

        b, gh, gw = self.map.shape
        grid = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(gh), torch.arange(gw), indexing="ij"), -1)
        flat = grid.reshape(-1, 3)
        img = flat[:, 0]
        return pd.DataFrame({
            "image": img.numpy(), "row": flat[:, 1].numpy(), "col": flat[:, 2].numpy(),
            "target": self.target[img].numpy(), "value": self.map.reshape(-1).numpy(),
            "neutral": [self.neutral_choice[int(j)] for j in img] if self.neutral_choice else self.settings["neutral"],
            "neutral_prediction": self.neutral_prediction[img].numpy(),
            "neutral_prediction_prob": self.neutral_prediction_prob[img].numpy(),
            "neutral_target_score": self.neutral_target_score[img].numpy(),
            "neutral_target_prob": self.neutral_target_prob[img].numpy(),
        })

    def _check_index(self, i: int) -> None:
        if not isinstance(i, int) or not 0 <= i < self.map.shape[0]:
            raise ValueError(f"i: expected an image index in [0, {self.map.shape[0]}), got {i!r}")

    def zmid(self, i: int = 0) -> float:
        """Centre of the diverging colour scale for image ``i``: for denoising the unpatched neutral score (0 for
        ``delta_*``), so colours show how much each patch raises or lowers the score relative to the neutral
        context; for noising 0 (no drop), so on the RdBu scale blue = removing the patch lowers the score, red = raises it."""
        return 0.0 if self.direction == "noising" else float(self.neutral_score[i])

    def _title(self, i: int) -> str:
        kind = " (noising: score drop)" if self.direction == "noising" else ""
        return f"CAAP{kind} window [{self.window[0]}, {self.window[1]}), class {int(self.target[i])}"

    def plot(self, i: int = 0, title: str | None = None):
        """Patch-grid map of image ``i`` (Plotly figure)."""
        from vit_patching.plotting import patch_map

        self._check_index(i)
        return patch_map(
            self.map[i], title=self._title(i) if title is None else title, value_label=self.value_label, zmid=self.zmid(i)
        )

    def overlay(self, i: int = 0, title: str | None = None, upsample: str | None = None, image_style: str = "grey"):
        """The map of image ``i`` drawn over the image (Plotly figure), its colour bar titled `score_label`.

        ``image_style="grey"`` (default) draws the image desaturated under the map, so that red or blue objects
        cannot be read as map values; ``"colour"`` draws it as it is.
        """
        from vit_patching.plotting import attribution_overlay

        self._check_index(i)
        return attribution_overlay(
            self.pixels[i], self.map[i], upsample=upsample or self.options["upsample"],
            title=self._title(i) if title is None else title, value_label=self.score_label, zmid=self.zmid(i),
            image_style=image_style,
        )

    def __repr__(self) -> str:
        b, gh, gw = self.map.shape
        pred = ", ".join(
            f"{int(c)}@{float(p):.3g}" for c, p in zip(self.neutral_prediction[:4], self.neutral_prediction_prob[:4])
        )
        more = ", ..." if b > 4 else ""
        return (
            f"Attribution(batch={b}, grid={gh}x{gw}, window={self.window}, direction={self.direction!r}, readout={self.readout!r}, "
            f"neutral={self.options['neutral']!r}, site={self.options['site']!r}, "
            f"neutral_prediction=[{pred}{more}] (class@prob), warnings={len(self.warnings)})"
        )


def centred_maps(
    maps: Sequence[Tensor], zmids: Sequence[float], value_label: str
) -> tuple[list[Tensor], float, str]:
    """Maps, colour centre and label for one figure whose maps each have their own neutral score ``zmids``.

    With one centre for all, the maps are returned as they are, centred on it. Otherwise one diverging scale
    cannot be centred on every map's own neutral score, so each map is drawn relative to its own (``map - zmid``,
    centred on 0, labelled ``"{value_label} - neutral"``): white is always "as the neutral context".

    Example:
        >>> ms, z, label = centred_maps([torch.ones(2, 2), torch.ones(2, 2)], [0.5, 2.0], "logit")
        >>> [float(m[0, 0]) for m in ms], z, label
        ([0.5, -1.0], 0.0, 'logit - neutral')
    """
    if len({float(z) for z in zmids}) <= 1:
        return list(maps), float(zmids[0]) if len(zmids) else 0.0, value_label
    return [m - float(z) for m, z in zip(maps, zmids)], 0.0, f"{value_label} - neutral"


def compare_attributions(
    attributions: Mapping[str, Attribution], i: int = 0, *, over_image: bool = True, shared_scale: bool = True, title: str = ""
):
    """Several attributions of the same image side by side (e.g. windows, neutrals or readouts), one Plotly figure.

    Every panel is centred on its own neutral score (:meth:`Attribution.zmid`): when those differ (e.g.
    ``"zeros"`` vs ``"black"`` neutrals), each panel shows its map minus its own neutral score (see
    :func:`centred_maps`), so no panel is painted all red or all blue by another panel's centre.

    Example:
        >>> fig = compare_attributions({"[0,2)": caap(model, images, window=(0, 2)), "[2,4)": caap(model, images, window=(2, 4))})
        >>> [t.name for t in fig.data if t.type == "heatmap"]
        ['[0,2)', '[2,4)']
    """
    from vit_patching.plotting import compare_maps

    if not attributions:
        raise ValueError("attributions: expected at least one Attribution, got an empty mapping")
    first = next(iter(attributions.values()))
    for a in attributions.values():
        a._check_index(i)
    maps, zmid, label = centred_maps(
        [a.map[i] for a in attributions.values()], [a.zmid(i) for a in attributions.values()], first.value_label
    )
    return compare_maps(
        dict(zip(attributions, maps)), first.pixels[i] if over_image else None,
        shared_scale=shared_scale, upsample=first.options["upsample"], title=title, value_label=label, zmid=zmid,
    )

"""Layer-window selection for CAAP: sweep ``[start, end)`` windows, score each map, recommend one.

Every candidate window gets a CAAP map per image (all windows share one source run and one neutral prefix per
start: :func:`~vit_patching.patching.caap.prepare_caap`). Each map is scored with the evaluation module's
faithfulness metrics, patch by patch (``unit="patch"``): insertion AUC (higher is better) and deletion AUC
(lower is better), both on the softmax probability of the explained class and both with the zero (= dataset-mean
colour) substrate by default; plus the pointing game where evidence masks are given. The recommended window
maximises the criterion (default: insertion - deletion) averaged over the images. Select on held-out images,
never on the images you report. ``coalitions=N`` scores coalition CAAP maps (:mod:`.caap_shapley`) instead, and
:func:`~vit_patching.patching.window_protocol.confirm_window` confirms a choice on a second split.

Why not RISE's blurred insertion substrate by default: on the shipped toy models the blurred image alone already
scores the class at probability 0.9998 (32 held-out toy-shapes images), so every map, random ones included, gets
the same insertion AUC (docs/caap_defaults.md). Pass ``insertion_substrate="blur"`` for RISE's protocol.

Example:
    >>> from vit_patching.zoo import load_model, load_dataset
    >>> batch = load_dataset("shapes", n=4, seed=1)
    >>> sel = select_window(load_model(), batch.images, masks=batch.masks, eval_kwargs={"step": 8})
    >>> len(sel.table), sel.recommended in all_windows(4)  # 4 layers: 10 windows
    (10, True)
    >>> fig = sel.heatmap(); fig = sel.slider(0)           # fig.show() in a notebook
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor
from tqdm.auto import tqdm

from vit_patching.checks import (
    check_choice, check_fraction, check_positive_int, check_positive_number, check_seed, check_window,
)
from vit_patching.evaluation import deletion_auc, insertion_auc, make_substrate, pointing_game
from vit_patching.evaluation.perturbation import describe_substrate
from vit_patching.evaluation.statistics import mean_ci, paired_ci
from vit_patching.images import DEFAULT_UPSAMPLE
from vit_patching.model import HookedViT, check_scores

from .caap import (
    DEFAULT_DIRECTION, DEFAULT_NEUTRAL, DEFAULT_READOUT, DEFAULT_WARN_SHARE, DIRECTIONS, READOUTS, SITES, UPSAMPLES,
    caap_from_context, caap_memory, prepare_caap,
)
from .caap_results import centred_maps
from .caap_shapley import caap_shapley, player_groups
from .memory import check_memory_args, resolve_batch_size

logger = logging.getLogger(__name__)

__all__ = ["CRITERIA", "WindowSelection", "all_windows", "select_window"]

#: Criterion -> (table column, higher is better).
CRITERIA: dict[str, tuple[str, bool]] = {
    "ins_minus_del": ("ins_minus_del", True),
    "insertion": ("insertion_auc", True),
    "deletion": ("deletion_auc", False),
    "pointing_game": ("pointing_game", True),
}
_METRICS: dict[str, bool] = {"insertion_auc": True, "deletion_auc": False, "ins_minus_del": True, "pointing_game": True}


def all_windows(n_layers: int) -> list[tuple[int, int]]:
    """Every window ``[start, end)`` with ``0 <= start < end <= n_layers`` (``L (L + 1) / 2`` of them).

    Example:
        >>> all_windows(2)
        [(0, 1), (0, 2), (1, 2)]
    """
    return [(s, e) for s in range(n_layers) for e in range(s + 1, n_layers + 1)]


def _window_label(w: tuple[int, int]) -> str:
    return f"[{w[0]}, {w[1]})"


@dataclass
class WindowSelection:
    """Scores of CAAP layer windows and the recommended window.

    Attributes:
        table: One row per window (mean over images): ``start``, ``end``, ``width``, ``insertion_auc``,
            ``deletion_auc``, ``ins_minus_del`` and ``pointing_game`` (with masks).
        per_image: The same metrics per window and image (long format, column ``image``).
        recommended: The window with the best mean ``criterion`` (ties: the earlier row).
        criterion: Name of the selection criterion (a key of :data:`CRITERIA`).
        n_layers: Depth of the model.
        maps: CAAP patch maps per window ``{(start, end): [batch, grid_h, grid_w]}``.
        pixels: The images in [0, 1] ``[batch, channel, height, width]`` (for overlays).
        options: CAAP and evaluation settings.
        zmid: Centre of the figures' diverging colour scale per window and image (the unpatched neutral score;
            it differs between windows only for ``neutral="mean_activations"``, whose neutral run starts at the
            window's first block; 0 for ``direction="noising"``, whose maps are drops)
            ``{(start, end): [score per image]}``.
        warnings: The neutral-context warnings of the CAAP runs (see :attr:`Attribution.warnings`), each once;
            logged once by :func:`select_window`.
        neutral_choice: The neutral used per image (``neutral="auto"`` picks one per image).

    Example:
        >>> best = sel.table.sort_values("ins_minus_del", ascending=False).iloc[0]
        >>> (int(best["start"]), int(best["end"])) == sel.recommended
        True
        >>> fig = sel.heatmap("deletion_auc")
    """

    table: Any
    per_image: Any
    recommended: tuple[int, int]
    criterion: str
    n_layers: int
    maps: dict[tuple[int, int], Tensor]
    pixels: Tensor
    options: dict[str, Any] = field(default_factory=dict)
    zmid: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    neutral_choice: list[str] = field(default_factory=list)

    def _metric(self, metric: str | None) -> str:
        metric = CRITERIA[self.criterion][0] if metric is None else metric
        available = [m for m in _METRICS if m in self.table.columns]
        check_choice(metric, available, "metric")
        return metric

    def scores(self, metric: str | None = None) -> Float[Tensor, "start end"]:
        """Mean ``metric`` as a ``[start, end - 1]`` grid (``L x L``), NaN for windows not evaluated.

        Example:
            >>> sel.scores("insertion_auc").shape       # [start, end - 1]: window [0, 2) is [0, 1]
            torch.Size([4, 4])
        """
        metric = self._metric(metric)
        grid = torch.full((self.n_layers, self.n_layers), float("nan"), dtype=torch.float64)
        for s, e, v in zip(self.table["start"], self.table["end"], self.table[metric]):
            grid[int(s), int(e) - 1] = float(v)
        return grid

    def intervals(
        self, metric: str | None = None, reference: tuple[int, int] | None = None, level: float = 0.95
    ) -> Any:
        """Each window's mean ``metric`` with a Student-t interval, and its paired difference to a reference window.

        All windows are scored on the same images, so the fair comparison of two windows is paired: per image,
        this window's score minus the reference window's. A window is significantly better than the reference
        when ``diff_low > 0`` (for ``deletion_auc``, where lower is better, when ``diff_high < 0``).

        Args:
            metric: A table metric (default: the criterion's column).
            reference: The window the differences are taken to (default: the recommended window); it must be
                one of the scored windows.
            level: Coverage of the intervals, in (0, 1).

        Returns:
            A ``pandas.DataFrame`` in table order: ``start``, ``end``, ``<metric>``, ``<metric>_ci`` (half-width),
            ``n``, ``diff``, ``diff_ci``, ``diff_low``, ``diff_high``, and ``pointing_game`` where masks were given.

        Raises:
            ValueError: an unknown metric, a reference window that was not scored, or a level not in (0, 1).

        Example:
            >>> iv = sel.intervals(reference=(0, 2))
            >>> list(iv.columns)[:4], float(iv.loc[(iv.start == 0) & (iv.end == 2), "diff"].iloc[0])
            (['start', 'end', 'ins_minus_del', 'ins_minus_del_ci'], 0.0)
        """
        import pandas as pd

        metric = self._metric(metric)
        check_fraction(level, "level", open_low=True, open_high=True)
        windows = [(int(s), int(e)) for s, e in zip(self.table["start"], self.table["end"])]
        reference = self.recommended if reference is None else check_window(reference, self.n_layers, name="reference")
        if reference not in windows:
            raise ValueError(f"reference: expected one of the scored windows {windows}, got {reference}")
        wide = self.per_image.pivot_table(index="image", columns=["start", "end"], values=metric, dropna=False)
        ref = wide[reference].tolist()
        rows = []
        for w in windows:
            values = wide[w].tolist()
            mean, ci, n = mean_ci(values, level)
            diff, diff_ci, _ = paired_ci(values, ref, level)
            row = {"start": w[0], "end": w[1], metric: mean, f"{metric}_ci": ci, "n": n,
                   "diff": diff, "diff_ci": diff_ci, "diff_low": diff - diff_ci, "diff_high": diff + diff_ci}
            if "pointing_game" in self.table.columns and metric != "pointing_game":
                row["pointing_game"] = float(self.table.loc[windows.index(w), "pointing_game"])
            rows.append(row)
        return pd.DataFrame(rows)

    def heatmap(self, metric: str | None = None, title: str | None = None):
        """Start x end heatmap of a metric (default: the criterion), best window starred, recommended boxed."""
        from vit_patching.plotting import window_heatmap

        metric = self._metric(metric)
        L = self.n_layers
        return window_heatmap(
            self.scores(metric), metric_name=metric, higher_is_better=_METRICS[metric],
            highlight=(self.recommended[0], self.recommended[1] - 1),
            start_labels=[str(s) for s in range(L)], end_labels=[str(e) for e in range(1, L + 1)],
            title=f"CAAP layer windows: {metric}" if title is None else title,
        )

    def _check_windows(self, windows: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
        windows = sorted(self.maps) if windows is None else [tuple(w) for w in windows]
        missing = [w for w in windows if w not in self.maps]
        if not windows or missing:
            raise ValueError(f"windows: expected evaluated windows (see .table), got {missing or windows}")
        return windows

    def _check_image(self, i: int) -> None:
        n = self.pixels.shape[0]
        if not isinstance(i, int) or not 0 <= i < n:
            raise ValueError(f"i: expected an image index in [0, {n}), got {i!r}")

    def slider(self, i: int = 0, windows: Sequence[tuple[int, int]] | None = None, over_image: bool = True):
        """One figure with a slider that steps through the maps of image ``i`` window by window.

        Example:
            >>> fig = sel.slider(0, windows=[(0, 1), (0, 2)])   # e.g. widen the window step by step
        """
        from vit_patching.plotting import window_slider

        self._check_image(i)
        windows = self._check_windows(windows)
        maps, zmid, label = centred_maps([self.maps[w][i] for w in windows], [self.zmid[w][i] for w in windows],
                                         self._value_label())
        return window_slider(
            maps, [_window_label(w) for w in windows], self.pixels[i] if over_image else None,
            upsample=self.options["upsample"], title="CAAP window", value_label=label, zmid=zmid,
        )

    def compare(self, windows: Sequence[tuple[int, int]] | None = None, i: int = 0, over_image: bool = True):
        """The maps of image ``i`` for several windows side by side (default: every window)."""
        from vit_patching.plotting import compare_maps

        self._check_image(i)
        windows = self._check_windows(windows)
        maps, zmid, label = centred_maps([self.maps[w][i] for w in windows], [self.zmid[w][i] for w in windows],
                                         self._value_label())
        return compare_maps(
            {_window_label(w): m for w, m in zip(windows, maps)}, self.pixels[i] if over_image else None,
            upsample=self.options["upsample"], value_label=label, zmid=zmid,
        )

    def _value_label(self) -> str:
        readout = self.options["readout"]
        if self.options.get("method") == "caap_shapley":
            drop = " drop" if self.options.get("direction") == "noising" else ""
            return f"Shapley value ({readout.removeprefix('delta_')}{drop})"
        return f"{readout.removeprefix('delta_')} drop" if self.options.get("direction") == "noising" else readout

    def __repr__(self) -> str:
        return (
            f"WindowSelection(windows={len(self.table)}, recommended={self.recommended}, "
            f"criterion={self.criterion!r}, images={self.pixels.shape[0]})"
        )


def select_window(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    windows: Sequence[tuple[int, int]] | None = None,
    *,
    target: int | Int[Tensor, " batch"] | None = None,
    masks: Shaped[Tensor, "batch height width"] | None = None,
    criterion: str = "ins_minus_del",
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    readout: str = DEFAULT_READOUT,
    direction: str = DEFAULT_DIRECTION,
    include_prefix: bool = False,
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    upsample: str = DEFAULT_UPSAMPLE,
    warn_share: float = DEFAULT_WARN_SHARE,
    score: str = "prob",
    insertion_substrate: str | Tensor = "zeros",
    deletion_substrate: str | Tensor = "zeros",
    pg_tolerance: int | float | None = None,
    eval_kwargs: Mapping[str, Any] | None = None,
    batch_size: int | str = 64,
    max_memory: int | None = None,
    progress: bool = False,
    coalitions: int | None = None,
    coalition_groups: int | Int[Tensor, "grid_h grid_w"] | None = None,
    coalition_seed: int = 0,
) -> WindowSelection:
    """Score CAAP maps of every candidate layer window and recommend one.

    Args:
        model: A HookedViT with a classification head.
        images: Held-out normalised images ``[batch, C, H, W]``.
        windows: Candidate ``(start, end)`` windows; ``None`` = all ``L (L + 1) / 2``.
        target: Class per image; ``None`` = the prediction (also the class the metrics score).
        masks: Evidence masks ``[batch, H, W]`` (non-zero = evidence) for the pointing game, optional.
        criterion: ``"ins_minus_del"`` (default), ``"insertion"``, ``"deletion"`` or ``"pointing_game"``.
        neutral, site, readout, include_prefix, reference, blur_sigma, upsample, warn_share: CAAP options (see
            :func:`~vit_patching.patching.caap.caap`).
        direction: ``"denoising"`` (default) or ``"noising"`` (the maps are score drops; see
            :func:`~vit_patching.patching.caap.caap`). The windows are scored on those maps.
        score: Score of the insertion/deletion curves: ``"prob"`` (RISE) or ``"logit"``.
        insertion_substrate, deletion_substrate: What insertion starts from / deletion fills in (see
            :func:`~vit_patching.evaluation.make_substrate`): ``"zeros"`` (dataset-mean colour, default),
            ``"blur"``, ``"image_mean"``, ``"black"`` or a tensor (:data:`vit_patching.images.BASELINES`).
        pg_tolerance: Pointing-game tolerance in pixels (default: half a patch).
        eval_kwargs: Extra keyword arguments for :func:`~vit_patching.evaluation.insertion_deletion` (both
            modes), e.g. ``{"step": 2}``.
        batch_size: Rows per forward pass, for CAAP and the metrics, or ``"auto"``: as many as fit
            ``max_memory``, counting the cached source run and neutral prefixes of every window
            (:func:`~vit_patching.patching.caap.caap_memory`); resolved once for every window.
        max_memory: Budget in bytes for ``batch_size="auto"`` (default a share of the free memory).
        progress: Show a tqdm bar over the windows.
        coalitions: ``None`` (default) scores single-patch CAAP maps; an even number ``N`` scores coalition CAAP
            maps instead (:func:`~vit_patching.patching.caap_shapley.caap_shapley` with ``n_permutations=N``, one
            call per window, the same permutations for every window), in ``direction``'s game.
        coalition_groups: Coalition CAAP's players (``groups`` of ``caap_shapley``: ``None`` = every patch, ``k`` =
            k x k blocks, or a ``[grid_h, grid_w]`` label tensor); only with ``coalitions``.
        coalition_seed: Seed of coalition CAAP's permutations.

    Returns:
        A :class:`WindowSelection`.

    Raises:
        ValueError: a bad window (naming ``windows``), an unknown criterion, ``criterion="pointing_game"``
            without masks, masks of the wrong shape, an odd ``coalitions``, ``coalition_groups`` without
            ``coalitions``, or any CAAP input error.

    Example:
        >>> sel = select_window(model, images, [(0, 1), (0, 2), (1, 3)], masks=masks, eval_kwargs={"step": 8})
        >>> sel.recommended in [(0, 1), (0, 2), (1, 3)], list(sel.table.columns)[:3]
        (True, ['start', 'end', 'width'])
        >>> shap = select_window(model, images, [(0, 2), (1, 3)], coalitions=2, coalition_groups=2,
        ...                      eval_kwargs={"step": 8})                  # coalition CAAP maps, 2 permutations
        >>> shap.options["method"], shap.options["n_permutations"]
        ('caap_shapley', 2)
    """
    import pandas as pd


    check_scores(model)
    model.check_images(images)
    check_memory_args(batch_size, max_memory)
    warn_share = check_positive_number(warn_share, "warn_share", allow_zero=True)
    L = model.cfg.n_layers
    if windows is None:
        windows = all_windows(L)
    elif isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence) or len(windows) == 0:
        raise ValueError(f"windows: expected a non-empty sequence of (start, end) pairs or None, got {windows!r}")
    windows = [check_window(w, L, name=f"windows[{k}]") for k, w in enumerate(windows)]
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows: expected distinct windows, got duplicates in {windows}")
    check_choice(criterion, list(CRITERIA), "criterion")
    check_choice(score, ("prob", "logit"), "score")
    check_choice(readout, READOUTS, "readout")
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(upsample, UPSAMPLES, "upsample")
    if masks is not None:
        if not isinstance(masks, Tensor) or masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(
                f"masks: expected [batch, height, width] = {[images.shape[0], *images.shape[-2:]]}, "
                f"got {tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}"
            )
    elif criterion == "pointing_game":
        raise ValueError("masks: criterion='pointing_game' needs evidence masks, got None")
    for sub in (insertion_substrate, deletion_substrate):  # fail before any CAAP run
        make_substrate(images[:1], sub[:1] if isinstance(sub, Tensor) and sub.ndim == 4 else sub)
    if coalitions is None:
        if coalition_groups is not None:
            raise ValueError(f"coalition_groups: only used with coalitions=N (coalition CAAP), got {coalition_groups!r} "
                             "with coalitions=None")
    else:
        coalitions = check_positive_int(coalitions, "coalitions")
        if coalitions % 2:
            raise ValueError(f"coalitions: expected an even number of permutations (antithetic pairs), got {coalitions}")
        coalition_seed = check_seed(coalition_seed, "coalition_seed")
        try:  # a bad player argument fails here, before any run, under select_window's name for it
            player_groups(model.grid_size_for(images), coalition_groups)
        except ValueError as err:
            raise ValueError(f"coalition_{err}") from None
    tolerance = model.cfg.patch_size[0] / 2 if pg_tolerance is None else pg_tolerance
    eval_kwargs = dict(eval_kwargs or {})
    reserved = {"mode", "unit", "score", "targets", "batch_size", "substrate"} & set(eval_kwargs)
    if reserved:
        raise ValueError(f"eval_kwargs: {sorted(reserved)} are set by select_window, got them in eval_kwargs")

    if batch_size == "auto":
        check_choice(site, list(SITES), "site")
        batch_size = resolve_batch_size(batch_size, model, max_memory=max_memory,
                                        **caap_memory(model, images, windows, site, include_prefix))
    ctx = None
    if coalitions is None:  # one source run and one neutral prefix per start, shared by every window
        ctx = prepare_caap(
            model, images, starts=[w[0] for w in windows],
            layers=range(min(w[0] for w in windows), max(w[1] for w in windows)), target=target, neutral=neutral,
            site=site, reference=reference, blur_sigma=blur_sigma, batch_size=batch_size, direction=direction,
        )
    rows, per_image, maps, zmid, warns = [], [], {}, {}, []
    pixels = None
    for w in tqdm(windows, desc="windows", disable=not progress, leave=False):
        if ctx is not None:
            attr = caap_from_context(
                model, ctx, w, readout=readout, include_prefix=include_prefix, upsample=upsample,
                batch_size=batch_size, warn_share=warn_share, log_warnings=False,
            )
        else:  # caap_shapley itself, so the scored maps are exactly its maps
            attr = caap_shapley(
                model, images, target, w, n_permutations=coalitions, groups=coalition_groups, seed=coalition_seed,
                neutral=neutral, site=site, readout=readout, include_prefix=include_prefix, direction=direction,
                reference=reference, blur_sigma=blur_sigma, upsample=upsample, warn_share=warn_share,
                batch_size=batch_size, log_warnings=False,
            )
        targets = attr.target.to(images.device)  # the same for every window (the source run's prediction)
        # The colour-scale centre is the window's own (it depends on the start for mean_activations; 0 for noising).
        pixels, zmid[w] = attr.pixels, [attr.zmid(b) for b in range(images.shape[0])]
        warns += [m for m in attr.warnings if m not in warns]
        maps[w] = attr.map
        common = dict(targets=targets, unit="patch", score=score, batch_size=batch_size, **eval_kwargs)
        amap = attr.map.to(images.device)
        ins = insertion_auc(model, images, amap, substrate=insertion_substrate, **common).auc.double().cpu()
        dele = deletion_auc(model, images, amap, substrate=deletion_substrate, **common).auc.double().cpu()
        metrics = {"insertion_auc": ins, "deletion_auc": dele, "ins_minus_del": ins - dele}
        if masks is not None:
            pg = pointing_game(attr.map, masks.cpu(), tolerance=tolerance)
            metrics["pointing_game"] = torch.where(pg.valid, pg.hits.double(), torch.nan)
        rows.append({"start": w[0], "end": w[1], "width": w[1] - w[0], **{k: float(v.nanmean()) for k, v in metrics.items()}})
        for b in range(images.shape[0]):
            per_image.append({"start": w[0], "end": w[1], "image": b, **{k: float(v[b]) for k, v in metrics.items()}})
    table = pd.DataFrame(rows)
    column, higher = CRITERIA[criterion]
    values = torch.tensor(table[column].to_numpy(), dtype=torch.float64)
    values = torch.where(values.isnan(), torch.tensor(-torch.inf if higher else torch.inf, dtype=torch.float64), values)
    best = int(values.argmax() if higher else values.argmin())  # first best row on ties
    recommended = windows[best]
    options = dict(ctx.options) if ctx is not None else dict(attr.settings)
    options.update(
        method="caap" if ctx is not None else "caap_shapley",
        readout=readout, include_prefix=include_prefix, upsample=upsample, score=score, unit="patch",
        warn_share=warn_share, insertion_substrate=describe_substrate(insertion_substrate),
        deletion_substrate=describe_substrate(deletion_substrate),
        pg_tolerance=tolerance if masks is not None else None, batch_size=batch_size, n_images=images.shape[0],
        **eval_kwargs,
    )
    for m in warns:
        logger.warning(m)
    logger.info("select_window: recommended %s by %s = %.4g", recommended, column, float(table[column][best]))
    return WindowSelection(
        table=table, per_image=pd.DataFrame(per_image), recommended=recommended, criterion=criterion,
        n_layers=L, maps=maps, pixels=pixels, options=options, zmid=zmid,
        warnings=warns, neutral_choice=list(attr.neutral_choice),
    )

"""CAAP: Causal Attribution via Activation Patching (Izadi et al., arXiv 2603.13652).

For each image patch ``i``, the source image's activations at ``i`` are written into a *neutral* target
context at every layer of a window ``[start, end)``; the patched run's target-class score is patch ``i``'s
attribution. Only the paper's abstract could be read, so every free choice is an option here (see
``/work/shared/design/caap.md`` for the reconstruction):

* ``neutral`` — the context patched into: ``"zeros"`` (0 after normalisation = the dataset-mean colour),
  ``"black"`` (0 in pixel space), ``"image_mean"`` (each image's mean colour), ``"blur"`` (the blurred
  source), a user image tensor, or ``"mean_activations"`` (the mean residual of a ``reference`` image set,
  no image at all).
* ``site`` — ``"resid_pre"`` (the residual stream entering each window block, default), ``"resid_post"``,
  ``"attn_out"`` or ``"mlp_out"`` (one component's output at the patch token).
* ``window`` — ``[start, end)``; the patch token is pinned at every layer inside it.
* ``readout`` — ``"logit"``, ``"prob"`` (softmax), ``"delta_logit"`` / ``"delta_prob"`` (minus the unpatched
  neutral run's value; same ranking as the plain readout).
* ``include_prefix`` — also pin CLS / register tokens to their source values inside the window.

How it runs: CAAP is a :class:`~vit_patching.patching.engine.PatchSpec` (variant ``i`` = the site at patch ``i``
in every window layer; prefix positions too with ``include_prefix``) executed by the batched engine. The
source run and the neutral prefix (blocks ``0..start-1``) are computed once; the ``N`` patched runs start at
block ``start`` from the cached neutral residual, batched over patches and images, with fused attention. The
patched runs do not depend on the class, so the logits of every class are kept (:meth:`Attribution.for_class`).

Defaults, measured on the shipped toy models (``docs/caap_defaults.md``; 32 held-out images each, insertion minus
deletion AUC and the pointing game): ``neutral="zeros"``, ``readout="logit"``, ``window=[0, ceil(L / 2))``. With
them, insertion - deletion AUC is 0.888 (toy-shapes) / 0.390 (toy-conjunction) against 0.037 / 0.017 for a random
map, pointing game 0.97 / 0.59 against 0.13 / 0.13. Windows starting at block 0 beat later ones on both models;
``black`` and ``blur`` neutrals are far worse. Deep pretrained ViTs were not measured: choose their window with
:func:`~vit_patching.patching.windows.select_window`.

Example:
    >>> from vit_patching.zoo import load_model, load_dataset
    >>> model = load_model("toy-shapes")
    >>> attr = caap(model, load_dataset("shapes", n=2, seed=0).images, window=(1, 3))
    >>> attr.map.shape, attr.pixel_map.shape
    (torch.Size([2, 8, 8]), torch.Size([2, 64, 64]))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .engine import PatchRun, PatchSpec, Site, run_patch_spec
from .memory import resolve_batch_size

logger = logging.getLogger(__name__)

__all__ = [
    "Attribution", "CAAPContext", "DEFAULT_NEUTRAL", "DEFAULT_READOUT", "NEUTRALS", "READOUTS", "SITES",
    "caap", "compare_attributions", "default_window", "prepare_caap", "caap_from_context",
]

NEUTRALS: tuple[str, ...] = ("zeros", "black", "image_mean", "blur", "mean_activations")
#: Site name -> hook suffix. ``resid_pre`` of block ``l`` is the input of block ``l``.
SITES: dict[str, str] = {
    "resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
}
READOUTS: tuple[str, ...] = ("logit", "prob", "delta_logit", "delta_prob")
UPSAMPLES: tuple[str, ...] = ("nearest", "bilinear")

#: Default neutral context: best or tied-best insertion - deletion AUC on both toy models, computed once for all
#: images (docs/caap_defaults.md).
DEFAULT_NEUTRAL = "zeros"
#: Default readout: ``prob`` was not significantly better on insertion - deletion (+0.011 +- 0.009) and worse on
#: the pointing game (docs/caap_defaults.md).
DEFAULT_READOUT = "logit"
#: Default window as fractions of depth, ``[floor(a * L), ceil(b * L))``: ``[0, 2)`` had the best mean on the
#: 4-layer toys (docs/caap_defaults.md); an extrapolation for deeper models.
DEFAULT_WINDOW_FRACTIONS = (0.0, 0.5)


def default_window(n_layers: int) -> tuple[int, int]:
    """The default window for a model of ``n_layers`` blocks (see :data:`DEFAULT_WINDOW_FRACTIONS`).

    Example:
        >>> default_window(4), default_window(12)
        ((0, 2), (0, 6))
    """
    a, b = DEFAULT_WINDOW_FRACTIONS
    start = min(int(math.floor(a * n_layers)), n_layers - 1)
    end = max(min(int(math.ceil(b * n_layers)), n_layers), start + 1)
    return start, end


# ----------------------------------------------------------------------------------------------- validation
def _check_choice(value: Any, choices: Sequence[str], name: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_window(window: Any, n_layers: int, name: str = "window") -> tuple[int, int]:
    """Validate a layer window ``(start, end)`` with ``0 <= start < end <= n_layers``; return it as ints."""
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in window)
    ):
        raise ValueError(f"{name}: expected a pair of ints (start, end), got {window!r}")
    start, end = int(window[0]), int(window[1])
    if not 0 <= start < end <= n_layers:
        what = "empty" if start == end else "reversed" if end < start else "out of range"
        raise ValueError(
            f"{name}: expected 0 <= start < end <= n_layers = {n_layers} (layers [start, end) are patched), "
            f"got {window!r} ({what})"
        )
    return start, end


def _check_model(model: Any) -> None:
    from vit_patching.model import HookedViT

    if not isinstance(model, HookedViT):
        raise TypeError(f"model: expected a HookedViT (HookedViT.from_timm(...) or zoo.load_model), got {type(model).__name__}")
    if not model.cfg.n_classes:
        raise ValueError("model: expected a model with a classification head (n_classes > 0), got a headless model")


def _check_batch_size(batch_size: Any) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int (rows per forward pass), got {batch_size!r}")


# -------------------------------------------------------------------------------------------- neutral context
def _data_norm(model: Any) -> tuple[Tensor, Tensor] | None:
    dc = model.cfg.data_config or {}
    if "mean" not in dc or "std" not in dc:
        return None
    shape = (1, -1, 1, 1)
    return torch.tensor(dc["mean"], dtype=torch.float32).view(shape), torch.tensor(dc["std"], dtype=torch.float32).view(shape)


def to_pixels(model: Any, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch channel height width"]:
    """Undo the model's input normalisation (its timm data config) to get pixels in [0, 1].

    Without a data config each image is min-max scaled instead (for display only).

    Example:
        >>> to_pixels(model, torch.zeros(1, 3, 64, 64)).unique()  # toy models: mean = std = 0.5
        tensor([0.5000])
    """
    x = images.detach().float().cpu()
    norm = _data_norm(model)
    if norm is None:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)
    mean, std = norm
    return (x * std + mean).clamp(0, 1)


def _blur_kernel(sigma: float, size: int) -> int:
    k = 2 * int(math.ceil(3 * sigma)) + 1  # +-3 sigma
    return max(3, min(k, size if size % 2 else size - 1))


def neutral_images(
    model: Any,
    images: Float[Tensor, "batch channel height width"],
    neutral: str | Tensor,
    blur_sigma: float | None = None,
) -> tuple[Float[Tensor, "_ channel height width"], bool]:
    """The neutral image(s) for an image-based neutral context, and whether they depend on the source.

    Returns a ``[1, C, H, W]`` batch for source-independent neutrals (computed once, shared by every image)
    and a ``[batch, C, H, W]`` batch otherwise.

    Example:
        >>> x0, per_image = neutral_images(model, images, "zeros")
        >>> x0.shape[0], per_image
        (1, False)
    """
    shape = tuple(images.shape[1:])
    if isinstance(neutral, Tensor):
        n = neutral[None] if neutral.ndim == 3 else neutral
        if n.ndim != 4 or tuple(n.shape[1:]) != shape or n.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"neutral: expected an image tensor [{', '.join(map(str, shape))}], [1, ...] or "
                f"[{images.shape[0]}, ...] matching images, got shape {tuple(neutral.shape)}"
            )
        if not n.is_floating_point():
            raise TypeError(f"neutral: expected a floating-point (normalised) image, got dtype {n.dtype}")
        return n.to(device=images.device, dtype=images.dtype), n.shape[0] > 1
    _check_choice(neutral, [n for n in NEUTRALS if n != "mean_activations"], "neutral")
    if neutral == "zeros":
        return torch.zeros((1, *shape), device=images.device, dtype=images.dtype), False
    if neutral == "black":
        norm = _data_norm(model)
        if norm is None:
            raise ValueError("neutral: 'black' needs the model's data config (mean/std); use 'zeros' or an image tensor")
        mean, std = norm
        black = (-mean / std).expand(1, *shape)
        return black.to(device=images.device, dtype=images.dtype), False
    if neutral == "image_mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone(), True
    from vit_patching.evaluation import gaussian_blur

    side = min(shape[1:])
    sigma = side / 16 if blur_sigma is None else blur_sigma
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
        raise ValueError(f"blur_sigma: expected a positive number of pixels or None, got {blur_sigma!r}")
    return gaussian_blur(images.float(), _blur_kernel(float(sigma), side), float(sigma)).to(images.dtype), True


# ------------------------------------------------------------------------------------------------ context
@dataclass
class CAAPContext:
    """Everything the patched runs of several windows share: the source run and the neutral prefixes.

    Built by :func:`prepare_caap`; reused by :func:`caap_from_context` for every window (``select_window``).

    Attributes:
        images: Source images ``[batch, C, H, W]``.
        source_logits: Unpatched source logits ``[batch, n_classes]``.
        source_cache: Source activations ``{hook: [batch, pos, d_model]}`` at the site of every cached layer.
        neutral_resid: Neutral residual entering block ``start``, per start ``{start: [batch | 1, pos, d_model]}``.
        neutral_logits: Unpatched neutral logits per start ``{start: [batch | 1, n_classes]}`` (equal for every
            start unless the neutral is ``mean_activations``).
        target: Class per image ``[batch]``.
        site: Site name.
        options: Neutral description and settings.
    """

    images: Float[Tensor, "batch channel height width"]
    source_logits: Float[Tensor, "batch n_classes"]
    source_cache: dict[str, Tensor]
    neutral_resid: dict[int, Tensor]
    neutral_logits: dict[int, Tensor]
    target: Int[Tensor, " batch"]
    site: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.images.shape[0]


def _site_hook(site: str, layer: int) -> str:
    return f"blocks.{layer}.{SITES[site]}"


def _describe_neutral(neutral: str | Tensor) -> str:
    return f"tensor{list(neutral.shape)}" if isinstance(neutral, Tensor) else neutral


@torch.no_grad()
def prepare_caap(
    model: Any,
    images: Float[Tensor, "batch channel height width"],
    *,
    starts: Sequence[int],
    layers: Sequence[int],
    target: int | Int[Tensor, " batch"] | None = None,
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    batch_size: int = 64,
) -> CAAPContext:
    """Run the source once (caching the site at ``layers``) and the neutral prefix once per start in ``starts``.

    Source-independent neutrals (``zeros``, ``black``, a single user image, ``mean_activations``) are run once
    with batch 1 and shared by every image; ``blur``/``image_mean``/a per-image tensor are run per image.

    Example:
        >>> ctx = prepare_caap(model, images, starts=[0, 1], layers=range(4))
        >>> attr = caap_from_context(model, ctx, window=(1, 3))
    """
    _check_model(model)
    model.check_images(images)
    if images.device != model.device:
        raise ValueError(f"images: expected a tensor on the model's device {model.device}, got {images.device}")
    _check_choice(site, list(SITES), "site")
    if not isinstance(neutral, Tensor):
        _check_choice(neutral, NEUTRALS, "neutral")
    _check_batch_size(batch_size)
    batch = images.shape[0]
    given = model.check_target(target, batch)
    starts, layers = sorted(set(starts)), sorted(set(layers))
    src_hooks = [_site_hook(site, l) for l in layers]
    start_hooks = {s: f"blocks.{s}.hook_resid_pre" for s in starts}

    def cached_run(x: Tensor, hooks: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        outs, caches = [], []
        for i in range(0, x.shape[0], batch_size):
            out, cache = model.run_with_cache(
                x[i : i + batch_size], names_filter=lambda n: n in hooks, return_cache_object=False
            )
            outs.append(out)
            caches.append(cache)
        return torch.cat(outs), {h: torch.cat([c[h] for c in caches]) for h in hooks}

    source_logits, source_cache = cached_run(images, src_hooks)
    if isinstance(neutral, str) and neutral == "mean_activations":
        if reference is None:
            raise ValueError("reference: neutral='mean_activations' needs reference images [n, C, H, W] to average over")
        model.check_images(reference, "reference")
        if reference.shape[1:] != images.shape[1:]:
            raise ValueError(f"reference: expected images of shape [n, {', '.join(map(str, images.shape[1:]))}], got {tuple(reference.shape)}")
        _, ref_cache = cached_run(reference.to(device=images.device, dtype=images.dtype), list(start_hooks.values()))
        neutral_resid = {s: ref_cache[h].mean(dim=0, keepdim=True) for s, h in start_hooks.items()}
        neutral_logits = {s: model(r, start_at_layer=s) for s, r in neutral_resid.items()}
        per_image = False
    else:
        if reference is not None:
            raise ValueError(f"reference: only used with neutral='mean_activations', got neutral={_describe_neutral(neutral)!r}")
        x0, per_image = neutral_images(model, images, neutral, blur_sigma)
        logits0, cache0 = cached_run(x0, list(start_hooks.values()))
        neutral_resid = {s: cache0[h] for s, h in start_hooks.items()}
        neutral_logits = {s: logits0 for s in starts}
    tgt = given if given is not None else source_logits.argmax(dim=-1).cpu()
    options = {
        "neutral": _describe_neutral(neutral),
        "neutral_per_image": per_image,
        "site": site,
        "target_source": "given" if given is not None else "predicted",
    }
    if isinstance(neutral, str) and neutral == "blur":
        options["blur_sigma"] = min(images.shape[-2:]) / 16 if blur_sigma is None else blur_sigma
    if reference is not None:
        options["reference_size"] = reference.shape[0]
    return CAAPContext(images, source_logits, source_cache, neutral_resid, neutral_logits, tgt, site, options)


def caap_spec(model: Any, images: Tensor, window: tuple[int, int], site: str, include_prefix: bool) -> PatchSpec:
    """The CAAP patch spec: variant ``i`` pins patch ``i`` (and the prefix tokens if asked) at every window layer.

    Example:
        >>> spec = caap_spec(model, images, (1, 3), "resid_pre", include_prefix=False)
        >>> spec.variants[0]
        (Site(hook='blocks.1.hook_resid_pre', pos=1, head=None), Site(hook='blocks.2.hook_resid_pre', pos=1, head=None))
    """
    layout = model.layout_for(images)
    prefix = tuple(range(layout.n_prefix)) if include_prefix else ()
    hooks = [_site_hook(site, l) for l in range(*window)]
    variants = [tuple(Site(h, pos=p) for h in hooks for p in (*prefix, i)) for i in layout.patch_positions()]
    return PatchSpec(variants, labels=[layout.label(i) for i in layout.patch_positions()])


def _readout(logits: Tensor, target: Tensor, readout: str, neutral_logits: Tensor) -> Tensor:
    """Readout of ``logits [..., batch, n_classes]`` for ``target [batch]`` (``delta_*``: minus the neutral's)."""

    def score(lg: Tensor) -> Tensor:
        lg = lg.float()
        if readout.endswith("prob"):
            lg = lg.softmax(dim=-1)
        return lg.gather(-1, target.to(lg.device).expand(*lg.shape[:-1])[..., None])[..., 0]

    out = score(logits)
    if readout.startswith("delta_"):
        out = out - score(neutral_logits)
    return out


# ------------------------------------------------------------------------------------------------- result
@dataclass
class Attribution:
    """CAAP maps for a batch of images, with the patched logits of every class and the settings used.

    Attributes:
        map: Attribution per patch ``[batch, grid_h, grid_w]`` (row-major patch grid).
        pixel_map: ``map`` upsampled to the image ``[batch, height, width]`` (``options["upsample"]``).
        target: Class explained per image ``[batch]``.
        window: Layer window ``(start, end)``, blocks ``start..end-1`` patched.
        options: Neutral, site, readout, prefix policy, upsampling, target source, batch size, ...
        neutral_score: Readout of the unpatched neutral run ``[batch]`` (0 for ``delta_*`` readouts).
        source_score: Readout of the unpatched source run ``[batch]`` (same units as ``map``).
        patched_logits: Logits of every patched run ``[batch, grid_h, grid_w, n_classes]`` (maps for any class).
        neutral_logits: Unpatched neutral logits ``[batch, n_classes]``.
        source_logits: Unpatched source logits ``[batch, n_classes]``.
        pixels: Source images in [0, 1] ``[batch, channel, height, width]`` for overlays.
        n_forwards: Patched forward passes run.

    Example:
        >>> attr = caap(model, images, window=(1, 3))
        >>> len(attr.top_patches(0, k=3))     # [(row, col, value), ...], best first
        3
        >>> fig = attr.overlay(0)             # fig.show() in a notebook
    """

    map: Float[Tensor, "batch grid_h grid_w"]
    pixel_map: Float[Tensor, "batch height width"]
    target: Int[Tensor, " batch"]
    window: tuple[int, int]
    options: dict[str, Any]
    neutral_score: Float[Tensor, " batch"]
    source_score: Float[Tensor, " batch"]
    patched_logits: Float[Tensor, "batch grid_h grid_w n_classes"]
    neutral_logits: Float[Tensor, "batch n_classes"]
    source_logits: Float[Tensor, "batch n_classes"]
    pixels: Float[Tensor, "batch channel height width"]
    n_forwards: int = 0

    @property
    def readout(self) -> str:
        return self.options["readout"]

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
        _check_choice(readout, READOUTS, "readout")
        batch, n_classes = self.source_logits.shape
        if target is None:
            t = self.target
        else:
            t = torch.as_tensor(target)
            if t.is_floating_point() or t.dtype == torch.bool:
                raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
            t = t.expand(batch) if t.ndim == 0 else t
            if t.shape != (batch,) or bool(((t < 0) | (t >= n_classes)).any()):
                raise ValueError(f"target: expected {batch} class indices in [0, {n_classes}), got {target!r}")
        logits = self.patched_logits.flatten(1, 2).transpose(0, 1)  # [N, batch, n_classes]
        out = _readout(logits, t, readout, self.neutral_logits)
        return out.transpose(0, 1).reshape(self.map.shape)

    def top_patches(self, i: int = 0, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring patches of image ``i`` as ``(row, col, value)``, best first (ties: raster order)."""
        self._check_index(i)
        flat = self.map[i].flatten()
        order = torch.sort(flat, descending=True, stable=True).indices[: max(0, int(k))]
        gw = self.map.shape[-1]
        return [(int(j) // gw, int(j) % gw, float(flat[j])) for j in order]

    def to_dataframe(self):
        """Long table: one row per image and patch with row, col and value."""
        import pandas as pd

        b, gh, gw = self.map.shape
        grid = torch.stack(torch.meshgrid(torch.arange(b), torch.arange(gh), torch.arange(gw), indexing="ij"), -1)
        flat = grid.reshape(-1, 3)
        return pd.DataFrame({
            "image": flat[:, 0].numpy(), "row": flat[:, 1].numpy(), "col": flat[:, 2].numpy(),
            "target": self.target[flat[:, 0]].numpy(), "value": self.map.reshape(-1).numpy(),
        })

    def _check_index(self, i: int) -> None:
        if not isinstance(i, int) or not 0 <= i < self.map.shape[0]:
            raise ValueError(f"i: expected an image index in [0, {self.map.shape[0]}), got {i!r}")

    def zmid(self, i: int = 0) -> float:
        """Centre of the diverging colour scale for image ``i``: the unpatched neutral score (0 for ``delta_*``),
        so colours show how much each patch raises or lowers the score relative to the neutral context."""
        return float(self.neutral_score[i])

    def _title(self, i: int) -> str:
        return f"CAAP window [{self.window[0]}, {self.window[1]}), class {int(self.target[i])}"

    def plot(self, i: int = 0, title: str | None = None):
        """Patch-grid map of image ``i`` (Plotly figure)."""
        from vit_patching.plotting import patch_map

        self._check_index(i)
        return patch_map(
            self.map[i], title=self._title(i) if title is None else title, value_label=self.readout, zmid=self.zmid(i)
        )

    def overlay(self, i: int = 0, title: str | None = None, upsample: str | None = None):
        """The map of image ``i`` drawn over the image (Plotly figure)."""
        from vit_patching.plotting import attribution_overlay

        self._check_index(i)
        return attribution_overlay(
            self.pixels[i], self.map[i], upsample=upsample or self.options["upsample"],
            title=self._title(i) if title is None else title, value_label=self.readout, zmid=self.zmid(i),
        )

    def __repr__(self) -> str:
        b, gh, gw = self.map.shape
        return (
            f"Attribution(batch={b}, grid={gh}x{gw}, window={self.window}, readout={self.readout!r}, "
            f"neutral={self.options['neutral']!r}, site={self.options['site']!r})"
        )


def compare_attributions(
    attributions: Mapping[str, Attribution], i: int = 0, *, over_image: bool = True, shared_scale: bool = True, title: str = ""
):
    """Several attributions of the same image side by side (e.g. windows or methods), as one Plotly figure.

    Example:
        >>> fig = compare_attributions({"[0,2)": caap(model, images, window=(0, 2)), "[2,4)": caap(model, images, window=(2, 4))})
        >>> [t.name for t in fig.data if t.type == "heatmap"]
        ['[0,2)', '[2,4)']
    """
    from vit_patching.plotting import compare_maps

    if not attributions:
        raise ValueError("attributions: expected at least one Attribution, got an empty mapping")
    first = next(iter(attributions.values()))
    first._check_index(i)
    return compare_maps(
        {k: a.map[i] for k, a in attributions.items()}, first.pixels[i] if over_image else None,
        shared_scale=shared_scale, upsample=first.options["upsample"], title=title, value_label=first.readout,
        zmid=first.zmid(i),
    )


# ---------------------------------------------------------------------------------------------- the method
def caap_from_context(
    model: Any,
    ctx: CAAPContext,
    window: tuple[int, int],
    *,
    readout: str = DEFAULT_READOUT,
    include_prefix: bool = False,
    upsample: str = "nearest",
    batch_size: int = 64,
    progress: bool = False,
) -> Attribution:
    """CAAP for one window from a prepared :class:`CAAPContext` (the window's layers must be cached there).

    Example:
        >>> ctx = prepare_caap(model, images, starts=range(4), layers=range(4))
        >>> maps = {w: caap_from_context(model, ctx, w).map for w in [(0, 2), (1, 3)]}
    """
    start, end = check_window(window, model.cfg.n_layers)
    _check_choice(readout, READOUTS, "readout")
    _check_choice(upsample, UPSAMPLES, "upsample")
    _check_batch_size(batch_size)
    if not isinstance(include_prefix, bool):
        raise TypeError(f"include_prefix: expected a bool, got {type(include_prefix).__name__}")
    if start not in ctx.neutral_resid:
        raise ValueError(f"window: start {start} has no neutral prefix in the context (prepared starts {sorted(ctx.neutral_resid)})")
    missing = [l for l in range(start, end) if _site_hook(ctx.site, l) not in ctx.source_cache]
    if missing:
        raise ValueError(f"window: layers {missing} are not cached in the context (prepare them with layers=...)")
    images = ctx.images
    spec = caap_spec(model, images, (start, end), ctx.site, include_prefix)
    b = ctx.batch
    resid0 = ctx.neutral_resid[start].expand(b, -1, -1)
    logits0 = ctx.neutral_logits[start].expand(b, -1)
    run: PatchRun = run_patch_spec(
        model, spec, lambda logits, image_index: logits,  # keep every class: maps for all classes from N runs
        source=images, target_cache={f"blocks.{start}.hook_resid_pre": resid0}, target_logits=logits0,
        source_cache=ctx.source_cache, source_logits=ctx.source_logits, batch_size=batch_size, progress=progress,
    )
    layout = model.layout_for(images)
    gh, gw = layout.grid_size
    patched = run.values.transpose(0, 1).reshape(b, gh, gw, -1)  # [batch, grid_h, grid_w, n_classes]
    neutral_logits = logits0.float().cpu()
    source_logits = ctx.source_logits.float().cpu()
    tgt = ctx.target
    values = _readout(run.values, tgt, readout, neutral_logits)  # [N, batch]
    amap = values.transpose(0, 1).reshape(b, gh, gw)
    from vit_patching.evaluation import upsample_map

    options = dict(ctx.options)
    options.update(readout=readout, include_prefix=include_prefix, upsample=upsample, batch_size=batch_size)
    return Attribution(
        map=amap,
        pixel_map=upsample_map(amap, tuple(images.shape[-2:]), mode=upsample),
        target=tgt,
        window=(start, end),
        options=options,
        neutral_score=_readout(neutral_logits, tgt, readout, neutral_logits),
        source_score=_readout(source_logits, tgt, readout, neutral_logits),
        patched_logits=patched,
        neutral_logits=neutral_logits,
        source_logits=source_logits,
        pixels=to_pixels(model, images),
        n_forwards=run.n_forwards,
    )


def caap(
    model: Any,
    images: Float[Tensor, "batch channel height width"],
    target: int | Int[Tensor, " batch"] | None = None,
    window: tuple[int, int] | None = None,
    *,
    neutral: str | Float[Tensor, "..."] = DEFAULT_NEUTRAL,
    site: str = "resid_pre",
    readout: str = DEFAULT_READOUT,
    include_prefix: bool = False,
    reference: Float[Tensor, "ref channel height width"] | None = None,
    blur_sigma: float | None = None,
    upsample: str = "nearest",
    batch_size: int | str = 64,
    progress: bool = False,
) -> Attribution:
    """CAAP attribution maps: each patch's source activations pinned into a neutral context over a layer window.

    Args:
        model: A HookedViT with a classification head (eval mode).
        images: Normalised source images ``[batch, C, H, W]`` at the model's input size.
        target: Class to explain per image (int or ``[batch]``); ``None`` = the model's prediction.
        window: ``(start, end)``: blocks ``start..end-1`` get the patch pinned; ``None`` = :func:`default_window`.
        neutral: ``"zeros"``, ``"black"``, ``"image_mean"``, ``"blur"``, ``"mean_activations"`` or a normalised
            image tensor ``[C, H, W]`` / ``[1 | batch, C, H, W]``.
        site: ``"resid_pre"`` (default), ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        readout: ``"logit"``, ``"prob"``, ``"delta_logit"`` or ``"delta_prob"`` (minus the unpatched neutral run).
        include_prefix: Also pin CLS/register tokens to their source values inside the window (default: they
            come from the neutral run).
        reference: Images whose mean residual is the neutral context for ``neutral="mean_activations"``.
        blur_sigma: Gaussian sigma in pixels for ``neutral="blur"`` (default: image side / 16).
        upsample: How ``pixel_map`` is made from the patch map: ``"nearest"`` or ``"bilinear"``.
        batch_size: Patched rows (patch x image) per forward pass, or ``"auto"`` (from free memory, see
            :func:`~vit_patching.patching.memory.auto_batch_size`).
        progress: Show a tqdm bar over the patched chunks.

    Returns:
        An :class:`Attribution`.

    Raises:
        ValueError/TypeError: naming the argument, for an empty, reversed or out-of-range window, a target out
            of range, images of the wrong size, or an unknown option.

    Example:
        >>> from vit_patching.zoo import load_model, load_dataset
        >>> model = load_model()
        >>> attr = caap(model, load_dataset("shapes", n=4, seed=0).images, window=(0, 2), readout="prob")
        >>> attr.map.shape, attr.target.shape
        (torch.Size([4, 8, 8]), torch.Size([4]))
    """
    _check_model(model)
    batch_size = resolve_batch_size(batch_size, model)  # "auto": rows per forward from the free memory
    L = model.cfg.n_layers
    window = default_window(L) if window is None else check_window(window, L)
    _check_choice(readout, READOUTS, "readout")
    _check_choice(upsample, UPSAMPLES, "upsample")
    ctx = prepare_caap(
        model, images, starts=[window[0]], layers=range(*window), target=target, neutral=neutral, site=site,
        reference=reference, blur_sigma=blur_sigma, batch_size=batch_size,
    )
    return caap_from_context(
        model, ctx, window, readout=readout, include_prefix=include_prefix, upsample=upsample,
        batch_size=batch_size, progress=progress,
    )

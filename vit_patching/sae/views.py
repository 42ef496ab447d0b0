"""Feature views of an SAE's latents: top-activating images with per-patch maps, activation histograms and firing
frequencies, from one memory-bounded pass over an image stream (``docs/sae.md``, "Feature views").

:func:`feature_activations` streams images (a tensor, an iterable of batches, or a
:class:`~vit_patching.runs.dataset.ImageSet` such as ``zoo_images("shapes", n=1024)``) through the model with the SAE
spliced at its hook and keeps, per latent, only:

* a running top-``k`` of images by their largest activation over the counted tokens, with each winner's per-patch
  activation map (and prefix-token activations, label, predicted class, thumbnail when asked); ties go to the
  earlier image, so the result does not depend on the batching;
* the number of counted tokens where it fires (activation > 0);
* an exact histogram of its positive activations with ``bins`` bins of width ``2**e``: when a larger activation
  arrives the width doubles and neighbouring bins merge, which is exact (``floor(v / 2w) = floor(floor(v / w) / 2)``
  and dividing by a power of two does not round), so the counts equal a histogram of all the activations with the
  final edges ``[0, w, 2w, ..., bins * w]``.

Memory is ``O(latents * k * (patches + thumbnail))`` plus one batch of latents, whatever the number of images.
The direct effect of a latent on the classes is in :mod:`vit_patching.sae.effects`; the gallery in
:mod:`vit_patching.sae.gallery`.

Example:
    >>> acts = feature_activations(model, sae, images, k=4, latents=[0, 5, 9])
    >>> acts.top_values.shape, acts.top_maps.shape        # [latent, k], [latent, k, grid_h, grid_w]
    (torch.Size([3, 4]), torch.Size([3, 4, 4, 4]))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int, UInt8
from torch import Tensor, nn
from tqdm.auto import tqdm

from vit_patching.checks import check_batch_size, check_bool, check_choice, check_finite, check_indices, check_positive_int
from vit_patching.images import to_pixels
from vit_patching.model import HookedViT
from vit_patching.runs.dataset import ImageSet
from vit_patching.sae.splice import spliced_saes

__all__ = ["FeatureActivations", "TOKENS", "feature_activations", "resolve_splice"]

#: Which of the SAE's tokens count for an image's score and the histograms (``None``: every token the SAE reads).
TOKENS = ("all", "patches", "cls")
#: What :func:`feature_activations` streams: normalised images, an iterable of batches, or an ImageSet.
Images = Union[Tensor, ImageSet, Iterable]


@dataclass
class FeatureActivations:
    """Per latent: the top-``k`` images and their maps, the firing count and the activation histogram.

    Rows follow ``latents``; columns of the ``top_*`` tensors are the winners, largest activation first (ties: the
    earlier image first). There are ``min(k, n_images)`` columns.

    Attributes:
        hook_name: The hook the SAE reads.
        latents: The SAE latent of each row.
        tokens: The tokens counted (``"all"`` = every token the SAE reads, ``"patches"``, ``"cls"``).
        top_values: Each winner's largest activation over the counted tokens.
        top_indices: Each winner's position in the image stream.
        top_names: Each winner's name (the ImageSet's names, else ``"image {i}"``).
        top_maps: The winner's activation at every patch token ``[latent, k, grid_h, grid_w]`` (``None`` for an SAE
            that reads only CLS).
        top_prefix: The winner's activation at the prefix tokens (CLS, distillation, registers) when the SAE reads
            them with the patches, else ``None``.
        top_labels: The winner's label (``-1`` unknown).
        top_predictions: The class the model predicted for the winner (``-1`` for a model without class scores).
        thumbnails: uint8 thumbnails of the winners ``[latent, k, C, h, w]`` (``keep_images=True``), else ``None``.
        fire_count: Counted tokens where the latent is > 0.
        n_tokens: Counted tokens in all (images times tokens per image).
        n_images: Images streamed.
        hist_counts: Positive activations per bin ``[latent, bins]``.
        hist_width: Bin width per latent (a power of two; 0 for a latent that never fired).
        class_names: The model's class names (``model.readout.class_names``), or ``None``.
        prefix_labels: The names of ``top_prefix``'s tokens (``"CLS"``, ``"DIST"``, ``"REG0"``, ...).
    """

    hook_name: str
    latents: list[int]
    tokens: str
    top_values: Float[Tensor, "latent k"]
    top_indices: Int[Tensor, "latent k"]
    top_names: list[list[str]]
    top_maps: Float[Tensor, "latent k grid_h grid_w"] | None
    top_prefix: Float[Tensor, "latent k prefix"] | None
    top_labels: Int[Tensor, "latent k"]
    top_predictions: Int[Tensor, "latent k"]
    thumbnails: UInt8[Tensor, "latent k channel h w"] | None
    fire_count: Int[Tensor, " latent"]
    n_tokens: int
    n_images: int
    hist_counts: Int[Tensor, "latent bins"]
    hist_width: Float[Tensor, " latent"]
    class_names: list[str] | None = None
    prefix_labels: tuple[str, ...] = ()

    @property
    def frequency(self) -> Float[Tensor, " latent"]:
        """Firing frequency: the share of counted tokens where each latent is > 0 (float64)."""
        return self.fire_count.double() / max(self.n_tokens, 1)

    def row(self, latent: int) -> int:
        """The row of SAE latent ``latent``; a ValueError naming ``latent`` if it was not tracked."""
        if latent not in self.latents:
            shown = self.latents if len(self.latents) <= 20 else f"{self.latents[:20]}..."
            raise ValueError(f"latent: expected one of the tracked latents {shown}, got {latent!r}")
        return self.latents.index(latent)

    def hist_edges(self, latent: int) -> Float[Tensor, " edges"]:
        """Bin edges ``[0, w, ..., bins * w]`` of ``latent``'s histogram (all 0 if it never fired)."""
        r = self.row(latent)
        return torch.arange(self.hist_counts.shape[1] + 1, dtype=torch.float64) * self.hist_width[r]

    def histogram_figure(self, latent: int, title: str | None = None) -> Any:
        """Plotly bars of ``latent``'s positive activations (``vit_patching.plotting.features.activation_histogram``)."""
        from vit_patching.plotting.features import activation_histogram

        r = self.row(latent)
        name = title if title is not None else f"latent {latent} at {self.hook_name}"
        return activation_histogram(self.hist_counts[r], float(self.hist_width[r]), n_tokens=self.n_tokens,
                                    title=name)

    def density_figure(self, title: str | None = None) -> Any:
        """Plotly histogram of log10 firing frequency across the tracked latents, dead ones counted apart
        (:func:`vit_patching.plotting.features.feature_density`)."""
        from vit_patching.plotting.features import feature_density

        return feature_density(self.frequency, title=title if title is not None else f"feature density at {self.hook_name}")


def resolve_splice(model: HookedViT, sae: nn.Module) -> tuple[str, str, contextlib.AbstractContextManager]:
    """``(hook name, positions, context)``: where ``sae`` runs and a context that splices it (with the error term,
    so the model's outputs are unchanged) unless it is spliced already.

    Raises:
        TypeError: ``sae`` has no ``encode``/``decode`` or states no ``cfg.hook_name``.
        ValueError: another SAE is spliced at its hook.
    """
    if not isinstance(model, HookedViT):
        raise TypeError(f"model: expected a HookedViT, got {type(model).__name__}")
    if not isinstance(sae, nn.Module) or not callable(getattr(sae, "encode", None)) \
            or not callable(getattr(sae, "decode", None)):
        raise TypeError(f"sae: expected an nn.Module with encode(x) and decode(latents), got {type(sae).__name__}")
    hook = getattr(getattr(sae, "cfg", None), "hook_name", None)
    spliced = {name: s for name, s in spliced_saes(model).items() if s.module is sae}
    if spliced:
        name, splice = next(iter(spliced.items()))
        return name, splice.positions, contextlib.nullcontext()
    if not isinstance(hook, str):
        raise TypeError("sae: expected an SAE that states its hook (sae.cfg.hook_name) or one spliced into the model "
                        f"(model.add_sae(sae, hook_name=...)), got {type(sae).__name__} without one")
    if hook not in model.hook_dict:
        raise ValueError(f"sae: expected an SAE at one of the model's hooks (model.hook_dict), got cfg.hook_name={hook!r}")
    other = spliced_saes(model).get(hook)
    if other is not None:
        raise ValueError(f"sae: another SAE is spliced at {hook!r}; remove it first (model.reset_saes())")
    positions = getattr(sae.cfg, "positions", "all")
    return hook, positions, model.saes([sae], use_error_term=True)


def _d_sae(sae: nn.Module) -> int | None:
    for v in (getattr(sae, "d_sae", None), getattr(getattr(sae, "cfg", None), "d_sae", None)):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    W = getattr(sae, "W_dec", None)
    return W.shape[0] if isinstance(W, Tensor) and W.ndim == 2 else None


def _batches(model: HookedViT, images: Images, batch_size: int, labels: Tensor | None, span: tuple[int, int]
             ) -> Iterator[tuple[Tensor, Tensor | None, list[str] | None]]:
    """``(images, labels or None, names or None)`` chunks of at most ``batch_size`` (an iterable's own batches)."""
    if isinstance(images, Tensor):
        for s in range(0, images.shape[0], batch_size):
            yield images[s:s + batch_size], None if labels is None else labels[s:s + batch_size], None
    elif isinstance(images, ImageSet):
        for s in range(span[0], span[1], batch_size):
            e = min(s + batch_size, span[1])
            chunk = images.load(model, s, e)
            yield chunk.images, chunk.labels, images.names[s:e]
    else:
        for i, batch in enumerate(images):
            x, y = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
            if not isinstance(x, Tensor) or x.ndim != 4:
                raise ValueError(f"images: expected batches [batch, C, H, W] (or (images, labels) pairs), got "
                                 f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__} as batch {i}")
            yield x, y, None


def _check_images(images: Any, labels: Any) -> None:
    if isinstance(images, Tensor):
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images: expected normalised images [batch, C, H, W] (floating point), got "
                             f"{images.dtype} {tuple(images.shape)}")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != images.shape[:1]):
            raise ValueError(f"labels: expected a tensor [{images.shape[0]}] (one label per image), got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    elif labels is not None:
        raise ValueError("labels: expected None unless images is a tensor (an ImageSet or an iterable of "
                         f"(images, labels) pairs brings its own), got {type(labels).__name__}")
    elif isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, (ImageSet, Iterable)):
        raise TypeError(f"images: expected a tensor [batch, C, H, W], an ImageSet (runs.zoo_images / folder_images) "
                        f"or an iterable of batches, got {type(images).__name__}")


def _check_span(span: Any, images: Any) -> tuple[int, int]:
    """``(start, stop)`` of the images to stream (``(0, 0)`` stands for "all" of a tensor or an iterable)."""
    n = len(images) if isinstance(images, ImageSet) else 0
    if span is None:
        return 0, n
    if not isinstance(images, ImageSet):
        raise ValueError(f"span: expected None unless images is an ImageSet (slice a tensor yourself), got {span!r}")
    ok = isinstance(span, (tuple, list)) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                      for v in span)
    if not ok or not 0 <= span[0] < span[1] <= n:
        raise ValueError(f"span: expected (start, stop) with 0 <= start < stop <= {n} (the ImageSet's size), got {span!r}")
    return int(span[0]), int(span[1])


def _token_slices(model: HookedViT, positions: str, tokens: str) -> tuple[slice, slice | None, slice | None]:
    """``(counted, patches, prefix)`` slices of the SAE's token axis (``None``: not read by the SAE)."""
    n_prefix = model.cfg.n_prefix
    if positions == "all":
        counted = {"all": slice(None), "patches": slice(n_prefix, None), "cls": slice(0, 1)}[tokens]
        if tokens == "cls" and not model.cfg.has_cls:
            raise ValueError("tokens: expected 'all' or 'patches' for a model without a CLS token, got 'cls'")
        return counted, slice(n_prefix, None), (slice(0, n_prefix) if n_prefix else None)
    if tokens not in ("all", positions):
        raise ValueError(f"tokens: expected 'all' or {positions!r} for an SAE that reads only the {positions!r} "
                         f"tokens, got {tokens!r}")
    return slice(None), (slice(None) if positions == "patches" else None), (slice(None) if positions == "cls" else None)


_PER_LATENT = ("map", "prefix")  # carried fields with a latent axis ([b, L, ...]); the others are per image


class _Stream:
    """The running state of :func:`feature_activations` (one update per batch)."""

    def __init__(self, n_latents: int, k: int, bins: int, first: int):
        self.k, self.bins, self.first = k, bins, first  # first: the stream index of the first image
        self.values = torch.empty(n_latents, 0)
        self.indices = torch.empty(n_latents, 0, dtype=torch.long)
        self.carried: dict[str, Tensor] = {}  # per winner: map, prefix, label, prediction, thumbnail
        self.fire = torch.zeros(n_latents, dtype=torch.long)
        self.counts = torch.zeros(n_latents, bins, dtype=torch.long)
        self.exp = torch.zeros(n_latents, dtype=torch.long)  # bin width 2**exp once fired
        self.fired = torch.zeros(n_latents, dtype=torch.bool)
        self.n_tokens = self.n_images = 0

    def update(self, score: Tensor, counted: Tensor, per_image: dict[str, Tensor]) -> None:
        """``score [b, L]`` the images' top activations, ``counted [b, T, L]`` the counted activations and
        ``per_image`` ``{field: [b, L, ...]}`` (per latent) or ``[b, ...]`` (shared by the latents)."""
        b, n_lat = score.shape
        m = self.values.shape[1]
        # Candidates: the current winners, then this batch's images (later in the stream). Sort by index, then
        # stably by value: equal values keep the earlier image first.
        vals = torch.cat([self.values, score.T], 1)
        start = self.first + self.n_images
        idx = torch.cat([self.indices, torch.arange(start, start + b).expand(n_lat, b)], 1)
        by_index = idx.argsort(dim=1, stable=True)
        order = by_index.gather(1, vals.gather(1, by_index).argsort(dim=1, descending=True, stable=True))[:, : self.k]
        self.values, self.indices = vals.gather(1, order), idx.gather(1, order)
        old, new = order.clamp(max=max(m - 1, 0)), (order - m).clamp(min=0)
        lat = torch.arange(n_lat)[:, None]
        for key, value in per_image.items():
            fresh = value[new, lat] if key in _PER_LATENT else value[new]  # [L, k, ...]
            if m:
                kept = self.carried[key]
                gathered = kept.gather(1, old.reshape(*old.shape, *[1] * (kept.ndim - 2)).expand(-1, -1, *kept.shape[2:]))
                from_old = (order < m).reshape(*order.shape, *[1] * (kept.ndim - 2))
                fresh = torch.where(from_old, gathered, fresh)
            self.carried[key] = fresh
        self._histogram(counted.reshape(-1, n_lat))
        self.n_images += b
        self.n_tokens += counted.shape[0] * counted.shape[1]

    def _histogram(self, flat: Tensor) -> None:
        n_lat = flat.shape[1]
        self.fire += (flat > 0).sum(0)
        nz = (flat > 0).nonzero()
        if not nz.shape[0]:
            return
        lat = nz[:, 1]
        vals = flat[nz[:, 0], lat].double()
        batch_max = torch.zeros(n_lat, dtype=torch.float64).scatter_reduce(0, lat, vals, "amax")
        has = batch_max > 0
        # frexp: max / bins = mantissa * 2**e with mantissa < 1, so max < bins * 2**e: the smallest such width.
        needed = torch.frexp(batch_max / self.bins)[1].long()
        new_exp = torch.where(has, torch.where(self.fired, torch.maximum(self.exp, needed), needed), self.exp)
        doublings = torch.where(self.fired, new_exp - self.exp, 0)
        if bool((doublings > 0).any()):  # wider bins: bin j goes to j >> d (pairs merge, exactly)
            target = torch.arange(self.bins)[None] >> doublings.clamp(max=62)[:, None]
            self.counts = torch.zeros_like(self.counts).scatter_add_(1, target, self.counts)
        self.exp, self.fired = new_exp, self.fired | has
        which = torch.floor(vals / torch.ldexp(torch.ones_like(vals), self.exp[lat])).long()
        self.counts.view(-1).scatter_add_(0, lat * self.bins + which, torch.ones_like(which))


@torch.no_grad()
def feature_activations(
    model: HookedViT,
    sae: nn.Module,
    images: Images,
    *,
    latents: int | Sequence[int] | None = None,
    k: int = 8,
    tokens: str | None = None,
    labels: Int[Tensor, " batch"] | None = None,
    span: tuple[int, int] | None = None,
    batch_size: int = 32,
    bins: int = 64,
    keep_images: bool = False,
    thumb_side: int = 96,
    progress: bool = False,
) -> FeatureActivations:
    """Stream ``images`` through ``model`` with ``sae`` spliced and collect each latent's feature view.

    Args:
        model: The HookedViT.
        sae: One of this project's SAEs (or a module with ``encode``/``decode`` and ``cfg.hook_name``), spliced
            with the error term for the pass unless it is spliced already.
        images: Normalised images ``[n, C, H, W]``, an iterable of such batches (or of ``(images, labels)``
            pairs), or an :class:`~vit_patching.runs.dataset.ImageSet` (``zoo_images``, ``folder_images``).
        latents: The latents to track (default: all ``d_sae``).
        k: Images kept per latent.
        tokens: The tokens that count: ``"all"`` (default: every token the SAE reads), ``"patches"`` or ``"cls"``.
        labels: One label per image when ``images`` is a tensor.
        span: ``(start, stop)``: stream only images ``[start, stop)`` of an ImageSet (a range of a zoo data set or
            a folder; indices and names in the result are the set's). Default: all of them.
        batch_size: Images per forward pass (an iterable's batches are used as they come).
        bins: Histogram bins per latent.
        keep_images: Keep a thumbnail of each winner (for the gallery): ``latents * k`` thumbnails in memory.
        thumb_side: Longest side of a thumbnail in pixels (images are shrunk, never enlarged).
        progress: Show a tqdm bar.

    Returns:
        A :class:`FeatureActivations`.

    Raises:
        ValueError / TypeError: a bad argument, named, before any forward pass; ``NonFiniteError`` for non-finite
        latents; ValueError for a negative latent (a foreign ``encode`` that is not ReLU-like).

    Example:
        >>> from vit_patching.runs import zoo_images
        >>> acts = feature_activations(model, sae, zoo_images("shapes", n=64), k=4, keep_images=True)
        >>> acts.frequency.shape                                # [d_sae]
    """
    hook, positions, splice = resolve_splice(model, sae)
    d_sae = _d_sae(sae)
    k = check_positive_int(k, "k")
    bins = check_positive_int(bins, "bins")
    thumb_side = check_positive_int(thumb_side, "thumb_side")
    batch_size = check_batch_size(batch_size)
    check_bool(keep_images, "keep_images")
    check_bool(progress, "progress")
    tokens = "all" if tokens is None else check_choice(tokens, TOKENS, "tokens")
    _check_images(images, labels)
    if d_sae is None and latents is not None:
        raise TypeError(f"sae: expected an SAE that states d_sae (to check latents={latents!r}), got "
                        f"{type(sae).__name__}")
    rows = None if d_sae is None else check_indices(latents, d_sae, "latents", "latent")
    span = _check_span(span, images)
    counted_sl, patch_sl, prefix_sl = _token_slices(model, positions, tokens)
    gh, gw = model.cfg.grid_size
    readout = model.readout
    class_names = None if readout is None else readout.class_names
    name = f"{hook}.sae.hook_sae_acts_post"
    captured: list[Tensor] = []

    def capture(latents_: Tensor, hook: Any) -> None:
        captured.append(latents_.detach())

    stream: _Stream | None = None
    names: dict[int, str] = {}
    total = images.shape[0] if isinstance(images, Tensor) else span[1] - span[0] if isinstance(images, ImageSet) else None
    with splice, tqdm(total=total, desc="feature views", unit="img", disable=not progress, leave=False) as bar:
        for x, y, batch_names in _batches(model, images, batch_size, labels, span):
            captured.clear()
            out = model.run_with_hooks(x.to(device=model.device, dtype=model.dtype), fwd_hooks=[(name, capture)])
            acts = captured[0]
            if rows is None:
                rows = list(range(acts.shape[-1]))
            acts = check_finite(acts[..., rows].float().cpu(), "latents")
            if acts.ndim != 3:
                raise ValueError(f"sae: expected latents [batch, pos, d_sae] at {name!r}, got {tuple(acts.shape)}")
            if bool((acts < 0).any()):
                raise ValueError(f"sae: expected non-negative latents (ReLU-type activations: a latent fires when > 0), "
                                 f"got {float(acts.min()):.4g} at {name!r}")
            b = acts.shape[0]
            if y is not None and (not isinstance(y, Tensor) or tuple(y.shape) != (b,)):
                raise ValueError(f"labels: expected one label per image ([{b}]) with each batch, got "
                                 f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
            counted = acts[:, counted_sl]
            per_image: dict[str, Tensor] = {
                "label": torch.full((b,), -1, dtype=torch.long) if y is None else y.long().cpu(),
                "prediction": (out.argmax(-1).cpu() if readout is not None and out.ndim == 2
                               else torch.full((b,), -1, dtype=torch.long)),
            }
            if patch_sl is not None:
                per_image["map"] = acts[:, patch_sl].permute(0, 2, 1)  # [b, L, patches]
            if prefix_sl is not None:
                per_image["prefix"] = acts[:, prefix_sl].permute(0, 2, 1)  # [b, L, prefix]
            if keep_images:
                pix = to_pixels(x, model.cfg.data_config)
                scale = thumb_side / max(pix.shape[-2:])
                if scale < 1:
                    pix = F.interpolate(pix, scale_factor=scale, mode="area")
                per_image["thumb"] = (pix * 255).round().to(torch.uint8)
            if stream is None:
                stream = _Stream(len(rows), k, bins, span[0])
            if batch_names is not None:
                first = span[0] + stream.n_images
                names.update(zip(range(first, first + b), batch_names))
            stream.update(counted.amax(1), counted, per_image)
            if names:  # keep the names of the winners only: memory bounded
                winners = set(stream.indices.flatten().tolist())
                names = {i: v for i, v in names.items() if i in winners}
            bar.update(b)
    if stream is None:
        raise ValueError("images: expected at least one image, got none")
    top_idx = stream.indices
    kept = set(top_idx.flatten().tolist())
    names = {i: names.get(i, f"image {i}") for i in kept}
    carried = stream.carried
    maps = carried.get("map")
    return FeatureActivations(
        hook_name=hook, latents=rows, tokens=tokens, top_values=stream.values, top_indices=top_idx,
        top_names=[[names[int(i)] for i in row] for row in top_idx],
        top_maps=None if maps is None else maps.reshape(*maps.shape[:2], gh, gw),
        top_prefix=carried.get("prefix"), top_labels=carried["label"], top_predictions=carried["prediction"],
        thumbnails=carried.get("thumb"), fire_count=stream.fire, n_tokens=stream.n_tokens, n_images=stream.n_images,
        hist_counts=stream.counts,
        hist_width=torch.where(stream.fired, torch.ldexp(torch.ones(len(rows), dtype=torch.float64), stream.exp), 0.0),
        class_names=class_names,
        prefix_labels=() if prefix_sl is None else tuple(model.cfg.prefix_labels[prefix_sl] if positions == "all"
                                                         else ("CLS",)),
    )

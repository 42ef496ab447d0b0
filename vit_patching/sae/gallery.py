"""An offline HTML gallery of SAE latents: one section per latent with its top-activating images, the activating
patches drawn over each image, and the numbers behind them.

Like the dataset runs' gallery (:mod:`vit_patching.runs.gallery`, whose image helpers it uses): no JavaScript, no
network (images are inline base64 PNGs), every caller string (class names, image names, title) HTML-escaped, and
the file written under a temporary name and renamed.

Example:
    >>> acts = feature_activations(model, sae, images, latents=[0, 3], k=4, keep_images=True)
    >>> feature_gallery(acts, "features.html").name
    'features.html'
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_positive_int
from vit_patching.files import atomic_write_bytes
from vit_patching.model.readout import check_class_names
from vit_patching.runs.gallery import overlay_png, png_base64
from vit_patching.sae.views import FeatureActivations

__all__ = ["feature_gallery"]

_STYLE = (
    "body{font-family:sans-serif;margin:1rem}section{margin:1.2rem 0;border-top:1px solid #ccc}"
    ".cards{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:128px;font-size:.8rem}"
    "figure img{width:128px;image-rendering:pixelated;display:block}.meta{color:#52606d}"
)


def _histogram_svg(counts: Tensor, width: float) -> str:
    """An inline SVG of a latent's activation histogram: one bar per bin, heights relative to the fullest bin."""
    c = counts.double()
    top = float(c.max())
    if top <= 0:
        return ""
    w, h, n = 192, 40, c.shape[0]
    bar = w / n
    rects = "".join(f"<rect x='{i * bar:.2f}' y='{h - h * float(v) / top:.2f}' width='{bar:.2f}' "
                    f"height='{h * float(v) / top:.2f}'/>" for i, v in enumerate(c) if v > 0)
    return (f"<svg class='hist' width='{w}' height='{h}' fill='#2166ac'><title>positive activations, {n} bins of "
            f"width {width:.4g} from 0 (fullest bin: {int(top)} tokens)</title>{rects}</svg>")


def _class(index: int, names: list[str] | None) -> str:
    if index < 0:
        return "?"
    return names[index] if names is not None and index < len(names) else str(index)


def feature_gallery(
    acts: FeatureActivations,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    latents: int | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    effects: Float[Tensor, "latent n_classes"] | None = None,
    top_classes: int = 3,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write the gallery of ``acts`` (atomically) and return its path.

    Each section draws the latent's activation histogram (an inline SVG, one bar per bin). Each image shows the latent's activation at every patch over a greyed copy of the picture, blue where it fires
    and white where it is 0, on one scale per latent (full blue = the latent's largest activation among its top
    images), so the images of a latent compare at a glance. Only images where the latent fires (> 0) are shown.

    Args:
        acts: From :func:`~vit_patching.sae.views.feature_activations` with ``keep_images=True``.
        path: The HTML file.
        title: Page title (default: the SAE's hook).
        latents: The latents to show, in order (default: every tracked latent).
        class_names: Names of the labels, predictions and classes (default: ``acts.class_names``; else indices).
        effects: Optional direct effect per tracked latent and class (``latent_direct_effect(...).mean(1)``, rows
            as ``acts.latents``): the ``top_classes`` classes it raises and lowers most are listed.
        top_classes: How many classes to list each way.
        settings: Shown as escaped JSON.

    Raises:
        ValueError: ``acts`` has no thumbnails, a latent is not tracked, ``class_names`` or ``effects`` do not fit.

    Example:
        >>> feature_gallery(acts, "g.html", title="<b>SAE</b> features").read_text().count("<section")  # 2 latents
        2
    """
    if not isinstance(acts, FeatureActivations):
        raise TypeError(f"acts: expected FeatureActivations (feature_activations(...)), got {type(acts).__name__}")
    if acts.thumbnails is None:
        raise ValueError("acts: expected feature activations with thumbnails (feature_activations(..., "
                         "keep_images=True)), got none")
    shown = acts.latents if latents is None else [latents] if isinstance(latents, int) else list(latents)
    rows = [acts.row(k) for k in shown]  # ValueError naming latent for one not tracked
    names = list(class_names) if class_names is not None else acts.class_names
    if class_names is not None:
        names = check_class_names(names, len(names))  # strings only
    top_classes = check_positive_int(top_classes, "top_classes")
    if effects is not None and (effects.ndim != 2 or effects.shape[0] != len(acts.latents)):
        raise ValueError(f"effects: expected [latent, n_classes] with one row per tracked latent "
                         f"({len(acts.latents)}), got {tuple(effects.shape)}")
    e = html.escape
    sections = []
    for k, r in zip(shown, rows):
        n = int((acts.top_values[r] > 0).sum())  # images where the latent fires; those at 0 are not shown
        peak = float(acts.top_values[r, 0]) if n else 0.0
        head = (f"<h2>latent {k}</h2><p class='meta'>max activation {peak:.4g}; fires on "
                f"{float(acts.frequency[r]):.3%} of {acts.n_tokens} tokens ({e(acts.tokens)})</p>"
                f"{_histogram_svg(acts.hist_counts[r], float(acts.hist_width[r]))}")
        if effects is not None:
            eff = effects[r].detach().float().cpu()
            j = min(top_classes, max(1, eff.shape[0] // 2))  # no class listed both ways
            up = ", ".join(f"{e(_class(int(c), names))} ({float(eff[c]):+.3g})" for c in eff.topk(j).indices)
            down = ", ".join(f"{e(_class(int(c), names))} ({float(eff[c]):+.3g})" for c in eff.topk(j, largest=False).indices)
            head += f"<p class='meta'>direct effect raises: {up}; lowers: {down}</p>"
        cards = []
        for j in range(n):
            thumb = acts.thumbnails[r, j]
            thumb = thumb.expand(3, -1, -1) if thumb.shape[0] == 1 else thumb[:3]
            grey = (thumb.float().mul(torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
                    .expand(3, -1, -1).round().to(torch.uint8))  # a colour picture would read as the map's blue
            if acts.top_maps is not None:
                img = overlay_png(grey, acts.top_maps[r, j], alpha=0.7, centre=False, scale=peak)
            else:
                img = png_base64(thumb.permute(1, 2, 0).contiguous())
            lines = [e(acts.top_names[r][j]), f"activation {float(acts.top_values[r, j]):.4g}"]
            if acts.top_prefix is not None:
                lines += [f"{e(label)} {float(v):.4g}" for label, v in zip(acts.prefix_labels, acts.top_prefix[r, j])]
            if int(acts.top_labels[r, j]) >= 0:
                lines.append(f"label {e(_class(int(acts.top_labels[r, j]), names))}")
            if int(acts.top_predictions[r, j]) >= 0:
                lines.append(f"predicted {e(_class(int(acts.top_predictions[r, j]), names))}")
            cards.append(f"<figure><img src='data:image/png;base64,{img}' alt='{e(acts.top_names[r][j], quote=True)}'>"
                         f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>")
        body = "".join(cards) if cards else "<p>it fires on none of these images</p>"
        sections.append(f"<section id='latent-{k}'>{head}<div class='cards'>{body}</div></section>")
    page_title = title if title is not None else f"SAE features at {acts.hook_name}"
    info = {"hook": acts.hook_name, "tokens": acts.tokens, "images": acts.n_images, **dict(settings or {})}
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(page_title)}</title><style>{_STYLE}</style>"
        f"</head><body><h1>{e(page_title)}</h1><p>{len(rows)} latents, top {acts.top_values.shape[1]} of "
        f"{acts.n_images} images each. Overlay: the latent's activation at each patch, white at 0, full blue at the "
        "latent's largest activation.</p>"
        f"<details><summary>Settings</summary><pre>{e(json.dumps(info, indent=1, default=str))}</pre></details>"
        f"{''.join(sections)}</body></html>"
    )
    return atomic_write_bytes(path, doc.encode("utf-8"))

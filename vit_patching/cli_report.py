"""The sections of the ``vit-patching caap`` HTML report, and its colour legend read from the figures it shows.

The legend is derived from the colour axis of each figure (its colour scale, ``cmin`` / ``cmax`` and whether the
scale is reversed), never from a constant, so that a change of colour scale cannot leave the report stating
colours the figures do not draw.

Example:
    >>> import plotly.graph_objects as go
    >>> fig = go.Figure(go.Heatmap(z=[[-1.0, 2.0]], coloraxis="coloraxis"))
    >>> fig = fig.update_layout(coloraxis=dict(colorscale="RdBu", cmin=-2.0, cmax=2.0))
    >>> scale_colours(fig)
    {'above': 'blue', 'centre': 'white', 'below': 'red'}
"""
from __future__ import annotations

import colorsys
import re
from collections.abc import Mapping, Sequence
from typing import Any

from vit_patching.cli_coalition import efficiency_line
from vit_patching.model import HookedViT
from vit_patching.patching.caap import Attribution
from vit_patching.patching.caap_shapley import ShapleyAttribution
from vit_patching.plotting import ReportSection

__all__ = ["class_label", "colour_line", "colour_name", "report_sections", "scale_colours"]

#: (upper bound of the hue in degrees, name), for :func:`colour_name`.
_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"), (330, "purple"),
         (360, "red"))


def class_label(k: int, names: Sequence[str] | None) -> str:
    """``"k (name)"`` when the class has a name, else ``"k"``.

    Example:
        >>> class_label(1, ["cat", "dog"]), class_label(5, None)
        ('1 (dog)', '5')
    """
    return f"{k} ({names[k]})" if names and 0 <= k < len(names) else str(k)


def colour_name(colour: str) -> str:
    """A plain-language name for a Plotly colour string (``rgb(...)``, ``rgba(...)`` or ``#rrggbb``).

    Example:
        >>> colour_name("rgb(103,0,31)"), colour_name("rgba(5,48,97,0.8)"), colour_name("rgba(247,247,247,0)")
        ('red', 'blue', 'clear')
    """
    text = colour.strip().lower()
    if text.startswith("#"):
        r, g, b, a = int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16), 1.0
    else:
        values = [float(v) for v in re.findall(r"[-0-9.]+", text)]
        if len(values) not in (3, 4):
            raise ValueError(f"colour: expected rgb(...), rgba(...) or #rrggbb, got {colour!r}")
        r, g, b = values[:3]
        a = values[3] if len(values) == 4 else 1.0
    if a < 0.05:  # a faded overlay is transparent at its centre: the image shows through
        return "clear"
    hue, light, sat = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    if sat < 0.15 or light > 0.92 or light < 0.08:
        return "white" if light > 0.85 else "black" if light < 0.15 else "grey"
    degrees = hue * 360
    return next(name for bound, name in _HUES if degrees < bound)


def _sample(scale: Sequence[tuple[float, str]], t: float) -> str:
    """The colour stop of ``scale`` nearest to ``t`` (the ends and the centre are stops of every diverging scale)."""
    return min(scale, key=lambda stop: abs(stop[0] - t))[1]


def scale_colours(fig: Any) -> dict[str, str]:
    """Names of the colours ``fig``'s map draws for the largest values (``above`` its centre), at the centre and
    for the smallest values (``below``), read from the colour axis of its first heatmap.

    Example:
        >>> import plotly.graph_objects as go
        >>> fig = go.Figure(go.Heatmap(z=[[0.0]], colorscale="RdBu", reversescale=True))
        >>> scale_colours(fig)["above"]
        'red'
    """
    heatmap = next(t for t in fig.data if t.type == "heatmap")
    axis = fig.layout[heatmap.coloraxis] if heatmap.coloraxis else heatmap
    scale = [(float(t), c) for t, c in axis.colorscale]
    if axis.reversescale:
        scale = [(1.0 - t, c) for t, c in reversed(scale)]
    return {"above": colour_name(_sample(scale, 1.0)), "centre": colour_name(_sample(scale, 0.5)),
            "below": colour_name(_sample(scale, 0.0))}


def colour_line(attr: Attribution, figures: Mapping[str, Any]) -> str:
    """What the map's colours mean for the result's direction, as drawn by ``figures`` (one legend for all).

    The maps are centred on :meth:`Attribution.zmid`: the neutral context's score for denoising (a value above
    it: the patch raises the score), no drop for noising (a value above it: replacing the patch lowers the score).

    Args:
        attr: the CAAP result the figures show.
        figures: where each figure is, in words (``"over the image"``) -> the figure.

    Raises:
        ValueError: if the figures draw values above (or below) their centre in different colours.
    """
    colours = {where: scale_colours(f) for where, f in figures.items()}
    for end in ("above", "below"):
        if len({c[end] for c in colours.values()}) != 1:
            raise ValueError(f"figures: expected one colour for the values {end} the centre, got {colours}")
    first = next(iter(colours.values()))
    above, below = first["above"], first["below"]
    centres = {where: "no colour" if c["centre"] == "clear" else c["centre"] for where, c in colours.items()}
    if len(set(centres.values())) == 1:
        centre = next(iter(centres.values()))
    else:
        centre = ", ".join(f"{name} {where}" for where, name in centres.items())
    if isinstance(attr, ShapleyAttribution):  # Shapley values: shares of v(all) - v(empty), centred on 0
        effect = "the drop of the explained class's score" if attr.direction == "noising" else \
            "the explained class's score"
        return (f"Colours: {above} = a positive Shapley value (averaged over the coalitions it joins, this patch "
                f"adds to {effect}), {below} = a negative one; {centre} = 0 (no contribution).")
    if attr.direction == "noising":
        return (f"Colours: {above} = replacing this patch with the neutral's lowers the explained class's score (the "
                f"patch is needed: evidence for the class), {below} = it raises the score; {centre} = no change.")
    return (f"Colours: {above} = this patch alone raises the explained class's score above the neutral context's "
            f"(evidence for the class), {below} = it lowers it; {centre} = as the neutral context.")


def direction_line(attr: Attribution) -> str:
    """What was patched where, in the result's direction."""
    site, neutral, readout = attr.options["site"], attr.options["neutral"], attr.readout
    s, e = attr.window
    context = f"'{neutral}' neutral context"
    if neutral == "auto":  # say which context was used, not only that one was picked
        context += f" (picked for this image: '{attr.neutral_choice[0]}')"
    if isinstance(attr, ShapleyAttribution):
        groups = attr.settings["groups"]
        players = "each patch" if groups in (None, 1) else f"each {groups}x{groups} block of patches"
        game = ("v(S) = the drop of the explained class's " + readout.removeprefix("delta_") + " when the patches in "
                f"S are written from the {context} into the run on the input") if attr.direction == "noising" else (
                f"v(S) = the {readout.removeprefix('delta_')} of the explained class in the {context} with the "
                f"patches in S pinned to the input's {site} activations")
        return (f"Coalition CAAP ({attr.direction}; Shapley values, {attr.n_permutations} antithetic permutations, "
                f"players: {players}, {len(attr.players)} in all): {game} at blocks {s} to {e - 1} (window [{s}, "
                f"{e})); a patch's score is its Shapley value in that game, its marginal contribution averaged over "
                f"the sampled orders (a group's value shared equally by its patches).")
    if attr.direction == "noising":
        return (f"Direction: noising. Each patch's {site} activations from the {context} were "
                f"written into the run on the input at blocks {s} to {e - 1} (window [{s}, {e})); its score is the "
                f"drop of the explained class's {readout.removeprefix('delta_')}: input minus patched run.")
    return (f"Direction: denoising. Each patch's {site} activations from the input were pinned into the "
            f"{context} at blocks {s} to {e - 1} (window [{s}, {e})); its score is the "
            f"{readout} of the explained class in that patched run.")


def report_sections(
    attr: Attribution, model: HookedViT, info: dict[str, Any], source: str, label: int | None, top: int
) -> list[ReportSection]:
    """The report of CAAP result ``attr`` (image 0): summary, overlay, patch grid, top patches, scores, input.

    Args:
        attr: the CAAP result of one image.
        model: the explained model.
        info: ``model`` (its name), ``weights`` (where they came from), ``random`` (untrained weights) and
            ``class_names`` (or ``None``).
        source: what the input is, for the summary.
        label: the input's dataset label, or ``None``.
        top: number of top patches listed.

    Example:
        >>> from vit_patching.patching.caap import caap
        >>> from vit_patching.zoo import load_dataset, load_model
        >>> model = load_model("toy-shapes")
        >>> attr = caap(model, load_dataset("shapes", n=1).images, window=(0, 1))
        >>> info = {"model": "toy-shapes", "weights": "shipped", "random": False, "class_names": None}
        >>> [s.heading for s in report_sections(attr, model, info, "sample 0", None, 3)][:3]
        ['Summary', 'Attribution over the image', 'Patch-grid map']
    """
    names = info["class_names"]
    t = int(attr.target[0])
    probs = attr.source_logits[0].softmax(-1)
    pred = int(probs.argmax())
    s, e = attr.window
    readout = attr.readout
    gh, gw = attr.map.shape[-2:]
    method = "Coalition CAAP" if isinstance(attr, ShapleyAttribution) else "CAAP"
    overlay = attr.overlay(0, title=f"{method} ({attr.direction}) window [{s}, {e})")
    grid = attr.plot(0, title=f"{method} {attr.value_label}, {gh}x{gw} patches")
    lines = [
        f"Input: {source}.",
        f"Scores: {info.get('readout') or model.readout.describe()}.",
        f"Model: {info['model']} ({info['weights']} weights), {model.cfg.n_layers} layers, "
        f"{model.cfg.grid_size[0]}x{model.cfg.grid_size[1]} patch grid.",
        f"Explained class: {class_label(t, names)} ({attr.options['target_source']}); "
        f"predicted class: {class_label(pred, names)} with probability {float(probs[pred]):.3f}"
        + (f"; dataset label: {class_label(label, names)}." if label is not None else "."),
        direction_line(attr),
        colour_line(attr, {"over the image": overlay, "on the patch grid": grid}),  # from the figures shown below
    ]
    if isinstance(attr, ShapleyAttribution):
        lines.append(efficiency_line(attr))
    n_pred = int(attr.neutral_prediction[0])
    lines.append(
        f"The neutral context alone is classified {class_label(n_pred, names)} with probability "
        f"{float(attr.neutral_prediction_prob[0]):.3f}; it gives the explained class probability "
        f"{float(attr.neutral_target_prob[0]):.3f} ({readout} {float(attr.neutral_target_score[0]):.3f})."
    )
    lines += [f"WARNING: {w}" for w in attr.warnings]  # e.g. the neutral context already predicts the class
    if info["random"]:
        lines.insert(0, "WARNING: this model has random (untrained) weights, so the map says nothing about a "
                        "trained network. Pass --pretrained to load timm's weights.")
    ph, pw = model.cfg.patch_size
    top_rows = [
        {"rank": r + 1, "row": row, "col": col, "pixels (y, x)": f"{row * ph}:{(row + 1) * ph}, {col * pw}:{(col + 1) * pw}",
         attr.value_label: value}
        for r, (row, col, value) in enumerate(attr.top_patches(0, k=top))
    ]
    m = attr.map[0]
    scores = [
        {"quantity": "direction", "value": attr.direction},
        {"quantity": f"source {readout} (unpatched input)", "value": float(attr.source_score[0])},
        {"quantity": f"neutral {readout} (unpatched neutral context)", "value": float(attr.neutral_score[0])},
        {"quantity": "neutral context: probability of the explained class", "value": float(attr.neutral_target_prob[0])},
        {"quantity": "map maximum", "value": float(m.max())},
        {"quantity": "map mean", "value": float(m.mean())},
        {"quantity": "map minimum", "value": float(m.min())},
    ]
    top_classes = [
        {"class": class_label(int(k), names), "probability": float(probs[k]), "logit": float(attr.source_logits[0, k])}
        for k in probs.argsort(descending=True)[: min(5, probs.numel())]
    ]
    return [
        ReportSection.text("Summary", "\n\n".join(lines)),
        ReportSection.figure("Attribution over the image", overlay,
                             caption=f"Patch map upsampled with '{attr.options['upsample']}'; hover for values."),
        ReportSection.figure("Patch-grid map", grid),
        ReportSection.table(f"Top {len(top_rows)} patches", top_rows),
        ReportSection.table("Scores", scores),
        ReportSection.table("Model prediction on the input", top_classes),
        ReportSection.images("Input", {"input image": attr.pixels[0]}),
    ]

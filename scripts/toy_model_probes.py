"""Measurements of a trained zoo model for its card: held-out accuracy, cue probes, neutral-context predictions.

Used by ``scripts/train_toy_models.py`` (training, card writing); the probes edit fresh scenes and count how the
predictions move (counterfactuals), so the card says what each model relies on.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from vit_patching.images import baseline_images
from vit_patching.model import HookedViT
from vit_patching.zoo.datasets import (
    CLASS_HUES, DISTRACTOR_HUES, ToyScenes, batch_from_scenes, generate, render_scenes, sample_scenes,
)
from vit_patching.zoo.registry import build_timm_model, get_spec

#: Seed of the held-out sample reported in the model cards (never a training seed: those are 62-bit draws).
HELDOUT_SEED = 1_000_000_007
HELDOUT_N = 4096
#: The CAAP neutrals the models are measured on (``mean_activations`` is not an image).
MEASURED_NEUTRALS: tuple[str, ...] = ("zeros", "black", "image_mean", "blur")
NEUTRAL_N = 256  # empty and ordinary scenes the neutral predictions are measured on
NEUTRAL_SEED = HELDOUT_SEED + 3


def empty_scene_images(task: str, n: int, seed: int) -> tuple[ToyScenes, torch.Tensor]:
    """``n`` fresh scenes and the same scenes rendered without any object (normalised model input)."""
    scenes = sample_scenes(task, n, seed)
    return scenes, (render_scenes(scenes, objects="none") - 0.5) / 0.5


@torch.no_grad()
def neutral_predictions(model: torch.nn.Module, name: str, n: int = NEUTRAL_N, seed: int = NEUTRAL_SEED) -> list[dict]:
    """What the model predicts on CAAP's neutral contexts, of ``n`` empty scenes and of the same ``n`` scenes.

    Per (source, neutral): the class of the mean predicted distribution and its probability there
    (``class``, ``p``), the mean and the largest max class probability over the images (``mean_max_p``,
    ``max_max_p``; 1 / n_classes is perfectly undecided), and for ordinary scenes the fraction of images whose
    neutral is still classified as the image's label (``label_rate``).
    """
    spec = get_spec(name)
    hooked = HookedViT.from_timm(build_timm_model(name))  # data config only
    scenes, empty = empty_scene_images(spec.dataset, n, seed)
    real = batch_from_scenes(scenes)
    rows = []
    cases = [("empty scene", "none", empty)] + [("empty scene", k, None) for k in MEASURED_NEUTRALS]
    cases += [("ordinary scene", k, None) for k in ("image_mean", "blur")]
    for source, kind, x in cases:
        src = empty if source == "empty scene" else real.images
        if x is None:
            x = baseline_images(src, kind, data_config=hooked.cfg.data_config)[0]
        probs = torch.cat([F.softmax(model(x[i : i + 512]), -1) for i in range(0, len(x), 512)])
        mean = probs.mean(0)
        row = {"source": source, "neutral": kind, "class": spec.class_names[int(mean.argmax())],
               "p": float(mean.max()), "mean_max_p": float(probs.amax(-1).mean()),
               "max_max_p": float(probs.amax(-1).max()), "n": len(x)}
        if source == "ordinary scene":
            row["label_rate"] = float((probs.argmax(-1) == real.labels).float().mean())
        rows.append(row)
    return rows


@torch.no_grad()
def accuracy(model: torch.nn.Module, task: str, n: int, seed: int, batch_size: int = 512) -> float:
    model.eval()
    data = generate(task, n, seed)
    correct = 0
    for i in range(0, n, batch_size):
        logits = model(data.images[i : i + batch_size])
        correct += int((logits.argmax(-1) == data.labels[i : i + batch_size]).sum())
    model.train()
    return correct / n


@torch.no_grad()
def cue_probes(model: torch.nn.Module, name: str, n: int = 2048) -> list[tuple[str, float]]:
    """What the trained model relies on: predictions on edited copies of fresh scenes (counterfactuals)."""
    spec = get_spec(name)
    scenes = sample_scenes(spec.dataset, n, HELDOUT_SEED + 1)
    gen = torch.Generator().manual_seed(HELDOUT_SEED + 2)

    def predict(edited) -> torch.Tensor:
        images = batch_from_scenes(edited).images
        return torch.cat([model(images[i : i + 512]).argmax(-1) for i in range(0, n, 512)])

    k = scenes.labels
    rows = [("unedited: accuracy", float((predict(scenes) == k).float().mean()))]
    if spec.dataset == "shapes":
        other = (k + torch.randint(1, 4, (n,), generator=gen)) % 4
        shape = scenes.shape.clone()
        shape[:, 0] = other
        pred = predict(replace(scenes, shape=shape))
        rows.append(("evidence reshaped to another class's shape, colour kept: prediction = colour's class",
                     float((pred == k).float().mean())))
        rows.append(("same edit: prediction = shape's class", float((pred == other).float().mean())))
        colour = scenes.colour.clone()
        colour[:, 0] = 0.5
        pred = predict(replace(scenes, colour=colour))
        rows.append(("evidence drawn grey, shape kept: prediction = shape's class", float((pred == k).float().mean())))
    elif spec.dataset == "relation":
        rows += relation_probes(predict, scenes, gen)
    else:
        for j in (0, 1):
            pred = predict(without_object(scenes, j))
            rows.append((f"part {j + 1} of 2 removed: accuracy w.r.t. the original pair (chance 1/3)",
                         float((pred == k).float().mean())))
    return rows


def without_object(scenes: ToyScenes, j: int) -> ToyScenes:
    """The scenes with object ``j`` (0 and 1 are the class-carrying ones) not drawn."""
    present = scenes.present.clone()
    present[:, j] = False
    return replace(scenes, present=present)


def relation_probes(predict, scenes: ToyScenes, gen: torch.Generator) -> list[tuple[str, float]]:
    """Cue probes of ``relation``: which of the two objects, their hues, the mark and their shapes matter."""
    n, k = len(scenes), scenes.labels
    rows = []
    for j in (0, 1):
        pred = predict(without_object(scenes, j))
        rows.append((f"marked object {j + 1} of 2 removed: accuracy w.r.t. the original label (chance 0.5)",
                     float((pred == k).float().mean())))
        rows.append(("same edit: fraction predicted `same colour`", float((pred == 1).float().mean())))
    class_rgb = torch.tensor(list(CLASS_HUES.values()))
    jitter = scenes.colour[:, 1] - class_rgb[scenes.part_type[:, 1]]  # keep object 2's jitter
    # flip the relation through object 2's hue: same -> another class hue, different -> object 1's hue
    other = (scenes.part_type[:, 0] + torch.randint(1, 4, (n,), generator=gen)) % 4
    hue = torch.where(k == 1, other, scenes.part_type[:, 0])
    colour = scenes.colour.clone()
    colour[:, 1] = (class_rgb[hue] + jitter).clamp(0.0, 1.0)
    pred = predict(replace(scenes, colour=colour))
    rows.append(("marked object 2 recoloured (class hue) so that same <-> different: prediction = the new label "
                 "(flip rate)", float((pred == 1 - k).float().mean())))
    # shapes should not matter: object 2 reshaped (another evidence shape)
    shape = scenes.shape.clone()
    shape[:, 1] = (shape[:, 1] + torch.randint(1, 4, (n,), generator=gen)) % 4
    pred = predict(replace(scenes, shape=shape))
    rows.append(("marked object 2 reshaped, hues kept: accuracy", float((pred == k).float().mean())))
    # drop the mark, keep the relation: the two objects in non-class hues (vivid distractor hues, or greys),
    # equal when the label is `same colour`, different otherwise
    vivid = torch.tensor(list(DISTRACTOR_HUES.values()))
    va = torch.randint(0, len(vivid), (n,), generator=gen)
    vb = torch.where(k == 1, va, (va + torch.randint(1, len(vivid), (n,), generator=gen)) % len(vivid))
    ga = torch.randint(0, 2, (n,), generator=gen)
    grey = torch.tensor([0.25, 0.75])
    gb = torch.where(k == 1, ga, 1 - ga)
    for what, (fa, fb) in (
        ("vivid non-class hues (magenta, cyan, orange)", (vivid[va], vivid[vb])),
        ("greys (0.25 or 0.75)", (grey[ga].view(-1, 1).expand(n, 3), grey[gb].view(-1, 1).expand(n, 3))),
    ):
        colour = scenes.colour.clone()
        colour[:, 0], colour[:, 1] = fa, fb
        pred = predict(replace(scenes, colour=colour))
        rows.append((f"both marked objects drawn in {what}, same/different kept: accuracy",
                     float((pred == k).float().mean())))
    # a distractor in a class hue: a third marked-looking object
    colour = scenes.colour.clone()
    has = scenes.present[:, 2]
    third = class_rgb[torch.randint(0, 4, (n,), generator=gen)]
    colour[:, 2] = torch.where(has.unsqueeze(-1), third, colour[:, 2])
    pred = predict(replace(scenes, colour=colour))
    rows.append((f"first distractor drawn in a random class hue ({float(has.float().mean()):.0%} of scenes have "
                 "one): accuracy w.r.t. the original label", float((pred == k).float().mean())))
    return rows

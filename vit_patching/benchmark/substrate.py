"""The insertion game's start image chosen per model: ``--insertion-substrate auto``.

Insertion scores a map by how fast the explained class's probability rises as patches are written, in map order,
into a start image (the substrate). If the substrate alone already gives the class (a blurred toy image keeps its
colours and so its class), every curve starts near 1 and every method scores about 1: the metric cannot tell
methods apart. ``"auto"`` therefore takes, among the known substrates (:data:`~vit_patching.images.BASELINES`),
the one whose start image gives the explained class the **lowest mean probability** on the selection images.
The lowest, rather than the first below a threshold: no threshold to justify, and the choice does not depend on
the order of the candidates (ties go to the earlier one).

The choice is made before any method runs, from the model and the images only (it sees no attribution map), on
the default selection images (the first ``floor(n / 2)``, :func:`~vit_patching.benchmark.stats.selection_split`;
all images if that is empty), so that it is the same whatever ``--selection-fraction`` a later report uses. It is
recorded in the settings (``insertion: from zeros ... (auto: ...)``) and therefore in every chunk's fingerprint.

Example:
    >>> from vit_patching.benchmark import BenchmarkConfig, zoo_data
    >>> from vit_patching.zoo import load_model
    >>> model, data = load_model("toy-shapes"), zoo_data("toy-shapes", n=4)
    >>> cfg = resolve_insertion_substrate(model, data, BenchmarkConfig(methods=["gae"], insertion_substrate="auto"))
    >>> cfg.insertion_substrate in BASELINES, cfg.insertion_auto.startswith("auto: lowest mean start p(class)")
    (True, True)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.benchmark.config import AUTO_SUBSTRATE, BenchmarkConfig, check_substrate
from vit_patching.benchmark.data import BenchmarkData
from vit_patching.benchmark.scoring import substrate_images
from vit_patching.benchmark.stats import selection_split
from vit_patching.checks import check_batch_size
from vit_patching.images import BASELINES

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["SubstrateChoice", "choose_insertion_substrate", "resolve_insertion_substrate"]


@dataclass(frozen=True)
class SubstrateChoice:
    """The substrate chosen by :func:`choose_insertion_substrate` and the evidence for it.

    Attributes:
        name: the chosen substrate (a name of :data:`~vit_patching.images.BASELINES`).
        start_prob: every candidate's mean start probability of the explained class, in candidate order.
        n_images: the number of images the means are over.

    Example:
        >>> SubstrateChoice("zeros", {"zeros": 0.08, "blur": 0.998}, 24).describe()
        'auto: lowest mean start p(class) on 24 selection images: zeros 0.080 vs blur 0.998'
    """

    name: str
    start_prob: dict[str, float]
    n_images: int

    def describe(self) -> str:
        """One line for the settings: ``auto: lowest mean start p(class) on 24 images: zeros 0.080 vs blur 0.998, ...``."""
        others = ", ".join(f"{k} {v:.3f}" for k, v in self.start_prob.items() if k != self.name)
        return (f"auto: lowest mean start p(class) on {self.n_images} selection images: "
                f"{self.name} {self.start_prob[self.name]:.3f} vs {others}")


@torch.no_grad()
def choose_insertion_substrate(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    target: Int[Tensor, "batch"] | None = None,
    candidates: Sequence[str] = BASELINES,
    *,
    batch_size: int = 64,
) -> SubstrateChoice:
    """The candidate substrate whose start image gives the explained class the lowest mean softmax probability.

    Args:
        model: the HookedViT whose class is explained.
        images: normalised images.
        target: the explained class per image (``None``: the model's top-1 prediction, the benchmark's default).
        candidates: substrate names (:data:`~vit_patching.images.BASELINES`; ``"black"`` is skipped for a model
            without mean/std, which cannot define it).
        batch_size: images per forward pass.

    Returns:
        A :class:`SubstrateChoice` (ties go to the earlier candidate).

    Example:
        >>> from vit_patching.zoo import load_dataset, load_model
        >>> model, x = load_model("toy-shapes"), load_dataset("shapes", n=2).images
        >>> choose_insertion_substrate(model, x, candidates=["zeros", "blur"]).name in ("zeros", "blur")
        True
    """
    check_batch_size(batch_size)
    names = [check_substrate(c, "candidates") for c in candidates]
    if not names:
        raise ValueError("candidates: expected at least one substrate name, got none")
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images: expected a non-empty [batch, channel, height, width] tensor, got shape {tuple(images.shape)}")
    dc = model.cfg.data_config
    if "black" in names and len(names) > 1:
        try:
            substrate_images(images[:1], "black", dc)
        except ValueError:  # no mean/std: black is undefined for this model, so it is no candidate
            names.remove("black")
    images = images.to(device=model.device, dtype=model.dtype)
    totals = dict.fromkeys(names, 0.0)
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        cls = model(x).argmax(-1) if target is None else target[s : s + batch_size].to(x.device)
        rows = torch.arange(len(x), device=x.device)
        for name in names:
            start = substrate_images(x, name, dc).expand_as(x)
            totals[name] += math.fsum(model(start).double().softmax(-1)[rows, cls].tolist())
    means = {k: v / len(images) for k, v in totals.items()}
    best = min(names, key=lambda k: means[k])  # min returns the first of equal values
    return SubstrateChoice(best, means, len(images))


def resolve_insertion_substrate(
    model: HookedViT, data: BenchmarkData, cfg: BenchmarkConfig, *, batch_size: int | None = None
) -> BenchmarkConfig:
    """``cfg`` with ``insertion_substrate="auto"`` replaced by the chosen substrate (unchanged otherwise).

    The choice is made on the default selection images of ``data`` (see the module docstring), for the class the
    run explains (``cfg.target``), and described in ``insertion_auto``.

    Example:
        >>> from vit_patching.benchmark import zoo_data
        >>> from vit_patching.zoo import load_model
        >>> cfg = BenchmarkConfig(methods=["gae"], insertion_substrate="auto")
        >>> resolve_insertion_substrate(load_model("toy-shapes"), zoo_data("toy-shapes", n=48), cfg).insertion_substrate
        'zeros'
    """
    if cfg.insertion_substrate != AUTO_SUBSTRATE:
        return cfg
    select, _ = selection_split(len(data)) if len(data) > 1 else (range(1), range(0))
    idx = list(select) or list(range(len(data)))
    target = None
    if cfg.target == "label":
        if data.labels is None:
            raise ValueError("target: 'label' needs ground-truth labels; this data has none (use 'predicted')")
        target = data.labels[idx]
    choice = choose_insertion_substrate(model, data.images[idx], target, batch_size=batch_size or cfg.batch_size)
    return dataclasses.replace(cfg, insertion_substrate=choice.name, insertion_auto=choice.describe())

"""Model zoo: small ViTs trained on synthetic localisation benchmarks, shipped inside the package.

Everything works offline: datasets are generated procedurally, weights are read from
``vit_patching/zoo/weights/*.safetensors``. timm and the HookedViT are imported only when a model is loaded.

Models (``available_models()``):

* ``toy-shapes`` (default): plain ViT with CLS-token pooling, classifies the shape of the one vivid object.
* ``toy-conjunction``: ViT with 4 register tokens and average pooling, classifies which pair of coloured parts
  is present (one part alone is uninformative).
* ``toy-relation``: deeper ViT (8 blocks, LayerScale, CLS token) telling whether the two marked (class-hued)
  objects have the same colour (one marked object alone is uninformative).

Zero-shot models (``zero_shot_models()``; open_clip, the ``foundation`` extra):

* ``toy-clip``: a small open_clip ``CLIP`` (ViT image tower, 2-layer text tower) trained contrastively on the
  ``captions`` scenes; its classes are the 16 captions ``"a red circle"`` ... ``"a yellow plus"``. Load it with
  ``vit_patching.zoo.clip.load_open_clip_model("toy-clip")``; ``model_card("toy-clip")`` gives its card.

Linear probes (``PROBES``): ``toy-clip-shape``, toy-clip's image tower read without a head (CLS after its final
LayerNorm, before the projection) by a shipped ``LinearProbe`` predicting the object's shape;
``load_probe("toy-clip-shape")`` gives the probe, ``load_probe_model("toy-clip-shape")`` the encoder reading it.

SAEs (``available_saes()``): one top-k SAE per model above at its middle block's residual stream,
``load_sae("toy-shapes")`` (a SAELens folder in ``vit_patching/zoo/saes/``), ``sae_card(name)`` its card.

Built in code, not trained: ``known_circuit_model()`` (:mod:`vit_patching.zoo.known_circuit`), a ViT whose task
provably flows through the four edges ``KNOWN_EDGES``, with ``known_circuit_pairs(n)``; loaded lazily.

Example:
    >>> from vit_patching.zoo import load_dataset, load_timm_model
    >>> batch = load_dataset("shapes", n=16, seed=0)
    >>> model = load_timm_model("toy-shapes")
    >>> model(batch.images).shape
    torch.Size([16, 4])
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vit_patching.zoo.datasets import TASKS, ToyBatch, ToyDataset, generate
from vit_patching.zoo.clip import CLIP_MODELS, PROBES, load_probe, load_probe_model
from vit_patching.zoo.registry import DEFAULT_MODEL, MODEL_SPECS, WEIGHTS_DIR, ModelSpec, get_spec
from vit_patching.zoo.saes import available_saes, load_sae, sae_card

if TYPE_CHECKING:  # pragma: no cover
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "KNOWN_EDGES",
    "known_circuit_model",
    "known_circuit_pairs",
    "DEFAULT_MODEL",
    "PROBES",
    "ModelSpec",
    "ToyBatch",
    "ToyDataset",
    "available_datasets",
    "available_models",
    "available_saes",
    "get_spec",
    "load_dataset",
    "load_model",
    "load_probe",
    "load_probe_model",
    "load_sae",
    "load_timm_model",
    "model_card",
    "sae_card",
    "zero_shot_models",
]


def available_models() -> list[str]:
    """Names accepted by ``load_model`` / ``load_timm_model``.

    Example:
        >>> available_models()
        ['toy-conjunction', 'toy-relation', 'toy-shapes']
    """
    return sorted(MODEL_SPECS)


def zero_shot_models() -> list[str]:
    """Names of the zoo's zero-shot (image-text) models, loaded with ``vit_patching.zoo.clip.load_open_clip_model``.

    Example:
        >>> zero_shot_models()
        ['toy-clip']
    """
    return sorted(CLIP_MODELS)


def available_datasets() -> list[str]:
    """Names accepted by ``load_dataset``.

    Example:
        >>> available_datasets()
        ['captions', 'conjunction', 'relation', 'shapes']
    """
    return sorted(TASKS)


def load_dataset(name: str, n: int, seed: int = 0, *, progress: bool = False) -> ToyBatch:
    """Generate ``n`` images of toy dataset ``name`` with labels and evidence masks.

    Deterministic in ``seed``; the first ``k`` images do not depend on ``n``. The zoo models never saw the
    images of small seeds (their training seeds are 62-bit random draws), so any seed gives held-out data.

    Args:
        name: ``"shapes"``, ``"conjunction"``, ``"relation"`` or ``"captions"`` (see ``available_datasets()``).
        n: number of images (positive).
        seed: non-negative random seed.
        progress: show a tqdm bar.

    Returns:
        A ``ToyBatch``: ``images`` (normalised model input), ``pixels`` in [0, 1], ``labels``, ``masks``
        (True on the class-defining pixels) and ``class_names``.

    Raises:
        ValueError: unknown name (the message lists the available ones), bad ``n`` or ``seed``.

    Example:
        >>> b = load_dataset("conjunction", n=4, seed=0)
        >>> b.images.shape, b.masks.dtype
        (torch.Size([4, 3, 64, 64]), torch.bool)
    """
    if name not in TASKS:
        raise ValueError(f"name: expected one of the zoo datasets {available_datasets()}, got {name!r}")
    return generate(name, n, seed, progress=progress)  # type: ignore[arg-type]


def load_timm_model(name: str = DEFAULT_MODEL) -> "VisionTransformer":
    """The trained timm ``VisionTransformer`` ``name``, in eval mode, from the shipped safetensors weights.

    Loading is strict and never unpickles (``safetensors.torch.load_file``); no network access. The model's
    ``pretrained_cfg`` makes ``timm.data.resolve_data_config({}, model=m)`` + ``create_transform`` reproduce
    ``ToyBatch.images`` from a 64x64 PIL image.

    Args:
        name: a zoo model (see ``available_models()``); default ``"toy-shapes"``.

    Returns:
        The timm model.

    Raises:
        ValueError: unknown name (the message lists the available ones).
        FileNotFoundError: the weights file is missing from the installation.

    Example:
        >>> m = load_timm_model("toy-conjunction")
        >>> m.training, m.num_classes
        (False, 3)
    """
    from safetensors.torch import load_file

    from vit_patching.zoo.registry import build_timm_model

    spec = get_spec(name)
    path = spec.weights_path
    if not path.is_file():
        raise FileNotFoundError(f"weights of zoo model {name!r} not found at {path}")
    model = build_timm_model(name)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def load_model(name: str = DEFAULT_MODEL) -> Any:
    """The trained zoo model ``name`` as a ``HookedViT`` (``HookedViT.from_timm(load_timm_model(name))``; for a
    zero-shot model such as ``"toy-clip"``, its image tower read through its training captions:
    :func:`vit_patching.zoo.clip.load_zero_shot_model`).

    Args:
        name: a zoo model (see ``available_models()`` and ``zero_shot_models()``); default ``"toy-shapes"``.

    Returns:
        The HookedViT; ``model(batch.images)`` gives logits ``[batch, n_classes]``.

    Raises:
        ValueError: unknown name (the message lists the available ones).

    Example:
        >>> model = load_model("toy-shapes")
        >>> model(load_dataset("shapes", n=2, seed=0).images).shape
        torch.Size([2, 4])
    """
    if name in CLIP_MODELS:
        from vit_patching.zoo.clip import load_zero_shot_model

        return load_zero_shot_model(name)
    timm_model = load_timm_model(name)
    from vit_patching.model import HookedViT

    return HookedViT.from_timm(timm_model)


def model_card(name: str = DEFAULT_MODEL) -> str:
    """The shipped model card (markdown) of zoo model ``name``.

    Args:
        name: a zoo model (see ``available_models()`` and ``zero_shot_models()``).

    Returns:
        The card text.

    Example:
        >>> model_card("toy-shapes").startswith("# toy-shapes")
        True
    """
    if name in CLIP_MODELS:
        return (WEIGHTS_DIR / f"{name}.md").read_text()
    if name not in MODEL_SPECS:
        raise ValueError(f"name: expected one of the zoo models {sorted([*MODEL_SPECS, *CLIP_MODELS])}, got {name!r}")
    return get_spec(name).card_path.read_text()


# The known-circuit model imports the HookedViT: loaded on first use so ``import vit_patching.zoo`` stays cheap.
_LAZY = {"KNOWN_EDGES", "known_circuit_model", "known_circuit_pairs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("vit_patching.zoo.known_circuit"), name)
    raise AttributeError(f"module 'vit_patching.zoo' has no attribute {name!r}")

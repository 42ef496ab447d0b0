"""The zoo's zero-shot model ``toy-clip``: a small open_clip ``CLIP`` trained by this project on captioned scenes.

``toy-clip`` pairs a ViT image tower (open_clip's own ``VisionTransformer``: patch 8 on the zoo's 64x64 images,
4 layers, width 128, 4 heads, CLS pooling, the ``proj`` projection into a 64-d embedding) with a 2-layer text
transformer (width 64, context 12, open_clip's bundled CLIP tokenizer, so it runs offline). It was trained
contrastively on ``load_dataset("captions", ...)``: each image's caption, ``"a red circle"`` ... ``"a yellow plus"``
(``CAPTION_CLASS_NAMES``), names its one class-hued object. Its card (``model_card("toy-clip")``) gives the
recipe and the measured zero-shot accuracy.

open_clip is an optional dependency (the ``foundation`` extra), imported inside the functions that need it.

Example:
    >>> import torch
    >>> from vit_patching.zoo import load_dataset
    >>> model = load_open_clip_model("toy-clip")
    >>> batch = load_dataset("captions", n=4, seed=0)
    >>> with torch.no_grad():
    ...     scores = zero_shot_logits(model, batch.images)
    >>> scores.shape
    torch.Size([4, 16])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_choice
from vit_patching.zoo.datasets import CAPTION_CLASS_NAMES, IMAGE_SIZE
from vit_patching.zoo.registry import NORM_MEAN, NORM_STD, WEIGHTS_DIR

if TYPE_CHECKING:  # pragma: no cover
    from open_clip.model import CLIP

__all__ = [
    "CLIP_MODELS",
    "PROBES",
    "load_probe",
    "load_probe_model",
    "load_zero_shot_model",
    "zero_shot_head",
    "TOY_CLIP_CONFIG",
    "TOY_CLIP_TOKENIZER",
    "build_open_clip_model",
    "caption_embeddings",
    "clip_captions",
    "clip_tokenizer",
    "load_open_clip_model",
    "zero_shot_logits",
]

#: The zero-shot models of the zoo and their dataset (the captions are that dataset's class names).
CLIP_MODELS: dict[str, str] = {"toy-clip": "captions"}

#: The linear probes of the zoo: name -> the zero-shot zoo model whose image tower they read. ``toy-clip-shape``
#: reads toy-clip's image tower without a head (the CLS token after its final LayerNorm ``ln_post``, 128-d: no
#: projection ``proj``, no text tower) and predicts the object's shape (``captions`` label % 4); its card is
#: ``weights/toy-clip-shape-probe.md``, its recipe ``scripts/train_toy_probe.py``.
PROBES: dict[str, str] = {"toy-clip-shape": "toy-clip"}

#: open_clip tokenizer whose (bundled, offline) BPE vocabulary the text tower uses; any CLIP model name with the
#: standard 49408-token vocabulary gives the same token ids.
TOY_CLIP_TOKENIZER = "ViT-B-32"

#: ``open_clip.model.CLIP(**TOY_CLIP_CONFIG)``: the architecture of ``toy-clip``. The image tower keeps open_clip's
#: standard options (CLS pooling, LayerNorm before the blocks, no attentional pooler, no patch dropout, the final
#: LayerNorm before pooling, exact GELU), so ``HookedViT.from_open_clip`` reproduces it exactly.
TOY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": 8,  # an 8x8 grid, as the other zoo models
        "width": 128,
        "layers": 4,
        "head_width": 32,  # 4 heads
        "mlp_ratio": 4.0,
        "pool_type": "tok",
    },
    "text_cfg": {
        "context_length": 12,  # "a yellow triangle" is 5 tokens with start and end
        "vocab_size": 49408,  # the CLIP BPE vocabulary of the bundled tokenizer
        "width": 64,
        "heads": 4,
        "layers": 2,
    },
}

#: open_clip's preprocessing config of the zoo's inputs: ``(pixels - 0.5) / 0.5`` at 64x64, as ``ToyBatch.images``.
PREPROCESS_CFG: dict[str, Any] = {
    "size": (IMAGE_SIZE, IMAGE_SIZE),
    "mode": "RGB",
    "mean": NORM_MEAN,
    "std": NORM_STD,
    "interpolation": "bilinear",
    "resize_mode": "shortest",
}


def _check_name(name: str) -> None:
    check_choice(name, sorted(CLIP_MODELS), "name")


def _check_captions(captions: Any) -> tuple[str, ...]:
    if isinstance(captions, str) or not captions or not all(isinstance(c, str) and c for c in captions):
        raise ValueError(f"captions: expected a non-empty sequence of non-empty strings, got {captions!r}")
    return tuple(captions)


def clip_captions(name: str = "toy-clip") -> tuple[str, ...]:
    """The captions (class names) of zero-shot zoo model ``name``, in label order.

    Example:
        >>> clip_captions("toy-clip")[:2]
        ('a red circle', 'a red square')
    """
    _check_name(name)
    return CAPTION_CLASS_NAMES


def build_open_clip_model(config: dict[str, Any] = TOY_CLIP_CONFIG) -> "CLIP":
    """A freshly initialised open_clip ``CLIP`` from ``config`` (``CLIP(**config)``), with the zoo's preprocessing.

    Args:
        config: keyword arguments of ``open_clip.model.CLIP`` (``embed_dim``, ``vision_cfg``, ``text_cfg``).

    Returns:
        The model (train mode, random init from the current torch RNG state); ``model.visual.preprocess_cfg``
        says the inputs are normalised as ``(pixels - 0.5) / 0.5``.

    Example:
        >>> build_open_clip_model().visual.preprocess_cfg["mean"]
        (0.5, 0.5, 0.5)
    """
    import open_clip
    from open_clip.model import CLIP

    model = CLIP(**config)
    open_clip.set_model_preprocess_cfg(model, dict(PREPROCESS_CFG))
    return model


def clip_tokenizer(name: str = "toy-clip") -> Any:
    """open_clip's tokenizer for zero-shot zoo model ``name``: the bundled CLIP BPE at the model's context length.

    The plain ``open_clip.get_tokenizer("ViT-B-32")`` pads to 77 tokens, longer than the text tower's positional
    table; this one pads to ``TOY_CLIP_CONFIG["text_cfg"]["context_length"]`` (12). Works offline.

    Example:
        >>> clip_tokenizer()(["a red circle"])[0, :6].tolist()  # start, "a", "red", "circle", end, padding
        [49406, 320, 736, 7117, 49407, 0]
    """
    import open_clip

    _check_name(name)
    return open_clip.get_tokenizer(TOY_CLIP_TOKENIZER, context_length=TOY_CLIP_CONFIG["text_cfg"]["context_length"])


def caption_embeddings(model: "CLIP", captions: tuple[str, ...] | list[str]) -> Float[Tensor, "n_captions embed"]:
    """Unit-norm text embeddings of ``captions`` (``model.encode_text(tokens, normalize=True)``).

    Example:
        >>> m = load_open_clip_model("toy-clip")
        >>> caption_embeddings(m, clip_captions()).shape
        torch.Size([16, 64])
    """
    import open_clip

    captions = _check_captions(captions)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_TOKENIZER, context_length=model.context_length)
    return model.encode_text(tokenizer(list(captions)), normalize=True)


def zero_shot_logits(
    model: "CLIP", images: Float[Tensor, "batch channel height width"], captions: tuple[str, ...] | None = None
) -> Float[Tensor, "batch n_captions"]:
    """CLIP's zero-shot scores: ``logit_scale.exp() * cos(image embedding, caption embedding)``.

    Args:
        model: an open_clip ``CLIP`` (e.g. ``load_open_clip_model("toy-clip")``).
        images: normalised images (``ToyBatch.images``).
        captions: the candidate captions; default: the ``captions`` dataset's class names.

    Returns:
        One score per image and caption; its softmax is CLIP's zero-shot distribution.

    Example:
        >>> m = load_open_clip_model("toy-clip")
        >>> zero_shot_logits(m, torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 16])
    """
    text = caption_embeddings(model, CAPTION_CLASS_NAMES if captions is None else captions)
    image = model.encode_image(images, normalize=True)
    return model.logit_scale.exp() * image @ text.T


def load_open_clip_model(name: str = "toy-clip") -> "CLIP":
    """The trained zero-shot zoo model ``name`` as an open_clip ``CLIP``, in eval mode, offline.

    Built from the architecture recorded in the shipped ``<name>.json`` (``CLIP(**record["config"])``), with the
    weights read strictly from ``<name>.safetensors`` (never unpickled).

    Args:
        name: a zero-shot zoo model (``"toy-clip"``).

    Returns:
        The open_clip model; ``model.encode_image(batch.images)`` is the (unnormalised) image embedding.

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights or the record are missing from the installation.

    Example:
        >>> m = load_open_clip_model("toy-clip")
        >>> m.training, m.visual.output_dim
        (False, 64)
    """
    from safetensors.torch import load_file

    _check_name(name)
    weights, record = WEIGHTS_DIR / f"{name}.safetensors", WEIGHTS_DIR / f"{name}.json"
    for path in (weights, record):
        if not path.is_file():
            raise FileNotFoundError(f"zoo model {name!r}: {path.name} not found at {path}")
    config = json.loads(Path(record).read_text())["config"]
    model = build_open_clip_model(config)
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()



def zero_shot_head(model: "CLIP", name: str = "toy-clip", class_names: Any = None, templates: Any = ("{}",)) -> Any:
    """A :class:`~vit_patching.readouts.ZeroShotHead` over ``class_names`` from the zoo model's own text tower.

    Args:
        model: the open_clip model (:func:`load_open_clip_model`).
        name: the zero-shot zoo model, for its tokenizer (context length) and default captions.
        class_names: prompts, one per class (default: the model's 16 training captions).
        templates: prompt templates with ``{}`` (default ``("{}",)``: the captions are whole prompts).

    Example:
        >>> head = zero_shot_head(load_open_clip_model("toy-clip"), class_names=["a red circle", "a blue square"])
        >>> head.n_classes
        2
    """
    from vit_patching.readouts import ZeroShotHead

    names = list(clip_captions(name) if class_names is None else _check_captions(class_names))
    return ZeroShotHead.from_open_clip(model, clip_tokenizer(name), names, templates=list(templates))


def load_zero_shot_model(name: str = "toy-clip", class_names: Any = None, templates: Any = ("{}",)) -> Any:
    """The zero-shot zoo model ``name`` as a HookedViT whose scores are zero-shot class scores.

    The image tower is converted exactly (:meth:`HookedViT.from_open_clip`: its plain forward is
    ``encode_image``) and read through :func:`zero_shot_head` (``logit_scale * cos(image, caption)``), so its
    logits equal :func:`zero_shot_logits` and every experiment runs on it as on a classifier.

    Args:
        name: a zero-shot zoo model (``"toy-clip"``).
        class_names: prompts, one per class (default: the training captions, in label order).
        templates: prompt templates with ``{}``.

    Example:
        >>> model = load_zero_shot_model("toy-clip")
        >>> model.cfg.n_classes, type(model.readout).__name__
        (16, 'ZeroShotHead')
    """
    from vit_patching.model import HookedViT

    oc = load_open_clip_model(name)
    return HookedViT.from_open_clip(oc).with_readout(zero_shot_head(oc, name, class_names, templates))


def load_probe(name: str = "toy-clip-shape") -> Any:
    """The shipped :class:`~vit_patching.readouts.LinearProbe` ``name`` (``weights/<name>-probe.safetensors``).

    The probe records the fingerprint of the encoder it was fitted on, so attaching it to another model is
    refused (``model.with_readout(probe)`` raises a ValueError naming the fingerprints).

    Args:
        name: a zoo probe (``PROBES``): ``"toy-clip-shape"``.

    Example:
        >>> probe = load_probe("toy-clip-shape")
        >>> probe.features, probe.class_names
        ('cls', ['circle', 'square', 'triangle', 'plus'])
    """
    from vit_patching.readouts import LinearProbe

    check_choice(name, sorted(PROBES), "name")
    path = WEIGHTS_DIR / f"{name}-probe.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"zoo probe {name!r}: {path.name} not found at {path}")
    return LinearProbe.load(path)


def load_probe_model(name: str = "toy-clip-shape") -> Any:
    """The encoder of zoo probe ``name`` read through the probe: a HookedViT whose scores are the probe's.

    ``HookedViT.from_open_clip(load_open_clip_model(PROBES[name])).with_readout(load_probe(name))``: the image
    tower converted exactly; the probe reads its normed token stream, so the projection head and the text tower
    take no part in the scores.

    Example:
        >>> model = load_probe_model("toy-clip-shape")
        >>> model.cfg.n_classes, type(model.readout).__name__
        (4, 'LinearProbe')
    """
    from vit_patching.model import HookedViT

    probe = load_probe(name)
    return HookedViT.from_open_clip(load_open_clip_model(PROBES[name])).with_readout(probe)

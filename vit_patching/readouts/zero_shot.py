"""Cosine readouts for embedding models: zero-shot class scores from text embeddings, similarity to references."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..checks import check_bool
from ..model import HookedViT
from ..model.readout import CosineReadout


def _check_width(readout: CosineReadout, model: HookedViT, what: str) -> None:
    width = model.feature_width()
    if readout.d_in != width:
        raise ValueError(f"{what}: expected embeddings of width {width} (the model's image embedding"
                         f"{', the projection head output' if model.cfg.head_kind == 'projection' else ''}), "
                         f"got width {readout.d_in}")


class ZeroShotHead(CosineReadout):
    """Zero-shot class scores from text embeddings: CLIP ``scale · cos(img, txt_k)``, SigLIP ``+ bias``.

    ``scores[b, k] = logit_scale * <img_b / |img_b|, txt_k / |txt_k|> + logit_bias`` with ``normalize=True``
    (open_clip's ``model(image, text)`` logits); ``normalize=False`` uses the raw dot product.

    Normalisation and linear tools: the text embeddings are normalised once, here. The image embedding's norm
    ``|img_b|`` is computed on every forward and emitted at ``readout.hook_scale`` ``[batch, 1]``. Direct logit
    attribution, ``model.W_U`` / ``tokens_to_residual_directions`` and the logit lens treat it exactly as
    TransformerLens treats the final LayerNorm's scale: frozen at its value in the full (clean) forward, so the
    score is the linear map ``img @ (logit_scale * txt_n.T)`` divided by that per-image scalar, plus the bias;
    the contributions of all residual components then add up to the scores.

    Args:
        text_embeddings: ``[n_classes, d_embed]``, one row per class (normalised here if ``normalize``).
        logit_scale: The multiplier (open_clip's ``model.logit_scale.exp()``, e.g. 100 for trained CLIP).
        logit_bias: SigLIP's bias (``model.logit_bias``), ``None`` for CLIP.
        normalize: L2-normalise image and text embeddings (cosine similarity).
        class_names: One name per row, for figures and reports.

    Example:
        >>> head = ZeroShotHead(torch.randn(3, 16), logit_scale=100.0, class_names=["cat", "dog", "car"])
        >>> scored = proj.with_readout(head)             # proj: a projection head of width 16
        >>> scored(images).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        text_embeddings: Float[Tensor, "n_classes d_embed"],
        logit_scale: float | Tensor,
        logit_bias: float | Tensor | None = None,
        normalize: bool = True,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__(text_embeddings, logit_scale, logit_bias, check_bool(normalize, "normalize"),
                         class_names, "text_embeddings")

    def check_model(self, model: HookedViT) -> None:
        _check_width(self, model, "text_embeddings")

    @classmethod
    def from_open_clip(
        cls,
        model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        class_names: Sequence[str],
        templates: Sequence[str | Callable[[str], str]] = ("{}",),
    ) -> "ZeroShotHead":
        """Text embeddings from an open_clip model's text tower, with prompt-template ensembling.

        As open_clip's ``build_zero_shot_classifier``: each class's prompts (``template.format(name)``) are
        encoded and normalised, averaged over templates, and renormalised. ``logit_scale`` (exponentiated) and
        ``logit_bias`` are read from the model. With one template, ``readout(model.encode_image(x))`` equals
        open_clip's ``model(x, tokenizer(class_names))`` logits.

        Args:
            model: An open_clip ``CLIP`` / ``CustomTextCLIP`` model (has ``encode_text`` and ``logit_scale``).
            tokenizer: ``open_clip.get_tokenizer(name)``.
            class_names: The class names, one score each.
            templates: Format strings with ``{}`` (or callables name -> prompt), e.g. ``("a photo of a {}.",)``.

        Example:
            >>> import open_clip
            >>> clip = open_clip.create_model("ViT-B-32")
            >>> head = ZeroShotHead.from_open_clip(clip, open_clip.get_tokenizer("ViT-B-32"), ["a cat", "a dog"])
            >>> head.n_classes
            2
        """
        if not hasattr(model, "encode_text") or not hasattr(model, "logit_scale"):
            raise TypeError(f"model: expected an open_clip model with a text tower (encode_text, logit_scale), "
                            f"got {type(model).__name__}")
        if isinstance(class_names, str) or not class_names or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"class_names: expected a non-empty sequence of strings, got {class_names!r}")
        names = list(class_names)
        temps = list(templates) if not isinstance(templates, str) else None
        if not temps or not all((isinstance(t, str) and "{}" in t) or callable(t) for t in temps):
            raise ValueError(f"templates: expected a non-empty sequence of '{{}}' format strings or callables, "
                             f"got {templates!r}")
        prompts = [t.format(c) if isinstance(t, str) else t(c) for c in names for t in temps]
        ref = next(iter(model.parameters()))
        with torch.no_grad():
            emb = model.encode_text(tokenizer(prompts).to(ref.device), normalize=True)
            emb = emb.reshape(len(names), len(temps), -1).mean(dim=1)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            bias: Any = getattr(model, "logit_bias", None)
            return cls(emb, model.logit_scale.exp(), None if bias is None else bias, class_names=names)


class EmbeddingSimilarity(CosineReadout):
    """Cosine similarity of the image embedding to reference embeddings: one score per reference.

    "Which patches make this image look like that one": CAAP through this readout attributes the similarity
    of a retrieval-style encoder's embedding (DINOv2, CLIP's image tower) to a reference.
    ``scores[b, k] = cos(emb_b, ref_k)``; the normalisation is handled as in :class:`ZeroShotHead` (the image
    norm frozen at ``readout.hook_scale`` for linear tools).

    Args:
        reference: Reference embeddings ``[n_ref, d_embed]``, or reference images ``[n_ref, channel, height,
            width]`` encoded by ``model`` (its output features, as the readout reads them).
        model: The model that encodes reference images (only for images).
        class_names: One name per reference.

    Example:
        >>> sim = EmbeddingSimilarity(images[:1], model=model)
        >>> torch.allclose(model.with_readout(sim)(images[:1]), torch.ones(1, 1))  # an image is its own reference
        True
    """

    def __init__(
        self,
        reference: Float[Tensor, "n_ref d_embed"] | Float[Tensor, "n_ref channel height width"],
        model: HookedViT | None = None,
        class_names: Sequence[str] | None = None,
    ):
        if isinstance(reference, Tensor) and reference.ndim == 4:
            if not isinstance(model, HookedViT):
                raise TypeError(f"model: expected the HookedViT that encodes the reference images, "
                                f"got {type(model).__name__}")
            with torch.no_grad():  # the output features, as a "features" readout reads them
                reference = model.output_features(model(reference, stop_at_layer=model.cfg.n_layers))
        elif model is not None:
            raise ValueError("model: expected None with reference embeddings (only reference images are encoded), "
                             f"got a {type(model).__name__}")
        super().__init__(reference, 1.0, None, True, class_names, "reference")

    def check_model(self, model: HookedViT) -> None:
        _check_width(self, model, "reference")

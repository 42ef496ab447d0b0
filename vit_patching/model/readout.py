"""The readout interface: what turns a model's final representation into the class scores every metric reads.

A readout is an ``nn.Module`` with ``n_classes`` and ``class_names``. Where it reads (``reads``):

* ``"head"`` — :class:`ClassifierHead`: the model's own classifier head (today's behaviour, bit for bit);
* ``"features"`` — the model's output features ``[batch, d_features]``: the pooled vector after ``fc_norm``, mapped
  by the projection head when ``cfg.head_kind == "projection"`` (CLIP's image embedding);
* ``"tokens"`` — the token stream after the final norm ``[batch, pos, d_model]`` (probes on CLS and patch means).
* ``"latent"`` — a spliced SAE's latent inside the network (:class:`vit_patching.readouts.latent.LatentReadout`,
  whose ``run`` replaces the blocks after the SAE's).

A readout whose scores are affine in its input once a per-image scale is frozen (``linear_map``; the scale
cached at ``readout.hook_scale``) keeps direct logit attribution, residual directions and the logit lens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

READS = ("head", "features", "tokens", "latent")


def check_class_names(class_names: Sequence[str] | None, n_classes: int, name: str = "class_names") -> list[str] | None:
    """``None`` or a list of ``n_classes`` strings, else a ValueError naming ``name``."""
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names):
        raise TypeError(f"{name}: expected a sequence of strings, got {class_names!r}")
    names = list(class_names)
    if len(names) != n_classes:
        raise ValueError(f"{name}: expected {n_classes} names (one per class score), got {len(names)}")
    return names


class Readout(nn.Module):
    """Base class of every readout: maps the model's output (see ``reads``) to scores ``[batch, n_classes]``.

    Attributes:
        reads: ``"head"``, ``"features"`` or ``"tokens"`` (module docstring).
        n_classes: Number of scores.
        class_names: One name per score, or ``None``.
        d_in: Width of the input it expects (``None``: any; checked when attached).

    Example:
        >>> from vit_patching.readouts import ZeroShotHead
        >>> head = ZeroShotHead(torch.randn(3, 16), logit_scale=100.0)
        >>> head.n_classes, head.reads
        (3, 'features')
    """

    reads: str = "features"

    def __init__(self, n_classes: int, class_names: Sequence[str] | None = None, d_in: int | None = None):
        super().__init__()
        self.n_classes = n_classes
        self.class_names = check_class_names(class_names, n_classes)
        self.d_in = d_in

    def tokens_read(self) -> int | None:
        """For ``reads == "tokens"``: how many leading tokens the scores depend on (``None``: every token)."""
        return None

    def linear_map(self) -> tuple[Float[Tensor, "d_in n_classes"], Float[Tensor, " n_classes"]] | None:
        """``(W, b)`` with ``scores = (x / s) @ W + b``, ``s`` the frozen per-image scale at ``readout.hook_scale``
        (1 without one); ``None`` for a non-linear readout."""
        return None

    def select(self, tokens: Float[Tensor, "... pos d_model"]) -> Float[Tensor, "... d_in"]:
        """For ``reads == "tokens"``: the (linear) features read from the normed token stream."""
        raise NotImplementedError

    def check_model(self, model: nn.Module) -> None:
        """Raise a clear error if this readout cannot read ``model`` (called by ``with_readout``)."""

    def describe(self) -> str:
        """One line for reports: the readout and its classes."""
        names = "" if self.class_names is None else ": " + ", ".join(self.class_names[:8])
        more = "" if self.class_names is None or len(self.class_names) <= 8 else ", ..."
        return f"{type(self).__name__} ({self.n_classes} scores{names}{more})"


class ClassifierHead(Readout):
    """The model's own classifier head: ``model.with_readout(ClassifierHead())`` equals ``model``.

    The default readout of a model whose head is a classifier (``cfg.head_kind == "classifier"``).

    Example:
        >>> clf.readout                                     # a classifier model
        ClassifierHead()
        >>> torch.equal(clf.with_readout(ClassifierHead())(images), clf(images))
        True
    """

    reads = "head"

    def __init__(self, class_names: Sequence[str] | None = None):
        super().__init__(0, None)
        self._names = None if class_names is None else list(class_names)

    def check_model(self, model: nn.Module) -> None:
        head = getattr(model, "head", None)
        if head is None or model.cfg.head_kind != "classifier":
            raise ValueError("readout: ClassifierHead expected a model with a classifier head, got a "
                             + ("headless model" if head is None else "projection head"))
        self.n_classes = head.b_H.shape[0]
        self.class_names = check_class_names(self._names, self.n_classes)


class CosineReadout(Readout):
    """``scores = scale · cos(x, e_k) + bias``: the shared computation of :class:`ZeroShotHead` and
    :class:`EmbeddingSimilarity`.

    With ``normalize=True`` the input is divided by its L2 norm; that norm is emitted at ``readout.hook_scale``
    ``[batch, 1]`` (as a LayerNorm emits ``hook_scale``), and linear tools freeze it at its clean-run value, as
    TransformerLens freezes ``ln_final.hook_scale``: the scores are then the affine map ``linear_map()`` of the
    input divided by that frozen per-image scalar.
    """

    def __init__(self, embeddings: Tensor, scale: float | Tensor, bias: float | Tensor | None, normalize: bool,
                 class_names: Sequence[str] | None, name: str):
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"{name}: expected a tensor [n_classes, d_embed], got "
                             f"{tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__}")
        if not torch.isfinite(embeddings).all():
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize: expected True or False, got {normalize!r}")
        super().__init__(embeddings.shape[0], class_names, d_in=embeddings.shape[1])
        emb = embeddings.detach().float()
        if normalize:
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.normalize = normalize
        self.register_buffer("embeddings", emb)
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).detach().reshape(()))
        self.register_buffer("bias", None if bias is None else
                             torch.as_tensor(bias, dtype=torch.float32).detach().reshape(()))
        self.hook_scale = HookPoint()  # [batch, 1]: the input's L2 norm (normalize=True only)

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_classes"]:
        if self.normalize:
            # F.normalize's eps: an all-zero input scores 0 (times scale) instead of NaN.
            x = x / self.hook_scale(x.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        scores = self.scale * (x @ self.embeddings.T)  # open_clip's order: logit_scale * (img_n @ txt_n.T)
        return scores if self.bias is None else scores + self.bias

    def linear_map(self) -> tuple[Tensor, Tensor]:
        b = torch.zeros(self.n_classes, dtype=self.embeddings.dtype, device=self.embeddings.device)
        return self.scale * self.embeddings.T, b if self.bias is None else b + self.bias


class ModuleReadout(Readout):
    """Any user ``nn.Module`` from the model's output features ``[batch, d_in]`` to scores ``[batch, n_classes]``.

    ``model.with_readout(module)`` wraps a plain module in this; ``n_classes`` is read from one forward of zeros.

    Example:
        >>> scored = model.with_readout(nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3)))
        >>> scored.readout.n_classes
        3
    """

    def __init__(self, module: nn.Module, d_in: int, class_names: Sequence[str] | None = None):
        ref = next(iter(module.parameters()), None)
        probe = torch.zeros(1, d_in, dtype=torch.float32 if ref is None else ref.dtype,
                            device=None if ref is None else ref.device)
        try:
            with torch.no_grad():
                out = module(probe)
        except RuntimeError as exc:  # e.g. a Linear of another width: say which width the model gives
            raise ValueError(f"readout: expected a module that reads the model's features [batch, {d_in}], got "
                             f"{type(module).__name__}, which fails on them ({exc})") from None
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 1:
            raise ValueError(f"readout: expected a module mapping [batch, {d_in}] features to scores "
                             f"[batch, n_classes], got output "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        super().__init__(out.shape[1], class_names, d_in=d_in)
        self.module = module

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch n_classes"]:
        return self.module(x)

    def linear_map(self) -> tuple[Tensor, Tensor] | None:
        if isinstance(self.module, nn.Linear):
            b = self.module.bias
            return self.module.weight.T, torch.zeros_like(self.module.weight[:, 0]) if b is None else b
        return None

    def describe(self) -> str:
        return f"{type(self.module).__name__} module ({self.n_classes} scores)"

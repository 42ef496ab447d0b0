"""Linear probes on the features DINO-style encoders are read with: CLS, mean of patch tokens, or both."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor
from torch.nn import functional as F

from ..checks import check_batch_size, check_choice, check_positive_int, check_positive_number
from ..files import PathLike, atomic_write_bytes
from ..model import HookedViT
from ..model.readout import Readout

logger = logging.getLogger(__name__)

FEATURES = ("cls", "mean", "cls+mean")
FORMAT = "vit_patching.LinearProbe/1"


def model_fingerprint(model: HookedViT) -> str:
    """A short hash of the architecture and of the weights the probe's features depend on first and last
    (patch embedding, last block, final norm): a probe saved for one model is refused by another.

    Example:
        >>> len(model_fingerprint(model))
        16
    """
    cfg = model.cfg
    h = hashlib.sha256(repr((cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_prefix, cfg.patch_size)).encode())
    last = f"blocks.{cfg.n_layers - 1}."
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(("embed.", last, "ln_final.")):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def probe_features(
    model: HookedViT, images: Float[Tensor, "batch channel height width"], features: str = "cls",
    batch_size: int = 64,
) -> Float[Tensor, "batch d_in"]:
    """The features a :class:`LinearProbe` reads: the token stream after the final norm, CLS (token 0) and/or the
    mean of the patch tokens (CLS, distillation and register tokens excluded), concatenated as ``cls+mean``.

    Example:
        >>> probe_features(model, images, "cls+mean").shape   # d_model 32: CLS and patch mean
        torch.Size([2, 64])
    """
    check_choice(features, FEATURES, "features")
    batch_size = check_batch_size(batch_size)
    selector = LinearProbe(torch.zeros(1, _width(model, features)), torch.zeros(1), features, model.cfg.n_prefix)
    out = []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            resid = model(images[i : i + batch_size], stop_at_layer=model.cfg.n_layers)
            out.append(selector.select(model.ln_final(resid) if model.cfg.final_norm else resid))
    return torch.cat(out)


def _width(model: HookedViT, features: str) -> int:
    return model.cfg.d_model * (2 if features == "cls+mean" else 1)


class LinearProbe(Readout):
    """A linear probe on the normed token stream: ``scores = features @ weight.T + bias``.

    ``features``: ``"cls"`` (token 0 after the final norm), ``"mean"`` (mean of the patch tokens after the final
    norm, prefix tokens excluded) or ``"cls+mean"`` (both, concatenated: DINOv2's linear evaluation). A
    ``"cls"`` probe reads one token, so the patching engine keeps its ``readout_only`` shortcut; the others
    read every token and turn it off. Scores are linear in the normed tokens: direct logit attribution and the
    logit lens work with the final norm's frozen scale.

    Args:
        weight: ``[n_classes, d_in]`` (``d_in = d_model``, ``2 * d_model`` for ``cls+mean``).
        bias: ``[n_classes]``.
        features: ``"cls"``, ``"mean"`` or ``"cls+mean"``.
        n_prefix: Prefix tokens (CLS, DIST, registers) of the model it reads, excluded from the mean.
        class_names: One name per class.
        fingerprint: :func:`model_fingerprint` of the model it was fitted on (checked when attached).

    Example:
        >>> probe = LinearProbe.fit(model, images, labels, features="cls+mean")
        >>> model.with_readout(probe)(images).argmax(-1)  # the probe's predictions
        tensor([0, 1])
    """

    reads = "tokens"

    def __init__(self, weight: Float[Tensor, "n_classes d_in"], bias: Float[Tensor, " n_classes"],
                 features: str = "cls", n_prefix: int = 1, class_names: Sequence[str] | None = None,
                 fingerprint: str | None = None):
        check_choice(features, FEATURES, "features")
        if not isinstance(weight, Tensor) or weight.ndim != 2:
            raise ValueError(f"weight: expected a tensor [n_classes, d_in], got "
                             f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias: expected a tensor [{weight.shape[0]}], got "
                             f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
        super().__init__(weight.shape[0], class_names, d_in=weight.shape[1])
        self.features = features
        self.n_prefix = n_prefix
        self.fingerprint = fingerprint
        self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    def tokens_read(self) -> int | None:
        return 1 if self.features == "cls" else None

    def select(self, tokens: Float[Tensor, "... pos d_model"]) -> Float[Tensor, "... d_in"]:
        parts = []
        if self.features in ("cls", "cls+mean"):
            parts.append(tokens[..., 0, :])
        if self.features in ("mean", "cls+mean"):
            parts.append(tokens[..., self.n_prefix :, :].mean(dim=-2))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward(self, tokens: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch n_classes"]:
        return F.linear(self.select(tokens), self.weight, self.bias)

    def linear_map(self) -> tuple[Tensor, Tensor]:
        return self.weight.T, self.bias

    def check_model(self, model: HookedViT) -> None:
        cfg = model.cfg
        if self.features != "mean" and not cfg.has_cls:
            raise ValueError(f"features: expected 'mean' for a model without a class token, got {self.features!r}")
        got = dict(d_in=self.d_in, n_prefix=self.n_prefix)
        want = dict(d_in=_width(model, self.features), n_prefix=cfg.n_prefix)
        if got != want:
            raise ValueError(f"readout: expected a probe for this model ({want}), got a probe for another model "
                             f"({got})")
        if self.fingerprint is not None and self.fingerprint != model_fingerprint(model):
            raise ValueError(f"readout: expected a probe fitted on this model (fingerprint "
                             f"{model_fingerprint(model)}), got a probe for another model (fingerprint "
                             f"{self.fingerprint}); refit it with LinearProbe.fit(model, ...)")

    @classmethod
    def fit_features(
        cls, data: Float[Tensor, "n d_in"], labels: Int[Tensor, " n"], *, n_classes: int | None = None,
        weight_decay: float = 1e-4, max_iter: int = 500, **kwargs,
    ) -> "LinearProbe":
        """Multinomial logistic regression on cached features ``data``: deterministic full-batch L-BFGS (float64)
        from a zero initialisation, minimising the mean cross-entropy plus ``weight_decay / 2 * |weight|^2``.

        ``kwargs`` go to the constructor (``features``, ``n_prefix``, ``class_names``, ``fingerprint``).

        Example:
            >>> probe = LinearProbe.fit_features(torch.randn(64, 8), torch.randint(0, 3, (64,)))
            >>> probe.weight.shape
            torch.Size([3, 8])
        """
        if not isinstance(data, Tensor) or data.ndim != 2:
            raise ValueError(f"data: expected features [n, d_in], got "
                             f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")
        if (not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool
                or tuple(labels.shape) != (data.shape[0],)):
            raise ValueError(f"labels: expected integer class indices [{data.shape[0]}], got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        if labels.numel() == 0 or labels.min() < 0:
            raise ValueError("labels: expected at least one label, all >= 0")
        k = int(labels.max()) + 1 if n_classes is None else check_positive_int(n_classes, "n_classes")
        if int(labels.max()) >= k:
            raise ValueError(f"labels: expected classes in [0, {k}), got {int(labels.max())}")
        weight_decay = check_positive_number(weight_decay, "weight_decay", allow_zero=True)
        max_iter = check_positive_int(max_iter, "max_iter")
        x, y = data.detach().to("cpu", torch.float64), labels.to("cpu", torch.long)
        W = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(F.linear(x, W, b), y) + 0.5 * weight_decay * W.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            loss = opt.step(closure)
        logger.info("LinearProbe.fit: final loss %.6f", float(loss.detach()))
        dtype, device = data.dtype, data.device
        return cls(W.detach().to(device, dtype), b.detach().to(device, dtype), **kwargs)

    @classmethod
    def fit(
        cls, model: HookedViT, images: Float[Tensor, "batch channel height width"], labels: Int[Tensor, " batch"],
        features: str = "cls", *, class_names: Sequence[str] | None = None, weight_decay: float = 1e-4,
        max_iter: int = 500, batch_size: int = 64,
    ) -> "LinearProbe":
        """Fit a probe on ``model``'s features of ``images`` (:func:`probe_features`, then :meth:`fit_features`).

        Example:
            >>> probe = LinearProbe.fit(model, images, labels, features="cls")
            >>> torch.equal(model.with_readout(probe)(images).argmax(-1), labels)
            True
        """
        n = None if class_names is None else len(class_names)
        feats = probe_features(model, images, features, batch_size)
        return cls.fit_features(feats, labels, n_classes=n, weight_decay=weight_decay, max_iter=max_iter,
                                features=features, n_prefix=model.cfg.n_prefix, class_names=class_names,
                                fingerprint=model_fingerprint(model))

    def save(self, path: PathLike) -> Path:
        """Write ``weight``/``bias`` and the metadata that refuses the probe for another model (safetensors,
        written to a temporary name and renamed)."""
        meta = dict(format=FORMAT, features=self.features, n_prefix=str(self.n_prefix),
                    fingerprint=self.fingerprint or "", class_names=json.dumps(self.class_names))
        data = save_safetensors({"weight": self.weight.detach().contiguous().cpu(),
                                 "bias": self.bias.detach().contiguous().cpu()}, metadata=meta)
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: PathLike) -> "LinearProbe":
        """Read a probe written by :meth:`save` (bit-identical weights).

        Example:
            >>> LinearProbe(torch.zeros(2, 32), torch.zeros(2)).save(tmp / "probe.safetensors").name
            'probe.safetensors'
            >>> LinearProbe.load(tmp / "probe.safetensors").features
            'cls'
        """
        raw = Path(path).read_bytes()
        try:  # safetensors layout: 8-byte little-endian header length, JSON header (with __metadata__), data
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
            tensors = load_safetensors(raw)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"path: expected a LinearProbe safetensors file, got {path!s} ({exc})") from None
        if meta.get("format") != FORMAT or set(tensors) != {"weight", "bias"}:
            raise ValueError(f"path: expected a LinearProbe file ({FORMAT}), got {path!s} "
                             f"(format {meta.get('format')!r}, tensors {sorted(tensors)})")
        return cls(tensors["weight"], tensors["bias"], meta["features"], int(meta["n_prefix"]),
                   json.loads(meta["class_names"]), meta["fingerprint"] or None)

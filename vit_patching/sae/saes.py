"""Sparse autoencoders with SAELens's architectures and formulas: standard (ReLU), top-k, JumpReLU and gated.

Each SAE reads one hook (``cfg.hook_name``, a TransformerLens name as built by
:func:`vit_patching.hook_names.get_act_name`), encodes an activation ``[..., d_in]`` into latents ``[..., d_sae]`` and
decodes them back. The formulas follow SAELens 6.x (``docs/sae.md`` writes them out); input processing is SAELens's
``process_sae_in``: optional ``hook_z`` reshaping, run-time normalisation, then ``x - b_dec`` when
``apply_b_dec_to_input``.

Example:
    >>> sae = make_sae(SAEConfig("topk", d_in=32, d_sae=128, hook_name="blocks.1.hook_resid_post", k=8))
    >>> latents = sae.encode(torch.randn(2, 17, 32))     # [2, 17, 128], at most 8 non-zero per token
    >>> sae.decode(latents).shape
    torch.Size([2, 17, 32])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vit_patching.checks import check_bool, check_choice, check_positive_int, is_int

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
# SAELens's run-time normalisations. "expected_average_only_in" is a training-time scaling that SAELens folds into
# the weights; at inference it is the identity in SAELens and here.
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
RESHAPES = ("none", "hook_z")
# Which tokens an SAE was trained on and is applied to when spliced (a vit_patching option; SAELens has none).
POSITIONS = ("all", "patches", "cls")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYER_NORM_EPS = 1e-5  # SAELens's layer_norm normalisation constant


@dataclass
class SAEConfig:
    """What an SAE is: SAELens's ``cfg.json`` fields plus the tokens it applies to.

    Attributes:
        architecture: One of :data:`ARCHITECTURES`.
        d_in: Width of the activation it reads (``n_heads * d_head`` for a ``hook_z`` SAE).
        d_sae: Number of latents.
        hook_name: The hook it reads, e.g. ``"blocks.3.hook_resid_post"`` (``None``: state it when splicing).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding (SAELens's default ``True``).
        normalize_activations: One of :data:`NORMALIZATIONS`.
        reshape_activations: ``"hook_z"`` flattens ``[..., head, d_head]`` to ``[..., head * d_head]``.
        k: Latents kept per token (top-k only).
        rescale_acts_by_decoder_norm: Top-k only (newer SAELens): pre-activations are multiplied by the decoder
            row norms before the top-k, and latents divided by them before decoding.
        positions: Tokens it applies to when spliced: ``"all"``, ``"patches"`` (not CLS/registers) or ``"cls"``.
        dtype: Parameter dtype name (``"float32"``, ...).
        metadata: Other SAELens metadata (model name, ...), kept so a save/load round trip loses nothing.
    """

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    positions: str = "all"
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.architecture, ARCHITECTURES, "architecture")
        check_positive_int(self.d_in, "d_in")
        check_positive_int(self.d_sae, "d_sae")
        if self.hook_name is not None and not isinstance(self.hook_name, str):
            raise TypeError(f"hook_name: expected a hook name string or None, got {self.hook_name!r}")
        check_bool(self.apply_b_dec_to_input, "apply_b_dec_to_input")
        check_choice(self.normalize_activations, NORMALIZATIONS, "normalize_activations")
        check_choice(self.reshape_activations, RESHAPES, "reshape_activations")
        check_bool(self.rescale_acts_by_decoder_norm, "rescale_acts_by_decoder_norm")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise ValueError(f"rescale_acts_by_decoder_norm: expected False for a {self.architecture!r} SAE (SAELens "
                             f"has it for top-k only), got True")
        check_choice(self.positions, POSITIONS, "positions")
        check_choice(self.dtype, tuple(DTYPES), "dtype")
        if self.architecture == "topk":
            if not is_int(self.k) or not 1 <= self.k <= self.d_sae:
                raise ValueError(f"k: expected an int in [1, d_sae={self.d_sae}] for a top-k SAE, got {self.k!r}")
        elif self.k is not None:
            raise ValueError(f"k: expected None for a {self.architecture!r} SAE (only top-k keeps k latents), "
                             f"got {self.k!r}")


class SAE(nn.Module):
    """Base class: SAELens's input processing, linear decoder and normalisation; subclasses give the encoder.

    Parameters (SAELens's names and shapes): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``,
    and per architecture ``b_enc [d_sae]``, ``threshold [d_sae]`` (JumpReLU), ``b_gate``, ``b_mag``, ``r_mag``
    ``[d_sae]`` (gated). New weights are initialised as SAELens does (``W_dec`` Kaiming-uniform, ``W_enc = W_dec.T``,
    biases and thresholds zero).

    Example:
        >>> sae = make_sae(SAEConfig("standard", d_in=32, d_sae=64, hook_name="blocks.0.hook_resid_post"))
        >>> sae(torch.randn(4, 32)).shape
        torch.Size([4, 32])
    """

    architecture = ""
    extra_params: tuple[str, ...] = ("b_enc",)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"architecture: expected {self.architecture!r} for {type(self).__name__}, "
                             f"got {cfg.architecture!r}")
        self.cfg = cfg
        dtype = DTYPES[cfg.dtype]
        w_dec = torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype)
        nn.init.kaiming_uniform_(w_dec)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone().contiguous())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        for name in self.extra_params:
            setattr(self, name, nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype)))
        self._norm_state: tuple[Tensor, ...] = ()
        self._head_shape: tuple[int, ...] = ()

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str | None:
        return self.cfg.hook_name

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's SAELens name and shape (what ``sae_weights.safetensors`` holds)."""
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        shapes.update({name: (d_sae,) for name in self.extra_params})
        return shapes

    # ------------------------------------------------------------------ SAELens's process_sae_in / decode
    def process_input(self, x: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        """Reshape (``hook_z``: ``[..., head, d_head]`` to ``[..., d_in]``), normalise, subtract ``b_dec`` if
        ``apply_b_dec_to_input``."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.reshape_activations == "hook_z":
            self._head_shape = tuple(x.shape[-2:])
            x = x.flatten(-2)
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"x: expected an activation [..., d_in={self.cfg.d_in}], got shape {tuple(x.shape)}")
        norm = self.cfg.normalize_activations
        # The scale is kept for decode, as in SAELens: decode undoes the normalisation of the last encoded input.
        if norm == "constant_norm_rescale":
            coeff = self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_state = (coeff,)
            x = x * coeff
        elif norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            self._norm_state = (mu, std)
            x = x / (std + LAYER_NORM_EPS)
        return x - self.b_dec * self.cfg.apply_b_dec_to_input

    def hidden_pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Pre-activation ``x @ W_enc + b_enc`` of the processed input (gated: the magnitude path)."""
        return x @ self.W_enc + self.b_enc

    def activation(self, hidden_pre: Float[Tensor, "... d_sae"], x: Tensor) -> Float[Tensor, "... d_sae"]:
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latents of activations ``x`` (``[..., head, d_head]`` for a ``hook_z`` SAE).

        Example:
            >>> make_sae(SAEConfig("jumprelu", d_in=8, d_sae=16)).encode(torch.randn(3, 8)).shape
            torch.Size([3, 16])
        """
        x = self.process_input(x)
        return self.activation(self.hidden_pre(x), x)

    def decode(self, latents: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction ``latents @ W_dec + b_dec``, de-normalised and reshaped back like the last encoded input.

        Example:
            >>> sae = make_sae(SAEConfig("standard", d_in=8, d_sae=16))
            >>> torch.equal(sae.decode(torch.zeros(16)), sae.b_dec.detach())
            True
        """
        if self.cfg.rescale_acts_by_decoder_norm:
            latents = latents / self.W_dec.norm(dim=-1)
        out = latents @ self.W_dec + self.b_dec
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":
            out = out / self._norm_state[0]
        elif norm == "layer_norm":
            mu, std = self._norm_state
            out = out * std + mu
        if self.cfg.reshape_activations == "hook_z":
            out = out.unflatten(-1, self._head_shape)
        return out

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, hook_name={self.cfg.hook_name!r}"


class StandardSAE(SAE):
    """``ReLU(x' @ W_enc + b_enc)`` with ``x'`` the processed input."""

    architecture = "standard"

    def activation(self, hidden_pre: Tensor, x: Tensor) -> Tensor:
        return torch.relu(hidden_pre)


class TopKSAE(SAE):
    """The ``k`` largest pre-activations per token, through ReLU; every other latent 0 (SAELens's ``TopK``).

    With ``rescale_acts_by_decoder_norm`` the pre-activations are first multiplied by ``||W_dec[i]||`` and
    :meth:`decode` divides the latents by it again."""

    architecture = "topk"

    def activation(self, hidden_pre: Tensor, x: Tensor) -> Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        top = torch.topk(hidden_pre, k=self.cfg.k, dim=-1)
        return torch.zeros_like(hidden_pre).scatter(-1, top.indices, torch.relu(top.values))


class JumpReLUSAE(SAE):
    """``ReLU(h) * (h > threshold)`` with ``h = x' @ W_enc + b_enc`` (the threshold is per latent)."""

    architecture = "jumprelu"
    extra_params = ("b_enc", "threshold")

    def activation(self, hidden_pre: Tensor, x: Tensor) -> Tensor:
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold).to(hidden_pre.dtype)


class GatedSAE(SAE):
    """``(x' @ W_enc + b_gate > 0) * ReLU(x' @ (W_enc * exp(r_mag)) + b_mag)``: a gate and a magnitude path that
    share ``W_enc`` (no ``b_enc``)."""

    architecture = "gated"
    extra_params = ("b_gate", "b_mag", "r_mag")

    def hidden_pre(self, x: Tensor) -> Tensor:
        return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def activation(self, hidden_pre: Tensor, x: Tensor) -> Tensor:
        gate = (x @ self.W_enc + self.b_gate > 0).to(hidden_pre.dtype)
        return gate * torch.relu(hidden_pre)


SAE_CLASSES: dict[str, type[SAE]] = {c.architecture: c for c in (StandardSAE, TopKSAE, JumpReLUSAE, GatedSAE)}


def make_sae(cfg: SAEConfig) -> SAE:
    """A new SAE of ``cfg.architecture`` with SAELens's initialisation (for training or to load weights into).

    Example:
        >>> sae = make_sae(SAEConfig("gated", d_in=32, d_sae=64, hook_name="blocks.1.hook_resid_pre"))
        >>> type(sae).__name__, sae.d_sae
        ('GatedSAE', 64)
    """
    if not isinstance(cfg, SAEConfig):
        raise TypeError(f"cfg: expected an SAEConfig, got {type(cfg).__name__}")
    return SAE_CLASSES[cfg.architecture](cfg)

"""ViT configuration: the :class:`ViTConfig` dataclass and its vocabularies.

Reading a config off a timm module (never guessing it from a model name) lives in
:mod:`vit_patching.model.timm_config` (``vit_patching.model.config_from_timm``), which imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "silu", "sigmoid")
POOLS = ("token", "avg", "max", "avgmax", "", "map")
HEAD_KINDS = ("classifier", "projection")  # what the head's outputs are: class scores, or an embedding (CLIP's proj)
NORMS = ("LN", "RMS")  # timm LayerNorm, timm RmsNorm (TransformerLens names)


class UnsupportedModelError(ValueError):
    """The timm model uses a feature that HookedViT cannot reproduce exactly."""


@dataclass
class ViTConfig:
    """Architecture of a (hooked) Vision Transformer.

    Field names follow TransformerLens (``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
    ``normalization_type``, ``attn_only``) so that ``ActivationCache`` helpers work unchanged.

    Example:
        >>> cfg = ViTConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=128, n_classes=10,
        ...                 img_size=(32, 32), patch_size=(8, 8))
        >>> cfg.grid_size, cfg.n_prefix
        ((4, 4), 1)
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_classes: int
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int = 3
    has_cls: bool = True
    has_dist: bool = False
    n_registers: int = 0
    no_embed_class: bool = False
    has_pos_embed: bool = True
    patch_bias: bool = True
    pre_norm: bool = False
    final_norm: bool = True
    fc_norm: bool = False
    global_pool: str = "token"
    pool_include_prefix: bool = False
    qk_norm: bool = False
    layer_scale: bool = False  # timm LayerScale (ls1/ls2 gamma) on every block; see components.py
    act_fn: str = "gelu"
    eps: float = 1e-6
    eps_qk: float = 1e-6
    dynamic_img_size: bool = False
    # Architecture variants beyond the plain ViT (all off for it).
    norm_kind: str = "LN"  # every norm of the model: "LN" (LayerNorm) or "RMS" (RmsNorm, no bias)
    gated_mlp: bool = False  # GLU/SwiGLU MLP: act(x W_gate + b_gate) * (x W_in + b_in) (TransformerLens's gated_mlp)
    mlp_norm: bool = False  # timm scale_mlp_norm / EVA02 sub-LN: a norm over the hidden units before fc2
    embed_norm: bool = False  # timm embed_norm_layer: a norm over the patch tokens right after the conv
    parallel_attn_mlp: bool = False  # timm ParallelScalingBlock: attention and MLP both read ln1 (TransformerLens name)
    attn_norm: bool = False  # timm scale_attn_norm / EVA scale_attn_inner: a norm over the concatenated heads' z
    # global_pool="map": timm's AttentionPoolLatent (SigLIP): one learned latent query attends to the tokens.
    pool_n_heads: int = 0
    pool_d_mlp: int = 0
    # Rotary position embedding on the patch tokens (timm Eva): "" none, "axial" one table for every block,
    # "mixed" one learned table per block and head; rope_half: rotate-half layout instead of interleaved pairs.
    rope: str = ""
    rope_half: bool = False
    # What the head (``n_classes`` outputs) computes: "classifier" class scores (timm's head), or "projection" an
    # image embedding (CLIP's image projection into the text space: no class scores until a readout is attached).
    head_kind: str = "classifier"
    # TransformerLens-compatible flags.
    normalization_type: str = "LN"
    attn_only: bool = False
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    use_fused_attn: bool = True
    # Preprocessing (timm data config) carried along so inputs can be prepared without the timm model.
    data_config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"  # kept in sync with the parameters by HookedViT (TransformerLens tools read it)
    timm_class: str = "VisionTransformer"

    def __post_init__(self) -> None:
        if self.act_fn not in ACTIVATIONS:
            raise UnsupportedModelError(f"act_fn must be one of {ACTIVATIONS}, got {self.act_fn!r}")
        if self.global_pool not in POOLS:
            raise UnsupportedModelError(f"global_pool must be one of {POOLS}, got {self.global_pool!r}")
        if self.head_kind not in HEAD_KINDS:
            raise UnsupportedModelError(f"head_kind must be one of {HEAD_KINDS}, got {self.head_kind!r}")
        if self.norm_kind not in NORMS:
            raise UnsupportedModelError(f"norm_kind must be one of {NORMS}, got {self.norm_kind!r}")
        if self.global_pool == "token" and not self.has_cls:
            raise UnsupportedModelError("global_pool='token' needs a class token")

    @property
    def n_prefix(self) -> int:
        return int(self.has_cls) + int(self.has_dist) + self.n_registers

    @property
    def prefix_labels(self) -> tuple[str, ...]:
        labels = ["CLS"] if self.has_cls else []
        labels += ["DIST"] if self.has_dist else []
        labels += [f"REG{i}" for i in range(self.n_registers)]
        return tuple(labels)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def n_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_pos(self) -> int:
        return self.n_prefix + self.n_patches

    @property
    def n_pos_embed(self) -> int:
        return self.n_patches if self.no_embed_class else self.n_pos

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


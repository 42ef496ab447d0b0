"""ViT configuration, read from a timm module instance (never guessed from a model name)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
POOLS = ("token", "avg", "max", "avgmax", "")


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


def _norm_eps(module: nn.Module, what: str) -> float | None:
    """eps of a LayerNorm, None for Identity; refuse any other normalisation."""
    if isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.bias is not None:
        if len(module.normalized_shape) != 1:
            raise UnsupportedModelError(f"{what}: only 1-D LayerNorm is supported, got {module.normalized_shape}")
        return float(module.eps)
    raise UnsupportedModelError(f"{what}: unsupported normalisation {type(module).__name__} (only LayerNorm)")


def _act_name(module: nn.Module, what: str) -> str:
    from timm.layers import activations as A

    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, A.GELU):
        return "gelu"
    if isinstance(module, A.GELUTanh):
        return "gelu_tanh"
    if isinstance(module, A.QuickGELU):
        return "quick_gelu"
    raise UnsupportedModelError(f"{what}: unsupported MLP activation {type(module).__name__}; expected {ACTIVATIONS}")


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


_HOOK_KINDS = (
    ("_forward_pre_hooks", "forward pre-hook"),
    ("_forward_hooks", "forward hook"),
    ("_backward_pre_hooks", "backward pre-hook"),
    ("_backward_hooks", "backward hook"),
)


def check_no_module_hooks(model: nn.Module, name: str = "model") -> None:
    """Refuse a timm model that carries PyTorch hooks on any of its modules.

    A hook can change what timm computes, and the conversion copies weights only: the HookedViT would
    silently differ from the timm model the user ran. Remove the hooks (``handle.remove()``) first, or
    re-add their effect as a HookedViT hook.

    Raises:
        UnsupportedModelError: naming the module path and the kind of hook.

    Example:
        >>> import timm
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
        >>> _ = m.blocks[0].register_forward_hook(lambda mod, args, out: out)
        >>> check_no_module_hooks(m)
        Traceback (most recent call last):
        ...
        vit_patching.model.config.UnsupportedModelError: model: a forward hook is registered on 'blocks.0' ...
    """
    for path, module in model.named_modules():
        for attr, kind in _HOOK_KINDS:
            if getattr(module, attr, None):
                where = repr(path) if path else "the model itself"
                raise UnsupportedModelError(
                    f"{name}: a {kind} is registered on {where}; the conversion copies weights only and would "
                    "drop it, so the HookedViT would differ from the hooked timm model. Remove the hook first "
                    "(handle.remove()) and add its effect as a HookedViT hook instead"
                )


def config_from_timm(model: nn.Module) -> ViTConfig:
    """Read a :class:`ViTConfig` off a timm ``VisionTransformer`` instance, refusing what is not exact.

    Args:
        model: A timm ``VisionTransformer`` (or ``VisionTransformerDistilled``).

    Returns:
        The configuration.

    Raises:
        UnsupportedModelError: naming the feature (attention pooling, EVA/RoPE, gated attention,
            ``scale_attn_norm``, non-standard blocks or MLPs, register tokens on a distilled DeiT, PyTorch
            hooks registered on the timm modules, ...).

    Example:
        >>> import timm
        >>> cfg = config_from_timm(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2))
        >>> cfg.n_layers, cfg.grid_size
        (2, (2, 2))
    """
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(
            f"model must be a timm VisionTransformer, got {type(model).__module__}.{type(model).__name__}"
            " (EVA, Swin, DeiT-III 'Eva' trees and other families are not supported)"
        )
    check_no_module_hooks(model)
    name = type(model).__name__
    if name not in ("VisionTransformer", "VisionTransformerDistilled"):
        raise UnsupportedModelError(f"unsupported VisionTransformer subclass {name}")
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedModelError(
            f"global_pool={model.global_pool!r} uses an attention-pool head ({type(model.attn_pool).__name__}),"
            " which HookedViT does not convert"
        )
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:
        raise UnsupportedModelError(f"unsupported patch embedding {type(pe).__name__} (expected timm PatchEmbed)")
    if not isinstance(pe.norm, nn.Identity):
        raise UnsupportedModelError("patch-embedding norm (embed_norm_layer) is not supported")
    if getattr(pe, "dynamic_img_pad", False):
        raise UnsupportedModelError("dynamic_img_pad is not supported")
    conv = pe.proj
    if not isinstance(conv, nn.Conv2d) or conv.stride != conv.kernel_size or conv.padding not in ((0, 0), 0):
        raise UnsupportedModelError("patch embedding must be a non-overlapping Conv2d (stride == kernel, no padding)")
    if not isinstance(model.patch_drop, nn.Identity) and model.patch_drop.prob > 0 and model.training:
        raise UnsupportedModelError("patch dropout in training mode is not supported")

    blocks = list(model.blocks)
    if not blocks:
        raise UnsupportedModelError("model has no blocks")
    d_model = model.embed_dim
    n_heads = d_head = d_mlp = None
    act = None
    eps_set: set[float] = set()
    eps_qk: set[float] = set()
    qk_norm = None
    layer_scale = None
    for i, blk in enumerate(blocks):
        if type(blk) is not Block:
            raise UnsupportedModelError(
                f"blocks.{i} is {type(blk).__name__}; only timm's pre-LN Block is supported"
                " (ResPostBlock, ParallelScalingBlock, ... are not)"
            )
        attn = blk.attn
        if type(attn) is not Attention:
            raise UnsupportedModelError(
                f"blocks.{i}.attn is {type(attn).__name__}; only timm's standard Attention is supported"
                " (no RoPE, differential or other attention)"
            )
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"blocks.{i}.attn: gated attention is not supported")
        if not isinstance(attn.norm, nn.Identity):
            raise UnsupportedModelError(
                f"blocks.{i}.attn.norm: scale_attn_norm (a norm over the concatenated heads) breaks per-head"
                " additivity and is not supported"
            )
        if attn.proj.out_features != d_model:
            raise UnsupportedModelError(f"blocks.{i}.attn: dim_out != embed_dim is not supported")
        if type(blk.mlp) is not Mlp or getattr(blk.mlp, "use_conv", False):
            raise UnsupportedModelError(
                f"blocks.{i}.mlp is {type(blk.mlp).__name__}; only timm's Mlp is supported (no SwiGLU/GLU)"
            )
        if not isinstance(blk.mlp.norm, nn.Identity):
            raise UnsupportedModelError(f"blocks.{i}.mlp.norm: scale_mlp_norm is not supported")
        this_ls = []
        for ls_name in ("ls1", "ls2"):
            ls = getattr(blk, ls_name)
            if not isinstance(ls, nn.Identity) and not hasattr(ls, "gamma"):
                raise UnsupportedModelError(f"blocks.{i}.{ls_name}: unsupported LayerScale {type(ls).__name__}")
            this_ls.append(not isinstance(ls, nn.Identity))
        if this_ls[0] != this_ls[1] or (layer_scale is not None and this_ls[0] != layer_scale):
            raise UnsupportedModelError(f"blocks.{i}: LayerScale on some residual branches only is not supported")
        layer_scale = this_ls[0]
        for dp in ("drop_path1", "drop_path2"):
            if not isinstance(getattr(blk, dp), nn.Identity) and model.training:
                raise UnsupportedModelError("stochastic depth in training mode is not supported")
        h, dh, dm = attn.num_heads, attn.head_dim, blk.mlp.fc1.out_features
        if n_heads is None:
            n_heads, d_head, d_mlp = h, dh, dm
        elif (h, dh, dm) != (n_heads, d_head, d_mlp):
            raise UnsupportedModelError(f"blocks.{i}: heterogeneous block sizes are not supported")
        a = _act_name(blk.mlp.act, f"blocks.{i}.mlp.act")
        if act is None:
            act = a
        elif a != act:
            raise UnsupportedModelError(f"blocks.{i}: mixed MLP activations are not supported")
        eps_set.add(_norm_eps(blk.norm1, f"blocks.{i}.norm1"))
        eps_set.add(_norm_eps(blk.norm2, f"blocks.{i}.norm2"))
        this_qk = not isinstance(attn.q_norm, nn.Identity)
        if qk_norm is None:
            qk_norm = this_qk
        elif this_qk != qk_norm:
            raise UnsupportedModelError(f"blocks.{i}: qk_norm on some blocks only is not supported")
        if this_qk:
            eps_qk.add(_norm_eps(attn.q_norm, f"blocks.{i}.attn.q_norm"))
            eps_qk.add(_norm_eps(attn.k_norm, f"blocks.{i}.attn.k_norm"))
    eps_pre = _norm_eps(model.norm_pre, "norm_pre")
    eps_final = _norm_eps(model.norm, "norm")
    eps_fc = _norm_eps(model.fc_norm, "fc_norm")
    for e in (eps_pre, eps_final, eps_fc):
        if e is not None:
            eps_set.add(e)
    if None in eps_set or len(eps_set) != 1:
        raise UnsupportedModelError(f"all LayerNorms must share one eps, got {sorted(e for e in eps_set if e)}")
    if len(eps_qk) > 1:
        raise UnsupportedModelError(f"q_norm/k_norm must share one eps, got {sorted(eps_qk)}")
    if eps_final is not None and eps_fc is not None:
        raise UnsupportedModelError("a per-token final norm together with fc_norm is not supported")

    has_dist = name == "VisionTransformerDistilled"
    global_pool = model.global_pool
    if global_pool not in POOLS:
        raise UnsupportedModelError(f"global_pool={global_pool!r} is not supported; expected one of {POOLS}")
    head = model.head
    n_classes = head.out_features if isinstance(head, nn.Linear) else 0
    if not isinstance(head, (nn.Linear, nn.Identity)):
        raise UnsupportedModelError(f"unsupported classifier head {type(head).__name__}")
    n_registers = int(getattr(model, "num_reg_tokens", 0) or 0)
    if has_dist and n_registers:
        # VisionTransformerDistilled._pos_embed concatenates only CLS and DIST: its forward never uses the
        # register tokens (and its pos_embed length does not match them), so there is no timm result to reproduce.
        raise UnsupportedModelError(
            f"register tokens (reg_tokens={n_registers}) on a distilled DeiT are not supported: timm's "
            "VisionTransformerDistilled ignores them in its forward"
        )
    if has_dist and global_pool != "token":
        raise UnsupportedModelError("distilled models must use token pooling")
    if has_dist and eps_fc is not None:
        # VisionTransformerDistilled.forward_head reads tokens 0 and 1 directly and never calls fc_norm.
        raise UnsupportedModelError("fc_norm on a distilled DeiT is not supported (timm never applies it)")

    from timm.data import resolve_data_config

    try:
        data_config = resolve_data_config({}, model=model)
    except Exception:  # a bare model without pretrained_cfg still converts
        data_config = {}
    data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()}
    if data_config:
        # timm's pretrained_cfg keeps the registry size (224) when the model is built with another img_size;
        # preprocess to the size this instance accepts.
        data_config["input_size"] = [conv.in_channels, *_pair(pe.img_size or 224)]

    return ViTConfig(
        n_layers=len(blocks),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_classes=n_classes,
        img_size=_pair(pe.img_size) if pe.img_size is not None else _pair(224),
        patch_size=_pair(pe.patch_size),
        in_chans=conv.in_channels,
        has_cls=model.cls_token is not None,
        has_dist=has_dist,
        n_registers=n_registers,
        no_embed_class=bool(model.no_embed_class),
        has_pos_embed=model.pos_embed is not None,
        patch_bias=conv.bias is not None,
        pre_norm=eps_pre is not None,
        final_norm=eps_final is not None,
        fc_norm=eps_fc is not None,
        global_pool=global_pool,
        pool_include_prefix=bool(model.pool_include_prefix),
        qk_norm=bool(qk_norm),
        layer_scale=bool(layer_scale),
        act_fn=act,
        eps=eps_set.pop(),
        eps_qk=eps_qk.pop() if eps_qk else 1e-6,
        dynamic_img_size=bool(model.dynamic_img_size),
        data_config=data_config,
        timm_class=name,
    )



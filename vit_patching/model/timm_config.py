"""Read a :class:`~vit_patching.model.config.ViTConfig` off a timm module instance, refusing what is not exact.

The architecture is never guessed from a model name: every field comes from the module tree itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .config import ACTIVATIONS, POOLS, UnsupportedModelError, ViTConfig
from .eva import eva_config_fields, is_eva
from .parallel import is_parallel_block, parallel_block_fields

def _norm_kind(module: nn.Module) -> str | None:
    """``"LN"`` for an affine LayerNorm with bias, ``"RMS"`` for timm's affine RmsNorm, else None."""
    from timm.layers import LayerNorm, RmsNorm

    # Exact types: subclasses (LayerNorm2d, LayerNormFp32, ...) compute something else.
    if type(module) in (nn.LayerNorm, LayerNorm) and module.elementwise_affine and module.bias is not None:
        if len(module.normalized_shape) == 1:
            return "LN"
    if type(module) is RmsNorm and module.elementwise_affine and len(module.normalized_shape) == 1:
        return "RMS"
    return None


def _norm_eps(module: nn.Module, what: str) -> float | None:
    """eps of a LayerNorm (or timm RmsNorm), None for Identity; refuse any other normalisation."""
    if isinstance(module, nn.Identity):
        return None
    if _norm_kind(module) is not None:
        return float(module.eps)
    raise UnsupportedModelError(
        f"{what}: unsupported normalisation {type(module).__name__} (only affine LayerNorm and timm RmsNorm)"
    )


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
    if isinstance(module, (nn.SiLU, A.Swish)):
        return "silu"
    if isinstance(module, (nn.Sigmoid, A.Sigmoid)):
        return "sigmoid"
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


def check_no_module_hooks(
    model: nn.Module, name: str = "model", allow: Callable[[Callable], bool] | None = None
) -> None:
    """Refuse a timm model that carries PyTorch hooks on any of its modules.

    A hook can change what timm computes, and the conversion copies weights only: the HookedViT would
    silently differ from the timm model the user ran. Remove the hooks (``handle.remove()``) first, or
    re-add their effect as a HookedViT hook.

    Args:
        model: The module tree to check.
        name: The argument name used in the error.
        allow: Hooks for which this returns True are accepted: hooks known to leave the forward unchanged (the
            Hugging Face converter passes transformers' own output-capturing hooks, which only record outputs).

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
            hooks = getattr(module, attr, None) or {}
            if any(allow is None or not allow(h) for h in hooks.values()):
                where = repr(path) if path else "the model itself"
                raise UnsupportedModelError(
                    f"{name}: a {kind} is registered on {where}; the conversion copies weights only and would "
                    "drop it, so the HookedViT would differ from the hooked model. Remove the hook first "
                    "(handle.remove()) and add its effect as a HookedViT hook instead"
                )


def config_from_timm(model: nn.Module) -> ViTConfig:
    """Read a :class:`ViTConfig` off a timm ``VisionTransformer`` or ``Eva`` instance, refusing what is not exact.

    Supported beyond the plain pre-LN ViT: RmsNorm, GLU/SwiGLU MLPs, ``scale_mlp_norm``/``scale_attn_norm``,
    ``embed_norm_layer``, ``global_pool="map"`` (AttentionPoolLatent), ``ParallelScalingBlock`` and timm's
    ``Eva`` family (RoPE, LayerScale gammas, grouped-query attention; see :mod:`vit_patching.model.eva`).
    ``docs/support_matrix.md`` lists every timm architecture with its status.

    Args:
        model: A timm ``VisionTransformer`` (or ``VisionTransformerDistilled``) or ``Eva``.

    Returns:
        The configuration.

    Raises:
        UnsupportedModelError: naming the feature (PRR attention pooling, gated or differential attention,
            ResPostBlock / ParallelThingsBlock / EvaBlockPostNorm, ReLU and other activations, register
            tokens on a distilled DeiT, PyTorch hooks registered on the timm modules, ...).

    Example:
        >>> import timm
        >>> cfg = config_from_timm(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2))
        >>> cfg.n_layers, cfg.grid_size
        (2, (2, 2))
    """
    from timm.layers import Mlp, PatchEmbed
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    eva = is_eva(model)
    if not isinstance(model, VisionTransformer) and not eva:
        raise UnsupportedModelError(
            f"model must be a timm VisionTransformer or Eva, got {type(model).__module__}.{type(model).__name__}"
            " (Swin, BEiT and other families are not supported)"
        )
    check_no_module_hooks(model)
    name = type(model).__name__
    eva_fields = eva_config_fields(model) if eva else {}
    if not eva and name not in ("VisionTransformer", "VisionTransformerDistilled"):
        raise UnsupportedModelError(f"unsupported VisionTransformer subclass {name}")
    pool_n_heads = pool_d_mlp = 0
    if getattr(model, "attn_pool", None) is not None:
        pool_n_heads, pool_d_mlp = _attn_pool_config(model)
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:
        raise UnsupportedModelError(f"unsupported patch embedding {type(pe).__name__} (expected timm PatchEmbed)")
    eps_embed = _norm_eps(pe.norm, "patch_embed.norm")  # embed_norm_layer (AIMv2)
    if getattr(pe, "dynamic_img_pad", False):
        raise UnsupportedModelError("dynamic_img_pad is not supported")
    conv = pe.proj
    if not isinstance(conv, nn.Conv2d) or conv.stride != conv.kernel_size or conv.padding not in ((0, 0), 0):
        raise UnsupportedModelError("patch embedding must be a non-overlapping Conv2d (stride == kernel, no padding)")
    if not eva and not isinstance(model.patch_drop, nn.Identity) and model.patch_drop.prob > 0 and model.training:
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
    parallel = is_parallel_block(blocks[0]) and not eva
    for i, blk in enumerate([] if parallel else blocks):
        if type(blk) is not Block and not eva:  # Eva blocks were checked by eva_config_fields
            raise UnsupportedModelError(
                f"blocks.{i} is {type(blk).__name__}; only timm's pre-LN Block and ParallelScalingBlock are"
                " supported (ResPostBlock, ParallelThingsBlock, DiffParallelScalingBlock, ... are not)"
            )
        attn = blk.attn
        if type(attn) is not Attention and not eva:
            raise UnsupportedModelError(
                f"blocks.{i}.attn is {type(attn).__name__}; only timm's standard Attention is supported"
                " (differential and other attentions are not)"
            )
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"blocks.{i}.attn: gated attention is not supported")
        this_attn_norm = _norm_eps(attn.norm, f"blocks.{i}.attn.norm")  # scale_attn_norm over all heads' z
        if this_attn_norm is not None:
            eps_set.add(this_attn_norm)
        if i == 0:
            attn_norm = this_attn_norm is not None
        elif attn_norm != (this_attn_norm is not None):
            raise UnsupportedModelError(f"blocks.{i}: scale_attn_norm on some blocks only is not supported")
        if attn.proj.out_features != d_model:
            raise UnsupportedModelError(f"blocks.{i}.attn: dim_out != embed_dim is not supported")
        gated = _mlp_kind(blk.mlp, f"blocks.{i}.mlp")
        this_mlp_norm = _norm_eps(blk.mlp.norm, f"blocks.{i}.mlp.norm")  # scale_mlp_norm
        if this_mlp_norm is not None:
            eps_set.add(this_mlp_norm)
        if i == 0:
            gated_mlp, mlp_norm = gated, this_mlp_norm is not None
        elif (gated, this_mlp_norm is not None) != (gated_mlp, mlp_norm):
            raise UnsupportedModelError(f"blocks.{i}: MLP kinds differ between blocks")
        this_ls = []
        for ls_name in () if eva else ("ls1", "ls2"):  # Eva: gamma_1/gamma_2 parameters
            ls = getattr(blk, ls_name)
            if not isinstance(ls, nn.Identity) and not hasattr(ls, "gamma"):
                raise UnsupportedModelError(f"blocks.{i}.{ls_name}: unsupported LayerScale {type(ls).__name__}")
            this_ls.append(not isinstance(ls, nn.Identity))
        if this_ls:  # Eva folds its gamma_1/gamma_2 at conversion (eva.py)
            if this_ls[0] != this_ls[1] or (layer_scale is not None and this_ls[0] != layer_scale):
                raise UnsupportedModelError(f"blocks.{i}: LayerScale on some residual branches only is not supported")
            layer_scale = this_ls[0]
        for dp in ("drop_path1", "drop_path2"):
            if not isinstance(getattr(blk, dp), nn.Identity) and model.training:
                raise UnsupportedModelError("stochastic depth in training mode is not supported")
        h, dh, dm = attn.num_heads, attn.head_dim, blk.mlp.fc2.in_features
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
    if parallel:
        gated_mlp = mlp_norm = attn_norm = False
        for i, blk in enumerate(blocks):
            if not is_parallel_block(blk):
                raise UnsupportedModelError(f"blocks.{i} is {type(blk).__name__}; mixed block kinds are not supported")
            if not isinstance(blk.drop_path, nn.Identity) and model.training:
                raise UnsupportedModelError("stochastic depth in training mode is not supported")
            f = parallel_block_fields(blk, i, d_model)
            if n_heads is None:
                n_heads, d_head, d_mlp = f["n_heads"], f["d_head"], f["d_mlp"]
            elif (f["n_heads"], f["d_head"], f["d_mlp"]) != (n_heads, d_head, d_mlp):
                raise UnsupportedModelError(f"blocks.{i}: heterogeneous block sizes are not supported")
            a = _act_name(f["act"], f"blocks.{i}.mlp_act")
            if act is not None and a != act:
                raise UnsupportedModelError(f"blocks.{i}: mixed MLP activations are not supported")
            act = a
            eps_set.update(_norm_eps(n, f"blocks.{i}.in_norm") for n in f["norms"])
            if qk_norm is not None and qk_norm != bool(f["qk_norms"]):
                raise UnsupportedModelError(f"blocks.{i}: qk_norm on some blocks only is not supported")
            qk_norm = bool(f["qk_norms"])
            eps_qk.update(_norm_eps(n, f"blocks.{i}.q_norm/k_norm") for n in f["qk_norms"])
    if eps_embed is not None:
        eps_set.add(eps_embed)
    if pool_n_heads:
        pool = model.attn_pool
        eps_set.add(_norm_eps(pool.norm, "attn_pool.norm"))
        if _act_name(pool.mlp.act, "attn_pool.mlp.act") != act:
            raise UnsupportedModelError("attn_pool.mlp: activation differs from the blocks' MLP activation")
        if not isinstance(pool.mlp.norm, nn.Identity):
            raise UnsupportedModelError("attn_pool.mlp.norm: a norm inside the pool MLP is not supported")
    kinds = {_norm_kind(m) for m in model.modules() if _norm_kind(m) is not None}
    if len(kinds) > 1:
        raise UnsupportedModelError("LayerNorm and RmsNorm mixed in one model is not supported")
    norm_kind = kinds.pop() if kinds else "LN"
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
    # From reg_token's shape: Eva has no num_reg_tokens attribute.
    n_registers = int(model.reg_token.shape[1]) if getattr(model, "reg_token", None) is not None else 0
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
        # Eva's attention pool reads every token; its avg/max pools skip the prefix.
        pool_include_prefix=(global_pool == "map") if eva else bool(model.pool_include_prefix),
        qk_norm=bool(qk_norm),
        layer_scale=bool(layer_scale),
        act_fn=act,
        eps=eps_set.pop(),
        eps_qk=eps_qk.pop() if eps_qk else 1e-6,
        # A RoPE table is computed for one patch grid (see eva.py): such a model takes its img_size only.
        dynamic_img_size=bool(model.dynamic_img_size) and not eva_fields.get("rope"),
        norm_kind=norm_kind,
        normalization_type=norm_kind,
        gated_mlp=gated_mlp,
        mlp_norm=mlp_norm,
        embed_norm=eps_embed is not None,
        attn_norm=attn_norm,
        parallel_attn_mlp=parallel,
        pool_n_heads=pool_n_heads,
        pool_d_mlp=pool_d_mlp,
        **eva_fields,
        data_config=data_config,
        timm_class=name,
    )




def _mlp_kind(mlp: nn.Module, what: str) -> bool:
    """True for a gated MLP (timm GluMlp, SwiGLUPacked, SwiGLU), False for timm's Mlp; refuse anything else."""
    from timm.layers import GluMlp, Mlp, SwiGLU

    if type(mlp) in (Mlp, GluMlp) and getattr(mlp, "use_conv", False):
        raise UnsupportedModelError(f"{what}: convolutional MLPs are not supported")
    if type(mlp) is Mlp:
        return False
    if type(mlp) in (GluMlp, SwiGLU):
        return True
    raise UnsupportedModelError(
        f"{what} is {type(mlp).__name__}; only timm's Mlp, GluMlp, SwiGLUPacked and SwiGLU are supported"
    )


def _attn_pool_config(model: nn.Module) -> tuple[int, int]:
    """(heads, MLP width) of timm's ``AttentionPoolLatent`` head; refuse the variants HookedViT does not build."""
    from timm.layers import AttentionPoolLatent, Mlp

    pool = model.attn_pool
    if type(pool) is not AttentionPoolLatent:
        raise UnsupportedModelError(
            f"global_pool={model.global_pool!r} uses an attention-pool head ({type(pool).__name__}),"
            " which HookedViT does not convert (only AttentionPoolLatent, global_pool='map')"
        )
    if pool.latent_len != 1 or pool.pos_embed is not None or pool.pool != "token":
        raise UnsupportedModelError("attention pool: only one latent query, no pool pos_embed, token readout")
    if not isinstance(pool.q, nn.Linear) or not isinstance(pool.q_norm, nn.Identity):
        raise UnsupportedModelError("attention pool: q_proj=False or qk_norm is not supported")
    if pool.mlp is None or type(pool.mlp) is not Mlp or pool.proj.out_features != model.embed_dim:
        raise UnsupportedModelError("attention pool: only the MLP readout of width embed_dim is supported")
    if pool.head_dim * pool.num_heads != model.embed_dim or pool.latent_dim != model.embed_dim:
        raise UnsupportedModelError("attention pool: embed_dim/latent_dim != model embed_dim is not supported")
    return pool.num_heads, pool.mlp.fc1.out_features

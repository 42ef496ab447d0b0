"""open_clip image towers -> HookedViT, exact against ``model.encode_image`` or refused naming the feature.

Two kinds of image tower exist in open_clip:

* its own ``VisionTransformer`` (OpenAI and LAION CLIP: ``ViT-B-32``, ``ViT-L-14``, ...): mapped onto the equivalent
  timm ``VisionTransformer`` (class token, ``pre_norm`` = ``ln_pre``, final norm = ``ln_post``, the projection
  ``proj`` as a bias-free head), whose weights are loaded from the open_clip tensors; the timm model then goes
  through :meth:`HookedViT.from_timm`, so the conversion is the same exact one as for every timm ViT;
* ``TimmModel``, a timm trunk plus an optional open_clip head (SigLIP, EVA-CLIP, Perception Encoder): the trunk
  is converted by :meth:`HookedViT.from_timm` and a linear bias-free ``proj`` head becomes the HookedViT head.

The converted model's plain forward returns what ``encode_image(x)`` returns (``normalize=False``): the image
embedding. A head that maps into the embedding space has ``cfg.head_kind == "projection"``. ``cfg.data_config``
carries open_clip's eval preprocessing (size, resize mode, interpolation, mean, std), so ``model.preprocess``
equals open_clip's own transform.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_bool
from .config import UnsupportedModelError
from .timm_config import check_no_module_hooks

# open_clip PreprocessCfg.resize_mode -> timm create_transform crop_mode (crop_pct 1.0): the same eval transform.
_CROP_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def from_open_clip(
    model: object,
    *,
    cls: type[nn.Module],
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    fold_value_biases: bool = False,
) -> nn.Module:
    """Convert an open_clip model's image tower into a :class:`HookedViT` equal to ``model.encode_image``.

    Called through :meth:`HookedViT.from_open_clip`, which passes itself as ``cls`` (this module never imports
    ``hooked_vit``: that module imports this one, lazily).

    Args:
        model: An open_clip model (``CLIP``, ``CustomTextCLIP``, ... with a ``.visual`` tower), or the image tower
            itself (an open_clip ``VisionTransformer`` or ``TimmModel``). It is not modified.
        cls: The HookedViT class (or a subclass) to build.
        fold_ln: Fold LayerNorm affine weights into the following linear maps (outputs unchanged).
        center_writing_weights: Centre every weight writing to the residual stream (outputs unchanged).
        fold_value_biases: Fold ``b_V`` into ``b_O`` (outputs unchanged).

    Returns:
        A HookedViT in eval mode, on the tower's device and dtype, whose forward returns the image embedding
        (``encode_image(x)``, unnormalised). With a projection (CLIP's ``proj``, a timm trunk's head, a
        ``timm_proj='linear'`` head) it is the head, ``cfg.head_kind == "projection"``; without one the model is
        headless and returns the pooled features (SigLIP's attention-pool output).

    Raises:
        UnsupportedModelError: naming the open_clip option that cannot be reproduced exactly (``attentional_pool``,
            ``pool_type='none'``, ``scaled_cosine_attn``, ``scale_heads``, ``scale_attn``, ``timm_proj='mlp'``,
            ``timm_pool='abs_attn'/'rot_attn'``, patch dropout in training mode, ResNet towers, ...).

    Example:
        >>> import open_clip, torch
        >>> from vit_patching import HookedViT
        >>> clip = open_clip.create_model("ViT-B-32", pretrained=None)  # pretrained="laion2b_s34b_b79k" with internet
        >>> model = HookedViT.from_open_clip(clip)
        >>> x = torch.randn(1, 3, 224, 224)
        >>> torch.allclose(model(x), clip.encode_image(x), atol=1e-5)
        True
    """
    import open_clip.timm_model as oc_timm
    import open_clip.transformer as oc

    visual = getattr(model, "visual", model)
    if not isinstance(visual, nn.Module):
        raise TypeError(f"model: expected an open_clip model or image tower (nn.Module), got {type(model).__name__}")
    for flag, name in ((fold_ln, "fold_ln"), (center_writing_weights, "center_writing_weights"),
                       (fold_value_biases, "fold_value_biases")):
        check_bool(flag, name)
    check_no_module_hooks(visual, "model.visual" if visual is not model else "model")
    _check_no_training_dropout(visual)
    data_config = data_config_from_open_clip(model)  # its refusals come before any conversion work
    if type(visual) is oc.VisionTransformer:
        hooked = _from_vision_transformer(visual, cls)
    elif type(visual) is oc_timm.TimmModel:
        hooked = _from_timm_tower(visual, cls)
    else:
        raise UnsupportedModelError(
            f"model.visual is {type(visual).__module__}.{type(visual).__name__}; only open_clip's VisionTransformer "
            "and TimmModel (a timm ViT trunk) image towers are supported (ResNet towers such as ModifiedResNet are not)"
        )
    hooked.cfg.data_config = data_config
    if fold_ln or center_writing_weights or fold_value_biases:
        hooked.process_weights_(
            fold_ln=fold_ln, center_writing_weights=center_writing_weights, fold_value_biases=fold_value_biases
        )
    return hooked


def data_config_from_open_clip(model: nn.Module) -> dict[str, Any]:
    """open_clip's eval preprocessing as a timm data config (what ``HookedViT.transform`` builds from).

    Read from ``model.visual.preprocess_cfg`` (set by ``open_clip.create_model``), else the legacy
    ``image_mean`` / ``image_std`` attributes, else open_clip's defaults (``PreprocessCfg``: OpenAI mean and std,
    bicubic, resize the shortest side); the size defaults to the tower's ``image_size``. The model is not modified.

    Example:
        >>> import open_clip
        >>> data_config_from_open_clip(open_clip.create_model("ViT-B-32"))["mean"]
        [0.48145466, 0.4578275, 0.40821073]
    """
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    visual = getattr(model, "visual", model)
    pp = asdict(PreprocessCfg())
    size = getattr(visual, "image_size", None)
    if size is not None:
        pp["size"] = size
    given = dict(getattr(visual, "preprocess_cfg", None) or {})
    if not given:  # open_clip's legacy attributes (get_model_preprocess_cfg reads them the same way)
        for key, attr in (("mean", "image_mean"), ("std", "image_std")):
            if getattr(visual, attr, None) is not None:
                given[key] = getattr(visual, attr)
    pp.update({k: v for k, v in given.items() if v is not None})
    size = pp["size"]
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mean, std = pp["mean"], pp["std"]
    mean = [float(m) for m in mean] if isinstance(mean, (list, tuple)) else [float(mean)] * 3
    std = [float(s) for s in std] if isinstance(std, (list, tuple)) else [float(std)] * 3
    mode = pp.get("resize_mode") or "shortest"
    if mode not in _CROP_MODES:
        raise UnsupportedModelError(f"preprocess_cfg: resize_mode {mode!r} is not one of {sorted(_CROP_MODES)}")
    fill = [round(255 * m) for m in mean]
    if mode == "longest" and fill != [pp.get("fill_color", 0)] * 3:
        # timm's 'border' crop pads with the mean colour, open_clip's with fill_color: equal only when they agree.
        raise UnsupportedModelError(
            f"preprocess_cfg: resize_mode='longest' pads with fill_color={pp.get('fill_color', 0)}, but timm's "
            f"equivalent transform pads with the mean colour {fill}; set preprocess_cfg['resize_mode'] to 'shortest' "
            "or 'squash', or a fill_color equal to the mean colour"
        )
    return {
        "input_size": [3, h, w],
        # open_clip reads 'random' (a training option) as bicubic at eval.
        "interpolation": "bilinear" if pp.get("interpolation") == "bilinear" else "bicubic",
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "crop_mode": _CROP_MODES[mode],
    }


# ---------------------------------------------------------------------------------------------- shared checks
def _check_no_training_dropout(visual: nn.Module) -> None:
    """Refuse a tower in training mode with active dropout: its ``encode_image`` is random, HookedViT's is not."""
    import open_clip.transformer as oc

    if not visual.training:
        return
    for path, m in visual.named_modules():
        p = getattr(m, "prob", None) if isinstance(m, oc.PatchDropout) else getattr(m, "p", None)
        if isinstance(m, (oc.PatchDropout, nn.Dropout)) and p:
            what = "patch_dropout" if isinstance(m, oc.PatchDropout) else "dropout"
            raise UnsupportedModelError(
                f"model.visual is in training mode with {what} ({p}) at {path!r}: encode_image is random there; "
                "call model.eval() first (the converted model is the eval-mode tower)"
            )


def _norm_eps(m: nn.Module, what: str) -> float | None:
    """eps of an affine LayerNorm (open_clip's LayerNorm / LayerNormFp32, torch's), None for Identity."""
    import open_clip.transformer as oc

    if isinstance(m, nn.Identity):
        return None
    if type(m) not in (nn.LayerNorm, oc.LayerNorm, oc.LayerNormFp32) or not m.elementwise_affine or m.bias is None:
        raise UnsupportedModelError(f"{what}: unsupported normalisation {type(m).__name__} (affine LayerNorm only)")
    if type(m) is oc.LayerNormFp32 and m.weight.dtype != torch.float32:
        # It computes in float32 whatever the weights' dtype; timm's LayerNorm computes in the weights' dtype.
        raise UnsupportedModelError(f"{what}: LayerNormFp32 with {m.weight.dtype} weights is not supported")
    return float(m.eps)


def _act_layer(m: nn.Module, what: str) -> Any:
    """The timm activation layer that computes exactly what open_clip's MLP activation computes."""
    import open_clip.transformer as oc
    from timm.layers import QuickGELU

    if type(m) is oc.QuickGELU:  # x * sigmoid(1.702 x), as timm's QuickGELU
        return QuickGELU
    if type(m) is nn.GELU:
        return partial(nn.GELU, approximate=m.approximate)
    raise UnsupportedModelError(f"{what}: unsupported activation {type(m).__name__} (GELU and QuickGELU only)")


# ---------------------------------------------------------------------------------------------- VisionTransformer
def _block_fields(blk: nn.Module, i: int) -> dict[str, Any]:
    """The timm Block options equal to one open_clip (Custom)ResidualAttentionBlock; refuse what has none."""
    import open_clip.transformer as oc

    p = f"transformer.resblocks.{i}"
    eps = {_norm_eps(blk.ln_1, f"{p}.ln_1"), _norm_eps(blk.ln_2, f"{p}.ln_2")}
    f: dict[str, Any] = {"qk_norm": False, "scale_attn_norm": False, "scale_mlp_norm": False}
    attn = blk.attn
    if type(blk) is oc.ResidualAttentionBlock:
        if hasattr(blk, "ln_1_kv"):
            raise UnsupportedModelError(f"{p}: cross-attention blocks are not supported")
        if type(attn) is not nn.MultiheadAttention or not attn._qkv_same_embed_dim or attn.bias_k is not None \
                or attn.add_zero_attn or not attn.batch_first:
            raise UnsupportedModelError(f"{p}.attn: only a standard batch-first nn.MultiheadAttention is supported")
        f["qkv_bias"] = attn.in_proj_bias is not None
        if attn.out_proj.bias is None:
            raise UnsupportedModelError(f"{p}.attn: attention without biases is not supported")
    elif type(blk) is oc.CustomResidualAttentionBlock:
        if attn.logit_scale is not None:
            raise UnsupportedModelError(f"{p}: scaled_cosine_attn (cosine attention with a learned scale) is not "
                                        "supported")
        if attn.head_scale is not None:
            raise UnsupportedModelError(f"{p}: scale_heads (a learned per-head output scale) is not supported")
        if not isinstance(blk.ln_attn, nn.Identity):
            raise UnsupportedModelError(f"{p}: scale_attn (a LayerNorm after the attention output projection) is not "
                                        "supported")
        f["qkv_bias"] = attn.in_proj_bias is not None
        f["qk_norm"] = not isinstance(attn.ln_q, nn.Identity)
        if f["qk_norm"]:
            eps |= {_norm_eps(attn.ln_q, f"{p}.attn.ln_q"), _norm_eps(attn.ln_k, f"{p}.attn.ln_k")}
        f["scale_attn_norm"] = not isinstance(attn.ln_inner, nn.Identity)  # scale_attn_inner
        if f["scale_attn_norm"]:
            eps.add(_norm_eps(attn.ln_inner, f"{p}.attn.ln_inner"))
    else:
        raise UnsupportedModelError(f"{p} is {type(blk).__name__}; only open_clip's ResidualAttentionBlock and "
                                    "CustomResidualAttentionBlock are supported")
    mlp = blk.mlp
    if list(dict(mlp.named_children())) not in (["c_fc", "gelu", "c_proj"], ["c_fc", "gelu", "ln", "c_proj"]):
        raise UnsupportedModelError(f"{p}.mlp: unexpected layers {list(dict(mlp.named_children()))}")
    f["scale_mlp_norm"] = "ln" in dict(mlp.named_children()) and not isinstance(mlp.ln, nn.Identity)  # scale_fc
    if f["scale_mlp_norm"]:
        eps.add(_norm_eps(mlp.ln, f"{p}.mlp.ln"))
    f["act_layer"] = _act_layer(mlp.gelu, f"{p}.mlp.gelu")
    f["act_name"] = (type(mlp.gelu).__name__, getattr(mlp.gelu, "approximate", None))
    f["hidden"] = mlp.c_fc.out_features
    f["heads"] = attn.num_heads
    gammas = [getattr(ls, "gamma", None) for ls in (blk.ls_1, blk.ls_2)]
    for name, ls in (("ls_1", blk.ls_1), ("ls_2", blk.ls_2)):
        if not isinstance(ls, (nn.Identity, oc.LayerScale)):
            raise UnsupportedModelError(f"{p}.{name}: unsupported layer scale {type(ls).__name__}")
    if (gammas[0] is None) != (gammas[1] is None):
        raise UnsupportedModelError(f"{p}: LayerScale on one residual branch only is not supported")
    f["layer_scale"] = gammas[0] is not None
    f["eps"] = eps
    return f


def _from_vision_transformer(v: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """open_clip ``VisionTransformer`` -> the equal timm ``VisionTransformer`` -> :meth:`HookedViT.from_timm`."""
    from timm.models.vision_transformer import VisionTransformer

    if v.attn_pool is not None:
        raise UnsupportedModelError(
            "attentional_pool (open_clip's AttentionalPooler, CoCa's image pooling) is not supported: it has no "
            "equivalent in the HookedViT readout"
        )
    if v.pool_type not in ("tok", "avg"):
        raise UnsupportedModelError(
            f"pool_type={v.pool_type!r} is not supported: encode_image returns a projection of every token, not one "
            "image embedding (supported: 'tok', 'avg')"
        )
    conv = v.conv1
    if type(conv) is not nn.Conv2d or conv.stride != conv.kernel_size or conv.padding not in ((0, 0), 0) \
            or conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1):
        raise UnsupportedModelError("conv1: only a non-overlapping bias-free Conv2d patch embedding is supported")
    blocks = list(v.transformer.resblocks)
    if not blocks:
        raise UnsupportedModelError("transformer: the tower has no blocks")
    fields = [_block_fields(b, i) for i, b in enumerate(blocks)]
    keys = ("qkv_bias", "qk_norm", "scale_attn_norm", "scale_mlp_norm", "act_name", "hidden", "heads", "layer_scale")
    for i, f in enumerate(fields[1:], 1):
        differ = [k for k in keys if f[k] != fields[0][k]]
        if differ:
            raise UnsupportedModelError(f"transformer.resblocks.{i}: differs from block 0 in {differ}; heterogeneous "
                                        "blocks are not supported")
    eps = set().union(*(f["eps"] for f in fields))
    eps_pre = _norm_eps(v.ln_pre, "ln_pre")
    eps_post = _norm_eps(v.ln_post, "ln_post")
    eps |= {e for e in (eps_pre, eps_post) if e is not None}
    if len(eps) != 1 or eps_post is None:
        raise UnsupportedModelError(f"every LayerNorm must share one eps (timm builds them from one norm_layer), "
                                    f"got {sorted(e for e in eps if e is not None)}")
    f0, width = fields[0], conv.out_channels
    avg = v.pool_type == "avg"
    # ln_post then CLS == CLS then ln_post (a LayerNorm is per token); for 'avg' pooling ln_post after the pool is
    # timm's fc_norm, ln_post before it timm's final norm.
    fc_norm = avg and bool(v.final_ln_after_pool)
    proj = v.proj
    n_out = 0 if proj is None else int(proj.shape[1])
    # On the meta device: no initialisation work, every tensor is then assigned from open_clip's.
    with torch.device("meta"):
        timm_model = VisionTransformer(
            img_size=tuple(v.image_size), patch_size=tuple(v.patch_size), in_chans=conv.in_channels, num_classes=n_out,
            global_pool="avg" if avg else "token", embed_dim=width, depth=len(blocks), num_heads=f0["heads"],
            # int(width * ratio) must give the hidden width back: aim at its middle, not at a float rounding edge.
            mlp_ratio=(f0["hidden"] + 0.5) / width, qkv_bias=f0["qkv_bias"], qk_norm=f0["qk_norm"],
            scale_attn_norm=f0["scale_attn_norm"], scale_mlp_norm=f0["scale_mlp_norm"],
            init_values=1.0 if f0["layer_scale"] else None, class_token=True, pre_norm=eps_pre is not None,
            # timm's final_norm builds fc_norm instead of norm when fc_norm is set.
            final_norm=True, fc_norm=fc_norm, norm_layer=partial(nn.LayerNorm, eps=eps.pop()),
            act_layer=f0["act_layer"],
        ).eval()
    timm_model.load_state_dict(_timm_state_dict(v, timm_model, fc_norm), strict=True, assign=True)
    if any(t.is_meta for t in timm_model.buffers()):
        raise UnsupportedModelError("internal: a timm buffer was not filled from the open_clip tower")
    hooked = cls.from_timm(timm_model)
    if n_out:
        hooked.cfg.head_kind = "projection"
    return hooked


def _timm_state_dict(v: nn.Module, timm_model: nn.Module, fc_norm: bool) -> dict[str, Tensor]:
    """open_clip ``VisionTransformer`` tensors under the timm names; every open_clip tensor must be used."""
    src = {k: t.detach() for k, t in v.state_dict().items()}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return src[key]

    width = v.conv1.out_channels
    out = {"patch_embed.proj.weight": take("conv1.weight"), "cls_token": take("class_embedding").reshape(1, 1, width),
           "pos_embed": take("positional_embedding").reshape(1, -1, width)}
    ref = v.conv1.weight
    if timm_model.patch_embed.proj.bias is not None:  # no ln_pre: timm's patch conv has a bias; open_clip's is 0
        out["patch_embed.proj.bias"] = torch.zeros(width, dtype=ref.dtype, device=ref.device)
    renames = {"ln_pre": "norm_pre", "ln_post": "fc_norm" if fc_norm else "norm"}
    block = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
             "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj", "attn.ln_q": "attn.q_norm",
             "attn.ln_k": "attn.k_norm", "attn.ln_inner": "attn.norm", "ls_1.gamma": "ls1.gamma",
             "ls_2.gamma": "ls2.gamma", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2", "mlp.ln": "mlp.norm"}
    for key in list(src):
        if key.startswith("transformer.resblocks."):
            i, rest = key[len("transformer.resblocks."):].split(".", 1)
            for a, b in block.items():
                if rest == a or rest.startswith(a + "."):
                    out[f"blocks.{i}.{b}{rest[len(a):]}"] = take(key)
                    break
        else:
            top = key.split(".", 1)[0]
            if top in renames:
                out[renames[top] + key[len(top):]] = take(key)
    if v.proj is not None:
        # encode_image computes pooled @ proj: a Linear with weight proj.T and no bias (b_H exactly 0).
        out["head.weight"] = take("proj").T.contiguous()
        out["head.bias"] = torch.zeros(v.proj.shape[1], dtype=v.proj.dtype, device=v.proj.device)
    left = sorted(set(src) - used)
    if left:
        raise UnsupportedModelError(f"open_clip weights not consumed by the conversion: {left[:12]}; refusing to "
                                    "convert rather than drop them")
    return out


# ---------------------------------------------------------------------------------------------- TimmModel
def _from_timm_tower(t: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """open_clip ``TimmModel``: the timm trunk through :meth:`HookedViT.from_timm`, then open_clip's head."""
    layers = dict(t.head.named_children())
    if "pool" in layers:
        raise UnsupportedModelError(
            f"timm_pool={'rot_attn' if 'Rot' in type(layers['pool']).__name__ else 'abs_attn'!r} "
            f"({type(layers['pool']).__name__} on the trunk's feature map) is not supported"
        )
    if "mlp" in layers:
        raise UnsupportedModelError(
            "timm_proj='mlp' (a two-layer GELU MLP after the trunk) is not supported: the HookedViT head is linear"
        )
    unknown = sorted(set(layers) - {"drop", "proj"})
    if unknown:
        raise UnsupportedModelError(f"TimmModel.head: unsupported layers {unknown}")
    proj = layers.get("proj")
    if proj is not None and type(proj) is not nn.Linear:
        raise UnsupportedModelError(f"TimmModel.head.proj is {type(proj).__name__}; only nn.Linear is supported")
    hooked = cls.from_timm(t.trunk)  # after the head checks: its refusals come before the conversion work
    if proj is None:
        if hooked.cfg.n_classes:  # timm_proj none/null: the trunk's own head is the projection (EVA-CLIP, PE)
            hooked.cfg.head_kind = "projection"
        return hooked
    if hooked.cfg.n_classes:
        raise UnsupportedModelError("TimmModel: a trunk with its own head followed by timm_proj='linear' (two linear "
                                    "heads in a row) is not supported")
    # timm_proj='linear': the pooled features, then proj (bias only with timm_proj_bias=True).
    cfg = replace(hooked.cfg, n_classes=proj.out_features, head_kind="projection")
    cfg.data_config = dict(cfg.data_config)
    state = hooked.state_dict()
    w = proj.weight.detach().clone()
    state["head.w_head"] = w
    state["head.b_H"] = proj.bias.detach().clone() if proj.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                            device=w.device)
    out = cls(cfg).to(device=w.device, dtype=w.dtype)
    out.load_state_dict(state, strict=True)
    return out

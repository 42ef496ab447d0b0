"""Hugging Face ``transformers`` vision models to :class:`HookedViT`, through the equivalent timm architecture.

Each supported class is mapped to a timm ``VisionTransformer`` (``VisionTransformerDistilled`` for DeiT with
teacher) built with ``timm.create_model(..., pretrained=False, <matching kwargs>)``; the Hugging Face state dict is
converted into it and :meth:`HookedViT.from_timm` does the rest, so a Hugging Face model goes through exactly the
conversion (and the refusals) of a timm one. The architecture is read off the modules and the config of the
instance, never guessed from a checkpoint name. What the converted model returns without a readout:

================================================  ==================================================  ===========
Hugging Face class                                 converted output equals                             head_kind
================================================  ==================================================  ===========
``ViTForImageClassification``                      ``logits``                                          classifier
``ViTModel``                                       ``last_hidden_state[:, 0]`` (CLS after the norm)    (none)
``DeiTForImageClassificationWithTeacher``          ``logits`` (mean of the CLS and DIST heads)         classifier
``DeiTForImageClassification``                     ``logits`` (CLS head only)                          classifier
``DeiTModel``                                      ``last_hidden_state[:, 0]``                         (none)
``CLIPVisionModelWithProjection`` / ``CLIPModel``  ``image_embeds`` / ``get_image_features``           projection
``CLIPVisionModel``                                ``pooler_output``                                   (none)
``SiglipVisionModel`` / ``SiglipModel``            ``pooler_output`` / ``get_image_features``          (none)
``Dinov2Model`` / ``Dinov2WithRegistersModel``     ``pooler_output`` (CLS after the norm)              (none)
================================================  ==================================================  ===========

The ``pooler`` of ``ViTModel`` / ``DeiTModel`` (a dense layer and tanh on the CLS token, trained only by some
pre-training objectives) is not converted: timm has no such layer, and the CLS features are what those models are
read with. ``mask_token`` weights are not converted either: Hugging Face reads them only when ``bool_masked_pos``
is passed, and a HookedViT has no such input. Everything else that cannot be reproduced exactly raises
:class:`~vit_patching.model.config.UnsupportedModelError` naming the Hugging Face config field or class.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from .config import UnsupportedModelError
from .hf_data import HF_CLASSES, hf_data_config
from .timm_config import check_no_module_hooks

logger = logging.getLogger(__name__)

# Hugging Face hidden_act -> timm act_layer. The tanh GELUs (gelu_new, gelu_fast, gelu_accurate) write out the
# same formula as torch's gelu(approximate="tanh") (0.7978845608 is sqrt(2/pi) to float32); they differ from it
# by float32 rounding only (tests/model/test_hf.py measures every entry).
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_python_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_accurate": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "sigmoid": "sigmoid",
}


# Config fields that make the training-mode forward random (dropout, stochastic depth).
_RANDOM_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "drop_path_rate")


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _add_linear(sd: dict[str, Tensor], prefix: str, lin: nn.Module) -> None:
    """Copy a Linear (or the patch Conv2d: same weight/bias names) under ``prefix``."""
    sd[f"{prefix}.weight"] = lin.weight
    if lin.bias is not None:
        sd[f"{prefix}.bias"] = lin.bias


def _add_norm(sd: dict[str, Tensor], prefix: str, ln: nn.Module, eps: set[float], what: str) -> None:
    if type(ln) is not nn.LayerNorm or not ln.elementwise_affine or ln.bias is None:
        raise UnsupportedModelError(f"{what}: expected an affine torch LayerNorm with bias, got {type(ln).__name__}")
    eps.add(float(ln.eps))
    sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = ln.weight, ln.bias


def _is_output_capture(hook: Any) -> bool:
    """transformers' own ``output_hidden_states`` recorder: installed on the layers at the first forward, it
    returns None (never changes an output) and records only while a forward collects outputs."""
    return getattr(hook, "__name__", "") == "output_capturing_hook" and getattr(hook, "__module__", "").startswith(
        "transformers.utils.output_capturing"
    )


def _check_hf(model: Any) -> str:
    """The family of a supported Hugging Face model, else raise naming what is not supported."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a Hugging Face transformers model instance (e.g. "
                        f"ViTModel.from_pretrained(...)), got {type(model).__name__}")
    name = type(model).__name__
    family = HF_CLASSES.get(name)
    if family is None or not type(model).__module__.startswith("transformers."):
        backbone = next((a for a in ("vit", "deit", "dinov2", "vision_model") if hasattr(model, a)), None)
        hint = f"; convert its backbone instead (HookedViT.from_hf(model.{backbone}))" if backbone else ""
        raise UnsupportedModelError(
            f"model: expected one of the Hugging Face transformers classes {sorted(HF_CLASSES)}, got "
            f"{type(model).__module__}.{name} (masked-image-modelling decoders, Dinov2ForImageClassification's "
            f"CLS+mean-patch head and other classes have no timm equivalent){hint}"
        )
    check_no_module_hooks(model, allow=_is_output_capture)
    config = model.config
    if model.training:
        for f in _RANDOM_FIELDS:
            for cfg in (config, getattr(config, "vision_config", None)):
                if cfg is not None and float(getattr(cfg, f, 0) or 0) > 0:
                    raise UnsupportedModelError(
                        f"model: {f}={getattr(cfg, f)} makes the training-mode forward random; call model.eval() "
                        "first (the converted model is the eval-mode forward)"
                    )
    return family


def _vision_config(model: nn.Module) -> Any:
    return getattr(model.config, "vision_config", None) or model.config


def _act_layer(config: Any) -> str:
    act = config.hidden_act
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise UnsupportedModelError(
            f"hidden_act={act!r} has no exact timm equivalent; supported: {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[act]


def _blocks(sd: dict[str, Tensor], layers: nn.ModuleList, names: dict[str, str], eps: set[float]) -> dict[str, Any]:
    """Copy every encoder layer into timm ``blocks.{i}`` keys; return the timm kwargs the layers fix.

    ``names`` maps the roles ``norm1 attn q k v o norm2`` to the family's attribute names (DINOv2 adds LayerScale).
    """
    d = None
    kw: dict[str, Any] = {}
    for i, layer in enumerate(layers):
        attn = getattr(layer, names["attn"])
        q, k, v, o = (getattr(attn, names[r]) for r in ("q", "k", "v", "o"))
        d = q.in_features
        if q.out_features != d or k.out_features != d or v.out_features != d:
            raise UnsupportedModelError(
                f"head_dim: num_attention_heads * head_dim = {q.out_features} != hidden_size {d} (layers.{i}) is "
                "not supported: timm's Attention splits hidden_size into the heads"
            )
        biases = [m.bias is not None for m in (q, k, v)]
        if len(set(biases)) != 1:
            raise UnsupportedModelError(f"layers.{i}: q/k/v biases on some projections only are not supported")
        p = f"blocks.{i}"
        _add_norm(sd, f"{p}.norm1", getattr(layer, names["norm1"]), eps, f"layers.{i}.{names['norm1']}")
        _add_norm(sd, f"{p}.norm2", getattr(layer, names["norm2"]), eps, f"layers.{i}.{names['norm2']}")
        sd[f"{p}.attn.qkv.weight"] = torch.cat([q.weight, k.weight, v.weight])
        if biases[0]:
            sd[f"{p}.attn.qkv.bias"] = torch.cat([q.bias, k.bias, v.bias])
        _add_linear(sd, f"{p}.attn.proj", o)
        mlp = layer.mlp
        if hasattr(mlp, "gate_proj"):  # DINOv2 use_swiglu_ffn: down(silu(gate(x)) * up(x)) = timm SwiGLU
            _add_linear(sd, f"{p}.mlp.fc1_g", mlp.gate_proj)
            _add_linear(sd, f"{p}.mlp.fc1_x", mlp.up_proj)
            _add_linear(sd, f"{p}.mlp.fc2", mlp.down_proj)
            hidden, swiglu = mlp.gate_proj.out_features, True
        else:
            _add_linear(sd, f"{p}.mlp.fc1", mlp.fc1)
            _add_linear(sd, f"{p}.mlp.fc2", mlp.fc2)
            hidden, swiglu = mlp.fc1.out_features, False
        if "ls1" in names:
            sd[f"{p}.ls1.gamma"] = getattr(layer, names["ls1"]).lambda1
            sd[f"{p}.ls2.gamma"] = getattr(layer, names["ls2"]).lambda1
        # timm sizes the MLP as int(embed_dim * mlp_ratio): +0.5 keeps float error from rounding it down.
        this = dict(embed_dim=d, mlp_ratio=(hidden + 0.5) / d, qkv_bias=biases[0], swiglu=swiglu)
        if kw and any(kw[key] != this[key] for key in ("embed_dim", "mlp_ratio", "qkv_bias", "swiglu")):
            raise UnsupportedModelError(f"layers.{i}: layers of different sizes are not supported")
        kw = this
    if d is None:
        raise UnsupportedModelError("num_hidden_layers=0: the model has no encoder layers")
    swiglu = kw.pop("swiglu")
    kw["depth"] = len(layers)
    if swiglu:
        from timm.layers import SwiGLU

        kw["mlp_layer"] = SwiGLU
    return kw


def _patch_embed(sd: dict[str, Tensor], conv: nn.Module, what: str) -> None:
    if type(conv) is not nn.Conv2d or conv.stride != conv.kernel_size or conv.padding not in ((0, 0), 0, "valid"):
        raise UnsupportedModelError(f"{what}: expected a non-overlapping Conv2d patch embedding (stride == kernel)")
    if conv.dilation != (1, 1) or conv.groups != 1:
        raise UnsupportedModelError(f"{what}: dilated or grouped patch convolutions are not supported")
    _add_linear(sd, "patch_embed.proj", conv)


_VIT_NAMES = dict(norm1="layernorm_before", attn="attention", q="q_proj", k="k_proj", v="v_proj", o="o_proj",
                  norm2="layernorm_after")
_CLIP_NAMES = dict(norm1="layer_norm1", attn="self_attn", q="q_proj", k="k_proj", v="v_proj", o="out_proj",
                   norm2="layer_norm2")
_DINO_NAMES = dict(norm1="norm1", attn="attention", q="q_proj", k="k_proj", v="v_proj", o="o_proj", norm2="norm2",
                   ls1="layer_scale1", ls2="layer_scale2")


def _vit_deit(model: nn.Module, sd: dict[str, Tensor], eps: set[float]) -> tuple[str, dict[str, Any]]:
    """ViT / DeiT (``ViTModel``, ``DeiTModel`` and their classifiers): a pre-LN ViT with CLS (and DIST) token."""
    name = type(model).__name__
    base = model if name in ("ViTModel", "DeiTModel") else getattr(model, "vit", None) or model.deit
    emb = base.embeddings
    distilled = hasattr(emb, "distillation_token")
    kw = _blocks(sd, base.layers, _VIT_NAMES, eps)
    _patch_embed(sd, emb.patch_embeddings.projection, "embeddings.patch_embeddings.projection")
    sd["cls_token"] = emb.cls_token
    sd["pos_embed"] = emb.position_embeddings
    _add_norm(sd, "norm", base.layernorm, eps, "layernorm")
    timm_name = "vit_base_patch16_224"
    kw.update(class_token=True, global_pool="token", num_classes=0)
    if name == "DeiTForImageClassificationWithTeacher":
        # logits = (cls_classifier(CLS) + distillation_classifier(DIST)) / 2: timm's VisionTransformerDistilled.
        timm_name = "deit_base_distilled_patch16_224"
        sd["dist_token"] = emb.distillation_token
        if isinstance(model.cls_classifier, nn.Linear):
            _add_linear(sd, "head", model.cls_classifier)
            _add_linear(sd, "head_dist", model.distillation_classifier)
            kw["num_classes"] = model.cls_classifier.out_features
    else:
        if distilled:
            # DeiTModel / DeiTForImageClassification read the CLS token only: the DIST token is one more prefix
            # token with a position embedding, which is what a timm register token with an embedded class is.
            sd["reg_token"] = emb.distillation_token
            kw["reg_tokens"] = 1
        classifier = getattr(model, "classifier", None)
        if isinstance(classifier, nn.Linear):
            _add_linear(sd, "head", classifier)
            kw["num_classes"] = classifier.out_features
    return timm_name, kw


def _clip(model: nn.Module, sd: dict[str, Tensor], eps: set[float]) -> tuple[str, dict[str, Any]]:
    """CLIP's image tower: class embedding, ``pre_layrnorm``, pre-LN blocks, ``post_layernorm`` on CLS, projection."""
    vm = model if type(model).__name__ == "CLIPVisionModel" else model.vision_model
    emb = vm.embeddings
    kw = _blocks(sd, vm.encoder.layers, _CLIP_NAMES, eps)
    _patch_embed(sd, emb.patch_embedding, "embeddings.patch_embedding")
    sd["cls_token"] = emb.class_embedding.reshape(1, 1, -1)
    sd["pos_embed"] = emb.position_embedding.weight[None]
    _add_norm(sd, "norm_pre", vm.pre_layrnorm, eps, "pre_layrnorm")
    # post_layernorm normalises the CLS token only; timm's final norm runs per token, so the CLS output is equal.
    _add_norm(sd, "norm", vm.post_layernorm, eps, "post_layernorm")
    kw.update(class_token=True, global_pool="token", pre_norm=True, num_classes=0)
    proj = getattr(model, "visual_projection", None)
    if proj is not None:
        if proj.bias is not None:
            raise UnsupportedModelError("visual_projection: a bias is not supported (CLIP's projection has none)")
        sd["head.weight"] = proj.weight
        sd["head.bias"] = torch.zeros(proj.out_features, dtype=proj.weight.dtype, device=proj.weight.device)
        kw["num_classes"] = proj.out_features
    return "vit_base_patch16_224", kw


def _siglip(model: nn.Module, sd: dict[str, Tensor], eps: set[float]) -> tuple[str, dict[str, Any]]:
    """SigLIP's image tower: no CLS token, pre-LN blocks, final norm, attention-pool head (timm ``map``)."""
    vm = model if type(model).__name__ == "SiglipVisionModel" else model.vision_model
    emb = vm.embeddings
    kw = _blocks(sd, vm.encoder.layers, _CLIP_NAMES, eps)
    _patch_embed(sd, emb.patch_embedding, "embeddings.patch_embedding")
    sd["pos_embed"] = emb.position_embedding.weight[None]
    _add_norm(sd, "norm", vm.post_layernorm, eps, "post_layernorm")
    kw.update(class_token=False, num_classes=0)
    if not vm.use_head:  # vision_use_head=False: the output is last_hidden_state (every token, normed)
        kw["global_pool"] = ""
        return "vit_base_patch16_224", kw
    head = vm.head
    mha = head.attention
    if type(mha) is not nn.MultiheadAttention or not mha._qkv_same_embed_dim or mha.in_proj_bias is None:
        raise UnsupportedModelError("head.attention: expected nn.MultiheadAttention with a packed in_proj and bias")
    if mha.bias_k is not None or mha.add_zero_attn or mha.num_heads != vm.config.num_attention_heads:
        raise UnsupportedModelError("head.attention: add_bias_kv / add_zero_attn / other head counts are not supported")
    d = mha.embed_dim
    # SiglipMultiheadAttentionPoolingHead: attn(probe, x, x) -> out_proj -> x + mlp(layernorm(x)); timm's
    # AttentionPoolLatent: q(latent), kv(x) -> proj -> x + mlp(norm(x)). Same computation, weights split.
    sd["attn_pool.latent"] = head.probe
    sd["attn_pool.q.weight"], sd["attn_pool.q.bias"] = mha.in_proj_weight[:d], mha.in_proj_bias[:d]
    sd["attn_pool.kv.weight"], sd["attn_pool.kv.bias"] = mha.in_proj_weight[d:], mha.in_proj_bias[d:]
    _add_linear(sd, "attn_pool.proj", mha.out_proj)
    _add_norm(sd, "attn_pool.norm", head.layernorm, eps, "head.layernorm")
    _add_linear(sd, "attn_pool.mlp.fc1", head.mlp.fc1)
    _add_linear(sd, "attn_pool.mlp.fc2", head.mlp.fc2)
    if head.mlp.fc1.out_features != round(kw["mlp_ratio"] * d - 0.5):
        raise UnsupportedModelError("head.mlp: a width other than the encoder MLP's (intermediate_size) is not "
                                    "supported")
    kw["global_pool"] = "map"
    return "vit_base_patch16_224", kw


def _dinov2(model: nn.Module, sd: dict[str, Tensor], eps: set[float]) -> tuple[str, dict[str, Any]]:
    """DINOv2 (with registers): LayerScale blocks, CLS token, optional register tokens without position embedding."""
    emb = model.embeddings
    h, w = _pair(model.config.image_size)
    if h != w:
        # Hugging Face interpolates the position table whenever the image is not square, even at the native size.
        raise UnsupportedModelError(f"image_size={model.config.image_size}: DINOv2 with a non-square image_size "
                                    "resamples its position embedding at every forward; not supported")
    kw = _blocks(sd, model.encoder.layer, _DINO_NAMES, eps)
    _patch_embed(sd, emb.patch_embeddings.projection, "embeddings.patch_embeddings.projection")
    _add_norm(sd, "norm", model.layernorm, eps, "layernorm")
    kw.update(class_token=True, global_pool="token", num_classes=0, init_values=1.0)
    registers = getattr(emb, "register_tokens", None)
    if registers is None:
        sd["cls_token"], sd["pos_embed"] = emb.cls_token, emb.position_embeddings
    else:
        # Registers are inserted after the position embedding is added: timm's no_embed_class layout, with the
        # CLS position folded into the CLS token (the same float sum Hugging Face computes at every forward).
        sd["cls_token"] = emb.cls_token + emb.position_embeddings[:, :1]
        sd["pos_embed"] = emb.position_embeddings[:, 1:]
        sd["reg_token"] = registers
        kw.update(reg_tokens=int(registers.shape[1]), no_embed_class=True)
    if kw.get("mlp_layer") is not None:
        kw["act_layer"] = "silu"  # Dinov2SwiGLUFFN hard-codes SiLU whatever hidden_act says
    return "vit_base_patch16_224", kw


_FAMILIES = {"vit": _vit_deit, "deit": _vit_deit, "clip": _clip, "siglip": _siglip, "dinov2": _dinov2}


def timm_from_hf(model: Any) -> tuple[nn.Module, str]:
    """The timm ``VisionTransformer`` equivalent to a Hugging Face vision model, with its weights.

    Args:
        model: One of the classes in :data:`HF_CLASSES` (eval mode, or no dropout), not modified.

    Returns:
        ``(timm_model, head_kind)``: the timm model in eval mode on the Hugging Face model's device and dtype, and
        ``"projection"`` when its head is CLIP's image projection, else ``"classifier"``.

    Raises:
        UnsupportedModelError: naming the Hugging Face class or config field that cannot be reproduced.

    Example:
        >>> from transformers import ViTConfig, ViTModel
        >>> hf = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                         intermediate_size=64, image_size=32, patch_size=8)).eval()
        >>> tm, kind = timm_from_hf(hf)
        >>> type(tm).__name__, len(tm.blocks), kind
        ('VisionTransformer', 2, 'classifier')
    """
    import timm

    family = _check_hf(model)
    config = _vision_config(model)
    sd: dict[str, Tensor] = {}
    eps: set[float] = set()
    timm_name, kw = _FAMILIES[family](model, sd, eps)
    if len(eps) != 1:
        raise UnsupportedModelError(f"layer_norm_eps: all LayerNorms must share one eps, got {sorted(eps)}")
    kw["num_heads"] = config.num_attention_heads
    kw.setdefault("act_layer", _act_layer(config))
    kw.update(img_size=_pair(config.image_size), patch_size=_pair(config.patch_size), in_chans=config.num_channels,
              norm_layer=partial(nn.LayerNorm, eps=eps.pop()), weight_init="skip")
    # Built on the meta device and given the converted tensors (copies: the timm model never shares storage with
    # the Hugging Face one), so no time goes into initialising weights that are overwritten at once.
    with torch.device("meta"):
        tm = timm.create_model(timm_name, pretrained=False, **kw)
    missing, unexpected = tm.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False,
                                             assign=True)
    left = [n for n, t in [*tm.named_parameters(), *tm.named_buffers()] if t.is_meta]
    if missing or unexpected or left:  # a mapping error, never a user error: name the keys
        raise UnsupportedModelError(f"{type(model).__name__}: weights did not map onto timm {timm_name} "
                                    f"(missing {(missing or left)[:5]}, unexpected {unexpected[:5]})")
    head_kind = "projection" if getattr(model, "visual_projection", None) is not None else "classifier"
    return tm.eval(), head_kind


def hooked_from_hf(
    model: Any, *, cls: type[nn.Module], fold_ln: bool = False, center_writing_weights: bool = False,
    fold_value_biases: bool = False,
) -> nn.Module:
    """Convert a Hugging Face ``transformers`` vision model into a :class:`HookedViT` (see the module docstring).

    Args:
        model: A ``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``, ``DeiTForImageClassification``,
            ``DeiTForImageClassificationWithTeacher``, ``CLIPVisionModel``, ``CLIPVisionModelWithProjection``,
            ``CLIPModel`` (its image tower), ``SiglipVisionModel``, ``SiglipModel`` (its image tower),
            ``Dinov2Model`` or ``Dinov2WithRegistersModel``; not modified.
        cls: The HookedViT class to build (:meth:`HookedViT.from_hf` passes itself: this module never imports
            ``hooked_vit``, which imports it lazily).
        fold_ln, center_writing_weights, fold_value_biases: Weight processing, as in :meth:`HookedViT.from_timm`.

    Returns:
        The HookedViT in eval mode: its forward equals the Hugging Face forward at the native image size
        (``interpolate_pos_encoding`` off); ``cfg.head_kind`` is ``"projection"`` for CLIP's image projection, and
        ``cfg.data_config`` normalises like the model's image processor (:func:`hf_data_config`).

    Raises:
        UnsupportedModelError: naming the class or config field that cannot be reproduced exactly.

    Example:
        >>> from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        >>> hf = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, projection_dim=16)).eval()
        >>> from vit_patching import HookedViT
        >>> model = HookedViT.from_hf(hf)
        >>> model.cfg.head_kind, model.cfg.n_classes, model.cfg.pre_norm
        ('projection', 16, True)
    """
    tm, head_kind = timm_from_hf(model)
    hooked = cls.from_timm(tm, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                             fold_value_biases=fold_value_biases)
    hooked.cfg.head_kind = head_kind
    hooked.cfg.data_config = hf_data_config(model, hooked.cfg.img_size, HF_CLASSES[type(model).__name__])
    return hooked

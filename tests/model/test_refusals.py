"""Conversion refuses what it cannot reproduce exactly, names the feature, and never touches the timm model."""
import pytest
import timm
import torch
from torch import nn

from model_helpers import TINY, images, make_timm
from vit_patching.model import HookedViT, UnsupportedModelError, config_from_timm


def _refuse(model, match):
    with pytest.raises(UnsupportedModelError, match=match):
        HookedViT.from_timm(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(global_pool="map"), r"global_pool='map'.*attention-pool"),
        (dict(global_pool="prr"), r"global_pool='prr'.*attention-pool"),
        (dict(scale_attn_norm=True), "scale_attn_norm"),
        (dict(scale_mlp_norm=True), "scale_mlp_norm"),
        (dict(embed_norm_layer="layernorm"), "patch-embedding norm"),
        (dict(dynamic_img_pad=True), "dynamic_img_pad"),
        (dict(act_layer="relu"), "activation ReLU"),
        (dict(norm_layer="rmsnorm"), "RmsNorm"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()),
)
def test_unsupported_vit_features(kwargs, match):
    _refuse(make_timm(depth=1, **kwargs), match)


def test_unsupported_model_error_is_a_value_error():
    assert issubclass(UnsupportedModelError, ValueError)


def test_eva_refused():
    m = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=1)
    _refuse(m, r"VisionTransformer.*Eva")


def test_resnet_refused():
    _refuse(timm.create_model("resnet10t", pretrained=False, num_classes=10), r"VisionTransformer.*ResNet")
    _refuse(nn.Linear(3, 3), "VisionTransformer")


def test_gated_attention_refused():
    m = make_timm(depth=2)
    # timm's Attention(gated=True) has a `gate` Linear; VisionTransformer has no kwarg for it, so add it.
    m.blocks[1].attn.gate = nn.Linear(TINY["embed_dim"], TINY["embed_dim"])
    _refuse(m, r"blocks\.1\.attn: gated attention")


def test_attention_subclass_refused():
    from timm.layers.attention import Attention

    class MyAttention(Attention):
        pass

    m = make_timm(depth=1, attn_layer=MyAttention)
    _refuse(m, "MyAttention")


@pytest.mark.parametrize("kind", ["buffer", "parameter"])
def test_unconsumed_weight_refused(kind):
    m = make_timm(depth=1)
    if kind == "buffer":
        m.register_buffer("extra", torch.zeros(3))
    else:
        m.blocks[0].attn.register_parameter("extra_scale", nn.Parameter(torch.ones(3)))
    name = "extra" if kind == "buffer" else "blocks.0.attn.extra_scale"
    _refuse(m, rf"not consumed.*{name}")


def test_leftover_key_names_the_feature():
    """The refusal hints at the timm feature a stray key suggests (here a scale-norm weight smuggled in)."""
    from vit_patching.model.convert import convert_timm_state_dict

    m = make_timm(depth=1)
    cfg = config_from_timm(m)
    m.blocks[0].mlp.register_buffer("norm_weight", torch.ones(3))  # key 'blocks.0.mlp.norm_weight'
    with pytest.raises(UnsupportedModelError, match="scale_mlp_norm"):
        convert_timm_state_dict(m, cfg)


def test_distilled_with_fc_norm_refused():
    """timm's VisionTransformerDistilled never applies fc_norm; converting it would silently differ."""
    m = make_timm("deit_tiny_distilled_patch16_224", fc_norm=True)
    _refuse(m, "fc_norm")


def test_mixed_block_sizes_refused():
    m = make_timm(depth=2)
    m.blocks[1].mlp.act = nn.GELU(approximate="tanh")
    _refuse(m, "mixed MLP activations")


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(init_values=1e-5, no_embed_class=True, reg_tokens=2), dict(global_pool="avg", qk_norm=True)],
    ids=["vit", "deit3_reg", "gap_qknorm"],
)
def test_conversion_does_not_modify_timm(training, kwargs):
    m = make_timm(**kwargs)
    m.train(training)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: mod.training for n, mod in m.named_modules()}
    fused = [b.attn.fused_attn for b in m.blocks]
    grads = {n: p.requires_grad for n, p in m.named_parameters()}
    model = HookedViT.from_timm(m, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    after = m.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert {n: mod.training for n, mod in m.named_modules()} == flags
    assert [b.attn.fused_attn for b in m.blocks] == fused
    assert {n: p.requires_grad for n, p in m.named_parameters()} == grads
    # No storage is shared either: editing the hooked model leaves timm alone.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for k, v in before.items():
        assert torch.equal(m.state_dict()[k], v), k
    m.eval()
    with torch.no_grad():
        m(images(1))  # still a working timm model


def test_refusal_leaves_timm_untouched():
    m = make_timm(depth=1)
    m.register_buffer("extra", torch.zeros(3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _refuse(m, "extra")
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())


def test_distilled_with_registers_refused_before_conversion():
    """timm's distilled forward ignores reg_tokens; the conversion used to die in a bare reshape instead."""
    m = make_timm("deit_tiny_distilled_patch16_224", depth=1, reg_tokens=2)
    _refuse(m, r"register tokens \(reg_tokens=2\) on a distilled DeiT")
    with pytest.raises(UnsupportedModelError, match="reg_tokens"):
        config_from_timm(m)  # the config check refuses it: conversion never starts


@pytest.mark.parametrize(
    "path, kind, register",
    [
        ("blocks.1.attn", "forward hook", lambda mod: mod.register_forward_hook(lambda m, a, out: out * 1.5)),
        ("blocks.0.mlp.fc1", "forward pre-hook", lambda mod: mod.register_forward_pre_hook(lambda m, a: (a[0] * 2,))),
        ("norm", "backward hook", lambda mod: mod.register_full_backward_hook(lambda m, gi, go: None)),
        ("head", "backward pre-hook", lambda mod: mod.register_full_backward_pre_hook(lambda m, go: None)),
        ("", "forward hook", lambda mod: mod.register_forward_hook(lambda m, a, out: out + 1)),
    ],
    ids=["fwd", "pre", "bwd", "bwd_pre", "root"],
)
def test_timm_model_with_hooks_refused(path, kind, register):
    """A hook on any timm module would be silently dropped by the conversion (the hooked timm output differs)."""
    m = make_timm(depth=2)
    handle = register(m.get_submodule(path))
    where = repr(path) if path else "the model itself"
    _refuse(m, rf"model: a {kind} is registered on {where}")
    handle.remove()
    HookedViT.from_timm(m)  # converts once the hook is gone

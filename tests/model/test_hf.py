"""HookedViT.from_hf: Hugging Face transformers ViT / DeiT / CLIP / SigLIP / DINOv2 against their own forward.

Random weights (every parameter non-default, see ``_random_hf``). Real architecture sizes per family: the
transformers default configs, which are the base checkpoints (ViT-B/16 224, DeiT-B/16 224, CLIP ViT-B/32 224,
SigLIP B/16 224, DINOv2-B/14 at 224 px instead of the checkpoints' 518 px, to keep a forward under a second).
The other classes and options run at 2 layers with real head sizes (d_head 64).
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import timm
import torch
import transformers as T
from PIL import Image
from transformers.activations import ACT2FN
from transformers.initialization import no_init_weights

from vit_patching import HookedViT
from vit_patching.model.config import UnsupportedModelError
from vit_patching.model.hf import HF_ACTIVATIONS, timm_from_hf
from vit_patching.model.hf_data import HF_FAMILY_DATA, processor_data_config

from model_helpers import randomize_

# Largest relative error (max |diff| / max |reference|) seen over every case below: 9.3e-7 (output or block).
REL_TOL = 2e-6

SMALL = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)


def _random_hf(cls: type, config, seed: int = 0) -> torch.nn.Module:
    """A Hugging Face model with every parameter random and non-default, in eval mode."""
    with no_init_weights():  # randomize_ overwrites every parameter: skip transformers' slow initialisation
        model = cls(config)
    randomize_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # randomize_ scales [1, n, d] tables by 1/sqrt(n*d): give position tables, tokens and the probe O(1)
            # entries so that a misplaced one changes the output.
            if any(k in name for k in ("position_embedding", "token", "probe")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _pixels(config, batch: int = 2, seed: int = 1) -> torch.Tensor:
    cfg = getattr(config, "vision_config", None) or config
    h, w = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else cfg.image_size
    return torch.randn(batch, cfg.num_channels, h, w, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def _check(hf: torch.nn.Module, config, reference, batch: int = 2, every_hook: bool = True) -> HookedViT:
    """The converted model's output equals ``reference(hf_output)``, every block output equals hidden_states.

    ``every_hook`` caches every hook point, which switches each site to its explicit computation (float rounding
    differs from the fused kernels); else only the residual hooks, where the forward runs timm's kernels.
    """
    x = _pixels(config, batch)
    out = hf(pixel_values=x, output_hidden_states=True)
    model = HookedViT.from_hf(hf)
    resid_only = lambda n: n == "blocks.0.hook_resid_pre" or n.endswith("hook_resid_post")  # noqa: E731
    got, cache = model.run_with_cache(x, names_filter=None if every_hook else resid_only)
    ref = reference(out)
    assert got.shape == ref.shape
    assert _rel(got, ref) < REL_TOL
    hidden = out.hidden_states if out.hidden_states is not None else out.vision_model_output.hidden_states
    assert len(hidden) == model.cfg.n_layers + 1
    assert _rel(cache["blocks.0.hook_resid_pre"], hidden[0]) < REL_TOL
    for i in range(model.cfg.n_layers):
        assert _rel(cache[f"blocks.{i}.hook_resid_post"], hidden[i + 1]) < REL_TOL, i
    return model


# (class, config, reference output, prefix tokens, n_classes); LayerNorm eps in EPS
REAL = {
    "vit-b16-classifier": (T.ViTForImageClassification, lambda: T.ViTConfig(num_labels=1000),
                           lambda o: o.logits, ("CLS",), 1000),
    "deit-b16-distilled": (T.DeiTForImageClassificationWithTeacher, lambda: T.DeiTConfig(num_labels=1000),
                           lambda o: o.logits, ("CLS", "DIST"), 1000),
    "clip-b32-projection": (T.CLIPVisionModelWithProjection, lambda: T.CLIPVisionConfig(),
                            lambda o: o.image_embeds, ("CLS",), 512),
    "siglip-b16": (T.SiglipVisionModel, lambda: T.SiglipVisionConfig(), lambda o: o.pooler_output, (), 0),
    "dinov2-b14": (T.Dinov2Model, lambda: T.Dinov2Config(), lambda o: o.pooler_output, ("CLS",), 0),
    "dinov2-b14-reg4": (T.Dinov2WithRegistersModel, lambda: T.Dinov2WithRegistersConfig(patch_size=14),
                        lambda o: o.pooler_output, ("CLS", "REG0", "REG1", "REG2", "REG3"), 0),
}


# The transformers config defaults: 1e-12 (ViT, DeiT), 1e-5 (CLIP), 1e-6 (SigLIP, DINOv2); read off the modules.
EPS = {"vit": 1e-12, "deit": 1e-12, "clip": 1e-5, "siglip": 1e-6, "dinov2": 1e-6}


@pytest.mark.parametrize("case", sorted(REAL))
def test_real_size_equals_hf_forward(case):
    cls, make_config, reference, prefix, n_classes = REAL[case]
    config = make_config()
    # One image and the residual hooks only: the cheapest real-size check (the small cases cache every hook).
    model = _check(_random_hf(cls, config), config, reference, batch=1, every_hook=False)
    assert model.cfg.prefix_labels == prefix and model.cfg.n_classes == n_classes
    assert model.cfg.eps == EPS[case.split("-")[0]]
    assert model.cfg.head_kind == ("projection" if cls is T.CLIPVisionModelWithProjection else "classifier")
    if cls is T.SiglipVisionModel:
        assert model.cfg.global_pool == "map" and model.cfg.pool_n_heads == 12


SMALL_CASES = {
    # ViTModel: the CLS token after the final norm; the pooler (dense + tanh) is not converted.
    "vit-model": (T.ViTModel, lambda: T.ViTConfig(intermediate_size=512, **SMALL), lambda o: o.last_hidden_state[:, 0]),
    "vit-no-qkv-bias": (T.ViTForImageClassification,
                        lambda: T.ViTConfig(intermediate_size=512, qkv_bias=False, num_labels=7, **SMALL),
                        lambda o: o.logits),
    "vit-gelu-new-non-square": (T.ViTForImageClassification,
                                lambda: T.ViTConfig(intermediate_size=384, hidden_act="gelu_new", num_labels=7,
                                                    **{**SMALL, "image_size": [32, 48]}),
                                lambda o: o.logits),
    "deit-teacher-headless": (T.DeiTForImageClassificationWithTeacher,  # num_labels=0: mean of CLS and DIST
                              lambda: T.DeiTConfig(intermediate_size=512, num_labels=0, **SMALL), lambda o: o.logits),
    "deit-model": (T.DeiTModel, lambda: T.DeiTConfig(intermediate_size=512, **SMALL),
                   lambda o: o.last_hidden_state[:, 0]),
    "deit-cls-head": (T.DeiTForImageClassification, lambda: T.DeiTConfig(intermediate_size=512, num_labels=7, **SMALL),
                      lambda o: o.logits),
    "clip-vision": (T.CLIPVisionModel, lambda: T.CLIPVisionConfig(intermediate_size=512, **SMALL),
                    lambda o: o.pooler_output),
    "siglip-no-head": (T.SiglipVisionModel,
                       lambda: T.SiglipVisionConfig(intermediate_size=512, vision_use_head=False, **SMALL),
                       lambda o: o.last_hidden_state),
    # DINOv2-g's SwiGLU MLP (width 1536, 24 heads of 64) at 2 layers.
    "dinov2-swiglu-giant-width": (T.Dinov2Model,
                                  lambda: T.Dinov2Config(hidden_size=1536, num_attention_heads=24, num_hidden_layers=2,
                                                         use_swiglu_ffn=True, image_size=56),
                                  lambda o: o.pooler_output),
}


@pytest.mark.parametrize("case", sorted(SMALL_CASES))
def test_small_equals_hf_forward(case):
    cls, make_config, reference = SMALL_CASES[case]
    config = make_config()
    model = _check(_random_hf(cls, config), config, reference)
    if case == "deit-model":
        # DeiTModel reads CLS only: the distillation token is carried as a timm register token.
        assert model.cfg.prefix_labels == ("CLS", "REG0")
    if case == "dinov2-swiglu-giant-width":
        assert model.cfg.gated_mlp and model.cfg.act_fn == "silu" and model.cfg.d_mlp == 4096


@torch.no_grad()
def test_vit_model_output_is_cls_not_pooler():
    config = T.ViTConfig(intermediate_size=512, **SMALL)
    hf = _random_hf(T.ViTModel, config)
    x = _pixels(config)
    out = hf(pixel_values=x)
    got = HookedViT.from_hf(hf)(x)
    assert _rel(got, out.last_hidden_state[:, 0]) < REL_TOL
    assert _rel(got, out.pooler_output) > 0.1  # the pooler's dense + tanh is a different vector


@torch.no_grad()
def test_full_clip_and_siglip_models_read_their_image_tower():
    """CLIPModel / SiglipModel: the converted model is the image tower, equal to get_image_features."""
    text = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64)
    vision = dict(intermediate_size=512, **SMALL)
    clip_cfg = T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    siglip_cfg = T.SiglipConfig(text_config=text, vision_config=vision)
    cases = ((T.CLIPModel, clip_cfg, "projection", 32), (T.SiglipModel, siglip_cfg, "classifier", 0))
    for cls, config, kind, n in cases:
        hf = _random_hf(cls, config)
        x = _pixels(config)
        ref = hf.get_image_features(pixel_values=x)
        ref = getattr(ref, "pooler_output", ref)
        model = HookedViT.from_hf(hf)
        assert _rel(model(x), ref) < REL_TOL
        assert (model.cfg.head_kind, model.cfg.n_classes) == (kind, n)


@torch.no_grad()
def test_clip_projection_head_has_zero_bias_and_the_projection_weight():
    config = T.CLIPVisionConfig(intermediate_size=512, projection_dim=16, **SMALL)
    hf = _random_hf(T.CLIPVisionModelWithProjection, config)
    tm, kind = timm_from_hf(hf)
    assert kind == "projection"
    assert torch.equal(tm.head.bias, torch.zeros(16)) and torch.equal(tm.head.weight, hf.visual_projection.weight)
    assert tm.head.weight.data_ptr() != hf.visual_projection.weight.data_ptr()  # copies, never shared storage


@pytest.mark.parametrize("cls,config_cls", [(T.Dinov2Model, T.Dinov2Config),
                                              (T.Dinov2WithRegistersModel, T.Dinov2WithRegistersConfig)])
@torch.no_grad()
def test_dinov2_position_interpolation_is_the_identity_at_native_size(cls, config_cls):
    """DINOv2 calls interpolate_pos_encoding at every forward: at the native square size it returns the table."""
    emb = _random_hf(cls, config_cls(**{**SMALL, "patch_size": 8})).embeddings
    tokens = torch.zeros(1, 1 + 16, 128)  # CLS + the 4 x 4 patches
    assert emb.interpolate_pos_encoding(tokens, 32, 32) is emb.position_embeddings


@torch.no_grad()
def test_conversion_leaves_the_hf_model_unchanged_and_keeps_dtype():
    config = T.Dinov2WithRegistersConfig(**{**SMALL, "patch_size": 8})
    hf = _random_hf(T.Dinov2WithRegistersModel, config).double()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    x = _pixels(config).double()
    model = HookedViT.from_hf(hf)
    assert model.dtype == torch.float64
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
    assert _rel(model(x), hf(pixel_values=x).pooler_output) < 1e-13


def test_hidden_act_mapping_matches_transformers():
    """Every accepted hidden_act equals timm's activation it maps to, on [-8, 8]."""
    x = torch.linspace(-8, 8, 20001)
    worst = 0.0
    for name, timm_act in HF_ACTIVATIONS.items():
        ours = timm.layers.get_act_layer(timm_act)()(x)
        worst = max(worst, float((ACT2FN[name](x) - ours).abs().max()))
    # Observed: 0 for the torch kernels, 2.4e-7 for the tanh GELUs written out, 1.2e-6 (one float32 step near 8)
    # for gelu_python's written-out erf.
    assert worst < 1.5e-6


REFUSED = [
    (lambda: T.ViTForMaskedImageModeling(T.ViTConfig(intermediate_size=512, **SMALL)), "ViTForMaskedImageModeling"),
    (lambda: T.Dinov2ForImageClassification(T.Dinov2Config(**SMALL)),
     "Dinov2ForImageClassification .*HookedViT.from_hf(model.dinov2)"),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1), "VisionTransformer"),
    (lambda: T.ViTModel(T.ViTConfig(intermediate_size=512, hidden_act="relu", **SMALL)), "hidden_act='relu'"),
    (lambda: T.Dinov2Model(T.Dinov2Config(**{**SMALL, "image_size": [32, 48]})), "image_size=[32, 48]"),
    (lambda: T.ViTModel(T.ViTConfig(intermediate_size=512, **SMALL, head_dim=32)), "head_dim: num_attention_heads"),
    # A freshly built model is in training mode: with dropout its forward is random.
    (lambda: T.ViTModel(T.ViTConfig(intermediate_size=512, hidden_dropout_prob=0.1, **SMALL)),
     "hidden_dropout_prob=0.1"),
]


@pytest.mark.parametrize("make,names", REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_naming_the_feature(make, names):
    pattern = names.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(UnsupportedModelError, match=pattern):
        HookedViT.from_hf(make())


def test_not_a_model_is_a_type_error():
    with pytest.raises(TypeError, match="model: expected a Hugging Face transformers model instance .* got str"):
        HookedViT.from_hf("google/vit-base-patch16-224")


def test_a_user_hook_is_refused_but_transformers_output_recorders_are_not():
    config = T.ViTConfig(intermediate_size=512, **SMALL)
    hf = _random_hf(T.ViTModel, config)
    hf(pixel_values=_pixels(config), output_hidden_states=True)  # installs transformers' recorders
    HookedViT.from_hf(hf)
    handle = hf.layers[1].mlp.register_forward_hook(lambda mod, args, out: out * 2)
    with pytest.raises(UnsupportedModelError, match="forward hook is registered on 'layers.1.mlp'"):
        HookedViT.from_hf(hf)
    handle.remove()


def _image(height: int = 300, width: int = 270) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("family,make,processor", [
    ("vit", lambda: T.ViTModel(T.ViTConfig(**{**SMALL, "image_size": 224, "patch_size": 32})), T.ViTImageProcessorPil),
    ("clip", lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**{**SMALL, "image_size": 224, "patch_size": 32})),
     T.CLIPImageProcessorPil),
    ("siglip", lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**{**SMALL, "image_size": 224, "patch_size": 32})),
     T.SiglipImageProcessorPil),
    ("deit", lambda: T.DeiTModel(T.DeiTConfig(**{**SMALL, "image_size": 224, "patch_size": 32})),
     lambda: T.DeiTImageProcessorPil(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
    ("dinov2", lambda: T.Dinov2Model(T.Dinov2Config(**{**SMALL, "image_size": 224, "patch_size": 14})),
     lambda: T.BitImageProcessorPil(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                    size={"shortest_edge": 256})),
])
def test_preprocess_equals_the_reference_checkpoints_processor(family, make, processor):
    """Without a processor on disk, ``model.preprocess`` equals the reference checkpoint's (PIL-backend) processor.

    The 300 x 270 image leaves even crop margins: for an odd margin torchvision's CenterCrop rounds the half margin
    to even and Hugging Face's rounds it down (crops up to one pixel apart), which no timm data config can express.
    """
    model = HookedViT.from_hf(make().eval())
    assert {k: model.cfg.data_config[k] for k in HF_FAMILY_DATA[family]} == HF_FAMILY_DATA[family]
    ours = model.preprocess(_image())
    theirs = processor()(_image(), return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs)


def test_the_backbone_of_a_refused_class_converts():
    hf = T.ViTForMaskedImageModeling(T.ViTConfig(intermediate_size=512, **SMALL)).eval()
    x = _pixels(hf.config)
    with torch.no_grad():
        assert _rel(HookedViT.from_hf(hf.vit)(x), hf.vit(pixel_values=x).last_hidden_state[:, 0]) < REL_TOL


def test_a_processor_on_disk_is_used(tmp_path):
    config = T.ViTConfig(**{**SMALL, "image_size": 224, "patch_size": 32})
    hf = T.ViTModel(config).eval()
    proc = T.CLIPImageProcessorPil(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=2,
                                   size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    proc.save_pretrained(tmp_path)
    hf.config._name_or_path = str(tmp_path)
    model = HookedViT.from_hf(hf)
    assert model.cfg.data_config == dict(input_size=[3, 224, 224], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6],
                                         interpolation="bilinear", crop_pct=224 / 256, crop_mode="center")
    assert processor_data_config(proc) == {k: v for k, v in model.cfg.data_config.items() if k != "input_size"}


def test_docstring_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for m in ("vit_patching.model.hf", "vit_patching.model.hf_data")
             for t in finder.find(importlib.import_module(m))]
    tests += finder.find(HookedViT.from_hf, "from_hf", globs={"HookedViT": HookedViT})
    for t in tests:
        runner.run(t)
    assert runner.failures == 0 and runner.tries >= 10


@torch.no_grad()
def test_patching_engine_on_a_converted_deit_matches_a_hooked_loop():
    """A layer sweep on a converted HF model (DeiT: CLS + the DIST token as a register) equals patching by hand."""
    from vit_patching.patching import layer_sweep

    config = T.DeiTConfig(intermediate_size=512, num_labels=5, **SMALL)
    model = HookedViT.from_hf(_random_hf(T.DeiTForImageClassification, config))
    clean, corrupted = _pixels(config, seed=1), _pixels(config, seed=2)
    res = layer_sweep(model, clean, corrupted, metric=lambda logits, idx: logits[:, 0], sites="resid_pre",
                      progress=False)
    _, cache = model.run_with_cache(clean)
    for layer, pos in ((0, 0), (1, 1), (1, 7)):  # CLS, the DIST token, a patch
        def patch(resid, hook, layer=layer, pos=pos):
            resid[:, pos] = cache[f"blocks.{layer}.hook_resid_pre"][:, pos]
            return resid

        hand = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])[:, 0]
        # Logits of about 2: largest difference seen 7.2e-7 (the engine restarts from a cached residual).
        assert torch.allclose(res.values[0, layer, pos], hand, atol=2e-6, rtol=0)


@torch.no_grad()
def test_weight_processing_options_keep_the_output():
    config = T.CLIPVisionConfig(intermediate_size=512, projection_dim=16, **SMALL)
    hf = _random_hf(T.CLIPVisionModelWithProjection, config)
    x = _pixels(config)
    model = HookedViT.from_hf(hf, fold_ln=True, center_writing_weights=True, fold_value_biases=True)
    assert model.cfg.normalization_type == "LNPre" and model.cfg.head_kind == "projection"
    assert _rel(model(x), hf(pixel_values=x).image_embeds) < REL_TOL  # observed 5.1e-7

"""HookedViT.from_open_clip: open_clip image towers equal ``encode_image`` (random weights) or are refused by name.

open_clip's random init leaves norm weights at 1 and biases at 0, which would hide a swapped weight/bias; every
tower is re-randomised with ``randomize_``. The text tower is never converted, so models are built with a tiny one.
"""
from functools import partial

import open_clip
import pytest
import timm
import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.timm_model import TimmModel
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from model_helpers import images, randomize_
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT, UnsupportedModelError

# max |HookedViT - open_clip| / max |open_clip|. open_clip's VisionTransformer (nn.MultiheadAttention, its own
# LayerNorm) against the HookedViT: observed <= 8.1e-7 (ViT-L-14 width). A LayerNorm eps of 1e-6 instead of
# open_clip's 1e-5 gives 1.4e-5, so this catches it.
REL = 2e-6
# timm trunks run the same timm computation in the HookedViT: observed 0.
REL_TIMM = 1e-6
TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
SMALL = dict(image_size=32, patch_size=8, width=64, head_width=32, layers=2)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def make_clip(vision: dict, embed_dim: int = 24, quick_gelu: bool = False, seed: int = 0) -> CLIP:
    model = CLIP(embed_dim, vision, TEXT, quick_gelu=quick_gelu).eval()
    randomize_(model.visual, seed)
    return model


@torch.no_grad()
def block_outputs(model: CLIP, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``encode_image`` and the output of every open_clip residual block (forward hooks, removed afterwards)."""
    outs: list[torch.Tensor] = []
    blocks = model.visual.transformer.resblocks
    handles = [b.register_forward_hook(lambda mod, inp, out: outs.append(out.detach().clone())) for b in blocks]
    try:
        emb = model.encode_image(x)
    finally:
        for h in handles:
            h.remove()
    return emb, outs


def assert_equal_to_open_clip(model: CLIP, hooked: HookedViT, x: torch.Tensor, names=lambda n: "resid_post" in n):
    """The embedding and every block output equal open_clip's; returns ``(embedding, cache)``."""
    ref, ref_blocks = block_outputs(model, x)
    if isinstance(ref, tuple):  # output_tokens=True: (pooled embedding, tokens)
        ref = ref[0]
    with torch.no_grad():
        out, cache = hooked.run_with_cache(x, names_filter=names)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= REL
    assert len(ref_blocks) == hooked.cfg.n_layers
    for i, r in enumerate(ref_blocks):
        assert _rel(cache[get_act_name("resid_post", i)], r) <= REL, f"block {i}"
    return out, cache


@pytest.mark.slow
def test_vit_b32_at_real_size_equals_encode_image():
    cfg = open_clip.get_model_config("ViT-B-32")
    model = make_clip(cfg["vision_cfg"], cfg["embed_dim"])
    hooked = HookedViT.from_open_clip(model)
    c = hooked.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.d_mlp, c.patch_size, c.img_size) == (
        12, 768, 12, 3072, (32, 32), (224, 224))
    assert (c.pre_norm, c.final_norm, c.fc_norm, c.global_pool, c.act_fn, c.eps) == (
        True, True, False, "token", "gelu", 1e-5)
    assert (c.head_kind, c.n_classes, c.patch_bias) == ("projection", 512, False)
    assert torch.equal(hooked.b_H, torch.zeros(512))  # proj has no bias
    assert torch.equal(hooked.W_H, model.visual.proj)  # encode_image computes pooled @ proj
    x = images(1, 224, 224)
    out, cache = assert_equal_to_open_clip(model, hooked, x, names=None)
    # The pooled vector is ln_post(CLS), and the embedding is exactly that vector through the head.
    assert torch.allclose(cache["hook_pooled"] @ hooked.W_H, out, rtol=0, atol=1e-6 * out.abs().max())
    assert cache["hook_logits"].shape == (1, 512)
    assert cache[get_act_name("pattern", 11)].shape == (1, 12, 50, 50)


# name -> (open_clip vision_cfg overrides on SMALL, CLIP(quick_gelu=...), expected HookedViT config fields)
VARIANTS = {
    "plain": ({}, False, dict(pre_norm=True, global_pool="token", act_fn="gelu", head_kind="projection")),
    "quick_gelu": ({}, True, dict(act_fn="quick_gelu")),
    "layer_scale": (dict(ls_init_value=0.1), False, dict(layer_scale=True)),
    "no_ln_pre": (dict(no_ln_pre=True), False, dict(pre_norm=False)),
    "final_ln_after_pool": (dict(final_ln_after_pool=True), False, dict(global_pool="token", final_norm=True)),
    "avg": (dict(pool_type="avg"), False, dict(global_pool="avg", final_norm=True, fc_norm=False)),
    "avg_final_ln_after_pool": (
        dict(pool_type="avg", final_ln_after_pool=True), False, dict(global_pool="avg", final_norm=False, fc_norm=True),
    ),
    "custom_block": (dict(block_type="custom"), False, dict(qk_norm=False, attn_norm=False, mlp_norm=False)),
    "qk_norm_inner_fc": (
        dict(qk_norm=True, scale_attn_inner=True, scale_fc=True), False,
        dict(qk_norm=True, attn_norm=True, mlp_norm=True),
    ),
    "sin_cos_pos_embed": (dict(pos_embed_type="sin_cos_2d"), False, dict(has_pos_embed=True)),
    "gelu_tanh_eps": (dict(act_kwargs={"approximate": "tanh"}, norm_kwargs={"eps": 1e-6}), False,
                      dict(act_fn="gelu_tanh", eps=1e-6)),
    "non_square_mlp_ratio": (dict(image_size=(32, 48), mlp_ratio=2.5), False, dict(img_size=(32, 48), d_mlp=160)),
    "patch_dropout_at_eval": (dict(patch_dropout=0.5), False, dict(n_pos=17)),
    "output_tokens": (dict(output_tokens=True), False, dict(head_kind="projection")),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vision_transformer_variants_equal_encode_image(variant):
    overrides, quick_gelu, expected = VARIANTS[variant]
    model = make_clip({**SMALL, **overrides}, quick_gelu=quick_gelu)
    hooked = HookedViT.from_open_clip(model)
    for key, value in expected.items():
        assert getattr(hooked.cfg, key) == value, key
    assert_equal_to_open_clip(model, hooked, images(2, *hooked.cfg.img_size))


@pytest.mark.parametrize("name", ["ViT-B-16-quickgelu", "ViT-L-14"])
def test_openai_and_laion_configs_at_real_width(name):
    """The real width, heads, patch and MLP of each config; 2 blocks and a 4x4 grid keep the suite fast."""
    cfg = open_clip.get_model_config(name)
    vision = {**cfg["vision_cfg"], "layers": 2}
    vision["image_size"] = 4 * vision["patch_size"]
    model = make_clip(vision, cfg["embed_dim"], quick_gelu=cfg.get("quick_gelu", False))
    hooked = HookedViT.from_open_clip(model)
    assert hooked.cfg.d_model == cfg["vision_cfg"]["width"]
    assert hooked.cfg.n_heads == cfg["vision_cfg"]["width"] // 64
    assert hooked.cfg.act_fn == ("quick_gelu" if cfg.get("quick_gelu") else "gelu")
    assert hooked.cfg.n_classes == cfg["embed_dim"]
    assert_equal_to_open_clip(model, hooked, images(1, *hooked.cfg.img_size))


@pytest.mark.parametrize("final_ln_after_pool", [False, True])
def test_output_tokens_are_in_the_cache(final_ln_after_pool):
    """``output_tokens=True``: encode_image also returns the patch tokens, ``ln_post`` applied unless it runs after
    the pool; the HookedViT has them as the last block's residual (through ``model.ln_final``)."""
    model = make_clip({**SMALL, "output_tokens": True, "final_ln_after_pool": final_ln_after_pool})
    hooked = HookedViT.from_open_clip(model)
    x = images(2, 32, 32)
    with torch.no_grad():
        _, tokens = model.encode_image(x)
        _, cache = hooked.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
        resid = cache["blocks.1.hook_resid_post"]
        ours = resid if final_ln_after_pool else hooked.ln_final(resid)
    assert _rel(ours[:, 1:], tokens) <= REL


def make_timm_clip(name: str, monkeypatch, depth: int = 2) -> CustomTextCLIP:
    """An open_clip config's TimmModel tower at its real width, heads, input size, pooling and head, ``depth`` blocks.

    TimmModel passes no depth to timm, so ``timm.create_model`` gets it here; everything else is built by open_clip
    from the config as for the full model (whose trunk conversion ``test_families_fullsize.py`` covers at 12 blocks).
    """
    cfg = open_clip.get_model_config(name)
    monkeypatch.setattr(open_clip.timm_model.timm, "create_model", partial(timm.create_model, depth=depth))
    model = CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], TEXT).eval()
    monkeypatch.undo()
    randomize_(model.visual)
    return model


@pytest.mark.parametrize("name, expected", [
    # SigLIP (and SigLIP 2, the same image tower): timm_proj='none', the attention-pool output is the embedding.
    ("ViT-B-16-SigLIP", dict(global_pool="map", n_prefix=0, n_classes=0, d_model=768, n_heads=12)),
    # EVA02-CLIP: timm_proj null, the trunk's own linear head (with bias) is the projection.
    ("EVA02-B-16", dict(rope="axial", n_classes=512, head_kind="projection", d_model=768, n_heads=12)),
])
def test_timm_trunks_at_real_width_equal_encode_image(name, expected, monkeypatch):
    model = make_timm_clip(name, monkeypatch)
    hooked = HookedViT.from_open_clip(model)
    for key, value in {**expected, "n_layers": 2, "img_size": (224, 224)}.items():
        assert getattr(hooked.cfg, key) == value, key
    x = images(1, 224, 224)
    with torch.no_grad():
        ref = model.encode_image(x)
        out = hooked(x)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= REL_TIMM


def make_tower(proj, pool: str = "avg", proj_bias: bool = False, seed: int = 0) -> TimmModel:
    """An open_clip TimmModel on timm's small ``test_vit`` trunk (64 wide, 160 px)."""
    return randomize_(TimmModel("test_vit", embed_dim=24, image_size=160, pool=pool, proj=proj,
                                proj_bias=proj_bias), seed).eval()


@pytest.mark.parametrize("proj, pool, proj_bias, n_classes, head_kind", [
    ("linear", "avg", False, 24, "projection"),   # open_clip's default head: a bias-free Linear after the trunk
    ("linear", "token", True, 24, "projection"),  # timm_proj_bias=True
    ("none", "token", False, 0, "classifier"),    # no projection: the pooled features are the embedding
    (None, "avg", False, 24, "projection"),       # timm_proj null: the trunk's own head is the projection
])
def test_timm_tower_heads(proj, pool, proj_bias, n_classes, head_kind):
    tower = make_tower(proj, pool, proj_bias)
    hooked = HookedViT.from_open_clip(tower)  # the tower itself is accepted as well as the full model
    assert (hooked.cfg.n_classes, hooked.cfg.global_pool) == (n_classes, pool)
    if n_classes:
        assert hooked.cfg.head_kind == head_kind
    if proj == "linear" and not proj_bias:
        assert torch.equal(hooked.b_H, torch.zeros(24))
    x = images(2, 160, 160)
    with torch.no_grad():
        ref, out = tower(x), hooked(x)
    assert _rel(out, ref) <= REL_TIMM


def test_tower_without_proj_is_headless():
    """``prune_intermediate_layers(prune_head=True)`` drops ``proj``: encode_image is then ln_post(CLS)."""
    model = make_clip(SMALL)
    model.visual.proj = None
    hooked = HookedViT.from_open_clip(model)
    assert hooked.cfg.n_classes == 0 and "hook_logits" not in hooked.hook_dict
    out, _ = assert_equal_to_open_clip(model, hooked, images(2, 32, 32))
    assert out.shape == (2, 64)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["vision_transformer", "timm_tower"])
def test_open_clip_model_is_not_modified(kind):
    model = make_clip(SMALL) if kind == "vision_transformer" else make_tower("linear")
    model.train(False)
    before = _state(model)
    hooked = HookedViT.from_open_clip(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():  # no shared storage: editing the HookedViT leaves open_clip's weights alone
        for p in hooked.parameters():
            p.add_(1.0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("option, message", [
    (dict(attentional_pool=True), "attentional_pool"),
    (dict(pool_type="none"), "pool_type='none'"),
    (dict(scaled_cosine_attn=True), "scaled_cosine_attn"),
    (dict(scale_heads=True), "scale_heads"),
    (dict(scale_attn=True), "scale_attn"),
])
def test_vision_transformer_refusals_name_the_option(option, message):
    model = make_clip({**SMALL, **option})
    with pytest.raises(UnsupportedModelError, match=message):
        HookedViT.from_open_clip(model)


def test_refusals_training_dropout_resnet_mlp_head_and_hooks():
    model = make_clip({**SMALL, "patch_dropout": 0.5}).train()
    with pytest.raises(UnsupportedModelError, match="training mode with patch_dropout"):
        HookedViT.from_open_clip(model)
    resnet = CLIP(24, dict(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=64), TEXT)
    with pytest.raises(UnsupportedModelError, match="ModifiedResNet"):
        HookedViT.from_open_clip(resnet)
    with pytest.raises(UnsupportedModelError, match="timm_proj='mlp'"):
        HookedViT.from_open_clip(make_tower("mlp"))
    for pool in ("abs_attn", "rot_attn"):  # named before the (CNN) trunk is looked at
        with pytest.raises(UnsupportedModelError, match=f"timm_pool='{pool}'"):
            HookedViT.from_open_clip(TimmModel("resnet10t", embed_dim=24, image_size=64, pool=pool, proj=""))
    with pytest.raises(UnsupportedModelError, match="timm VisionTransformer or Eva"):
        HookedViT.from_open_clip(TimmModel("test_convnext", embed_dim=24, image_size=64))
    hooked_model = make_clip(SMALL)
    handle = hooked_model.visual.ln_post.register_forward_hook(lambda mod, inp, out: out * 2)
    try:
        with pytest.raises(UnsupportedModelError, match="forward hook is registered on 'ln_post'"):
            HookedViT.from_open_clip(hooked_model)
    finally:
        handle.remove()
    mixed_eps = make_clip(SMALL)
    mixed_eps.visual.ln_post = torch.nn.LayerNorm(64, eps=1e-6)
    with pytest.raises(UnsupportedModelError, match=r"share one eps .*got \[1e-06, 1e-05\]"):
        HookedViT.from_open_clip(mixed_eps)
    fp32_norms = CLIP(24, SMALL, TEXT, cast_dtype=torch.float16).half()  # LayerNormFp32, half weights
    with pytest.raises(UnsupportedModelError, match="LayerNormFp32 with torch.float16 weights"):
        HookedViT.from_open_clip(fp32_norms)
    with pytest.raises(TypeError, match="model: expected an open_clip model"):
        HookedViT.from_open_clip("ViT-B-32")


def test_fold_ln_keeps_the_embedding():
    model = make_clip(SMALL)
    x = images(2, 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
        out = HookedViT.from_open_clip(model, fold_ln=True, center_writing_weights=True)(x)
    assert _rel(out, ref) <= REL


def _pil(width: int = 57, height: int = 41) -> Image.Image:
    g = torch.Generator().manual_seed(3)
    return Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("pp", [
    {},  # a model built without create_model: open_clip's defaults (OpenAI mean/std, bicubic, shortest side)
    dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", resize_mode="squash"),  # SigLIP
    dict(mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1), interpolation="bilinear", resize_mode="shortest"),
    dict(resize_mode="longest", fill_color=0, mean=(0.0, 0.0, 0.0)),  # pads with 0 = timm's mean-colour padding
])
def test_preprocess_equals_open_clip_transform(pp):
    model = make_clip(SMALL)
    if pp:
        open_clip.model.set_model_preprocess_cfg(model, {**PreprocessCfg().__dict__, "size": 32, **pp})
    hooked = HookedViT.from_open_clip(model)
    expected = PreprocessCfg(**{"size": 32, **(model.visual.preprocess_cfg if pp else {})})
    assert hooked.cfg.data_config["mean"] == list(expected.mean)
    assert hooked.cfg.data_config["std"] == list(expected.std)
    img = _pil()
    ref = image_transform_v2(expected, is_train=False)(img)[None]
    assert torch.allclose(hooked.preprocess(img), ref, rtol=0, atol=1e-6)


def test_preprocess_refuses_padding_it_cannot_reproduce():
    model = make_clip(SMALL)
    open_clip.model.set_model_preprocess_cfg(model, {**PreprocessCfg().__dict__, "size": 32, "resize_mode": "longest"})
    with pytest.raises(UnsupportedModelError, match="resize_mode='longest' pads with fill_color=0"):
        HookedViT.from_open_clip(model)

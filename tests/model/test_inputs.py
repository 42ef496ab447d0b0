"""Inputs: preprocessing, input validation, start/stop layers, dtype and device moves."""
import numpy as np
import pytest
import torch
from PIL import Image

from model_helpers import images, make_pair, make_timm
from vit_patching.model import HookedViT


def _pil(seed, size=(70, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_preprocess_equals_timm_transform():
    from timm.data import create_transform, resolve_data_config

    # img_size equal to the registry's pretrained size, so timm's own data config applies unchanged
    m = make_timm(img_size=224, patch_size=16, depth=1)
    model = HookedViT.from_timm(m)
    tf = create_transform(**resolve_data_config({}, model=m))
    pics = [_pil(0), _pil(1, (300, 200))]
    batch = model.preprocess(pics)
    expected = torch.stack([tf(p) for p in pics])
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch, expected, atol=0, rtol=0)
    torch.testing.assert_close(model.preprocess(pics[1]), expected[1:], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), m(expected), atol=1e-5, rtol=0)


def test_preprocess_targets_the_instance_img_size():
    """timm's pretrained_cfg says 224 for a model built with img_size=32; preprocess must give 32 px."""
    m, model = make_pair()
    assert model.cfg.data_config["input_size"] == [3, 32, 32]
    batch = model.preprocess([_pil(2, (64, 40)).convert("L")])  # grey images are converted to RGB
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == torch.float32
    with torch.no_grad():
        model(batch)


def test_preprocess_errors():
    _, model = make_pair()
    with pytest.raises(TypeError, match="PIL"):
        model.preprocess([])
    with pytest.raises(TypeError, match="PIL"):
        model.preprocess([torch.zeros(3, 32, 32)])


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (torch.randn(3, 32, 32), ValueError, r"\[batch, 3, height, width\], got \(3, 32, 32\).*images\[None\]"),
        (torch.randn(1, 2, 3, 32, 32), ValueError, r"got \(1, 2, 3, 32, 32\)"),
        (torch.randn(1, 1, 32, 32), ValueError, "3 channels on axis 1"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), TypeError, "floating-point.*int64"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point.*uint8"),
        (torch.randn(1, 3, 64, 64), ValueError, "32x32 pixels.*got 64x64.*dynamic_img_size"),
        (torch.randn(1, 3, 32, 48), ValueError, "got 32x48"),
        (torch.randn(1, 3, 32, 32, device="meta"), ValueError, "images are on meta but the model is on cpu"),
        (np.zeros((1, 3, 32, 32), dtype=np.float32), TypeError, "torch.Tensor"),
        (torch.randn(0, 3, 32, 32), ValueError, r"images: expected a non-empty batch.*got shape \(0, 3, 32, 32\)"),
        (torch.randn(2, 3, 32, 32).index_put_((torch.tensor(1), torch.tensor(0)), torch.tensor(float("nan"))),
         ValueError, "images: expected finite pixel values, got 1024 NaN/Inf"),
        (torch.full((1, 3, 32, 32), float("inf")), ValueError, "images: expected finite pixel values, got 3072 NaN/Inf"),
    ],
    ids=["3d", "5d", "channels", "int64", "uint8", "size", "non_square", "device", "numpy", "empty", "nan", "inf"],
)
def test_bad_images_raise_clear_errors(bad, exc, match):
    _, model = make_pair()
    with pytest.raises(exc, match=match):
        model(bad)


def test_check_images_names_the_argument_for_empty_and_non_finite_batches():
    _, model = make_pair()
    with pytest.raises(ValueError, match="corrupted: expected a non-empty batch"):
        model.check_images(images(0), "corrupted")
    bad = images(1)
    bad[0, 2, 5, 7] = float("-inf")
    with pytest.raises(ValueError, match="clean: expected finite pixel values, got 1 NaN/Inf"):
        model.check_images(bad, "clean")
    with pytest.raises(ValueError, match="images: expected finite"):
        model.grid_size_for(bad)
    with pytest.raises(ValueError, match="images: expected finite"):
        model.embed_input(bad)


def test_dynamic_model_needs_patch_multiples():
    _, model = make_pair(dynamic_img_size=True)
    with pytest.raises(ValueError, match=r"multiples of the patch size \(8, 8\), got \(36, 64\)"):
        model(images(1, 36, 64))
    with torch.no_grad():
        assert model(images(1, 40, 16)).shape == (1, 10)


def test_float64_images_are_cast_to_the_model_dtype():
    _, model = make_pair()
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()), model(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("split", [0, 1, 2, 3, -1, -3])
def test_start_and_stop_at_layer_resume_the_forward(split):
    _, model = make_pair(depth=3, pre_norm=True)
    x = images(2)
    with torch.no_grad():
        full, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_pre"))
        resid = model(x, stop_at_layer=split)
        s = split % 4 if split >= 0 else split + 3
        expected = cache[f"blocks.{s}.hook_resid_pre"] if s < 3 else None
        if expected is not None:
            torch.testing.assert_close(resid, expected, atol=1e-5, rtol=0)
        assert resid.shape == (2, model.cfg.n_pos, model.cfg.d_model)
        resumed = model(resid, start_at_layer=split)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0)


def test_start_and_stop_together_run_a_slice():
    _, model = make_pair(depth=4)
    x = images(2)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_pre"))
        mid = model(cache["blocks.1.hook_resid_pre"], start_at_layer=1, stop_at_layer=3)
        empty = model(cache["blocks.2.hook_resid_pre"], start_at_layer=2, stop_at_layer=2)
    torch.testing.assert_close(mid, cache["blocks.3.hook_resid_pre"], atol=1e-5, rtol=0)
    assert torch.equal(empty, cache["blocks.2.hook_resid_pre"])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(stop_at_layer=5), ValueError, r"stop_at_layer must be in \[-3, 3\], got 5"),
        (dict(start_at_layer=-4), ValueError, r"start_at_layer must be in \[-3, 3\], got -4"),
        (dict(start_at_layer=2, stop_at_layer=1), ValueError, r"stop_at_layer \(1\) must be >= start_at_layer \(2\)"),
        (dict(stop_at_layer=1.0), TypeError, "stop_at_layer"),
        (dict(start_at_layer=True), TypeError, "start_at_layer must be an int"),
    ],
)
def test_bad_layer_arguments(kwargs, exc, match):
    _, model = make_pair(depth=3)
    x = images(1) if "start_at_layer" not in kwargs else torch.zeros(1, model.cfg.n_pos, model.cfg.d_model)
    with pytest.raises(exc, match=match):
        model(x, **kwargs)


def test_start_at_layer_needs_a_residual():
    _, model = make_pair(depth=3)
    with pytest.raises(ValueError, match=r"residual stream \[batch, pos, 32\], got \(1, 3, 32, 32\)"):
        model(images(1), start_at_layer=1)


# Observed (2-layer LayerScale model, |logits| <= 3): explicit path vs timm in the same dtype 0.0156 (bf16) and
# 0.00195 (fp16), one ulp at that magnitude; vs timm in float32 0.0139 (bf16) and 0.0016 (fp16). Tolerances ~2x.
@pytest.mark.parametrize(
    "dtype, atol, atol_fp32", [(torch.bfloat16, 0.032, 0.03), (torch.float16, 0.004, 0.0035)], ids=["bf16", "fp16"]
)
def test_low_precision_matches_timm_in_the_same_dtype(dtype, atol, atol_fp32):
    m = make_timm(depth=2, init_values=1e-5, global_pool="avg")
    model = HookedViT.from_timm(m)
    x = images(2)
    with torch.no_grad():
        ref32 = m(x)
        model.to(dtype)
        assert model.dtype == dtype and model.cfg.device == "cpu"
        out = model(x)  # float32 input is cast to the model dtype
        m.to(dtype)
        ref = m(x.to(dtype))
        cached, cache = model.run_with_cache(x.to(dtype))  # explicit paths in low precision too
    assert out.dtype == dtype
    assert torch.equal(out, ref)  # the unhooked forward runs timm's kernels in timm's order: bit for bit
    torch.testing.assert_close(out.float(), ref32, atol=atol_fp32, rtol=0)
    torch.testing.assert_close(cached.float(), ref.float(), atol=atol, rtol=0)
    assert cache["blocks.1.attn.hook_pattern"].dtype == dtype
    # converting a low-precision timm model keeps its dtype
    assert HookedViT.from_timm(m).dtype == dtype


def test_cfg_device_follows_moves():
    _, model = make_pair()
    assert model.cfg.device == "cpu" and model.device == torch.device("cpu")
    model.to("meta")
    assert model.cfg.device == "meta" and model.device.type == "meta"
    model.to_empty(device="cpu")
    assert model.cfg.device == "cpu"

"""The logit lens: each row equals timm's own model truncated to its first blocks; the last row is the logits."""
import pytest
import torch

from model_helpers import images, make_pair
from vit_patching.model.logit_attribution import logit_lens

LENS = {
    "token_pool": ("vit_tiny_patch16_224", {}),
    "avg_fc_norm_registers": ("vit_tiny_patch16_224", dict(global_pool="avg", reg_tokens=2)),
    "attention_pool": ("vit_tiny_patch16_224", dict(global_pool="map", class_token=False)),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
}


@pytest.mark.parametrize("config", list(LENS))
def test_logit_lens_equals_truncated_timm_model(config):
    name, kwargs = LENS[config]
    timm_model, model = make_pair(name, depth=3, **kwargs)
    x = images(2)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        lens = logit_lens(model, cache)
        blocks = timm_model.blocks
        truncated = []
        for l in range(4):  # an independent recomputation: timm itself, stopped after l blocks
            timm_model.blocks = blocks[:l]
            truncated.append(timm_model(x))
        timm_model.blocks = blocks
    assert lens.shape == (4, 2, model.cfg.n_classes)
    torch.testing.assert_close(lens, torch.stack(truncated), atol=2e-6, rtol=0)
    torch.testing.assert_close(lens[-1], logits, atol=2e-6, rtol=0)
    assert not torch.allclose(lens[0], lens[-1], atol=1e-2)  # the rows are different readings, not one repeated


def test_logit_lens_equals_transformer_lens_recipe_on_a_cls_model():
    """TransformerLens's logit lens: accumulated_resid(apply_ln=True) at CLS through the unembedding."""
    _, model = make_pair(depth=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
        lens = logit_lens(model, cache)
        tl = cache.accumulated_resid(apply_ln=True, pos_slice=0) @ model.W_U + model.b_U
    torch.testing.assert_close(lens, tl, atol=2e-6, rtol=0)


def test_logit_lens_refuses_a_model_without_head():
    _, model = make_pair(num_classes=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(1))
    with pytest.raises(ValueError, match="expected a model that outputs class scores"):
        logit_lens(model, cache)


def test_logit_lens_names_a_missing_residual():
    _, model = make_pair()
    with torch.no_grad():
        _, cache = model.run_with_cache(images(1), names_filter=lambda n: "resid_pre" in n)
    with pytest.raises(KeyError, match="blocks.1.hook_resid_post"):
        logit_lens(model, cache)

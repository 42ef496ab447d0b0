"""AtP* on RoPE models: the attention pattern is recomputed from the rotated queries and keys (``hook_rot_q`` /
``hook_rot_k``), so a patch that changes nothing estimates exactly 0, and every estimate equals AtP*'s
definition: the exact change of the pattern when the (pre-rotation) query or key is patched, times the
metric's gradient with respect to the pattern."""
import pytest
import torch

from circuit_toys import images, make_pair, metric
from vit_patching.circuits import atp_heads, atp_layer_sweep

# Tiny random timm RoPE models (tests/model/test_families.py): axial RoPE, a learned per-head table, and the
# rotate-half layout with register tokens (DINOv3).
ROPE = {
    "eva02": ("eva02_tiny_patch14_224", {}),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", {}),
    "dinov3": ("vit_small_patch16_dinov3", dict(dynamic_img_size=False)),
}


def rope_model(family: str, dtype: torch.dtype = torch.float32):
    name, kwargs = ROPE[family]
    model = make_pair(name, **kwargs)[1].to(dtype)
    assert model.cfg.rope
    return model


@pytest.mark.parametrize("family", list(ROPE))
def test_atp_star_is_exactly_zero_when_clean_equals_corrupted(family):
    model = rope_model(family)
    x = images(2, 32, 32, seed=1)
    for by_pos in (False, True):
        for star in (True, False):
            res = atp_heads(model, x, x.clone(), metric(), by_pos=by_pos, atp_star=star)
            est = res.values - res.target_score
            assert (est == 0).all(), (by_pos, star, est.abs().max())
    res = atp_layer_sweep(model, x, x.clone(), metric())
    assert ((res.values - res.target_score) == 0).all()


def _by_hand(model, clean, corrupted, site, layer, positions):
    """AtP* by its definition: ``sum (pattern(q or k patched) - pattern) . dm/dpattern`` per image and head,
    with the query or key (``hook_q`` / ``hook_k``, before the rotation) patched exactly at ``positions``."""
    hook = f"blocks.{layer}.attn.hook_{site}"
    p_hook = f"blocks.{layer}.attn.hook_pattern"
    _, src = model.run_with_cache(clean, names_filter=lambda n: n == hook, return_cache_object=False)
    kept = {}

    def keep(act, hook):
        act.retain_grad()
        kept["p"] = act
        return act

    logits = model.run_with_hooks(corrupted, fwd_hooks=[(p_hook, keep)])
    metric()(logits, torch.arange(clean.shape[0])).sum().backward()
    p0, grad = kept["p"].detach(), kept["p"].grad
    model.zero_grad(set_to_none=True)
    out = []
    for pos in positions:
        def patch(act, hook, pos=pos):
            act = act.clone()
            act[:, pos] = src[hook.name][:, pos]
            return act

        got = {}
        with torch.no_grad():
            model.run_with_hooks(corrupted, fwd_hooks=[(hook, patch), (p_hook, lambda a, hook: got.setdefault("p", a))])
        out.append(((got["p"] - p0) * grad).sum((-1, -2)))  # [batch, head]
    return torch.stack(out)  # [pos, batch, head]


@pytest.mark.parametrize("family", list(ROPE))
@pytest.mark.parametrize("site", ["q", "k"])
def test_atp_star_equals_its_definition_on_rope_models(family, site):
    model = rope_model(family, torch.float64)
    clean, corrupted = images(2, 32, 32, seed=1).double(), images(2, 32, 32, seed=2).double()
    n_prefix = model.cfg.n_prefix
    positions = [0, n_prefix, n_prefix + 5]  # a prefix token (not rotated) and two rotated patch tokens
    res = atp_heads(model, clean, corrupted, metric(), sites=site, layers=[1], by_pos=True, positions=positions)
    expected = _by_hand(model, clean, corrupted, site, 1, positions)
    assert expected.abs().max() > 1e-3  # the patches do move the pattern
    torch.testing.assert_close(res.values[0, 0] - res.target_score, expected.transpose(1, 2), rtol=1e-9, atol=1e-12)
    # Every position at once (without by_pos) is the same definition with the whole q or k patched.
    res = atp_heads(model, clean, corrupted, metric(), sites=site, layers=[1])
    expected = _by_hand(model, clean, corrupted, site, 1, [slice(None)])[0]
    torch.testing.assert_close(res.values[0, 0] - res.target_score, expected.T, rtol=1e-9, atol=1e-12)

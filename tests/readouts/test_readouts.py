"""The readouts themselves: equality with open_clip's own logits, probe fitting / saving, linear tools through a
readout (direct logit attribution, W_U), attaching without side effects, and one clear error per bad input."""
from __future__ import annotations

import math

import open_clip
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from readout_toys import D_EMBED, build, headless, make_pair, pair, projection
from vit_patching.model.logit_attribution import head_bias, head_contributions
from vit_patching.patching import layer_sweep, target_logit
from vit_patching.patching.caap import caap
from vit_patching.readouts import (
    ClassifierHead, EmbeddingSimilarity, LinearProbe, ZeroShotHead, model_fingerprint, probe_features,
)

NAMES = ["a red circle", "a green square", "a blue cross"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()  # random init, real size
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # a trained CLIP's scale (random init: 1/0.07)
    return model, open_clip.get_tokenizer("ViT-B-32")  # the bundled BPE tokenizer (offline)


def test_from_open_clip_equals_open_clip_logits(clip):
    model, tokenizer = clip
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    head = ZeroShotHead.from_open_clip(model, tokenizer, NAMES)
    with torch.no_grad():
        img, txt, scale = model(x, tokenizer(NAMES))[:3]
        want = scale * img @ txt.T  # open_clip's logits_per_image
        got = head(model.encode_image(x))
    assert head.class_names == NAMES and head.n_classes == 3
    torch.testing.assert_close(got, want, atol=5e-6, rtol=0)  # measured 1.9e-6 (logits up to 5)
    assert want.std() > 0.1


def test_template_ensembling_equals_open_clip_zero_shot_classifier(clip):
    model, tokenizer = clip
    templates = ("a photo of {}.", "a drawing of {}.", "{}")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    head = ZeroShotHead.from_open_clip(model, tokenizer, NAMES, templates=templates)
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, NAMES, templates)  # [d, n_classes]
        img = model.encode_image(x, normalize=True)
        want = model.logit_scale.exp() * img @ weights
        got = head(model.encode_image(x))
    torch.testing.assert_close(got, want, atol=5e-6, rtol=0)  # measured 1.7e-6
    assert (got - ZeroShotHead.from_open_clip(model, tokenizer, NAMES)(model.encode_image(x))).abs().max() > 1e-3


def test_siglip_with_passed_text_embeddings_equals_open_clip_logits():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-SigLIP").eval()  # timm trunk, attention pool; tokenizer on the hub
    text = torch.randint(1, 32000, (3, 64), generator=torch.Generator().manual_seed(5))  # token ids, no tokenizer
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        img, txt, scale, bias = model(x, text)
        want = scale * img @ txt.T + bias
        head = ZeroShotHead(model.encode_text(text), model.logit_scale.exp(), model.logit_bias)
        got = head(model.encode_image(x))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # measured 0 (the same operations)


def test_fit_recovers_a_planted_linear_rule_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(3, 8, generator=g)
    x, x_new = torch.randn(600, 8, generator=g), torch.randn(2000, 8, generator=g)
    probe = LinearProbe.fit_features(x, (x @ w_true.T).argmax(-1), weight_decay=1e-4)
    acc = (probe(x_new[:, None]).argmax(-1) == (x_new @ w_true.T).argmax(-1)).float().mean()
    assert acc >= 0.98, acc  # measured 0.9865 (the planted boundary is sharp, 600 samples)
    # The learned class directions (differences to class 0: softmax is shift-invariant) point along the planted ones.
    cos = F.cosine_similarity(probe.weight[1:] - probe.weight[0], w_true[1:] - w_true[0], dim=-1)
    assert cos.min() > 0.998, cos  # measured 0.9991
    again = LinearProbe.fit_features(x, (x @ w_true.T).argmax(-1), weight_decay=1e-4)
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)


def test_probe_save_load_is_bit_identical_and_refused_for_another_model(tmp_path):
    tm, model = headless()
    imgs = torch.cat(pair(4))
    probe = LinearProbe.fit(model, imgs, torch.arange(8) % 3, features="cls+mean", class_names=NAMES)
    path = probe.save(tmp_path / "probe.safetensors")
    loaded = LinearProbe.load(path)
    assert torch.equal(loaded.weight, probe.weight) and torch.equal(loaded.bias, probe.bias)
    assert (loaded.features, loaded.n_prefix, loaded.class_names, loaded.fingerprint) == (
        "cls+mean", 1, NAMES, model_fingerprint(model))
    assert torch.equal(model.with_readout(loaded)(imgs), model.with_readout(probe)(imgs))
    assert [p.name for p in tmp_path.iterdir()] == ["probe.safetensors"]  # no temporary file left
    other = headless(seed=1)[1]  # same architecture, other weights
    with pytest.raises(ValueError, match=r"readout: expected a probe fitted on this model \(fingerprint [0-9a-f]{16}\),"
                                         r" got a probe for another model"):
        other.with_readout(loaded)
    wider = headless(embed_dim=48)[1]
    with pytest.raises(ValueError, match=r"readout: expected a probe for this model \(\{'d_in': 96, 'n_prefix': 1\}\)"
                                         r", got a probe for another model \(\{'d_in': 64, 'n_prefix': 1\}\)"):
        wider.with_readout(loaded)
    (tmp_path / "bad.safetensors").write_bytes(b"not a probe")
    with pytest.raises(ValueError, match="path: expected a LinearProbe safetensors file"):
        LinearProbe.load(tmp_path / "bad.safetensors")


def test_probe_features_are_timms_normed_cls_and_patch_mean():
    tm, model = headless(reg_tokens=2)
    x = pair()[0]
    with torch.no_grad():
        t = tm.forward_features(x)
    assert model.cfg.n_prefix == 3
    torch.testing.assert_close(probe_features(model, x, "cls+mean"), torch.cat([t[:, 0], t[:, 3:].mean(1)], -1),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("base,kind", [("headless", "zero_shot"), ("headless", "siglip"), ("headless", "probe_cls"),
                                       ("headless", "probe_mean"), ("headless", "probe_cls_mean"),
                                       ("headless", "similarity"), ("projection", "zero_shot"),
                                       ("projection", "siglip")])
def test_direct_logit_attribution_sums_to_the_scores(base, kind):
    tm, model = (headless if base == "headless" else projection)()
    readout, _ = build(kind, tm, model, torch.cat(pair(4)))
    scored = model.with_readout(readout)
    x = pair()[0]
    scores, cache = scored.run_with_cache(x)
    parts = cache.decompose_resid()
    contrib = head_contributions(scored, cache, parts)
    assert contrib.shape == (parts.shape[0], 2, 3 if kind != "similarity" else 2)
    torch.testing.assert_close(contrib.sum(0) + head_bias(scored, cache), scores, atol=5e-6, rtol=0)  # measured 1.6e-6
    assert contrib.abs().amax(dim=(1, 2)).min() > 1e-4  # every component carries part of the score
    # The logit lens: the accumulated residual after the last block, read with the frozen scales, is the scores.
    lens = head_contributions(scored, cache, cache.accumulated_resid()) + head_bias(scored, cache)
    torch.testing.assert_close(lens[-1], scores, atol=5e-6, rtol=0)
    assert (lens[0] - scores).abs().max() > 1e-2  # earlier layers read differently


def test_w_u_is_the_readout_direction_with_the_norm_frozen():
    """score_c = (cls_normed @ W_U[:, c]) / |embedding| + bias_c on a headless CLS model (timm's features)."""
    tm, model = headless()
    text = torch.randn(3, 32, generator=torch.Generator().manual_seed(7))
    scored = model.with_readout(ZeroShotHead(text, 20.0, -1.0))
    x = pair()[0]
    with torch.no_grad():
        cls = tm.forward_features(x)[:, 0]
    want = (cls @ scored.W_U) / cls.norm(dim=-1, keepdim=True) - 1.0
    torch.testing.assert_close(scored(x).detach(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(scored.tokens_to_residual_directions([2, 0]), scored.W_U[:, [2, 0]].T)
    _, proj = projection()
    zs = proj.with_readout(ZeroShotHead(torch.randn(3, D_EMBED), 20.0))
    torch.testing.assert_close(zs.W_U, proj.W_H @ (20.0 * F.normalize(zs.readout.embeddings, dim=-1).T))
    mlp = model.with_readout(nn.Sequential(nn.Linear(32, 4), nn.ReLU(), nn.Linear(4, 2)))
    _, cache = mlp.run_with_cache(x)
    with pytest.raises(ValueError, match=r"the readout \(Sequential module \(2 scores\)\) is not linear: no exact"):
        head_contributions(mlp, cache, cache.decompose_resid())


def test_classifier_head_is_the_default_and_bit_identical():
    _, model = headless()
    _, clf = make_pair(depth=2, num_classes=10)
    x = pair()[0]
    assert isinstance(clf.readout, ClassifierHead) and clf.readout.n_classes == 10
    assert torch.equal(clf.with_readout(ClassifierHead())(x), clf(x))
    with pytest.raises(ValueError, match="readout: ClassifierHead expected a model with a classifier head, got a "
                                         "headless model"):
        model.with_readout(ClassifierHead())
    # A readout on a classifier reads the pooled features, not the class logits.
    zs = clf.with_readout(ZeroShotHead(torch.randn(2, 32), 5.0))
    assert zs(x).shape == (2, 2) and clf(x).shape == (2, 10)


def test_attaching_leaves_the_original_untouched_and_follows_to():
    _, model = headless()
    x = pair()[0]
    before, names = model(x).detach(), list(model.hook_dict)
    scored = model.with_readout(ZeroShotHead(torch.randn(3, 32), 10.0))
    scored.set_use_attn_result(True)
    scored.add_hook("blocks.0.hook_resid_pre", lambda a, hook: a * 0)
    assert torch.equal(model(x), before) and list(model.hook_dict) == names
    assert not model.cfg.use_attn_result and model.cfg.n_classes == 0
    scored.reset_hooks()
    scored.to(torch.float64)
    assert scored.readout.embeddings.dtype == torch.float64 and scored(x.double()).dtype == torch.float64
    model.to(torch.float32)  # the weights are shared: move them back for the other tests' sake
    assert model.readout is None


def test_readout_only_stays_on_for_cls_readouts_and_is_refused_for_patch_means():
    tm, model = headless()
    x = pair()[0]
    for kind in ("zero_shot", "probe_cls"):
        scored = model.with_readout(build(kind, tm, model, torch.cat(pair(4)))[0])
        assert scored.readout_tokens() == 1
        torch.testing.assert_close(scored(x, readout_only=True), scored(x), atol=2e-6, rtol=0)
    mean = model.with_readout(build("probe_mean", tm, model, torch.cat(pair(4)))[0])
    assert mean.readout_tokens() is None
    with pytest.raises(ValueError, match=r"readout_only: .*the readout \(LinearProbe\) reads every token"):
        mean(x, readout_only=True)


def test_bad_input_one_clear_error_each(clip):
    tm, model = headless()
    _, proj = projection()
    x = pair()[0]
    with pytest.raises(ValueError, match=r"text_embeddings: expected embeddings of width 16 \(the model's image "
                                         r"embedding, the projection head output\), got width 32"):
        proj.with_readout(ZeroShotHead(torch.randn(3, 32), 10.0))
    with pytest.raises(ValueError, match=r"reference: expected embeddings of width 32 .*got width 16"):
        model.with_readout(EmbeddingSimilarity(torch.randn(2, 16)))
    with pytest.raises(ValueError, match=r"class_names: expected 3 names \(one per class score\), got 2"):
        ZeroShotHead(torch.randn(3, 16), 10.0, class_names=["a", "b"])
    with pytest.raises((TypeError, ValueError), match="text_embeddings"):  # the tests' jaxtyping hook, or the check
        ZeroShotHead(torch.randn(16), 10.0)
    with pytest.raises(ValueError, match=r"readout: expected a module that reads the model's features \[batch, 32\]"):
        model.with_readout(nn.Linear(16, 3))
    with pytest.raises(TypeError, match="readout"):  # the tests' jaxtyping hook, or the check
        model.with_readout("zero-shot")
    with pytest.raises(ValueError, match=r"model: expected a model that outputs class scores .* got a headless model; "
                                         r"attach a readout: model.with_readout\(ZeroShotHead"):
        layer_sweep(model, x, x, target_logit(0), progress=False)
    with pytest.raises(ValueError, match=r"got a projection-head model \(image embeddings\); attach a readout"):
        caap(proj, x)
    with pytest.raises(ValueError, match=r"templates: expected a non-empty sequence of '\{\}' format strings"):
        ZeroShotHead.from_open_clip(clip[0], clip[1], NAMES, templates=["no placeholder"])
    with pytest.raises(TypeError, match="model: expected an open_clip model with a text tower"):
        ZeroShotHead.from_open_clip(model, clip[1], NAMES)
    with pytest.raises(ValueError, match=r"features: expected one of \['cls', 'mean', 'cls\+mean'\], got 'avg'"):
        LinearProbe.fit(model, x, torch.tensor([0, 1]), features="avg")
    model.add_hook("blocks.0.hook_resid_pre", lambda a, hook: a)
    try:
        with pytest.raises(ValueError, match=r"model: expected no hooks attached .* call model.reset_hooks\(\) first"):
            model.with_readout(ZeroShotHead(torch.randn(3, 32), 10.0))
    finally:
        model.reset_hooks()


def test_weight_processing_is_refused_on_a_model_with_a_readout():
    _, model = headless()
    x = pair()[0]
    scored = model.with_readout(ZeroShotHead(torch.randn(3, 32), 10.0))
    before = scored(x).detach()
    with pytest.raises(ValueError, match=r"process_weights_: expected a model without a readout"):
        scored.process_weights_(fold_ln=True)
    assert torch.equal(scored(x), before)  # nothing changed
    processed = headless()[1].process_weights_(fold_ln=True).with_readout(scored.readout)
    torch.testing.assert_close(processed(x), before, atol=1e-5, rtol=0)


def test_a_readout_that_bypasses_a_folded_head_is_refused():
    _, clf = make_pair(depth=2, num_classes=10)
    clf.process_weights_(fold_ln=True)  # ln_final's affine now lives in the classifier head
    with pytest.raises(ValueError, match=r"readout: expected a model whose final norm was not folded into its head"):
        clf.with_readout(ZeroShotHead(torch.randn(3, 32), 10.0))
    _, proj = projection()
    x = pair()[0]
    head = ZeroShotHead(torch.randn(3, D_EMBED), 10.0)
    want = proj.with_readout(head)(x).detach()
    torch.testing.assert_close(proj.process_weights_(fold_ln=True).with_readout(head)(x), want, atol=1e-5, rtol=0)

"""Feature views of SAE latents: the streamed top-k equals a brute-force selection over all images, the streamed
histograms and firing counts equal a recomputation, the gallery is escaped, self-contained and written atomically,
and the direct effect equals the direct path by hand and, at the last residual stream with the scale frozen, the
exact change of the logits."""
import base64
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching import files  # noqa: E402
from vit_patching.images import to_pixels  # noqa: E402
from vit_patching.readouts import ZeroShotHead  # noqa: E402
from vit_patching.plotting.features import activation_histogram, direct_effect_figure, feature_density  # noqa: E402
from vit_patching.runs.dataset import zoo_images  # noqa: E402
from vit_patching.sae import SAEConfig, make_sae, spliced_saes  # noqa: E402
from vit_patching.sae.effects import latent_direct_effect  # noqa: E402
from vit_patching.sae.gallery import feature_gallery  # noqa: E402
from vit_patching.sae.views import feature_activations  # noqa: E402
from vit_patching.zoo import load_dataset  # noqa: E402

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def model(pair):
    return pair[1]


def _sae(hook=HOOK, seed=0, d_sae=48, **kw):
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig("standard", 32, d_sae, hook_name=hook, **kw))
    with torch.no_grad():  # a spread of biases: some latents fire often, some rarely, some never
        sae.b_enc.copy_(torch.linspace(-3.0, 0.5, d_sae))
        sae.b_enc[:3] = -1e3
        sae.b_dec.copy_(0.1 * torch.randn(32))
    return sae.eval()


@torch.no_grad()
def _all_latents(model, sae, x, batch_size):
    """Every image's latents [n, pos, d_sae], from the same batches as the stream (so the same bits)."""
    name = f"{sae.cfg.hook_name}.sae.hook_sae_acts_post"
    with model.saes([sae], use_error_term=True):
        return torch.cat([model.run_with_cache(x[s:s + batch_size], names_filter=[name])[1][name]
                          for s in range(0, x.shape[0], batch_size)])


def _brute_top(scores, k):
    """Per latent the k (value, index) pairs by value descending, then index ascending: sorted over every image."""
    return [sorted(((float(scores[i, l]), i) for i in range(scores.shape[0])), key=lambda t: (-t[0], t[1]))[:k]
            for l in range(scores.shape[1])]


@pytest.mark.parametrize("tokens", [None, "patches", "cls"])
def test_streamed_top_k_maps_and_histograms_equal_a_brute_force_recomputation(model, tokens):
    sae = _sae()
    # Images of growing contrast: later batches hold larger activations, so the histograms' bins widen and merge.
    x = images(11, seed=3) * torch.linspace(0.3, 3.0, 11)[:, None, None, None]
    labels = torch.arange(11) % 10
    acts = feature_activations(model, sae, x, k=4, tokens=tokens, labels=labels, batch_size=3, bins=8,
                               keep_images=True)
    lat = _all_latents(model, sae, x, 3)
    n_prefix = model.cfg.n_prefix
    counted = {None: lat, "patches": lat[:, n_prefix:], "cls": lat[:, :1]}[tokens]
    brute = _brute_top(counted.amax(1), 4)
    assert acts.latents == list(range(48)) and acts.n_images == 11 and not spliced_saes(model)
    assert acts.prefix_labels == ("CLS",)
    assert acts.top_indices.tolist() == [[i for _, i in row] for row in brute]
    assert acts.top_values.tolist() == [[v for v, _ in row] for row in brute]
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    pixels = (to_pixels(x, model.cfg.data_config) * 255).round().to(torch.uint8)
    for l in (0, 20, 47):
        for j, i in enumerate(acts.top_indices[l].tolist()):
            assert torch.equal(acts.top_maps[l, j], lat[i, n_prefix:, l].reshape(4, 4))
            assert torch.equal(acts.top_prefix[l, j], lat[i, :n_prefix, l])
            assert torch.equal(acts.thumbnails[l, j], pixels[i])
            assert acts.top_labels[l, j] == labels[i] and acts.top_predictions[l, j] == predicted[i]
            assert acts.top_names[l][j] == f"image {i}"
    # firing counts and histograms: the streamed ones equal numpy's over all counted activations, final edges
    flat = counted.reshape(-1, 48)
    assert acts.n_tokens == flat.shape[0]
    assert torch.equal(acts.fire_count, (flat > 0).sum(0))
    assert 0 < int((acts.fire_count == 0).sum()) < 48  # dead and live latents both exercised
    merged = 0
    for l in range(48):
        positive = flat[:, l][flat[:, l] > 0].double().numpy()
        if positive.size == 0:
            assert acts.hist_width[l] == 0 and acts.hist_counts[l].sum() == 0
            continue
        edges = acts.hist_edges(l).numpy()
        assert edges[-1] > positive.max() >= edges[-1] / 2  # power-of-two width, at least half the range in use
        assert acts.hist_counts[l].tolist() == np.histogram(positive, bins=edges)[0].tolist()
        first_batch = flat[: 3 * counted.shape[1], l]
        merged += int(first_batch.max() * 2 <= positive.max())
    assert merged > 0  # some latents' bins were widened during the stream


class _Rounded(torch.nn.Module):
    """A foreign SAE whose latents are rounded to quarters: equal inputs tie exactly, whatever the batching."""

    def encode(self, x):
        return torch.relu(torch.round(x[..., :8] * 4) / 4)

    def decode(self, z):
        return torch.zeros(*z.shape[:-1], 32)


def test_ties_go_to_the_earlier_image_whatever_the_batching(model):
    x = images(1, seed=5).expand(5, -1, -1, -1).contiguous()  # five copies: every latent ties five ways
    sae = _Rounded()
    model.add_sae(sae, hook_name=HOOK, use_error_term=True)
    try:
        for source, batch_size in ((x, 2), (x, 5), ([x[:2], x[2:]], 1), ([(x[i:i + 1], None) for i in range(5)], 1)):
            acts = feature_activations(model, sae, source, k=3, batch_size=batch_size)
            assert (acts.top_values[:, 0] > 0).sum() >= 4
            assert acts.top_indices.tolist() == [[0, 1, 2]] * 8
            assert torch.equal(acts.top_values, acts.top_values[:, :1].expand(-1, 3))
    finally:
        model.reset_saes()


def test_an_image_set_streams_like_the_same_tensor_with_its_names_and_labels():
    model = make_pair(img_size=64, patch_size=16)[1]  # the zoo's 64-pixel images, a 4 x 4 grid
    sae = _sae()
    batch = load_dataset("shapes", n=6, seed=2)
    streamed = feature_activations(model, sae, zoo_images("shapes", n=6, seed=2), k=3, batch_size=4, latents=[5, 40])
    direct = feature_activations(model, sae, batch.images, labels=batch.labels, k=3, batch_size=4, latents=[5, 40])
    assert torch.equal(streamed.top_indices, direct.top_indices)
    assert torch.equal(streamed.top_values, direct.top_values)
    assert torch.equal(streamed.top_labels, direct.top_labels)
    assert streamed.top_names == [[f"shapes-{i:04d}" for i in row] for row in direct.top_indices.tolist()]
    assert torch.equal(streamed.hist_counts, direct.hist_counts)
    # a range of the set: images [2, 6), with the set's indices and names
    part = feature_activations(model, sae, zoo_images("shapes", n=6, seed=2), k=3, batch_size=3, latents=[5, 40],
                               span=(2, 6))
    brute = _brute_top(_all_latents(model, sae, batch.images[2:], 4)[..., [5, 40]].amax(1), 3)
    assert part.top_indices.tolist() == [[i + 2 for _, i in row] for row in brute] and part.n_images == 4
    assert part.top_names == [[f"shapes-{i:04d}" for i in row] for row in part.top_indices.tolist()]
    with pytest.raises(ValueError, match="span: expected \\(start, stop\\) with 0 <= start < stop <= 6"):
        feature_activations(model, sae, zoo_images("shapes", n=6, seed=2), span=(4, 7))


class _Foreign(torch.nn.Module):
    """Not one of this project's SAEs: encode/decode only, no cfg, no d_sae."""

    def __init__(self, sae):
        super().__init__()
        self.inner = sae

    def encode(self, x):
        return self.inner.encode(x)

    def decode(self, z):
        return self.inner.decode(z)


def test_a_foreign_sae_spliced_already_is_used_where_it_is(model):
    sae, x = _sae(), images(5, seed=8)
    ours = feature_activations(model, sae, x, k=2, batch_size=2)
    foreign = _Foreign(sae)
    with pytest.raises(TypeError, match="sae: expected an SAE that states its hook"):
        feature_activations(model, foreign, x)
    model.add_sae(foreign, hook_name=HOOK)
    try:
        theirs = feature_activations(model, foreign, x, k=2, batch_size=2)
        with pytest.raises(TypeError, match="sae: expected an SAE that states d_sae"):
            feature_activations(model, foreign, x, latents=[1])
        assert list(spliced_saes(model)) == [HOOK]  # left spliced, as it was
    finally:
        model.reset_saes()
    assert theirs.latents == list(range(48)) and theirs.hook_name == HOOK
    assert torch.equal(theirs.top_indices, ours.top_indices) and torch.equal(theirs.top_values, ours.top_values)


def test_fewer_images_than_k_and_an_sae_on_patches_only(model):
    sae = _sae(positions="patches")
    acts = feature_activations(model, sae, images(2), k=5, latents=[45])
    assert acts.top_indices.shape == (1, 2) and acts.top_prefix is None and acts.top_maps.shape == (1, 2, 4, 4)
    assert acts.n_tokens == 2 * 16


def _pngs(text):
    return [Image.open(io.BytesIO(base64.b64decode(chunk.split("'")[0])))
            for chunk in text.split("data:image/png;base64,")[1:]]


def test_the_gallery_escapes_names_embeds_images_and_draws_the_activation(model, tmp_path):
    sae = _sae()
    x = images(6, seed=7)
    acts = feature_activations(model, sae, x, k=3, latents=[0, 20, 47], keep_images=True, labels=torch.arange(6))
    evil = [f"<script>alert({i})</script>" for i in range(10)]
    effects = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    out = feature_gallery(acts, tmp_path / "g.html", title="<b>features</b>", class_names=evil, effects=effects)
    text = out.read_text(encoding="utf-8")
    for r in range(3):  # the class each latent raises most is listed first, escaped
        c = int(effects[r].argmax())
        assert f"raises: &lt;script&gt;alert({c})&lt;/script&gt; ({float(effects[r, c]):+.3g})" in text
    assert text.count("CLS ") == 6  # the CLS activation of each image shown
    assert "<script" not in text and "&lt;script&gt;alert(" in text and "&lt;b&gt;features&lt;/b&gt;" in text
    assert text.count("<section") == 3 and "http" not in text
    assert float(acts.top_values[0].max()) == 0 and "it fires on none of these images" in text  # latent 0: dead
    # the inline histograms: one bar per non-empty bin of each live latent, the fullest bin full height
    sections = text.split("<section")[1:]
    for r, section in enumerate(sections):
        assert section.count("<rect") == int((acts.hist_counts[r] > 0).sum())
    assert "height='40.00'" in sections[2]
    pngs = _pngs(text)
    assert len(pngs) == 6 and all(p.size == (32, 32) for p in pngs)
    # the first image of latent 20: full blue at its top patch, where the activation is the latent's peak
    r, j = acts.row(20), 0
    peak_patch = int(acts.top_maps[r, j].flatten().argmax())
    row, col = divmod(peak_patch, 4)
    thumb = acts.thumbnails[r, j].float()
    grey = (thumb * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0).round()
    y, xx = row * 8 + 3, col * 8 + 3
    expected = [round(0.3 * float(grey[y, xx]) / 255 * 255 + 0.7 * c * 255) for c in (0, 0, 1)]
    assert list(np.asarray(pngs[0].convert("RGB"))[y, xx]) == pytest.approx(expected, abs=1)


def test_the_gallery_is_written_atomically(model, tmp_path, monkeypatch):
    acts = feature_activations(model, _sae(), images(3), k=2, latents=[47], keep_images=True)
    path = tmp_path / "g.html"
    path.write_text("old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        feature_gallery(acts, path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["g.html"]


def test_bad_arguments_are_refused_by_name_and_leave_the_model_unchanged(model, tmp_path):
    sae, x = _sae(), images(2)
    cases = [
        (dict(k=0), "k: expected a positive int"),
        (dict(latents=[48]), "latents: expected latent indices in \\[0, 48\\)"),
        (dict(tokens="register"), "tokens: expected one of"),
        (dict(bins=0), "bins: expected a positive int"),
        (dict(batch_size=0), "batch_size: expected a positive int"),
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels: expected a tensor \\[2\\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            feature_activations(model, sae, x, **kwargs)
    with pytest.raises(ValueError, match="labels: expected one label per image \\(\\[2\\]\\) with each batch"):
        feature_activations(model, sae, [(x, torch.zeros(3, dtype=torch.long))])
    with pytest.raises(ValueError, match="images: expected normalised images"):
        feature_activations(model, sae, x[0])
    with pytest.raises(ValueError, match="tokens: expected 'all' or 'patches'"):
        feature_activations(model, _sae(positions="patches"), x, tokens="cls")
    with pytest.raises(TypeError, match="keep_images"):  # beartype or check_bool, whichever checks first
        feature_activations(model, sae, x, keep_images="yes")
    with model.saes([_sae(seed=1)]), pytest.raises(ValueError, match="sae: another SAE is spliced"):
        feature_activations(model, sae, x)

    def broken():
        yield x
        raise RuntimeError("the loader failed")

    with pytest.raises(RuntimeError, match="the loader failed"):
        feature_activations(model, sae, broken())
    assert not spliced_saes(model) and not any(h.fwd_hooks for h in model.hook_dict.values())
    acts = feature_activations(model, sae, x, k=1, latents=[3])
    with pytest.raises(ValueError, match="acts: expected feature activations with thumbnails"):
        feature_gallery(acts, tmp_path / "g.html")
    with pytest.raises(ValueError, match="latent: expected one of the tracked latents"):
        acts.row(4)
    with pytest.raises(ValueError, match="sae: expected an SAE at a hook that writes the residual stream"):
        latent_direct_effect(model, make_sae(SAEConfig("standard", 32, 8, hook_name="blocks.0.attn.hook_z",
                                                       reshape_activations="hook_z")), x)
    with pytest.raises(ValueError, match="positions: expected 'all' or a token index the SAE reads \\(1 to 16\\)"):
        latent_direct_effect(model, _sae(positions="patches"), x, positions=0)
    with pytest.raises(ValueError, match="latents: expected latent indices"):
        latent_direct_effect(model, sae, x, latents=[-1])
    attention_pooled = make_pair(global_pool="map")[1]
    with pytest.raises(ValueError, match="model: expected CLS or average pooling \\(linear\\), got global_pool='map'"):
        latent_direct_effect(attention_pooled, _sae("blocks.1.hook_resid_post"), x)
    assert not spliced_saes(model)


def test_the_direct_effect_equals_the_direct_path_by_hand(pair):
    timm_model, model = pair
    sae = _sae("blocks.0.hook_resid_pre")
    x = images(3, seed=4)
    effect = latent_direct_effect(model, sae, x, latents=[2, 9], batch_size=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=["ln_final.hook_scale"])
        scale = cache["ln_final.hook_scale"][:, 0]  # [batch, 1]: the CLS token's, which the head reads
        for row, latent in enumerate([2, 9]):
            d = sae.W_dec[latent]  # timm's final LayerNorm linearised at its frozen scale, then timm's head
            by_hand = ((d - d.mean()) / scale) * timm_model.norm.weight @ timm_model.head.weight.T
            torch.testing.assert_close(effect[row], by_hand, atol=2e-6, rtol=0)
        # a patch token has no direct path into a CLS-pooled head: exactly no effect
        assert torch.equal(latent_direct_effect(model, sae, x, latents=[2], positions=5), torch.zeros(1, 3, 10))
        assert torch.equal(latent_direct_effect(model, sae, x, latents=[2], positions=0), effect[:1])


@pytest.mark.parametrize("kwargs, scales, readout", [
    ({}, ["ln_final.hook_scale"], False),
    (dict(global_pool="avg", fc_norm=True), ["fc_norm.hook_scale"], False),
    ({}, ["ln_final.hook_scale", "readout.hook_scale"], True),  # a normalising zero-shot readout: its scale frozen too
])
def test_at_the_last_residual_stream_the_direct_effect_is_the_exact_logit_change_with_the_scale_frozen(
        kwargs, scales, readout):
    model = make_pair(**kwargs)[1]
    if readout:
        model = model.with_readout(ZeroShotHead(torch.randn(5, model.feature_width(),
                                                            generator=torch.Generator().manual_seed(0)), 10.0))
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    sae = _sae(hook)
    x = images(2, seed=6)
    effect = latent_direct_effect(model, sae, x, latents=[4, 11])
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=scales)
        freeze = [(name, lambda s, hook: cache[hook.name]) for name in scales]
        base = model.run_with_hooks(x, fwd_hooks=freeze)
        for row, latent in enumerate([4, 11]):
            add = (hook, lambda r, hook, d=sae.W_dec[latent]: r + d)  # activation 1 at every token
            change = model.run_with_hooks(x, fwd_hooks=[add, *freeze]) - base
            assert change.abs().max() > 0.05
            torch.testing.assert_close(effect[row], change, atol=1e-6, rtol=0)


def test_the_figures_show_the_counts_and_the_top_classes(model):
    acts = feature_activations(model, _sae(), images(4), k=2, bins=6)
    l = int(acts.fire_count.argmax())
    fig = acts.histogram_figure(l)
    w = float(acts.hist_width[l])
    assert list(fig.data[0].y) == acts.hist_counts[l].tolist() and fig.data[0].x[0] == w / 2
    density = acts.density_figure()
    freq = acts.frequency.numpy()
    assert density.data[0].meta["dead"] == int((freq == 0).sum())
    assert list(density.data[0].y) == np.histogram(np.log10(freq[freq > 0]), bins=40)[0].tolist()
    bars = direct_effect_figure(torch.tensor([0.5, -1.0, 2.0, 0.1, -0.2]), ["a", "b", "<c>", "d", "e"], top=2)
    assert bars.data[0].meta["classes"] == [2, 0, 4, 1]
    assert list(bars.data[0].y) == ["&lt;c&gt;", "a", "e", "b"]
    blue, red = bars.data[0].marker.color[0], bars.data[0].marker.color[-1]
    assert blue != red and "5, 48, 97" in blue.replace("rgb(", "").replace(")", "")
    with pytest.raises(ValueError, match="width: expected a finite bin width >= 0"):
        activation_histogram(torch.ones(3), -1.0)
    with pytest.raises(ValueError, match="frequency: expected firing frequencies in \\[0, 1\\]"):
        feature_density(torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="class_names: expected 5 labels"):
        direct_effect_figure(torch.zeros(5), ["a"])


def test_the_gallery_overlay_draws_a_map_as_it_is_on_a_given_scale():
    from vit_patching.runs.gallery import overlay_png

    grey = torch.full((3, 2, 2), 128, dtype=torch.uint8)
    png = overlay_png(grey, torch.tensor([[2.0, 0.0], [1.0, 4.0]]), alpha=1.0, centre=False, scale=2.0)
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))
    # value / scale: 1 full blue, 0 white (no median centring), 0.5 half blue, 2 clipped to full blue
    assert rgb.reshape(4, 3).tolist() == [[0, 0, 255], [255, 255, 255], [128, 128, 255], [0, 0, 255]]
    with pytest.raises(ValueError, match="scale: expected a finite number > 0, got 0"):
        overlay_png(grey, torch.ones(2, 2), centre=False, scale=0)

"""SAELens's on-disk format: folders written by hand from the documented layout load and encode with the documented
formulas (written out here independently); save -> load round-trips bit for bit; bad folders are refused naming
the field."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vit_patching.sae import SAEConfig, load_saelens, make_sae, save_saelens

D_IN, D_SAE, K = 12, 40, 5
HOOK = "blocks.1.hook_resid_post"


def _tensors(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5, "W_dec": torch.randn(D_SAE, D_IN, generator=g),
         "b_dec": torch.randn(D_IN, generator=g)}
    if arch == "gated":
        t.update(b_gate=0.3 * torch.randn(D_SAE, generator=g), b_mag=0.3 * torch.randn(D_SAE, generator=g),
                 r_mag=0.3 * torch.randn(D_SAE, generator=g))
    else:
        t["b_enc"] = 0.3 * torch.randn(D_SAE, generator=g)
    if arch == "jumprelu":
        t["threshold"] = 0.5 * torch.rand(D_SAE, generator=g)
    return t


def _write(folder, arch: str, cfg_extra: dict | None = None, tensors: dict | None = None, **cfg):
    """A folder as SAELens 6 writes it: cfg.json (hook name under metadata) + sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    c = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
         "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
         "metadata": {"hook_name": HOOK, "model_name": "toy", "sae_lens_version": "6.5.0"}}
    if arch == "topk":
        c["k"] = K
    c.update(cfg)
    c.update(cfg_extra or {})
    (folder / "cfg.json").write_text(json.dumps(c))
    t = _tensors(arch) if tensors is None else tensors
    save_file(t, str(folder / "sae_weights.safetensors"))
    return t


def _relu(h):
    return torch.where(h > 0, h, torch.zeros_like(h))


def documented_latents(arch: str, t: dict, x: torch.Tensor, b_dec_to_input: bool = True, k: int = K):
    """SAELens's encoder formulas, written out."""
    xc = x - t["b_dec"] if b_dec_to_input else x
    if arch == "gated":
        gate = xc @ t["W_enc"] + t["b_gate"] > 0
        mag = _relu(xc @ (t["W_enc"] * torch.exp(t["r_mag"])) + t["b_mag"])
        return torch.where(gate, mag, torch.zeros_like(mag))
    h = xc @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        return _relu(h)
    if arch == "jumprelu":
        return torch.where(h > t["threshold"], _relu(h), torch.zeros_like(h))
    kth = h.sort(dim=-1, descending=True).values[..., k - 1 : k]  # topk: the k largest, then ReLU
    return torch.where(h >= kth, _relu(h), torch.zeros_like(h))


X = torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
@pytest.mark.parametrize("b_dec_to_input", [True, False])
def test_a_hand_written_folder_gives_the_documented_latents(tmp_path, arch, b_dec_to_input):
    t = _write(tmp_path / arch, arch, apply_b_dec_to_input=b_dec_to_input)
    sae = load_saelens(tmp_path / arch)
    assert type(sae).__name__ == {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE",
                                  "gated": "GatedSAE"}[arch]
    assert (sae.d_in, sae.d_sae, sae.cfg.hook_name, sae.cfg.apply_b_dec_to_input) == (D_IN, D_SAE, HOOK,
                                                                                       b_dec_to_input)
    with torch.no_grad():
        latents = sae.encode(X)
        expected = documented_latents(arch, t, X, b_dec_to_input)
        assert torch.equal(latents, expected)  # the same float operations: identical
        assert (latents > 0).any() and (latents == 0).any()  # a sparse code, not all-on or all-off
        if arch == "topk":
            assert int((latents != 0).sum(-1).max()) <= K
        assert torch.equal(sae.decode(latents), latents @ t["W_dec"] + t["b_dec"])
        assert torch.equal(sae(X), latents @ t["W_dec"] + t["b_dec"])


def test_normalisations_and_hook_z_reshaping_follow_saelens(tmp_path):
    t = _write(tmp_path / "c", "standard", normalize_activations="constant_norm_rescale")
    sae = load_saelens(tmp_path / "c")
    with torch.no_grad():
        coeff = D_IN ** 0.5 / X.norm(dim=-1, keepdim=True)
        lat = documented_latents("standard", t, X * coeff)
        assert torch.equal(sae.encode(X), lat)
        assert torch.equal(sae.decode(lat), (lat @ t["W_dec"] + t["b_dec"]) / coeff)
    t = _write(tmp_path / "l", "standard", normalize_activations="layer_norm")
    sae = load_saelens(tmp_path / "l")
    with torch.no_grad():
        mu = X.mean(-1, keepdim=True)
        std = (X - mu).std(-1, keepdim=True)  # unbiased, as torch's default and SAELens
        lat = documented_latents("standard", t, (X - mu) / (std + 1e-5))
        assert torch.equal(sae.encode(X), lat)
        assert torch.equal(sae.decode(lat), (lat @ t["W_dec"] + t["b_dec"]) * std + mu)
    t = _write(tmp_path / "z", "jumprelu", reshape_activations="hook_z",
               metadata={"hook_name": "blocks.0.attn.hook_z", "sae_lens_version": "6.5.0"})
    sae = load_saelens(tmp_path / "z")
    z = X.reshape(3, 7, 3, 4)  # [batch, pos, head, d_head] with head * d_head = d_in
    with torch.no_grad():
        lat = documented_latents("jumprelu", t, X)
        assert torch.equal(sae.encode(z), lat)
        assert torch.equal(sae.decode(lat), (lat @ t["W_dec"] + t["b_dec"]).reshape(3, 7, 3, 4))


def test_top_k_rescaled_by_decoder_norms(tmp_path):
    """Newer SAELens top-k: pre-activations times ||W_dec[i]|| before the top-k, latents divided by it to decode."""
    t = _write(tmp_path / "r", "topk", rescale_acts_by_decoder_norm=True)
    sae = load_saelens(tmp_path / "r")
    norms = t["W_dec"].norm(dim=-1)
    with torch.no_grad():
        h = ((X - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
        kth = h.sort(dim=-1, descending=True).values[..., K - 1 : K]
        lat = torch.where(h >= kth, _relu(h), torch.zeros_like(h))
        assert torch.equal(sae.encode(X), lat)
        assert not torch.equal(lat, documented_latents("topk", t, X))  # the rescaling changes the code
        torch.testing.assert_close(sae.decode(lat), (lat / norms) @ t["W_dec"] + t["b_dec"], atol=0, rtol=0)
    save_saelens(sae, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["rescale_acts_by_decoder_norm"] is True
    assert load_saelens(tmp_path / "again").cfg.rescale_acts_by_decoder_norm
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm: expected False for a 'standard' SAE"):
        _write(tmp_path / "s", "standard", rescale_acts_by_decoder_norm=True)
        load_saelens(tmp_path / "s")


def test_pre_6_configs_load(tmp_path):
    """SAELens < 6: hook name at top level (or as hook_point), top-k's k in activation_fn_kwargs, a bool
    normalize_activations, dtype as 'torch.float32'."""
    t = _write(tmp_path / "old", "topk", metadata=None, k=None, hook_name=HOOK, activation_fn_kwargs={"k": 3},
               normalize_activations=False, dtype="torch.float32")
    sae = load_saelens(tmp_path / "old")
    assert (sae.cfg.k, sae.cfg.hook_name, sae.cfg.normalize_activations) == (3, HOOK, "none")
    with torch.no_grad():
        assert torch.equal(sae.encode(X), documented_latents("topk", t, X, k=3))
    _write(tmp_path / "older", "standard", metadata=None, hook_point="blocks.0.hook_resid_pre")
    assert load_saelens(tmp_path / "older").cfg.hook_name == "blocks.0.hook_resid_pre"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_save_load_round_trips_bit_for_bit(tmp_path, arch):
    _write(tmp_path / "a", arch, positions="patches")
    sae = load_saelens(tmp_path / "a")
    save_saelens(sae, tmp_path / "b")
    again = load_saelens(tmp_path / "b")
    assert again.cfg == sae.cfg and again.cfg.positions == "patches"
    for name, p in sae.state_dict().items():
        assert p.dtype == again.state_dict()[name].dtype and torch.equal(p, again.state_dict()[name])
    save_saelens(again, tmp_path / "c")
    for f in ("cfg.json", "sae_weights.safetensors"):
        assert (tmp_path / "b" / f).read_bytes() == (tmp_path / "c" / f).read_bytes()
    written = json.loads((tmp_path / "b" / "cfg.json").read_text())
    assert written["metadata"] == {"hook_name": HOOK, "model_name": "toy", "sae_lens_version": "6.5.0"}
    assert written["architecture"] == arch and written.get("k") == (K if arch == "topk" else None)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_a_new_sae_saves_in_the_saelens_6_layout(tmp_path):
    sae = make_sae(SAEConfig("jumprelu", D_IN, D_SAE, hook_name=HOOK, dtype="float64"))
    save_saelens(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg == {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float64", "device": "cpu",
                   "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
                   "positions": "all", "metadata": {"hook_name": HOOK, "sae_lens_version": "6.0.0"}}
    again = load_saelens(tmp_path / "s")
    assert again.W_enc.dtype == torch.float64 and torch.equal(again.W_enc, sae.W_enc)


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("case, match", [
    ("no_cfg", "without cfg.json"),
    ("no_weights", "without sae_weights.safetensors"),
    ("unknown_arch", "architecture: expected one of .*'matryoshka'"),
    ("missing_d_sae", "d_sae: expected a positive int"),
    ("topk_without_k", "k: expected the number of latents"),
    ("missing_W_dec", r"W_dec: expected a tensor of shape \[40, 12\]"),
    ("gated_missing_r_mag", r"r_mag: expected a tensor of shape \[40\]"),
    ("wrong_shape_b_enc", r"b_enc: expected shape \[40\] .*got \[39\]"),
    ("extra_tensor", r"got also \['scaling_factor'\]"),
    ("bad_json", "cfg.json: expected a readable JSON file"),
    ("bad_normalisation", "normalize_activations: expected one of"),
])
def test_bad_folders_are_refused_naming_the_field(tmp_path, case, match):
    f = tmp_path / case
    arch = {"topk_without_k": "topk", "gated_missing_r_mag": "gated"}.get(case, "standard")
    t = _tensors(arch)
    if case == "missing_W_dec":
        t = _without(t, "W_dec")
    if case == "gated_missing_r_mag":
        t = _without(t, "r_mag")
    if case == "wrong_shape_b_enc":
        t["b_enc"] = t["b_enc"][:-1]
    if case == "extra_tensor":
        t["scaling_factor"] = torch.ones(D_SAE)
    extra = {"unknown_arch": {"architecture": "matryoshka"}, "topk_without_k": {"k": None},
             "bad_normalisation": {"normalize_activations": "rms"}}.get(case)
    _write(f, arch, extra, tensors=t)
    if case == "missing_d_sae":
        (f / "cfg.json").write_text(json.dumps(_without(json.loads((f / "cfg.json").read_text()), "d_sae")))
    if case == "no_cfg":
        (f / "cfg.json").unlink()
    if case == "no_weights":
        (f / "sae_weights.safetensors").unlink()
    if case == "bad_json":
        (f / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=match):
        load_saelens(f)


def test_save_refuses_a_file_as_folder_and_a_foreign_module(tmp_path):
    (tmp_path / "file").write_text("x")
    sae = make_sae(SAEConfig("standard", D_IN, D_SAE, hook_name=HOOK))
    with pytest.raises(ValueError, match="folder: expected a folder"):
        save_saelens(sae, tmp_path / "file")
    with pytest.raises(TypeError, match="sae: expected a vit_patching SAE"):
        save_saelens(torch.nn.Linear(2, 2), tmp_path / "lin")
    assert not (tmp_path / "lin").exists()

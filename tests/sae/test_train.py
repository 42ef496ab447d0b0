"""train_sae / fit_sae: planted sparse directions recovered, resume = uninterrupted bit for bit, dead latents
resampled, the files of a run, and bad arguments refused before any compute."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.sae import JumpReLUSAE, StandardSAE, TopKSAE, load_saelens  # noqa: E402
from vit_patching.sae.activations import ModelActivations, TensorActivations, image_set, tensor_images  # noqa: E402
from vit_patching.sae.train import CHECKPOINT_FILE, TrainSettings, fit_sae, train_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    return make_pair()[1]


def _planted(n=8192, d=32, n_dirs=16, p=0.1):
    """Tokens that are sparse non-negative combinations of 16 orthonormal directions (about 1.6 active each)."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :n_dirs].T
    active = torch.rand(n, n_dirs, generator=g) < p
    return (active * (1 + torch.rand(n, n_dirs, generator=g))) @ dirs, dirs


PLANTED = {  # architecture -> settings that fit the planted data (magnitudes 1-2, about 1.6 active per token)
    "topk": dict(k=4),
    "batchtopk": dict(k=2, lr=1e-2),
    "relu": dict(l1_coefficient=1.0),
    "jumprelu": dict(l0_coefficient=0.3, init_threshold=0.5, bandwidth=0.2),
}


@pytest.mark.parametrize("arch", list(PLANTED))
def test_training_recovers_every_planted_direction(arch):
    acts, dirs = _planted()
    settings = TrainSettings(arch, **{"d_sae": 32, "epochs": 6, "batch_size": 256, "lr": 5e-3, "resample_every": 40,
                                      **PLANTED[arch]})
    sae, history = fit_sae(TensorActivations(acts, chunk_tokens=2048), settings, progress=False)
    w = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    assert (dirs @ w.T).max(-1).values.min() >= 0.99  # every planted direction has a latent within cos 0.99
    assert len(history) == 6 * 4 * 8  # epochs x chunks x batches of 256 tokens
    expected = {"topk": TopKSAE, "batchtopk": JumpReLUSAE, "relu": StandardSAE, "jumprelu": JumpReLUSAE}[arch]
    assert type(sae) is expected
    if arch == "batchtopk":  # saved as JumpReLU: one calibrated threshold for every latent
        assert sae.threshold.min() == sae.threshold.max() > 0


def test_a_dead_latent_is_resampled_and_fires_again():
    acts, _ = _planted(n=2048)
    start = fit_sae(TensorActivations(acts), TrainSettings("relu", d_sae=32, epochs=1, batch_size=256,
                                                           l1_coefficient=1.0), progress=False)[0]
    with torch.no_grad():  # latent 5 can never fire: no input reaches a pre-activation above -100
        start.W_enc[:, 5] = 0.0
        start.b_enc[5] = -100.0
    settings = TrainSettings("relu", d_sae=32, epochs=1, batch_size=256, l1_coefficient=1.0, seed=1)
    kept, _ = fit_sae(TensorActivations(acts), settings, init=start, progress=False)
    assert int((kept.encode(acts)[:, 5] > 0).sum()) == 0  # without resampling it stays dead
    revived, _ = fit_sae(TensorActivations(acts), TrainSettings(**{**settings.__dict__, "resample_every": 4}),
                         init=start, progress=False)
    assert int((revived.encode(acts)[:, 5] > 0).sum()) > 0


@pytest.mark.parametrize("arch, extra", [("topk", {}), ("batchtopk", {}),
                                         ("topk", dict(aux_k=8, dead_tokens_threshold=64, resample_every=None))])
def test_a_killed_run_resumes_to_the_same_weights_bit_for_bit(model, tmp_path, arch, extra):
    data = images(24, seed=3)
    kw = dict(architecture=arch, d_sae=64, k=4, batch_size=64, chunk_images=8, forward_batch=4, epochs=2,
              checkpoint_every=2, resample_every=3, positions="patches", progress=False)
    kw.update(extra)  # AuxK: the dead-token clock is in the checkpoint
    whole = train_sae(model, HOOK, data, out_dir=tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt):
        train_sae(model, HOOK, data, out_dir=tmp_path / "killed", stop_after=5, **kw)
    assert (tmp_path / "killed" / CHECKPOINT_FILE).is_file()  # the step-4 checkpoint
    resumed = train_sae(model, HOOK, data, out_dir=tmp_path / "killed", **kw)
    for (name, p), q in zip(whole.sae.named_parameters(), resumed.sae.parameters()):
        assert torch.equal(p, q), name
    assert resumed.history == whole.history
    assert resumed.metrics == whole.metrics


def test_a_run_folder_is_a_saelens_folder_with_metrics_and_settings(model, tmp_path):
    data = images(8, seed=3)
    res = train_sae(model, HOOK, data, out_dir=tmp_path, d_sae=64, k=4, batch_size=64, chunk_images=4,
                    positions="patches", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "metrics.json", "sae_weights.safetensors",
                                                          "training.json"]
    again = load_saelens(tmp_path)
    assert again.cfg.hook_name == HOOK and again.cfg.positions == "patches" and again.cfg.k == 4
    for p, q in zip(res.sae.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert json.loads((tmp_path / "metrics.json").read_text()) == res.metrics
    training = json.loads((tmp_path / "training.json").read_text())
    assert training["settings"]["d_sae"] == 64 and training["steps"] == len(res.history) == 2 * 1  # 2 chunks of 256 tokens
    assert training["data"]["n_images"] == 8


def test_chunks_hold_the_hook_activations_of_their_images(model):
    data = images(5, seed=4)
    source = ModelActivations(model, HOOK, tensor_images(data), "cls", chunk_images=2, forward_batch=2)
    with torch.no_grad():
        _, cache = model.run_with_cache(data, names_filter=[HOOK])
    assert source.n_chunks == 3
    got = torch.cat([source.chunk(i) for i in range(3)])
    assert torch.equal(got, cache[HOOK][:, 0])
    # the same images given as a list of batches that do not line up with the chunks
    listed = ModelActivations(model, HOOK, image_set([data[:3], data[3:4], data[4:]]), "cls", chunk_images=2,
                              forward_batch=2)
    assert torch.equal(torch.cat([listed.chunk(i) for i in range(3)]), got)


def _no_forward(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("kwargs, message", [
    (dict(hook="blocks.9.hook_resid_pre"), "hook: expected a hook name"),
    (dict(architecture="gated"), "architecture: expected one of"),
    (dict(k=0), "k: expected a positive int"),
    (dict(positions="middle"), "positions: expected one of"),
    (dict(lr=-1.0), "lr: expected a finite number > 0"),
    (dict(data=5), "data: expected a zoo data set name"),
    (dict(data="shapes"), "n_images: expected a positive int"),
    (dict(data="no/such/folder"), "data: expected a zoo data set"),
    (dict(data=iter([torch.zeros(2, 3, 32, 32)])), "data: expected .* one-pass iterator"),
    (dict(data=[torch.zeros(2, 3, 32)]), "data: expected image batches"),
    (dict(stop_after=0), "stop_after: expected a positive int"),
    (dict(rank=2, world_size=2), "rank, world_size: expected 0 <= rank < world_size"),
    (dict(batch_sise=3), "batch_sise: not a training setting"),
])
def test_bad_arguments_are_refused_naming_them_before_any_forward(model, kwargs, message):
    args = {"hook": HOOK, "data": images(2)}
    args.update(kwargs)
    calls, handle = _no_forward(model)
    try:
        with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
            train_sae(model, args.pop("hook"), args.pop("data"), progress=False, **args)
    finally:
        handle.remove()
    assert not calls

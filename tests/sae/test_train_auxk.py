"""AuxK (Gao et al. 2024) in top-k / BatchTopK training: the term equals a hand computation, nothing changes until a
latent has been dead for ``dead_tokens_threshold`` tokens, and on planted directions it revives latents that plain
top-k leaves dead."""
import pytest
import torch

from vit_patching.sae import SAEConfig, make_sae
from vit_patching.sae.activations import TensorActivations
from vit_patching.sae.objectives import AuxK, topk_objective
from vit_patching.sae.train import TrainSettings, fit_sae


def _tiny_sae():
    """d_in 2, d_sae 4, k 1, b_enc = b_dec = 0. Latents 0 and 1 read and write x_0 and x_1; latent 2 reads
    0.5 x_1 and writes (0, 1), latent 3 reads 0.5 x_0 and writes (-1, 0)."""
    sae = make_sae(SAEConfig("topk", d_in=2, d_sae=4, k=1))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.5, 0.0]]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


X = torch.tensor([[3.0, 1.0], [1.0, 2.0], [-2.0, -1.0]])
DEAD = torch.tensor([False, False, True, True])


@pytest.mark.parametrize("k_aux, expected", [
    # Top-1: token 0 keeps latent 0 (3), e = (0, 1); token 1 latent 1 (2), e = (1, 0); token 2 fires nothing
    # (every pre-activation <= 0), e = (-2, -1). Sum ||e - mean e||^2 = 42/9 + 2 = 20/3.
    # k_aux 1: token 0's dead latent 3 (1.5) gives e_hat (-1.5, 0): 3.25; token 1's latent 2 (1) gives (0, 1): 2;
    # token 2's best dead pre-activation is -0.5, through ReLU 0: ||e||^2 = 5. 0.5 * 10.25 / (20/3) = 0.76875.
    (1, 0.76875),
    # k_aux 2: e_hat (-1.5, 0.5): 2.5; (-0.5, 1): 3.25; 0: 5. 0.5 * 10.75 / (20/3) = 0.80625.
    (2, 0.80625),
])
def test_the_auxk_term_equals_a_hand_computation(k_aux, expected):
    sae = _tiny_sae()
    plain = topk_objective(sae, X)[0]
    with_aux = topk_objective(sae, X, aux=AuxK(DEAD, k_aux=k_aux, coefficient=0.5, n_tokens=3))[0]
    assert float(plain.detach()) == 1 + 1 + 5  # the main loss, summed over tokens
    assert float((with_aux - plain).detach()) / 3 == pytest.approx(expected, abs=1e-6)  # the trainer divides by the batch


def test_only_auxk_reaches_the_encoder_of_a_dead_latent():
    grads = []
    for aux in (None, AuxK(DEAD, k_aux=1, coefficient=0.5, n_tokens=3)):
        sae = _tiny_sae()
        topk_objective(sae, X, aux=aux)[0].backward()
        grads.append(sae.W_enc.grad[:, 2:].clone())
    assert torch.equal(grads[0], torch.zeros(2, 2))  # top-k never selects them: no gradient at all
    # The objective returns 3 tokens x the batch's term, whose d/dz is 0.5 * 2 (e_hat - e) . W_dec[i] / (20/3):
    # latent 2 on token 1: (-1, 1) . (0, 1) = 1 -> 3 * 0.15 = 0.45, times x = (1, 2); latent 3 on token 0:
    # (-1.5, -1) . (-1, 0) = 1.5 -> 3 * 0.225 = 0.675, times x = (3, 1)
    expected = torch.stack([0.45 * X[1], 0.675 * X[0]], dim=1)
    torch.testing.assert_close(grads[1], expected, atol=1e-6, rtol=0)


def _shadowed_problem():
    """4096 tokens, each one planted direction (of 16 orthonormal ones in 32 dimensions) times a magnitude in [1, 2);
    a top-1 SAE of 16 latents starts with latents 0-7 exact for directions 0-7, latent 8 reading the sum of
    directions 8-15 (writing its unit vector), and latents 9-15 reading directions 9-15 at 0.05 but writing random
    directions: on every token latent 8 (or an exact one) out-bids them, so they are dead and get no gradient."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(32, 32, generator=g))[0][:, :16].T
    which = torch.randint(0, 16, (4096,), generator=g)
    acts = (1 + torch.rand(4096, 1, generator=g)) * dirs[which]
    start = make_sae(SAEConfig("topk", d_in=32, d_sae=16, k=1))
    with torch.no_grad():
        start.b_enc.zero_()
        start.b_dec.zero_()
        start.W_enc.copy_(dirs.T)
        start.W_dec.copy_(dirs)
        shared = dirs[8:].sum(0)
        start.W_enc[:, 8] = shared
        start.W_dec[8] = shared / shared.norm()
        wrong = torch.randn(7, 32, generator=g)
        start.W_dec[9:] = wrong / wrong.norm(dim=-1, keepdim=True)
        start.W_enc[:, 9:] = 0.05 * dirs[9:].T
    return acts, start


def _dead_and_ev(sae, acts):
    with torch.no_grad():
        latents = sae.encode(acts)
        err = (acts - sae.decode(latents)).pow(2).sum()
    return int(((latents > 0).sum(0) == 0).sum()), float(1 - err / (acts - acts.mean(0)).pow(2).sum())


@pytest.mark.parametrize("name, extra, dead, ev", [
    ("plain top-k", {}, 3, 0.8421),
    ("AuxK", dict(aux_k=4, dead_tokens_threshold=512), 1, 0.9207),
    ("resampling", dict(resample_every=4), 0, 0.9929),  # Anthropic-style: revives all of them, here faster still
])
def test_auxk_revives_latents_plain_top_k_leaves_dead(name, extra, dead, ev):
    acts, start = _shadowed_problem()
    assert _dead_and_ev(start, acts)[0] == 7  # latents 9-15
    settings = TrainSettings("topk", d_sae=16, k=1, batch_size=256, epochs=6, lr=1e-2, **extra)
    sae, _ = fit_sae(TensorActivations(acts, chunk_tokens=2048), settings, init=start, progress=False)
    got_dead, got_ev = _dead_and_ev(sae, acts)
    assert got_dead == dead, name
    assert got_ev == pytest.approx(ev, abs=5e-5), name


def test_auxk_changes_nothing_before_a_latent_has_been_dead_long_enough():
    acts, start = _shadowed_problem()
    base = TrainSettings("topk", d_sae=16, k=1, batch_size=256, epochs=1, lr=1e-2)
    plain, _ = fit_sae(TensorActivations(acts, chunk_tokens=2048), base, init=start, progress=False)
    # 16 steps of 256 tokens: a threshold of 4096 tokens counts no latent dead before the last step has run
    late = TrainSettings(**{**base.__dict__, "aux_k": 4, "dead_tokens_threshold": 4096})
    with_aux, _ = fit_sae(TensorActivations(acts, chunk_tokens=2048), late, init=start, progress=False)
    for (name, p), q in zip(plain.named_parameters(), with_aux.parameters()):
        assert torch.equal(p, q), name
    early = TrainSettings(**{**base.__dict__, "aux_k": 4, "dead_tokens_threshold": 3840})  # dead at the last step
    changed, _ = fit_sae(TensorActivations(acts, chunk_tokens=2048), early, init=start, progress=False)
    assert not torch.equal(changed.W_enc, plain.W_enc)


@pytest.mark.parametrize("kwargs, message", [
    (dict(aux_k=0), "aux_k: expected a positive int"),
    (dict(architecture="relu", aux_k=4), "aux_k: expected None for architecture 'relu'"),
    (dict(aux_coefficient=-1.0), "aux_coefficient: expected a finite number >= 0"),
    (dict(dead_tokens_threshold=0), "dead_tokens_threshold: expected a positive int"),
])
def test_bad_auxk_settings_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(**kwargs)

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
    assert float(with_aux - plain) / 3 == pytest.approx(expected, abs=1e-6)  # the trainer divides by the batch


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

"""evaluate_sae equals an independent recomputation; a run sharded over 2 processes (gloo) equals one process."""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402

from vit_patching.sae import SAEConfig, load_saelens, make_sae  # noqa: E402
from vit_patching.sae.activations import tensor_images  # noqa: E402
from vit_patching.sae.metrics import evaluate_sae  # noqa: E402
from vit_patching.sae.train import train_sae  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"
RUN = dict(architecture="batchtopk", d_sae=64, k=4, batch_size=64, chunk_images=8, forward_batch=4, epochs=2,
           checkpoint_every=2, resample_every=3, positions="patches", progress=False)


def test_metrics_equal_an_independent_recomputation():
    model = make_pair()[1]
    torch.manual_seed(0)
    sae = make_sae(SAEConfig("topk", 32, 64, hook_name=HOOK, k=3, positions="patches"))
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(64))
        sae.b_enc[:20] = -50.0  # 20 latents that never fire
        sae.b_enc[20:23] = 50.0  # 3 that fire on every token
    x, labels = images(6, seed=5), torch.tensor([0, 1, 2, 3, 4, 5])
    got = evaluate_sae(model, sae, tensor_images(x, labels), batch_size=4, dense_threshold=0.5, progress=False)

    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=[HOOK])
        acts = cache[HOOK][:, 1:].reshape(-1, 32).double()  # patch tokens (the model has one CLS, no registers)
        latents = sae.encode(acts.float())
        recons = sae.decode(latents).double()
        ev = 1 - (acts - recons).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
        freq = (latents != 0).double().mean(0)

        def replace(act, hook):
            return torch.cat([act[:, :1], sae(act[:, 1:])], dim=1)

        clean = model(x)
        spliced = model.run_with_hooks(x, fwd_hooks=[(HOOK, replace)])
    kl = F.kl_div(spliced.double().log_softmax(-1), clean.double().log_softmax(-1), log_target=True,
                  reduction="batchmean")
    assert abs(got["explained_variance"] - float(ev)) < 1e-6
    assert got["l0"] == float((latents != 0).sum(-1).double().mean()) == 3.0
    assert got["dead_fraction"] == float((freq == 0).double().mean()) >= 20 / 64
    assert got["dense_fraction"] == float((freq > 0.5).double().mean()) >= 3 / 64
    assert got["n_tokens"] == 6 * 16 and got["n_images"] == 6 and got["reference"] == "labels"
    assert got["accuracy_clean"] == float((clean.argmax(-1) == labels).double().mean())
    assert got["accuracy_spliced"] == float((spliced.argmax(-1) == labels).double().mean())
    assert got["agreement"] == float((spliced.argmax(-1) == clean.argmax(-1)).double().mean())
    assert abs(got["kl"] - float(kl)) < 1e-6 and got["kl"] > 1e-4  # the reconstruction does move the readout
    assert not model.hook_dict[HOOK].fwd_hooks  # nothing left spliced or hooked


def _rank(rank: int, folder: str, run: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        train_sae(make_pair()[1], HOOK, images(24, seed=3), out_dir=f"{folder}/run", rank=rank, world_size=2, **run)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("extra", [{}, dict(aux_k=8, dead_tokens_threshold=64)])  # AuxK: the batch's error spread
def test_two_processes_give_the_weights_of_one(tmp_path, extra):
    run = {**RUN, **extra}
    # fork: the ranks start with this process's imports (spawn would import torch and vit_patching twice more)
    mp.start_processes(_rank, args=(str(tmp_path), run), nprocs=2, join=True, start_method="fork")
    one = train_sae(make_pair()[1], HOOK, images(24, seed=3), **run)
    two = load_saelens(tmp_path / "run")
    for (name, p), q in zip(one.sae.named_parameters(), two.parameters()):
        # the batch gradient is summed in two parts: equal to float32 rounding (observed max difference 6e-8 for
        # batchtopk, topk and relu)
        torch.testing.assert_close(q, p, atol=2e-7, rtol=0, msg=name)

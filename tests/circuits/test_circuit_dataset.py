"""Data-set-scale edge scoring: equal to one scorer call on all pairs, each chunk exactly its own scorer call,
resumes after a kill, redoes tampered / stale chunks, rank 0 does not wait forever, 2 processes = 1 bitwise."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_patching.circuits import Ablation, eap, eap_ig, information_flow_routes
from vit_patching.circuits.dataset import (
    EdgeScoreRun, folder_pairs, image_pairs, load_edge_scores, score_edges_dataset, validate_edge_chunk, zoo_pairs,
)
from vit_patching.runs import PeerWaitError, zoo_images
from vit_patching.zoo import load_dataset, load_model

ROOT = Path(__file__).resolve().parents[2]
N, CHUNK = 6, 2


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


@pytest.fixture(scope="module")
def all_pairs(model):
    return zoo_pairs("shapes", n=N, seed=0).load(model, 0, N)


def test_zoo_pairs_pair_each_image_with_the_next_one_of_another_class(model, all_pairs):
    clean, corrupted, _ = all_pairs
    data = load_dataset("shapes", n=N + 16, seed=0)  # independent: the whole stream, paired by hand
    labels = data.labels.tolist()
    partner = [next(j for j in range(i + 1, len(labels)) if labels[j] != labels[i]) for i in range(N)]
    assert torch.equal(clean, data.images[:N]) and torch.equal(corrupted, data.images[partner])
    assert all(labels[i] != labels[j] for i, j in enumerate(partner))
    two = zoo_pairs("shapes", n=N, seed=0).load(model, 2, 4)  # a chunk equals its rows of the whole
    assert torch.equal(two.clean, clean[2:4]) and torch.equal(two.corrupted, corrupted[2:4])


@pytest.mark.parametrize("scorer, kwargs, tol", [
    ("eap_ig", {"steps": 2}, 2e-7), ("eap", {"ablation": "mean"}, 2e-7), ("eap", {"ablation": "optimal"}, 2e-7),
    ("ifr", {}, 2e-7),
])
def test_merged_scores_equal_one_scorer_call_on_all_pairs(model, all_pairs, tmp_path, scorer, kwargs, tol):
    clean, corrupted, _ = all_pairs
    ref_images = load_dataset("shapes", n=4, seed=3).images
    direct_kwargs = dict(kwargs)
    run_kwargs = dict(kwargs)
    if kwargs.get("ablation") == "mean":  # one reference set for every chunk
        direct_kwargs["reference"] = run_kwargs["reference"] = ref_images
    if kwargs.get("ablation") == "optimal":  # constants fitted on the reference set, again in every chunk
        direct_kwargs["ablation"] = run_kwargs["ablation"] = Ablation("optimal", reference=ref_images, steps=2)
    fn = {"eap_ig": eap_ig, "eap": eap, "ifr": information_flow_routes}[scorer]
    ref = fn(model, clean, corrupted, "logit_diff", **direct_kwargs)
    got = score_edges_dataset(model, zoo_pairs("shapes", n=N), tmp_path, scorer=scorer, chunk_size=CHUNK,
                              progress=False, **run_kwargs)
    mask = ref.graph.mask
    assert torch.equal(got.graph.mask, mask) and got.scores.dtype == ref.scores.dtype == torch.float32
    assert got.scores[~mask].isnan().all()
    # One batch of 6 against 3 batches of 2: each pair's score rounds differently in float32. Observed largest
    # difference 1.0e-7 of the largest |score| (eap, mean ablation; optimal 7.1e-8, eap_ig 6.8e-8, ifr 3.0e-8);
    # bound 2e-7.
    scale = ref.scores[mask].abs().max()
    assert float((got.scores[mask] - ref.scores[mask]).abs().max()) <= tol * float(scale)
    assert torch.allclose(got.clean_score, ref.clean_score, rtol=0, atol=4e-6)  # observed 1.9e-6 (logits ~10)
    assert torch.allclose(got.corrupted_score, ref.corrupted_score, rtol=0, atol=4e-6)
    assert got.per_image is None and got.options["n_pairs"] == N and got.method == ref.method
    # Each chunk is exactly its own scorer call, summed in float64; the saved mean is the sum over the count.
    chunk = load_file(tmp_path / "chunks" / "000002-000004.safetensors")
    own = fn(model, clean[2:4], corrupted[2:4], "logit_diff", **direct_kwargs)
    assert torch.equal(chunk["sum"].nan_to_num(), own.per_image.double().sum(-1).nan_to_num())
    assert int(chunk["count"]) == 2 and torch.equal(chunk["clean_score"], own.clean_score.double())
    merged = load_file(tmp_path / "edge_scores.safetensors")
    assert int(merged["count"]) == N and torch.equal(merged["scores"].nan_to_num(),
                                                   (merged["sum"] / N).nan_to_num())
    assert torch.equal(got.scores.nan_to_num(), merged["scores"].float().nan_to_num())
    again = load_edge_scores(model, tmp_path / "edge_scores.safetensors")
    assert torch.equal(again.scores.nan_to_num(), got.scores.nan_to_num()) and again.options == got.options
    assert torch.equal(again.clean_score, got.clean_score) and again.method == got.method


def test_float64_model_gives_float64_scores_equal_to_one_call(tmp_path):
    model = load_model("toy-shapes").double()
    clean, corrupted, _ = zoo_pairs("shapes", n=N).load(model, 0, N)
    assert clean.dtype == torch.float64
    ref = eap(model, clean, corrupted, "logit_diff")
    got = score_edges_dataset(model, zoo_pairs("shapes", n=N), tmp_path, scorer="eap", chunk_size=CHUNK, progress=False)
    mask = ref.graph.mask
    assert got.scores.dtype == got.clean_score.dtype == torch.float64
    # Observed 1.5e-16 of the largest |score| and 1.8e-15 on the metrics.
    assert float((got.scores[mask] - ref.scores[mask]).abs().max()) <= 1e-15 * float(ref.scores[mask].abs().max())
    assert torch.allclose(got.clean_score, ref.clean_score, rtol=0, atol=1e-14)


def _tamper(path: Path, key: str, value: float, index: tuple[int, ...]) -> None:
    """Rewrite a chunk with one value changed and its metadata (fingerprint included) kept."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors[key][index] = value
    save_file(tensors, str(path), metadata=meta)


def test_killed_run_resumes_and_tampered_or_stale_chunks_are_recomputed(model, tmp_path):
    pairs = zoo_pairs("shapes", n=N)
    run = EdgeScoreRun(model, pairs, tmp_path, scorer="eap", chunk_size=CHUNK)
    first = run.merge()  # every chunk computed by the merge itself
    ref = load_file(tmp_path / "edge_scores.safetensors")
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        EdgeScoreRun(model, pairs, out, scorer="eap", chunk_size=CHUNK).shard(stop_after=2)  # killed: 2 of 3
    assert EdgeScoreRun(model, pairs, out, scorer="eap", chunk_size=CHUNK).shard() == {"computed": 1, "skipped": 2}
    resumed = score_edges_dataset(model, pairs, out, scorer="eap", chunk_size=CHUNK, progress=False)
    merged = load_file(out / "edge_scores.safetensors")
    assert merged.keys() == ref.keys() and all(torch.equal(merged[k].nan_to_num(), ref[k].nan_to_num()) for k in ref)
    assert torch.equal(resumed.scores.nan_to_num(), first.scores.nan_to_num())
    graph = first.graph
    edge = tuple(int(i) for i in graph.mask.nonzero()[0])
    chunk = out / "chunks" / "000002-000004.safetensors"
    for key, value, index in (("sum", 123.0, edge), ("sum", float("nan"), edge), ("clean_score", 0.5, (1,)),
                              ("count", 3, (0,))):
        _tamper(chunk, key, value, index)
        loaded = load_file(chunk)
        assert validate_edge_chunk(loaded, _meta(chunk), 2, graph) is not None
        assert EdgeScoreRun(model, pairs, out, scorer="eap", chunk_size=CHUNK).shard() == {"computed": 1, "skipped": 2}
        assert torch.equal(load_file(chunk)["sum"].nan_to_num(), load_file(tmp_path / "chunks" / chunk.name)["sum"].nan_to_num())
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated (killed mid-write by another tool)
    assert EdgeScoreRun(model, pairs, out, scorer="eap", chunk_size=CHUNK).shard() == {"computed": 1, "skipped": 2}
    # Other settings, another model: every chunk is stale.
    assert EdgeScoreRun(model, pairs, out, scorer="eap", metric="logit", chunk_size=CHUNK).shard() == \
        {"computed": 3, "skipped": 0}
    other = load_model("toy-conjunction")
    with pytest.raises(ValueError, match="computed with another model"):
        load_edge_scores(other, out / "edge_scores.safetensors")
    assert EdgeScoreRun(other, pairs, out, scorer="eap", chunk_size=CHUNK).shard() == {"computed": 3, "skipped": 0}


def _meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def test_folder_pairs_pair_by_name_and_an_edited_image_invalidates_its_chunk(model, tmp_path):
    from PIL import Image

    pix = load_dataset("shapes", n=8, seed=1).pixels
    for sub, rows in (("a", pix[:4]), ("b", pix[4:])):
        (tmp_path / sub).mkdir()
        for i, p in enumerate(rows):
            Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / sub / f"{i}.png")
    pairs = folder_pairs(tmp_path / "a", tmp_path / "b")
    assert pairs.names[1] == "1.png | 1.png"
    run = EdgeScoreRun(model, pairs, tmp_path / "o", scorer="eap", chunk_size=2)
    assert run.shard() == {"computed": 2, "skipped": 0}
    Image.fromarray((pix[7].flip(-1).permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "b" / "3.png")
    assert EdgeScoreRun(model, folder_pairs(tmp_path / "a", tmp_path / "b"), tmp_path / "o", scorer="eap",
                        chunk_size=2).shard() == {"computed": 1, "skipped": 1}


def test_bad_arguments_are_refused_before_any_compute(model, tmp_path):
    pairs = zoo_pairs("shapes", n=4)
    out = tmp_path / "o"
    for kwargs, needle in (
        ({"scorer": "exact_please"}, "scorer"),
        ({"metric": lambda logits, i: logits[:, 0]}, "metric"),  # a name (the type check, or ours without it)
        ({"metric": "accuracy"}, "metric"),
        ({"scorer": "eap", "ablation": "resample"}, "got 'resample'"),
        ({"scorer": "eap", "ablation": "mean"}, "reference: expected reference images"),
        ({"scorer": "ifr", "ablation": "zero"}, "takes no ablation"),
        ({"scorer": "eap", "by_pos": True}, "by_pos: not a setting"),
        ({"scorer": "eap_ig", "steps": torch.tensor(3)}, "steps: expected a plain value"),
        ({"chunk_size": 0}, "chunk_size"),
    ):
        with pytest.raises((ValueError, TypeError), match=needle):
            score_edges_dataset(model, pairs, out, progress=False, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match=r"corrupted: expected as many images as clean \(4\), got 3"):
        image_pairs(zoo_images("shapes", 4), zoo_images("shapes", 3))
    with pytest.raises(TypeError, match="pairs"):  # an ImageSet is not a PairSet
        score_edges_dataset(model, zoo_images("shapes", 4), out)


def test_rank_0_without_its_peer_gives_up_after_the_wait_timeout(model, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeerWaitError, match="no new chunk from the other ranks for 0.5 s"):
        score_edges_dataset(model, zoo_pairs("shapes", n=4), tmp_path, scorer="eap", chunk_size=2, progress=False,
                            wait_timeout_s=0.5)
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["000000-000002.safetensors"]


_RUN = """
import sys, torch
from vit_patching.circuits.dataset import score_edges_dataset, zoo_pairs
from vit_patching.zoo import load_model
torch.set_num_threads(1)
score_edges_dataset(load_model("toy-shapes"), zoo_pairs("shapes", n=8), sys.argv[1], scorer="eap_ig",
                    chunk_size=2, steps=2, progress=False, wait_timeout_s=600)
"""


def test_two_processes_equal_one_process(tmp_path, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_RUN), str(tmp_path / "two")],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    # Meanwhile the one-process run, in this process (one interpreter start-up fewer), one thread like the ranks.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = score_edges_dataset(load_model("toy-shapes"), zoo_pairs("shapes", n=8), tmp_path / "one",
                                  scorer="eap_ig", chunk_size=2, steps=2, progress=False)
    except BaseException:
        for p in ranks:
            p.kill()
        raise
    finally:
        torch.set_num_threads(threads)
    for p in ranks:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    a, b = load_file(tmp_path / "one" / "edge_scores.safetensors"), load_file(tmp_path / "two" / "edge_scores.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) for k in a)
    assert all(torch.equal(a[k].isnan(), b[k].isnan()) for k in a)
    assert _meta(tmp_path / "one" / "edge_scores.safetensors") == _meta(tmp_path / "two" / "edge_scores.safetensors")
    assert len(list((tmp_path / "two" / "chunks").glob("*.safetensors"))) == 4
    assert torch.equal(one.scores.nan_to_num(), a["scores"].float().nan_to_num())

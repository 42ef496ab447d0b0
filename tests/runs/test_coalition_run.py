"""Coalition-CAAP dataset runs: chunks hold the standard error and the game's two ends, a changed coalition setting
recomputes every chunk, single-patch fingerprints are those of runs made before coalitions existed, and
``validate_chunk`` checks the coalition keys."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from vit_patching.runs import CAAPRunConfig, run_caap_shard, zoo_images
from vit_patching.runs.chunk_run import ChunkRun
from vit_patching.runs.chunks import chunk_path, validate_chunk
from vit_patching.zoo import load_model

N = 2
CFG = CAAPRunConfig(window=(0, 2), chunk_size=1, coalitions=4, coalition_groups=2)


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


def test_changed_coalition_settings_recompute_and_same_settings_resume(model, tmp_path):
    images = zoo_images("shapes", n=N)
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 2, "skipped": 0}
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 0, "skipped": 2}
    first = load_file(chunk_path(tmp_path, 0, 1))
    for changed in (CAAPRunConfig(window=(0, 2), chunk_size=1, coalitions=6, coalition_groups=2),
                    CAAPRunConfig(window=(0, 2), chunk_size=1, coalitions=6, coalition_groups=4),
                    CAAPRunConfig(window=(0, 2), chunk_size=1, coalitions=6, coalition_groups=4, coalition_seed=1),
                    CAAPRunConfig(window=(0, 2), chunk_size=1)):  # back to single-patch CAAP
        assert run_caap_shard(model, images, tmp_path, changed) == {"computed": 2, "skipped": 0}, changed
    single = load_file(chunk_path(tmp_path, 0, 1))
    assert "standard_error" not in single and not torch.equal(single["map"], first["map"])
    # A coalition chunk that lost its standard errors does not validate: recomputed, then equal to the first.
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 2, "skipped": 0}
    path = chunk_path(tmp_path, 1, 2)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "standard_error"}
    save_file(tensors, str(path), metadata=meta)
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 1, "skipped": 1}
    assert all(torch.equal(load_file(chunk_path(tmp_path, 0, 1))[k], first[k]) for k in first if k != "thumb")


def test_single_patch_fingerprints_are_unchanged(model):
    # The settings of a single-patch run are exactly those fingerprinted before coalition CAAP existed, so its
    # saved chunks stay valid; a coalition run adds its three settings.
    assert sorted(CAAPRunConfig(window=(0, 2)).fingerprinted(4)) == [
        "include_prefix", "neutral", "readout", "site", "upsample", "window"]
    assert CFG.fingerprinted(4)["coalitions"] == 4 and CFG.fingerprinted(4)["coalition_groups"] == 2
    assert CFG.method == "coalition CAAP (Shapley, 4 permutations, groups 2)" and CAAPRunConfig().method == "CAAP"


def _chunk(coalition: bool) -> dict[str, torch.Tensor]:
    n, g = 2, (2, 2)
    t = {"map": torch.zeros(n, *g), "target": torch.zeros(n, dtype=torch.long), "label": torch.zeros(n, dtype=torch.long),
         "source_logits": torch.zeros(n, 3), "source_score": torch.zeros(n), "neutral_score": torch.zeros(n),
         "status": torch.zeros(n, dtype=torch.uint8), "thumb": torch.zeros(n, 3, 4, 4, dtype=torch.uint8)}
    if coalition:
        t.update(standard_error=torch.zeros(n, *g), v_all=torch.zeros(n), v_empty=torch.zeros(n))
    return t


def test_validate_chunk_checks_the_coalition_keys():
    meta = {"batch_size": "8", "rows": '{"neutral": ["", ""], "warning": ["", ""], "error": ["", ""]}'}
    assert validate_chunk(_chunk(False), meta, 2, 3, (2, 2)) is None  # single-patch chunks as before
    assert validate_chunk(_chunk(True), meta, 2, 3, (2, 2), coalition=True) is None
    assert validate_chunk(_chunk(False), meta, 2, 3, (2, 2), coalition=True).startswith("keys: expected")
    assert validate_chunk(_chunk(True), meta, 2, 3, (2, 2)).startswith("keys: expected")
    bad = _chunk(True)
    bad["v_all"][1] = float("nan")
    assert validate_chunk(bad, meta, 2, 3, (2, 2), coalition=True) == (
        "v_all: expected finite values on the explained images, got NaN or infinity")
    bad["status"][1] = 1  # a failed image's NaN is expected (with its reason)
    failed_meta = {**meta, "rows": '{"neutral": ["", ""], "warning": ["", ""], "error": ["", "x"]}'}
    assert validate_chunk(bad, failed_meta, 2, 3, (2, 2), coalition=True) is None
    bad = _chunk(True)
    bad["standard_error"][0, 0, 0] = -1.0
    assert validate_chunk(bad, meta, 2, 3, (2, 2), coalition=True).startswith("standard_error: expected values >= 0")
    bad = _chunk(True)
    bad["standard_error"] = torch.zeros(2, 3, 3)
    assert validate_chunk(bad, meta, 2, 3, (2, 2), coalition=True) == (
        "standard_error: expected shape [2, 2, 2] (2 images), got [2, 3, 3]")


def test_bad_coalition_settings_are_named(model):
    with pytest.raises(ValueError, match="coalitions: expected 0 \\(single-patch CAAP\\) or an even number >= 4"):
        CAAPRunConfig(coalitions=5)
    with pytest.raises(ValueError, match="coalition_groups/coalition_seed: they set coalition CAAP"):
        CAAPRunConfig(coalition_groups=2)
    with pytest.raises(ValueError, match="coalition_groups: expected a block side that divides the 8x8 patch grid"):
        ChunkRun(model, zoo_images("shapes", n=2), CAAPRunConfig(coalitions=4, coalition_groups=3), "unused")


def test_an_image_that_fails_leaves_the_others_equal_to_a_clean_run(model, tmp_path, monkeypatch):
    import csv

    from vit_patching.checks import NonFiniteError
    from vit_patching.patching.caap_shapley import caap_shapley
    from vit_patching.runs import chunk_run, run_caap_dataset
    from vit_patching.zoo import load_dataset

    x = load_dataset("shapes", n=2, seed=0).images
    real = chunk_run.caap_shapley

    def planted(m, images, *args, **kwargs):  # image 1's run is refused as a non-finite output would be
        hit = [i for i in range(len(images)) if torch.equal(images[i].cpu(), x[1])]
        if hit:
            raise NonFiniteError("logits", hit, f"logits: expected finite values, got NaN in batch row(s) {hit}")
        return real(m, images, *args, **kwargs)

    monkeypatch.setattr(chunk_run, "caap_shapley", planted)
    cfg = CAAPRunConfig(window=(0, 2), chunk_size=2, coalitions=4, coalition_groups=2)
    paths = run_caap_dataset(model, zoo_images("shapes", n=2), tmp_path, cfg)
    merged = load_file(paths["maps"])
    with torch.inference_mode():
        clean = caap_shapley(model, x, None, (0, 2), n_permutations=4, groups=2)
    for key in ("map", "standard_error", "v_all", "v_empty"):
        assert torch.equal(merged[key][0], getattr(clean, key)[0]), key  # the explained image, bit for bit
        assert bool(merged[key][1].isnan().all()), key
    rows = list(csv.DictReader(paths["table"].open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["v_all"] == rows[1]["mean_se"] == "" and float(rows[0]["v_all"]) == float(clean.v_all[0])

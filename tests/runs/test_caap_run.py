"""Dataset-scale CAAP: equal to direct CAAP, resumes after a kill, redoes corrupt/stale chunks, 2 processes = 1."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vit_patching.cli import main as cli_main
from vit_patching.patching.caap import caap
from vit_patching.runs import CAAPRunConfig, folder_images, run_caap_dataset, run_caap_shard, zoo_images
from vit_patching.zoo import load_dataset, load_model

ROOT = Path(__file__).resolve().parents[2]
N = 6
CFG = CAAPRunConfig(window=(0, 2), chunk_size=2, batch_size=64)


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


@pytest.fixture(scope="module")
def first_run(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("caap")
    paths = run_caap_dataset(model, zoo_images("shapes", n=N), out, CFG)
    return out, paths


def test_dataset_run_equals_direct_caap_and_writes_table_and_gallery(model, first_run):
    out, paths = first_run
    maps = load_file(paths["maps"])
    x = load_dataset("shapes", n=N, seed=0)
    for s in range(0, N, 2):  # each chunk is exactly caap() of its images
        ref = caap(model, x.images[s : s + 2], window=(0, 2), batch_size=64)
        assert torch.equal(maps["map"][s : s + 2], ref.map.float())
        assert torch.equal(maps["target"][s : s + 2], ref.target)
        assert torch.equal(maps["source_score"][s : s + 2], ref.source_score.float())
    rows = list(csv.DictReader(paths["table"].open()))
    assert [r["name"] for r in rows] == [f"shapes-{i:04d}" for i in range(N)]
    assert [int(r["label"]) for r in rows] == x.labels.tolist()
    with torch.no_grad():
        pred = model(x.images).argmax(-1)
    assert [int(r["predicted"]) for r in rows] == pred.tolist()
    assert [float(r["map_max"]) for r in rows] == maps["map"].flatten(1).amax(1).tolist()
    page = paths["gallery"].read_text()
    assert page.count("<tr>") == N + 1 and page.count("data:image/png;base64,") == 2 * N
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["000000-000002.safetensors",
                                                                 "000002-000004.safetensors", "000004-000006.safetensors"]


def test_killed_run_resumes_and_corrupt_or_stale_chunks_are_recomputed(model, first_run, tmp_path):
    ref = load_file(first_run[1]["maps"])
    images = zoo_images("shapes", n=N)
    with pytest.raises(KeyboardInterrupt):
        run_caap_shard(model, images, tmp_path, CFG, stop_after=2)  # killed after 2 of 3 chunks
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 1, "skipped": 2}
    chunk = tmp_path / "chunks" / "000002-000004.safetensors"
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated (corrupt) file
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 1, "skipped": 2}
    paths = run_caap_dataset(model, images, tmp_path, CFG)  # nothing left to compute: merge only
    resumed = load_file(paths["maps"])
    assert resumed.keys() == ref.keys() and all(torch.equal(resumed[k], ref[k]) for k in ref)
    other = CAAPRunConfig(window=(0, 2), chunk_size=2, readout="prob")  # other settings: every chunk is stale
    assert run_caap_shard(model, images, tmp_path, other) == {"computed": 3, "skipped": 0}
    assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 3, "skipped": 0}


def test_other_images_invalidate_only_their_chunk(model, tmp_path):
    from PIL import Image

    pix = load_dataset("shapes", n=4, seed=1).pixels
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a.png", "b<script>x.png", "c&d.png", "e'f.png"]
    for name, p in zip(names, pix):
        Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / name)
    cfg = CAAPRunConfig(window=(0, 1), chunk_size=2)
    assert run_caap_shard(model, folder_images(folder), tmp_path / "o", cfg) == {"computed": 2, "skipped": 0}
    Image.fromarray((pix[3].flip(-1).permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / names[3])
    assert run_caap_shard(model, folder_images(folder), tmp_path / "o", cfg) == {"computed": 1, "skipped": 1}
    page = run_caap_dataset(model, folder_images(folder), tmp_path / "o", cfg, title="<b>t</b>")["gallery"].read_text()
    assert "<script>x" not in page and "b&lt;script&gt;x.png" in page and "<b>t</b>" not in page
    assert "c&amp;d.png" in page and "e&#x27;f.png" in page


def _caap_args(out: Path) -> list[str]:
    return ["caap", "--dataset", "shapes", "--n", "8", "--chunk-size", "2", "--window", "0:2", "--no-progress",
            "--out", str(out)]


def _cli(out: Path, env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_extra}
    cmd = [sys.executable, "-m", "vit_patching.cli", *_caap_args(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_equal_one_process(tmp_path, monkeypatch):
    ranks = [_cli(tmp_path / "two", {"RANK": str(r), "WORLD_SIZE": "2"}) for r in (0, 1)]
    # Meanwhile the one-process run, in this process (one interpreter start-up fewer), one thread like the ranks.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(_caap_args(tmp_path / "one")) == 0
    except BaseException:
        for p in ranks:
            p.kill()
        raise
    finally:
        torch.set_num_threads(threads)
    for p in ranks:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:]
    a, b = load_file(tmp_path / "one" / "maps.safetensors"), load_file(tmp_path / "two" / "maps.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "one" / "results.csv").read_text() == (tmp_path / "two" / "results.csv").read_text()
    assert len(list((tmp_path / "two" / "chunks").glob("*.safetensors"))) == 4


def test_cli_dataset_user_errors_exit_2_with_one_line(tmp_path, capsys):
    # In this process: the exit status of a real `python -m vit_patching.cli` process is checked in tests/test_cli.py.
    for args, needle in (
        (["--dataset", "shapes"], "--n: expected"),
        (["--images", str(tmp_path)], "expected image files"),
        (["--dataset", "shapes", "--n", "2", "--target", "1"], "--target"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli_main(["caap", *args, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and not (tmp_path / "o").exists()

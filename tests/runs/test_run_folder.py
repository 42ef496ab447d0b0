"""A dataset run's folder: changed as a whole, one writer, bounded waits, safe CSV cells (issue 21, 6, 7, 11, 12)."""
from __future__ import annotations

import csv
import errno
import json
import logging
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vit_patching.cli import main as cli_main
from vit_patching.runs import (
    CAAPRunConfig, PeerWaitError, RunLockError, folder_images, run_caap_dataset, run_caap_shard, zoo_images,
)
from vit_patching.runs import merge as runs_merge
from vit_patching.runs.chunk_run import ChunkRun
from vit_patching.zoo import load_dataset, load_model

CFG = CAAPRunConfig(window=(0, 2), chunk_size=2, batch_size=64)
OUTPUTS = ("maps.safetensors", "results.csv", "settings.json", "gallery.html")


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in OUTPUTS}


def test_a_failed_merge_leaves_the_previous_complete_run(model, tmp_path, monkeypatch):
    run_caap_dataset(model, zoo_images("shapes", n=6), tmp_path, CFG)
    before = _snapshot(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs_merge, "write_gallery", full_disk)  # the last of the four files fails
    with pytest.raises(OSError, match="No space left"):
        run_caap_dataset(model, zoo_images("shapes", n=4), tmp_path, CFG)  # another run into the same folder
    assert _snapshot(tmp_path) == before  # not 4-row maps beside a 6-image gallery
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no staging folder, no temporary file


def test_a_merge_killed_during_its_renames_is_finished_by_the_next_start(model, tmp_path, monkeypatch):
    run_caap_dataset(model, zoo_images("shapes", n=6), tmp_path, CFG)
    real = runs_merge.finish_staged_merge

    def killed(out_dir, *, interrupted=True):  # the swap renames the first file, then the process dies
        if interrupted:  # the recovery every merge runs first
            return real(out_dir)
        staging = tmp_path / runs_merge.STAGING
        (staging / "maps.safetensors").replace(tmp_path / "maps.safetensors")
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_merge, "finish_staged_merge", killed)
    with pytest.raises(KeyboardInterrupt):
        runs_merge.merge_caap_chunks(model, zoo_images("shapes", n=4), tmp_path, CFG)
    monkeypatch.setattr(runs_merge, "finish_staged_merge", real)
    assert load_file(tmp_path / "maps.safetensors")["map"].shape[0] == 4  # the folder is mixed now ...
    assert json.loads((tmp_path / "settings.json").read_text())["n_images"] == 6
    real(tmp_path)  # what every run and merge of the folder does first
    assert not (tmp_path / runs_merge.STAGING).exists()
    maps = load_file(tmp_path / "maps.safetensors")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert maps["map"].shape[0] == len(rows) == json.loads((tmp_path / "settings.json").read_text())["n_images"] == 4
    assert (tmp_path / "gallery.html").read_text().count("<tr>") == 4 + 1


def _lock(out, pid, settings, world_size=1):
    out.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": socket.gethostname(), "settings": settings, "world_size": world_size, "since": 0}
    (out / ".lock").write_text(json.dumps(record))


def test_a_second_writer_is_refused_and_ranks_of_one_run_share_the_folder(model, tmp_path, capsys):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a live process
    try:
        _lock(tmp_path / "o", other.pid, "other settings")
        with pytest.raises(RunLockError, match=rf"being written by another run \(pid {other.pid} on host .*other settings"):
            run_caap_shard(model, zoo_images("shapes", n=4), tmp_path / "o", CFG)
        assert not (tmp_path / "o" / "chunks").exists()  # refused before any compute
        with pytest.raises(SystemExit) as exit_:
            cli_main(["caap", "--dataset", "shapes", "--n", "4", "--no-progress", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
        assert f"error: --out: {str(tmp_path / 'o')!r} is being written by another run (pid {other.pid}" in err
        images = zoo_images("shapes", n=4)
        digest = ChunkRun(model, images, CFG, tmp_path / "r").lock_digest
        _lock(tmp_path / "r", other.pid, digest, world_size=2)  # rank 0 of a 2-rank run with the same settings
        assert run_caap_shard(model, images, tmp_path / "r", CFG, rank=1, world_size=2) == {"computed": 1, "skipped": 0}
        assert json.loads((tmp_path / "r" / ".lock").read_text())["pid"] == other.pid  # still rank 0's
        with pytest.raises(RunLockError, match="the same settings, as another run"):
            run_caap_shard(model, images, tmp_path / "r", CFG)  # same settings, but not a rank of that run
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_recovered_and_a_run_releases_its_lock(model, tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lock(tmp_path, int(dead.stdout), "other settings")
    with caplog.at_level(logging.WARNING, logger="vit_patching.runs"):
        assert run_caap_shard(model, zoo_images("shapes", n=2), tmp_path, CFG) == {"computed": 1, "skipped": 0}
    assert any("stale lock" in r.getMessage() and dead.stdout.strip() in r.getMessage() for r in caplog.records)
    assert not (tmp_path / ".lock").exists()
    with pytest.raises(KeyboardInterrupt):
        run_caap_shard(model, zoo_images("shapes", n=4), tmp_path, CFG, stop_after=1, resume=False)
    assert not (tmp_path / ".lock").exists()  # released after an exception too


def test_rank_0_without_its_peers_fails_within_the_wait_timeout(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PeerWaitError, match=r"no new chunk from the other ranks for 0\.5 s \(1/2 chunks"):
        run_caap_dataset(model, zoo_images("shapes", n=4), tmp_path / "a", CFG, wait_timeout_s=0.5)
    monkeypatch.setenv("VIT_PATCHING_WAIT_TIMEOUT", "0.25")  # the environment variable, through the CLI
    with pytest.raises(SystemExit) as exit_:
        cli_main(["caap", "--dataset", "shapes", "--n", "4", "--chunk-size", "2", "--window", "0:2", "--no-progress",
                  "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    # status 1: no option was wrong, the launch was (as for a full disk); one line, no traceback
    assert exit_.value.code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "for 0.25 s (1/2 chunks" in err and "--wait-timeout" in err and "VIT_PATCHING_WAIT_TIMEOUT" in err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["caap", "--dataset", "shapes", "--n", "4", "--wait-timeout", "0", "--out", str(tmp_path / "c")])
    assert exit_.value.code == 2 and "--wait-timeout: expected" in capsys.readouterr().err


def test_csv_text_cells_cannot_be_formulas_and_numbers_stay_numbers(model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["+1.png", "-2.png", "=HYPERLINK(x).png", "@SUM(A1).png", "plain.png"]
    for name, p in zip(names, load_dataset("shapes", n=5, seed=2).pixels):
        Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / name)
    paths = run_caap_dataset(model, folder_images(folder), tmp_path / "o", CAAPRunConfig(window=(0, 1), chunk_size=4))
    rows = list(csv.DictReader(paths["table"].open(newline="")))
    assert [r["name"] for r in rows] == ["'+1.png", "'-2.png", "'=HYPERLINK(x).png", "'@SUM(A1).png", "plain.png"]
    negative = [r["map_min"] for r in rows if r["map_min"].startswith("-")]
    assert negative and all(float(v) < 0 for v in negative)  # numbers are not escaped
    maps = load_file(paths["maps"])
    assert [float(r["map_min"]) for r in rows] == maps["map"].flatten(1).amin(1).tolist()
    page = paths["gallery"].read_text()
    assert ">=HYPERLINK(x).png<" in page and ">-2.png<" in page  # the gallery shows the names as they are
    assert torch.equal(maps["status"], torch.zeros(5, dtype=torch.uint8))


def test_the_gallery_shows_at_most_gallery_max_images_and_the_table_all(model, tmp_path, monkeypatch):
    monkeypatch.setattr(runs_merge, "GALLERY_MAX", 3)
    paths = run_caap_dataset(model, zoo_images("shapes", n=6), tmp_path, CFG)
    page = paths["gallery"].read_text()
    assert page.count("<tr>") == 3 + 1 and page.count("data:image/png;base64,") == 2 * 3
    assert "Showing the first 3 of 6 images; every image is in results.csv." in page
    assert ">shapes-0002<" in page and ">shapes-0003<" not in page
    assert len(list(csv.DictReader(paths["table"].open()))) == 6 and load_file(paths["maps"])["map"].shape[0] == 6

"""The dataset mode of ``vit-patching caap`` (``--images DIR`` / ``--dataset NAME``): every user error is one line
naming the option or the file, exit status 2 (1 for an I/O fault such as a full disk), before any model is built
where it can be known before; argparse errors are one line too; a dataset's labels must fit the model's classes."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_patching.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _error_line(capsys, argv: list[str], expected: str, status: int = 2) -> str:
    """Run ``main(argv)`` in this process; it must exit with ``status`` and one stderr line holding ``expected``."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_.value.code == status, captured.err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("vit-patching") and expected in lines[0], lines
    assert "Traceback" not in captured.err
    return lines[0]


def _save_png(path: Path, seed: int = 0, size: int = 64) -> None:
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")).save(path)


def test_cuda_without_a_gpu_is_one_line_before_any_model(tmp_path, capsys, no_model, monkeypatch):
    # Whatever this machine has, the CLI must see "no GPU" here (as on a CPU-only machine).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for source in (["--dataset", "shapes", "--n", "2"], ["--images", str(tmp_path)]):
        _error_line(capsys, ["caap", *source, "--device", "cuda", "--out", str(tmp_path / "run")],
                    "--device: 'cuda' asked for, but no CUDA GPU is available")
    _error_line(capsys, ["caap", "--dataset", "shapes", "--n", "2", "--device", "bogus", "--out", str(tmp_path / "r")],
                "--device: expected cpu, cuda, cuda:N or mps, got 'bogus'")
    assert not (tmp_path / "run").exists()


def test_unusable_out_folders_are_one_line_before_any_model(tmp_path, capsys, no_model, monkeypatch):
    (tmp_path / "file").write_text("x")
    chunks_is_a_file = tmp_path / "old_run"
    chunks_is_a_file.mkdir()
    (chunks_is_a_file / "chunks").write_text("not a folder")
    data = ["caap", "--dataset", "shapes", "--n", "2", "--out"]
    _error_line(capsys, [*data, str(tmp_path / "file")], "--out: expected a folder for a dataset run, got the file")
    _error_line(capsys, [*data, str(tmp_path / "file" / "run")], "is not a folder")
    _error_line(capsys, [*data, ""], "--out: expected a folder path")
    _error_line(capsys, [*data, str(chunks_is_a_file)], f"--out: {str(chunks_is_a_file / 'chunks')!r} is not a folder")
    # A read-only folder, as an unprivileged user sees it (root may write anywhere, so permission is simulated).
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    _error_line(capsys, [*data, str(locked / "run")], f"--out: cannot write {str(locked / 'run')!r}: the folder")
    _error_line(capsys, [*data, str(locked)], "is not writable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "locked", "old_run"]
    assert list(locked.iterdir()) == []


def test_bad_files_in_the_image_folder_are_one_line_before_any_model(tmp_path, capsys, no_model, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _save_png(folder / "a.png")
    _save_png(folder / "b.png", seed=1)
    run = ["caap", "--images", str(folder), "--no-progress", "--out", str(tmp_path / "run")]
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x 1000: a decompression bomb to PIL
        _error_line(capsys, run, f"--images: image too large to open safely: {str(folder / 'a.png')!r}")
    (folder / "c.png").write_text("not an image")
    _error_line(capsys, run, f"--images: not a readable image file: {str(folder / 'c.png')!r}")
    with pytest.raises(AssertionError, match="a model was built"):  # only the first --n files are checked
        main([*run, "--n", "2"])
    (folder / "c.png").unlink()
    os.rename(folder / "b.png", os.fsencode(folder) + b"/b\xff.png")  # a Latin-1 name on a UTF-8 system
    _error_line(capsys, run, f"--images: file name is not valid UTF-8 (rename it): '{folder}/b\\xff.png'")
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9"  # the same for a folder named so
    os.rename(folder, latin1)
    os.rename(latin1 + b"/b\xff.png", latin1 + b"/b.png")
    _error_line(capsys, ["caap", "--images", os.fsdecode(latin1), "--out", str(tmp_path / "run")],
                f"--images: folder name is not valid UTF-8 (rename it): '{tmp_path}/caf\\xe9'")
    _error_line(capsys, ["caap", "--dataset", "shapes", "--n", "2", "--out", os.fsdecode(latin1 + b"/run")],
                f"--out: folder name is not valid UTF-8 (rename it): '{tmp_path}/caf\\xe9/run'")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_is_one_line_with_status_1_and_keeps_finished_chunks(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["caap", "--dataset", "shapes", "--n", "2", "--chunk-size", "1", "--window", "0:1", "--no-progress",
            "--out", str(out)]
    real_fsync = os.fsync

    def fsync(fd):  # the disk is full once the first chunk is saved
        if any((out / "chunks").glob("*.safetensors")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    line = _error_line(capsys, argv, "--out: could not write", status=1)
    assert "No space left on device" in line and str(out) in line and "run the same command again" in line
    monkeypatch.undo()
    (kept,) = (out / "chunks").glob("*.safetensors")
    before = kept.stat()
    assert main(argv) == 0
    after = kept.stat()  # resumed: the finished chunk was read, not computed and written again
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(list((out / "chunks").glob("*.safetensors"))) == 2


def test_a_rank_that_waits_in_vain_is_one_line_with_status_1_not_a_write_error(tmp_path, capsys, monkeypatch):
    import vit_patching.runs.command as command

    def no_peers(*args, **kwargs):  # what the runner raises when the other ranks' chunks never come
        raise TimeoutError(f"rank 0 waited 1 s for the other ranks' chunks in {str(tmp_path / 'run')!r}")

    monkeypatch.setattr(command, "run_caap_dataset", no_peers)
    line = _error_line(capsys, ["caap", "--dataset", "shapes", "--n", "2", "--out", str(tmp_path / "run")],
                       "vit-patching caap: error: rank 0 waited 1 s for the other ranks' chunks", status=1)
    assert "could not write" not in line


def test_library_parameter_names_become_option_names(tmp_path, capsys, no_model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _save_png(folder / "a.png")
    out = ["--out", str(tmp_path / "run")]
    for argv, expected in (
        (["--dataset", "shapes", "--n", "0"], "--n: expected a positive int, got 0"),
        (["--images", str(folder), "--n", "0"], "--n: expected a positive int, got 0"),
        (["--dataset", "shapes", "--n", "2", "--chunk-size", "0"], "--chunk-size: expected a positive int, got 0"),
        (["--dataset", "shapes", "--n", "2", "--seed", "-1"], "--seed: expected a non-negative int, got -1"),
        (["--dataset", "shapes", "--n", "2", "--batch-size", "0"], "--batch-size: expected a positive int"),
        (["--images", str(tmp_path / "none")], "--images: expected a folder of images, got a missing path"),
    ):
        line = _error_line(capsys, ["caap", *argv, *out], expected)
        assert line.split(": error: ")[1].startswith("--"), line


def test_argparse_errors_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    for argv, expected in (
        (["caap", "--sample", "0", "--window", "1:2:3", *out], "argument --window: expected START:END"),
        (["caap", "--sample", "0", "--image", "x.png", *out], "argument --image: not allowed with argument --sample"),
        (["caap", "--dataset", "nope", "--n", "2", *out], "argument --dataset: invalid choice: 'nope'"),
        (["caap", "--sample", "0"], "the following arguments are required: --out"),
        (["caap", "--sample", "0", "--bogus", *out], "unrecognized arguments: --bogus"),
        (["caap", "--sample", "x", *out], "argument --sample: invalid int value: 'x'"),
        (["nocommand"], "invalid choice: 'nocommand'"),
    ):
        _error_line(capsys, argv, expected)


def test_benchmark_argparse_errors_are_one_line(capsys):
    from vit_patching.benchmark.command import PROG, parse_args

    for argv, expected in ((["--bogus"], "unrecognized arguments: --bogus"),
                           (["--model-seed", "x"], "argument --model-seed: invalid int value: 'x'")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and lines == [f"{PROG}: error: {expected}"], lines


def test_errors_are_one_line_with_status_2_in_a_real_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = ["caap", "--dataset", "shapes", "--n", "0", "--out", str(tmp_path / "r")]  # in-process: the other cases
    proc = subprocess.run([sys.executable, "-m", "vit_patching.cli", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["vit-patching caap: error: --n: expected a positive int, got 0"], proc.stderr


# ------------------------------------------------------------------------------------------ labels and classes
def test_every_shipped_dataset_is_offered_and_has_a_shipped_model():
    from vit_patching.cli import build_parser
    from vit_patching.zoo import available_datasets, get_spec, load_dataset
    from vit_patching.zoo.clip import CLIP_MODELS, clip_captions
    from vit_patching.zoo.datasets import dataset_class_names
    from vit_patching.zoo.registry import MODEL_SPECS

    sub = build_parser()._subparsers._group_actions[0].choices["caap"]
    offered = next(a.choices for a in sub._actions if a.dest == "dataset")
    assert sorted(offered) == available_datasets() == ["captions", "conjunction", "relation", "shapes"]
    for name in available_datasets():  # the CLI takes a dataset's classes from dataset_class_names
        names = load_dataset(name, n=1).class_names
        assert dataset_class_names(name) == names
        specs = [s for s in MODEL_SPECS.values() if s.dataset == name]
        clips = [m for m, d in CLIP_MODELS.items() if d == name]
        assert len(specs) + len(clips) == 1  # exactly one shipped model was trained on it
        assert all(s.class_names == get_spec(s.name).class_names == names for s in specs)
        assert all(clip_captions(m) == names for m in clips)


def test_labels_of_another_dataset_are_refused_in_one_line(tmp_path, capsys):
    out = ["--no-progress", "--out", str(tmp_path / "run")]
    line = _error_line(capsys, ["caap", "--model", "toy-relation", "--dataset", "shapes", "--n", "2", *out],
                       "--dataset: 'shapes' has 4 classes but --model 'toy-relation' has 2")
    assert "toy-relation was trained on --dataset relation" in line
    _error_line(capsys, ["caap", "--model", "toy-shapes", "--dataset", "conjunction", "--n", "2", *out],
                "--dataset: 'conjunction' has 3 classes but --model 'toy-shapes' has 4")
    _error_line(capsys, ["caap", "--model", "vit_tiny_patch16_224", "--dataset", "relation", "--n", "2", *out],
                "--dataset: 'relation' has 2 classes but --model 'vit_tiny_patch16_224' has 1000")
    assert not (tmp_path / "run").exists()
    assert main(["caap", "--model", "toy-relation", "--dataset", "relation", "--n", "2", "--window", "0:1", *out]) == 0
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and {r.split(",")[2] for r in rows[1:]} <= {"0", "1"}  # relation labels


def test_docstring_examples_run():
    import doctest

    import vit_patching.cli as cli
    import vit_patching.cli_report as cli_report
    import vit_patching.runs.command as command
    from vit_patching import files

    for module in (cli, cli_report, command):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted > 0, module.__name__
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(files.check_output_dir, globs={"check_output_dir": files.check_output_dir}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and runner.tries > 0

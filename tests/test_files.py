"""The one image-folder listing (vit_patching.files.list_image_files), used by the benchmark and dataset runs."""

import doctest

import pytest

import vit_patching.files as files
from vit_patching.benchmark import data as benchmark_data
from vit_patching.files import IMAGE_EXTENSIONS, list_image_files
from vit_patching.runs import dataset as runs_dataset


def _touch(folder, *names):
    for name in names:
        (folder / name).write_bytes(b"")


def test_lists_image_files_only_sorted_and_truncated(tmp_path):
    _touch(tmp_path, "c.TIFF", "b.png", "a.JPG", "notes.txt", "png")  # "png" has no suffix
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is not a file
    assert [p.name for p in list_image_files(tmp_path)] == ["a.JPG", "b.png", "c.TIFF"]
    assert [p.name for p in list_image_files(str(tmp_path), n=2)] == ["a.JPG", "b.png"]
    assert all(p.parent == tmp_path for p in list_image_files(tmp_path))
    _touch(tmp_path, *(f"x{ext}" for ext in IMAGE_EXTENSIONS))
    assert len(list_image_files(tmp_path)) == 3 + len(IMAGE_EXTENSIONS)


def test_errors_name_the_argument(tmp_path):
    missing, a_file = tmp_path / "missing", tmp_path / "f.png"
    _touch(tmp_path, "f.png")
    with pytest.raises(ValueError, match=r"^images_dir: expected a folder of images, got a missing path: '.*missing'$"):
        list_image_files(missing, "images_dir")
    with pytest.raises(ValueError, match=r"^masks_dir: expected a folder of images, got a file: '.*f\.png'$"):
        list_image_files(a_file, "masks_dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty, "readme.md")
    with pytest.raises(ValueError, match=r"^images: expected image files \(\.png, .*\) in '.*empty', found none$"):
        list_image_files(empty)
    assert list_image_files(empty, allow_empty=True) == []
    with pytest.raises((TypeError, ValueError), match="^n: "):
        list_image_files(tmp_path, n=0)


def test_benchmark_and_dataset_runs_use_it(tmp_path, monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise ValueError("listed")

    monkeypatch.setattr(benchmark_data, "list_image_files", spy)
    monkeypatch.setattr(runs_dataset, "list_image_files", spy)
    with pytest.raises(ValueError, match="listed"):
        benchmark_data.folder_data(None, tmp_path, n=3)
    with pytest.raises(ValueError, match="listed"):
        runs_dataset.folder_images(tmp_path, n=2)
    assert [(a[1:], k) for a, k in calls] == [(("images_dir", 3), {}), (("images", 2), {})]


def test_docstring_example_runs():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(files.list_image_files, globs={"list_image_files": list_image_files}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries == 4

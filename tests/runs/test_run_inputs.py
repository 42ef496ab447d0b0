"""Dataset runs read images as the rest of the project does, one chunk at a time (issue 21, items 2 and 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vit_patching.images import to_pixels
from vit_patching.runs import CAAPRunConfig, folder_images, run_caap_shard, zoo_images
from vit_patching.runs import dataset as runs_dataset
from vit_patching.zoo import load_dataset, load_model


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


def test_folder_images_scale_16_bit_and_apply_exif_orientation(model, tmp_path):
    Image.fromarray(np.full((64, 64), 128 * 257, dtype=np.uint16)).save(tmp_path / "a-grey16.png")  # 16-bit grey 128
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32, 0] = 255  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown turned 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "b-exif.jpg", exif=exif, quality=95)
    x, labels = folder_images(tmp_path).load(model, 0, 2)[:2]
    assert labels is None
    grey = to_pixels(x[:1], model.cfg.data_config) * 255
    assert abs(float(grey.mean()) - 128) < 0.51  # not 255: 16-bit values scaled, not clipped
    assert torch.equal(x[:1], model.preprocess([Image.new("RGB", (64, 64), (128, 128, 128))]))
    with Image.open(tmp_path / "b-exif.jpg") as raw:  # the stored pixels, turned as the EXIF tag says
        upright = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (32, 64)
    assert torch.equal(x[1:], model.preprocess([upright]))
    assert not torch.equal(x[1:], model.preprocess([Image.open(tmp_path / "b-exif.jpg").convert("RGB")]))


def test_zoo_images_are_generated_per_chunk_only(model, tmp_path, monkeypatch):
    calls = []
    real = runs_dataset.generate_range

    def spy(task, start, end, seed):
        calls.append((start, end))
        return real(task, start, end, seed)

    monkeypatch.setattr(runs_dataset, "generate_range", spy)
    big = zoo_images("shapes", n=100_000)  # 100000 images would be ~29 GB
    assert calls == [] and len(big) == 100_000
    full = load_dataset("shapes", n=12, seed=0)
    for s, e in [(0, 4), (8, 12), (4, 8)]:
        x, labels, _ = big.load(model, s, e)
        assert calls[-1] == (s, e)
        assert torch.equal(x, full.images[s:e]) and torch.equal(labels, full.labels[s:e])
    calls.clear()
    cfg = CAAPRunConfig(window=(0, 1), chunk_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_caap_shard(model, big, tmp_path, cfg, stop_after=2)
    assert calls and set(calls) <= {(0, 2), (2, 4)}  # only the chunks computed (and their keys), nothing else


def test_generate_range_equals_the_full_generation_across_scene_chunks():
    from vit_patching.zoo.datasets import CHUNK, generate, generate_range

    full = generate("shapes", n=CHUNK + 10, seed=4)
    for s, e in [(0, 3), (CHUNK - 6, CHUNK + 10), (CHUNK + 1, CHUNK + 2)]:  # inside, across, after a boundary
        part = generate_range("shapes", s, e, seed=4)
        assert torch.equal(part.images, full.images[s:e]) and torch.equal(part.labels, full.labels[s:e])
        assert torch.equal(part.masks, full.masks[s:e])
    with pytest.raises(ValueError, match=r"^end: expected an int > start \(5\), got 5"):
        generate_range("shapes", 5, 5, seed=0)

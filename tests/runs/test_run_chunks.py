"""Dataset runs never merge a bad chunk; failed images and neutral warnings are kept (issue 21, items 3, 5, 9)."""
from __future__ import annotations

import csv
import html
import json
import logging
import re
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vit_patching.checks import NonFiniteError
from vit_patching.patching import memory
from vit_patching.patching.caap import caap
from vit_patching.runs import CAAPRunConfig, folder_images, run_caap_dataset, run_caap_shard, zoo_images
from vit_patching.runs import chunk_run
from vit_patching.zoo import load_dataset, load_model

N = 6
CFG = CAAPRunConfig(window=(0, 2), chunk_size=2, batch_size=64)
CHUNK = "000002-000004.safetensors"


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


@pytest.fixture(scope="module")
def clean(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    paths = run_caap_dataset(model, zoo_images("shapes", n=N), out, CFG)
    return out, load_file(paths["maps"]), paths["table"].read_text()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tamper(path, edit):
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)  # fingerprint kept


def _set(key, value):
    def edit(t):
        t[key] = value(t[key])
    return edit


def _nan(t):
    t["map"][0, 0, 0] = float("nan")


def _target(t):
    t["target"][1] = 99  # the model has 4 classes


TAMPERED = {
    "nan": _nan,
    "fp16": _set("map", lambda v: v.half()),
    "out_of_range_target": _target,
    "wrong_shape": _set("map", lambda v: v.flatten(1)),
    "missing_key": lambda t: t.pop("neutral_score"),
    "short_chunk": lambda t: t.update({k: v[:1] for k, v in t.items()}),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_chunk_that_does_not_validate_is_recomputed(model, clean, tmp_path, caplog, case):
    out, ref, table = clean
    images = zoo_images("shapes", n=N)
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)  # the clean run's folder (cheaper than running it again)
    _tamper(tmp_path / "chunks" / CHUNK, TAMPERED[case])
    with caplog.at_level(logging.WARNING, logger="vit_patching.runs"):
        assert run_caap_shard(model, images, tmp_path, CFG) == {"computed": 1, "skipped": 2}
    warned = [r.getMessage() for r in caplog.records if "does not validate" in r.getMessage()]
    assert len(warned) == 1 and "[2, 4)" in warned[0] and "\n" not in warned[0]
    paths = run_caap_dataset(model, images, tmp_path, CFG)
    merged = load_file(paths["maps"])
    assert merged.keys() == ref.keys() and all(torch.equal(merged[k], ref[k]) for k in ref)
    assert paths["table"].read_text() == table


def test_the_merge_recomputes_a_bad_chunk_instead_of_merging_it(model, clean, tmp_path):
    out, ref, _ = clean
    images = zoo_images("shapes", n=N)
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    _tamper(tmp_path / "chunks" / CHUNK, TAMPERED["short_chunk"])
    from vit_patching.runs import merge_caap_chunks

    merged = load_file(merge_caap_chunks(model, images, tmp_path, CFG)["maps"])
    assert all(torch.equal(merged[k], ref[k]) for k in ref)


def test_an_image_replaced_while_its_chunk_is_computed_is_detected(model, tmp_path, monkeypatch):
    pix = load_dataset("shapes", n=4, seed=3).pixels
    folder = tmp_path / "imgs"
    folder.mkdir()

    def save(p, name):
        Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / name)

    for i, p in enumerate(pix):
        save(p, f"{i}.png")
    cfg = CAAPRunConfig(window=(0, 1), chunk_size=2)
    real = model.preprocess
    replaced = []

    def preprocess_then_replace(images):  # the file changes after it was read, before the chunk is saved
        out = real(images)
        if not replaced:
            save(pix[1].flip(-1), "1.png")
            replaced.append(True)
        return out

    monkeypatch.setattr(model, "preprocess", preprocess_then_replace)
    assert run_caap_shard(model, folder_images(folder), tmp_path / "o", cfg) == {"computed": 2, "skipped": 0}
    monkeypatch.setattr(model, "preprocess", real)
    assert run_caap_shard(model, folder_images(folder), tmp_path / "o", cfg) == {"computed": 1, "skipped": 1}
    fresh = run_caap_dataset(model, folder_images(folder), tmp_path / "fresh", cfg)
    resumed = run_caap_dataset(model, folder_images(folder), tmp_path / "o", cfg)
    a, b = load_file(fresh["maps"]), load_file(resumed["maps"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_batch_size_used_is_part_of_a_chunk_and_auto_resumes_with_it(model, clean, tmp_path, monkeypatch):
    images = zoo_images("shapes", n=N)
    run_caap_shard(model, images, tmp_path / "fixed", CFG)
    other = CAAPRunConfig(window=(0, 2), chunk_size=2, batch_size=7)
    assert run_caap_shard(model, images, tmp_path / "fixed", other) == {"computed": 3, "skipped": 0}
    sizes = iter([5, 9, 9, 9])
    monkeypatch.setattr(memory, "auto_batch_size", lambda model, *a, **k: next(sizes))
    auto = CAAPRunConfig(window=(0, 2), chunk_size=2, batch_size="auto")
    with pytest.raises(KeyboardInterrupt):
        run_caap_shard(model, images, tmp_path / "auto", auto, stop_after=2)  # killed: free memory changes
    paths = run_caap_dataset(model, images, tmp_path / "auto", auto)
    used = []
    for f in sorted((tmp_path / "auto" / "chunks").iterdir()):
        with safe_open(str(f), framework="pt") as g:
            used.append(g.metadata()["batch_size"])
    assert used == ["5", "5", "5"]  # the resumed run took the saved chunks' batch size, not a fresh 9
    assert json.loads(paths["settings"].read_text())["batch_size"] == 5


def _planted(how, bad_images):
    real = chunk_run.caap

    def run(model, x, *args, **kwargs):
        hit = [i for i in range(len(x)) if any(torch.equal(x[i].cpu(), b) for b in bad_images)]
        if how == "raises" and hit:  # what the experiments raise for a non-finite output
            raise NonFiniteError("logits", hit, f"logits: expected finite values, got NaN in batch row(s) {hit}")
        attr = real(model, x, *args, **kwargs)
        if hit:
            attr.map[hit] = float("nan")
        return attr

    return run


@pytest.mark.parametrize("how", ["nan_map", "raises"])
def test_an_image_with_non_finite_outputs_fails_and_the_run_goes_on(model, clean, tmp_path, monkeypatch, how):
    _, ref, _ = clean
    bad = [1, 4]
    monkeypatch.setattr(chunk_run, "caap", _planted(how, load_dataset("shapes", n=N, seed=0).images[bad]))
    paths = run_caap_dataset(model, zoo_images("shapes", n=N), tmp_path, CFG)
    rows = _rows(paths["table"])
    assert [r["status"] for r in rows] == ["failed" if i in bad else "ok" for i in range(N)]
    what = "CAAP map" if how == "nan_map" else "logits"
    assert all(what in rows[i]["error"] for i in bad) and all(rows[i]["predicted"] == "" for i in bad)
    merged = load_file(paths["maps"])
    ok = [i for i in range(N) if i not in bad]
    for k in ("map", "target", "source_logits", "source_score", "neutral_score", "label"):
        assert torch.equal(merged[k][ok], ref[k][ok]), k  # the other images equal a clean run, bit for bit
    assert bool(merged["map"][bad].isnan().all()) and merged["status"].tolist() == [int(i in bad) for i in range(N)]
    page = paths["gallery"].read_text()
    assert "Failed (non-finite outputs, no map): images [1, 4]" in page and page.count(">failed<") == 2
    assert page.count(">no map<") == 2 and page.count("data:image/png;base64,") == 2 * N - 2


def test_neutral_warnings_name_global_images_and_survive_a_resume(model, tmp_path):
    shapes = load_dataset("shapes", n=3, seed=0).pixels
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(shapes):
        Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    Image.new("RGB", (64, 64), (90, 160, 40)).save(folder / "3-flat.png")  # its mean image is itself: warned
    cfg = CAAPRunConfig(window=(0, 2), chunk_size=2, neutral="image_mean")
    images = folder_images(folder)
    direct = caap(model, images.load(model, 0, 4)[0], window=(0, 2), neutral="image_mean")
    listed = sorted({int(i) for w in direct.warnings for i in re.search(r"images \[([\d, ]+)\]", w).group(1).split(",")})
    paths = run_caap_dataset(model, images, tmp_path / "o", cfg)
    rows = _rows(paths["table"])
    assert [int(r["index"]) for r in rows if r["warning"]] == listed == [3]  # the flat image, 2nd of its chunk
    for i in listed:
        assert f"image {i} " in rows[i]["warning"] and "CAAP neutral 'image_mean'" in rows[i]["warning"]
    page = paths["gallery"].read_text()
    assert all(html.escape(rows[i]["warning"]) in page for i in listed)
    for name in ("maps.safetensors", "results.csv", "gallery.html"):
        (tmp_path / "o" / name).unlink()
    assert run_caap_shard(model, images, tmp_path / "o", cfg) == {"computed": 0, "skipped": 2}
    again = run_caap_dataset(model, images, tmp_path / "o", cfg)
    assert _rows(again["table"]) == rows


def test_auto_neutral_choice_is_in_the_table_gallery_and_settings(model, tmp_path):
    cfg = CAAPRunConfig(window=(0, 2), chunk_size=4, neutral="auto")
    paths = run_caap_dataset(model, zoo_images("shapes", n=N), tmp_path, cfg)
    direct = caap(model, load_dataset("shapes", n=N, seed=0).images, window=(0, 2), neutral="auto")
    assert [r["neutral"] for r in _rows(paths["table"])] == list(direct.neutral_choice)
    counts = {c: list(direct.neutral_choice).count(c) for c in sorted(set(direct.neutral_choice))}
    assert json.loads(paths["settings"].read_text())["neutral_choice"] == counts
    page = paths["gallery"].read_text()
    assert "Neutral context per image (column &#x27;neutral&#x27;): " + ", ".join(f"{k} {v}" for k, v in counts.items()) in page


def test_gallery_overlay_colours_follow_the_report_scale():
    """The gallery's overlay draws values above the median blue and below it red, as the report's RdBu figures."""
    import base64
    import io

    from PIL import Image

    from vit_patching.runs.gallery import overlay_png

    grey = torch.full((3, 2, 2), 128, dtype=torch.uint8)
    png = overlay_png(grey, torch.tensor([[1.0, 0.0], [0.0, -1.0]]), alpha=1.0)  # median 0: +1 top left, -1 bottom right
    rgb = torch.tensor(list(Image.open(io.BytesIO(base64.b64decode(png))).getdata())).reshape(2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[1, 1].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]

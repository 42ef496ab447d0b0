"""Dataset runs name the readout that produced their scores, in ``settings.json`` and in the gallery, as the report
of a single-image run does ("Scores: ..."): the zero-shot head of toy-clip, a probe given with ``--probe``, the
classifier head of a classifier, and a readout attached in Python."""
from __future__ import annotations

import csv
import html
import json

import torch

from vit_patching.cli import main
from vit_patching.files import load_image
from vit_patching.readouts import ZeroShotHead
from vit_patching.runs import CAAPRunConfig, run_caap_dataset, zoo_images
from vit_patching.zoo import load_dataset, load_model, load_probe, load_probe_model
from vit_patching.zoo.registry import WEIGHTS_DIR


def _named(out):
    settings = json.loads((out / "settings.json").read_text())
    gallery = html.unescape((out / "gallery.html").read_text())
    return settings, gallery


def test_zero_shot_dataset_run_names_the_zero_shot_head(tmp_path):
    out = tmp_path / "clip"
    assert main(["caap", "--model", "toy-clip", "--dataset", "captions", "--n", "4", "--window", "0:2",
                 "--out", str(out), "--no-progress"]) == 0
    settings, gallery = _named(out)
    want = load_model("toy-clip").readout.describe()
    assert want.startswith("ZeroShotHead (16 scores: a red circle, a red square")
    assert settings["scores"] == want
    assert f"Scores: {want}." in gallery


def test_probe_dataset_run_names_the_probe_and_its_scores_are_the_probes(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    batch = load_dataset("captions", n=4, seed=21)
    from PIL import Image

    for i in range(4):
        px = (batch.pixels[i] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(px).save(folder / f"img{i}.png")
    out = tmp_path / "probe"
    probe_file = WEIGHTS_DIR / "toy-clip-shape-probe.safetensors"
    assert main(["caap", "--model", "toy-clip", "--images", str(folder), "--readout", "probe", "--probe",
                 str(probe_file), "--window", "0:2", "--out", str(out), "--no-progress"]) == 0
    settings, gallery = _named(out)
    want = load_probe("toy-clip-shape").describe()
    assert want == "LinearProbe (4 scores: circle, square, triangle, plus)"
    assert settings["scores"] == want and f"Scores: {want}." in gallery
    probed = load_probe_model("toy-clip-shape")
    with open(out / "results.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["name"])
    images = probed.preprocess([load_image(folder / r["name"]) for r in rows])
    with torch.no_grad():
        scores = probed(images)
    assert [int(r["predicted"]) for r in rows] == scores.argmax(-1).tolist()  # the probe's 4 classes
    torch.testing.assert_close(torch.tensor([float(r["source_score"]) for r in rows]),
                               scores.max(-1).values, rtol=0, atol=1e-5)


def test_classifier_dataset_run_names_the_classifier_head_as_the_report_does(tmp_path):
    out = tmp_path / "shapes"
    assert main(["caap", "--model", "toy-shapes", "--dataset", "shapes", "--n", "2", "--window", "0:2",
                 "--out", str(out), "--no-progress"]) == 0
    settings, gallery = _named(out)
    assert settings["scores"] == "the model's classifier head"  # the single-image report's words
    assert "Scores: the model's classifier head." in gallery


def test_python_dataset_run_names_the_attached_readout(tmp_path):
    tower = load_model("toy-clip")
    two = tower.with_readout(ZeroShotHead(tower.readout.embeddings[:2], 10.0, class_names=["a", "b"]))
    paths = run_caap_dataset(two, zoo_images("captions", n=2), tmp_path, CAAPRunConfig(window=(0, 2)))
    settings, gallery = _named(tmp_path)
    assert settings["scores"] == "ZeroShotHead (2 scores: a, b)" and "Scores: ZeroShotHead (2 scores: a, b)." in gallery
    assert paths["gallery"].is_file()


def test_digest_reads_zero_dim_tensors():
    """A readout's 0-dim buffer (ZeroShotHead's logit_scale) made every zero-shot dataset run fail in model_digest."""
    from vit_patching.runs.sharding import digest

    assert digest(torch.tensor(1.0)) == digest(torch.tensor(1.0)) != digest(torch.tensor(2.0))
    assert digest(torch.tensor(1.0)) != digest(torch.tensor([1.0]))  # the shape is part of the digest
    assert digest(torch.arange(6.0).reshape(2, 3)) == digest(torch.arange(6.0).reshape(2, 3).T.contiguous().T)


def test_scores_line_docstring_example_runs():
    import doctest

    from vit_patching.runs import merge

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(merge.scores_line, globs={"scores_line": merge.scores_line,
                                                                        "load_model": load_model}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and runner.tries > 0

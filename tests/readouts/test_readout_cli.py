"""``vit-patching caap --readout ...``: a probe and reference images on a headless view of toy-shapes, the report
naming the readout, its scores in force (targets and values), and one-line usage errors."""
from __future__ import annotations

import html

import pytest
import torch
from PIL import Image

import vit_patching as vp
from vit_patching.cli import main
from vit_patching.patching.caap import caap
from vit_patching.readouts import EmbeddingSimilarity, LinearProbe
from vit_patching.zoo.datasets import generate_sample


@pytest.fixture(scope="module")
def toy():
    return vp.load_model("toy-shapes")


@pytest.fixture(scope="module")
def probe_file(toy, tmp_path_factory):
    batch = vp.load_dataset("shapes", n=32, seed=3)
    probe = LinearProbe.fit(toy, batch.images, batch.labels % 2, class_names=["even", "odd"])
    return probe.save(tmp_path_factory.mktemp("probe") / "probe.safetensors")


def _one_line_error(capsys, argv: list[str], expected: str) -> None:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vit-patching caap: error: ") and expected in lines[0], lines


def test_probe_readout_report_names_it_and_explains_the_probe_scores(toy, probe_file, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["caap", "--model", "toy-shapes", "--sample", "0", "--readout", "probe", "--probe", str(probe_file),
                 "--window", "1:3", "--out", str(out)]) == 0
    text = html.unescape(out.read_text(encoding="utf-8"))
    assert "Scores: LinearProbe (2 scores: even, odd)." in text
    image = generate_sample("shapes", 0, seed=0).images
    want = caap(toy.with_readout(LinearProbe.load(probe_file)), image, window=(1, 3))
    row = f'source logit (unpatched input)</td><td class="num">{float(want.source_score[0]):.4g}</td>'
    assert row in text  # the report's source score is the probe's score (the head's differs)
    assert f'<td class="num">{float(toy(image)[0, int(want.target[0])].detach()):.4g}</td>' not in text
    assert "<th>scores from</th><td>LinearProbe (2 scores: even, odd)</td>" in text
    _one_line_error(capsys, ["caap", "--model", "toy-shapes", "--sample", "0", "--readout", "probe", "--probe",
                             str(probe_file), "--target", "2", "--out", str(out)],
                    "--target: expected a class index in [0, 2) for 'toy-shapes'")  # the probe's 2 classes


def test_similarity_readout_scores_each_reference(toy, tmp_path):
    refs = []
    for k in range(2):
        pixels = generate_sample("shapes", k + 1, seed=0).pixels[0]
        path = tmp_path / f"ref{k}.png"
        Image.fromarray((pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()).save(path)
        refs.append(path)
    out = tmp_path / "sim.html"
    assert main(["caap", "--model", "toy-shapes", "--sample", "0", "--readout", "similarity", "--reference",
                 *map(str, refs), "--out", str(out)]) == 0
    text = html.unescape(out.read_text(encoding="utf-8"))
    assert "Scores: EmbeddingSimilarity (2 scores: ref0.png, ref1.png)." in text
    ref_images = toy.preprocess([Image.open(p) for p in refs])
    scored = toy.with_readout(EmbeddingSimilarity(ref_images, model=toy))
    sims = scored(ref_images).detach()
    torch.testing.assert_close(sims.diagonal(), torch.ones(2), atol=1e-6, rtol=0)  # each reference is itself


def test_old_readout_values_still_choose_the_caap_score(tmp_path):
    out = tmp_path / "r.html"
    assert main(["caap", "--sample", "0", "--readout", "prob", "--out", str(out)]) == 0
    text = html.unescape(out.read_text(encoding="utf-8"))
    assert "Scores: the model's classifier head." in text and "source prob (unpatched input)" in text


@pytest.mark.parametrize("args,expected", [
    (["--readout", "zero-shot", "--classes", "a red circle,a square"],
     "--readout zero-shot: expected a model that ships a text tower"),
    (["--readout", "zero-shot"], "--readout zero-shot: expected --classes too"),
    (["--readout", "zero-shot", "--classes", "circle"], "--classes: expected at least two comma-separated"),
    (["--probe", "p.safetensors"], "--probe: applies to --readout probe, got --readout head"),
    (["--readout", "probe"], "--readout probe: expected --probe too"),
    (["--readout", "probe", "--probe", "missing.safetensors"], "--probe: no such file: 'missing.safetensors'"),
    (["--readout", "similarity", "--reference", "nothing.png"], "--reference: no such file: 'nothing.png'"),
])
def test_usage_errors_are_one_line(capsys, tmp_path, args, expected):
    _one_line_error(capsys, ["caap", "--sample", "0", *args, "--out", str(tmp_path / "r.html")], expected)
    assert not (tmp_path / "r.html").exists()


def test_a_probe_for_another_model_is_one_line(capsys, tmp_path):
    other = LinearProbe(torch.zeros(3, 64), torch.zeros(3), "cls", 1)
    path = other.save(tmp_path / "other.safetensors")
    _one_line_error(capsys, ["caap", "--sample", "0", "--readout", "probe", "--probe", str(path), "--out",
                             str(tmp_path / "r.html")], "readout: expected a probe for this model")


def test_zero_shot_uses_the_loaders_text_tower_with_the_templates(toy, tmp_path):
    """A loader whose model ships a text tower puts ``info["zero_shot"]``; the options reach it as given."""
    from vit_patching.cli import build_parser
    from vit_patching.readouts import ZeroShotHead
    from vit_patching.readouts.command import attach_from_args

    (tmp_path / "t.txt").write_text("# prompts\na photo of {}.\n\n{}\n", encoding="utf-8")
    args = build_parser().parse_args(["caap", "--sample", "0", "--out", "r.html", "--readout", "zero-shot",
                                      "--classes", "a circle, a square", "--templates", str(tmp_path / "t.txt")])
    calls = []

    def zero_shot(names, templates):
        calls.append((names, templates))
        return ZeroShotHead(torch.eye(2, toy.cfg.d_model), 10.0, class_names=names)

    info = {"model": "toy-shapes", "zero_shot": zero_shot}
    scored = attach_from_args(args, toy, info)
    assert calls == [(["a circle", "a square"], ["a photo of {}.", "{}"])]
    assert info["readout"] == "ZeroShotHead (2 scores: a circle, a square)" and scored.cfg.n_classes == 2
    (tmp_path / "bad.txt").write_text("a photo\n", encoding="utf-8")
    args.templates = tmp_path / "bad.txt"
    with pytest.raises(ValueError, match=r"--templates: expected one template with \{\} per line, got 'a photo'"):
        attach_from_args(args, toy, info)

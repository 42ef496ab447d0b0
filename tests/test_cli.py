"""The ``vit-patching caap`` CLI: the README's main job (in-process and as a subprocess, offline, rendered in
headless Chromium), user text escaped, random timm models labelled, usage errors naming the option."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit_patching.cli import main
from vit_patching.plotting import screenshot_html

README = Path(__file__).resolve().parents[1] / "README.md"


def _main_job() -> list[str]:
    """The README's main-job command (``vit-patching caap ...``), without its ``--out`` option."""
    match = re.search(r"vit-patching (caap[^\n`]*)", README.read_text(encoding="utf-8"))
    assert match, "README.md has no `vit-patching caap ...` command"
    args = shlex.split(match.group(1))
    if "--out" in args:
        k = args.index("--out")
        del args[k : k + 2]
    return args


MAIN_JOB = _main_job()


def _rendered_png(html: Path, tmp_path: Path) -> np.ndarray:
    png = screenshot_html(html, tmp_path / "shot.png", width=1000, height=2000)  # summary, then both figures
    return np.asarray(Image.open(png).convert("RGB"))


def _check_report(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    tags = re.findall(r"<script[^>]*>", text)
    assert tags and not any("src=" in t for t in tags)  # self-contained: plotly.js embedded, nothing fetched
    assert len(text) > 1_000_000  # the embedded plotly.js bundle
    for heading in ("Summary", "Attribution over the image", "Patch-grid map", "Top 10 patches", "Scores", "Settings"):
        assert f">{heading}</h2>" in text, heading
    return text


def test_main_job_in_process_renders_in_chromium(tmp_path, capsys):
    assert "--sample" in MAIN_JOB and "--image" not in MAIN_JOB  # needs no image file
    out = tmp_path / "report.html"
    assert main([*MAIN_JOB, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = _check_report(out)
    assert "sample 0 of the shipped &#x27;shapes&#x27; dataset" in text and "toy-shapes" in text
    assert "random (untrained)" not in text
    assert "The neutral context alone is classified" in text  # the neutral's own prediction is shown
    pixels = _rendered_png(out, tmp_path)
    assert (pixels.std(axis=2) > 40).sum() > 5000  # coloured map/image pixels (about 20k), not a blank or error page
    assert (pixels.min(axis=2) > 245).mean() > 0.3  # and a white page around them


def test_main_job_as_a_subprocess_offline_with_empty_home(tmp_path):
    """A fresh machine: empty HOME and caches, offline; the console script next to this interpreter."""
    script = Path(sys.executable).with_name("vit-patching")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vit_patching.cli"]
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "NO_PROXY": "*", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run([*cmd, *MAIN_JOB, "--out", "r.html"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    _check_report(tmp_path / "r.html")


def test_user_text_is_escaped(tmp_path):
    evil = "<img src=x onerror=alert(1)>"
    image = tmp_path / f"{evil}.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")).save(image)
    out = tmp_path / "r.html"
    title = "<script>alert('title')</script>"
    assert main(["caap", "--image", str(image), "--title", title, "--window", "1:3", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert evil not in text and title not in text
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert "&lt;script&gt;alert(&#x27;title&#x27;)&lt;/script&gt;" in text


def test_random_timm_model_is_labelled(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.full((30, 20, 3), 128, dtype="uint8")).save(image)
    out = tmp_path / "r.html"
    torch.manual_seed(0)
    assert main(["caap", "--model", "vit_tiny_patch16_224", "--image", str(image), "--window", "11:12",
                 "--target", "3", "--readout", "delta_prob", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "WARNING: this model has random (untrained) weights" in text
    assert "random (untrained)" in text and "&quot;delta_prob&quot;" not in text  # settings are plain text
    assert "<td>delta_prob</td>" in text


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--sample", "0", "--window", "3:1"], "window"),
        (["--sample", "0", "--window", "0:9"], "window"),
        (["--sample", "0", "--window", "a:b"], "--window"),
        (["--sample", "0", "--target", "99"], "target"),
        (["--sample", "-1"], "--sample"),
        (["--sample", "0", "--image", "x.png"], "not allowed with"),
        (["--image", "/nonexistent/x.png"], "--image"),
        (["--model", "vit_tiny_patch16_224", "--sample", "0"], "--sample"),
        (["--model", "no_such_model_xyz", "--sample", "0"], "--model"),
        (["--model", "toy-shapes", "--pretrained", "--sample", "0"], "--pretrained"),
        (["--sample", "0", "--neutral", "grey"], "--neutral"),
        (["--sample", "0", "--top", "0"], "--top"),
        (["--sample", "0", "--target", "1e20"], "--target"),
        (["--sample", "0", "--target", "100000000000000000000"], "--target"),
        (["--sample", "0", "--target", "-1"], "--target"),
        (["--sample", "1000000000"], "--sample"),
    ],
)
def test_usage_errors_exit_2_and_name_the_option(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as err:
        main(["caap", *args, "--out", str(tmp_path / "r.html")])
    assert err.value.code == 2
    err_text = capsys.readouterr().err
    assert expected in err_text and "Traceback" not in err_text
    assert not (tmp_path / "r.html").exists()


def _one_line_error(capsys, argv: list[str], expected: str) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vit-patching caap: error: ") and expected in lines[0], lines
    return lines[0]


def test_unusable_out_and_device_fail_before_any_model_is_built(tmp_path, capsys, no_model):
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (["--out", str(tmp_path / "dir")], "--out: expected a file path, got the existing folder"),
        (["--out", ""], "--out: expected a file path, got ''"),
        (["--out", str(tmp_path / "file" / "r.html")], "is not a folder"),
        (["--out", str(tmp_path / "r.html"), "--device", "bogus"], "--device: expected cpu, cuda, cuda:N or mps"),
        (["--out", str(tmp_path / "r.html"), "--device", "cuda:99"], "--device"),
    ]
    for extra, expected in cases:
        _one_line_error(capsys, ["caap", "--sample", "0", *extra], expected)
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["caap", "--sample", "0", "--device", "cuda", "--out", str(tmp_path / "r.html")],
                        "--device: 'cuda' asked for, but no CUDA GPU is available")


def test_bad_image_files_fail_in_one_line_before_any_model_is_built(tmp_path, capsys, no_model, monkeypatch):
    from PIL import Image as PILImage

    out = str(tmp_path / "r.html")
    _one_line_error(capsys, ["caap", "--image", str(tmp_path), "--out", out], "--image: expected an image file, got a directory")
    _one_line_error(capsys, ["caap", "--image", str(tmp_path / "none.png"), "--out", out], "--image: no such file")
    (tmp_path / "text.png").write_text("not an image")
    _one_line_error(capsys, ["caap", "--image", str(tmp_path / "text.png"), "--out", out], "--image: not a readable image")
    big = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((40, 50, 3), np.uint8)).save(big)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)  # 2000 pixels > 2 x 500: a decompression bomb to PIL
    _one_line_error(capsys, ["caap", "--image", str(big), "--out", out], "--image: image too large to open safely")


def test_help_documents_that_out_is_replaced():
    from vit_patching.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["caap"]
    text = " ".join(sub.format_help().split())
    assert "an existing file is replaced" in text and "0 <= TARGET < number of classes" in text


# ------------------------------------------------------------------------------------------------- image files
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from vit_patching import cli, files

    ramp = np.linspace(0, 65535, 12 * 10).reshape(10, 12).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    rgb = np.asarray(files.load_image(path))
    want = np.rint(ramp / 257.0).astype(np.uint8)  # 65535 -> 255, 32768 -> 128, 0 -> 0
    assert rgb.shape == (10, 12, 3) and np.array_equal(rgb[..., 0], want) and np.array_equal(rgb[..., 2], want)
    assert cli.load_image is files.load_image  # the CLI reads --image with it


def test_exif_orientation_is_applied(tmp_path):
    from vit_patching.files import load_image

    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue
    stored[:, 20:] = (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=95)
    shown = np.asarray(load_image(path)).astype(int)
    assert shown.shape == (40, 20, 3)  # shown upright: 20 wide, 40 high
    # Rotating clockwise puts the stored left (red) half on top.
    assert shown[5, 10, 0] > 200 and shown[5, 10, 2] < 60 and shown[35, 10, 2] > 200 and shown[35, 10, 0] < 60


# ------------------------------------------------------------------------------------------------------ samples
def test_sample_generates_only_its_chunk_equal_to_full_generation(monkeypatch):
    from vit_patching.zoo import datasets

    full = datasets.generate("shapes", n=300, seed=0)
    for i in (0, 7, 255, 256, 299):  # both sides of the first chunk boundary (CHUNK = 256)
        one = datasets.generate_sample("shapes", i, seed=0)
        assert torch.equal(one.images[0], full.images[i]) and torch.equal(one.masks[0], full.masks[i])
        assert int(one.labels[0]) == int(full.labels[i])


def test_large_sample_index_does_not_generate_the_samples_before_it(tmp_path, monkeypatch):
    from vit_patching.zoo import datasets

    calls = []
    real = datasets._sample_chunk_complete
    monkeypatch.setattr(datasets, "_sample_chunk_complete", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    out = tmp_path / "r.html"
    assert main(["caap", "--sample", "100000", "--window", "0:1", "--out", str(out)]) == 0
    assert calls == [datasets.CHUNK]  # one chunk of scenes, not 391
    assert "sample 100000 of the shipped" in out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- atomic writes
def test_failed_write_keeps_the_old_report_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    """A file size limit (as with `ulimit -f 1000`) makes the 4.8 MB report fail halfway.

    In this process (no interpreter start-up): the soft limit and the SIGXFSZ handler are restored afterwards.
    """
    import resource
    import signal

    out = tmp_path / "r.html"
    out.write_text("OLD REPORT")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, hard))
    try:
        status = main(["caap", "--sample", "0", "--window", "0:1", "--out", str(out)])
    except SystemExit as exit_:
        status = exit_.code
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err
    assert status == 1, err[-2000:]  # an I/O fault (EFBIG, as a full disk), not a wrong option: status 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--out: could not write" in lines[0] and "File too large" in lines[0], lines
    assert out.read_text() == "OLD REPORT"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


# ------------------------------------------------------------------------------------------------ --pretrained
def test_pretrained_without_cached_weights_fails_at_once_in_one_line(tmp_path):
    image = tmp_path / "x.png"
    Image.fromarray(np.full((30, 20, 3), 128, dtype="uint8")).save(image)
    env = {**os.environ, "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(README.parent)}
    proc = subprocess.run([sys.executable, "-m", "vit_patching.cli", "caap", "--model", "vit_tiny_patch16_224",
                           "--pretrained", "--image", str(image), "--out", str(tmp_path / "r.html")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # no retry warnings
    assert "--pretrained: the weights of 'vit_tiny_patch16_224'" in lines[0] and "not in the local" in lines[0]


def test_report_shows_the_neutral_prediction_and_its_warning():
    # A neutral that is itself an image of the explained class: the report must say so, in the summary.
    import torch

    from vit_patching.cli_report import report_sections
    from vit_patching.patching.caap import caap
    from vit_patching.zoo import get_spec, load_dataset, load_model

    model, batch = load_model("toy-shapes"), load_dataset("shapes", n=16, seed=0)
    with torch.no_grad():
        pred = model(batch.images).argmax(-1)
    k = 0
    twin = int(((pred == pred[k]) & (torch.arange(16) != k)).nonzero()[0])
    attr = caap(model, batch.images[k : k + 1], window=(0, 2), neutral=batch.images[twin])
    assert attr.warnings
    info = {"class_names": list(get_spec("toy-shapes").class_names), "model": "toy-shapes", "weights": "shipped",
            "random": False}
    summary = report_sections(attr, model, info, "test", None, 5)[0].content
    assert f"WARNING: {attr.warnings[0]}" in summary
    assert f"probability {float(attr.neutral_target_prob[0]):.3f}" in summary


def test_direction_noising_is_stated_in_the_report_with_its_colours(tmp_path, capsys):
    out = tmp_path / "noising.html"
    assert main(["caap", "--sample", "0", "--direction", "noising", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Direction: noising." in text and "lowers the explained class" in text and "drop of the explained" in text
    assert "<td>noising</td>" in text  # settings table
    default = tmp_path / "denoising.html"
    assert main(["caap", "--sample", "0", "--out", str(default)]) == 0
    assert "Direction: denoising." in default.read_text(encoding="utf-8")


def test_bad_direction_is_one_line_naming_direction_before_any_model(tmp_path, capsys, no_model):
    for extra in (["--sample", "0"], ["--dataset", "shapes", "--n", "2"]):
        line = _one_line_error(capsys, ["caap", *extra, "--direction", "sideways", "--out", str(tmp_path / "r")],
                               "--direction: expected one of ['denoising', 'noising'], got 'sideways'")
        assert "Traceback" not in line


def test_dataset_run_with_noising_records_the_direction(tmp_path):
    import json

    out = tmp_path / "run"
    assert main(["caap", "--dataset", "shapes", "--n", "2", "--direction", "noising", "--no-progress", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["caap"]["direction"] == "noising"
    assert "Direction: noising" in (out / "gallery.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ colour legend
def _figure_colour(fig, value: float) -> tuple[float, float, float]:
    """The RGB colour the figure's map draws for ``value``, read from the figure's own colour axis."""
    import plotly.colors

    heatmap = next(t for t in fig.data if t.type == "heatmap")
    axis = fig.layout[heatmap.coloraxis]
    scale = [(float(t), c) for t, c in axis.colorscale]
    if axis.reversescale:
        scale = [(1 - t, c) for t, c in reversed(scale)]
    t = min(max((value - axis.cmin) / (axis.cmax - axis.cmin), 0.0), 1.0)
    rgb = [c if c.startswith("rgb(") else "rgb(" + ",".join(c[5:].split(",")[:3]) + ")" for _, c in scale]
    colour = plotly.colors.sample_colorscale([[s, c] for (s, _), c in zip(scale, rgb)], [t], colortype="tuple")[0]
    return tuple(float(v) for v in colour)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_report_colour_sentence_matches_the_colours_drawn(tmp_path, monkeypatch, direction):
    """The Summary's "Colours:" sentence names, for "raises" and "lowers", the colours the report's figures draw
    for values above and below their centre; the centre is the neutral score (denoising) or no drop (noising)."""
    import vit_patching.plotting as plotting

    captured = {}
    real = plotting.write_report

    def capture(path, title, sections, settings):
        captured["sections"] = sections
        return real(path, title, sections, settings)

    monkeypatch.setattr(plotting, "write_report", capture)
    assert main(["caap", "--sample", "0", "--window", "0:2", "--direction", direction,
                 "--out", str(tmp_path / "r.html")]) == 0
    sections = {s.heading: s for s in captured["sections"]}
    summary = sections["Summary"].content
    sentence = next(line for line in summary.split("\n\n") if line.startswith("Colours:"))
    # "<colour> = ... raises ..." and "<colour> = ... lowers ...": the word before " = " of each clause.
    named = {verb: re.search(r"(\w+) = [^,;=]*\b" + verb, sentence) for verb in ("raises", "lowers")}
    assert all(named.values()), sentence
    named = {verb: m.group(1) for verb, m in named.items()}
    scores = {row["quantity"]: row["value"] for row in sections["Scores"].content}
    for title in ("Attribution over the image", "Patch-grid map"):
        fig = sections[title].content
        heatmap = next(t for t in fig.data if t.type == "heatmap")
        axis = fig.layout[heatmap.coloraxis]
        centre = (axis.cmin + axis.cmax) / 2
        z = np.asarray(heatmap.z, dtype=float)
        if direction == "denoising":  # values are patched scores, centred on the unpatched neutral's score
            raises, lowers = np.nanmax(z), np.nanmin(z)
            assert "above the neutral context" in sentence
            assert centre == pytest.approx(scores["neutral logit (unpatched neutral context)"], abs=1e-6)
        else:  # values are score drops (input minus patched run): a positive drop means the score was lowered
            raises, lowers = np.nanmin(z), np.nanmax(z)
            assert centre == 0.0 and "replacing this patch" in sentence
        assert lowers != raises and (raises - centre) * (lowers - centre) < 0  # both signs occur in this map
        for verb, value in (("raises", raises), ("lowers", lowers)):
            r, _, b = _figure_colour(fig, value)
            drawn = "red" if r > b else "blue"
            assert named[verb] == drawn, (title, verb, value, centre, sentence)


def test_colour_legend_refuses_figures_that_disagree_and_follows_a_reversed_scale():
    import plotly.graph_objects as go

    from vit_patching.cli_report import colour_line, scale_colours
    from vit_patching.patching.caap import caap
    from vit_patching.zoo import load_dataset, load_model

    def fig(scale: str, reverse: bool = False):
        f = go.Figure(go.Heatmap(z=[[-1.0, 1.0]], coloraxis="coloraxis"))
        return f.update_layout(coloraxis=dict(colorscale=scale, reversescale=reverse, cmin=-1.0, cmax=1.0))

    assert scale_colours(fig("RdBu")) == {"above": "blue", "centre": "white", "below": "red"}
    assert scale_colours(fig("RdBu", reverse=True)) == {"above": "red", "centre": "white", "below": "blue"}
    assert scale_colours(fig("RdBu_r")) == scale_colours(fig("RdBu", reverse=True))
    attr = caap(load_model("toy-shapes"), load_dataset("shapes", n=1).images, window=(0, 1))
    assert colour_line(attr, {"a": fig("RdBu_r")}).startswith("Colours: red = this patch alone raises")
    with pytest.raises(ValueError, match="figures: expected one colour for the values above the centre"):
        colour_line(attr, {"a": fig("RdBu"), "b": fig("RdBu_r")})


def test_report_names_the_neutral_that_auto_picked():
    from vit_patching.cli_report import report_sections
    from vit_patching.patching.caap import caap
    from vit_patching.zoo import get_spec, load_dataset, load_model

    model, batch = load_model("toy-shapes"), load_dataset("shapes", n=4, seed=0)
    info = {"class_names": list(get_spec("toy-shapes").class_names), "model": "toy-shapes", "weights": "shipped",
            "random": False}
    picked = []
    for k in range(4):
        attr = caap(model, batch.images[k : k + 1], window=(0, 2), neutral="auto")
        picked.append(attr.neutral_choice[0])
        summary = report_sections(attr, model, info, "test", None, 5)[0].content
        assert f"'auto' neutral context (picked for this image: '{attr.neutral_choice[0]}')" in summary
    assert len(set(picked)) > 1  # the picks differ, so the line is not a constant


def test_non_finite_model_output_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    """A NaN in the weights gives a report of nothing: the CLI stops with one line naming what was not finite."""
    import torch

    import vit_patching.zoo as zoo

    real = zoo.load_model

    def with_nan(name="toy-shapes"):
        model = real(name)
        with torch.no_grad():
            model.blocks[0].attn.W_Q[0, 0, 0] = float("nan")
        return model

    monkeypatch.setattr(zoo, "load_model", with_nan)
    out = tmp_path / "r.html"
    with pytest.raises(SystemExit) as e:
        main(["caap", "--sample", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "source logits" in err and "expected finite values" in err and not out.exists()

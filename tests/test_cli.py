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
    png = screenshot_html(html, tmp_path / "shot.png", width=1000, height=1400)
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
    pixels = _rendered_png(out, tmp_path)
    assert (pixels.std(axis=2) > 40).mean() > 0.01  # coloured map/image pixels, not a blank or error page
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
    ],
)
def test_usage_errors_exit_2_and_name_the_option(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as err:
        main(["caap", *args, "--out", str(tmp_path / "r.html")])
    assert err.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()

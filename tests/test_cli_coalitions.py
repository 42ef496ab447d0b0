"""``vit-patching caap --coalitions N`` (coalition CAAP) and ``--interactions K``: the report's map, standard error
and interactions equal the library's functions called directly, a dataset run stores what single-image runs give,
and bad values are one line with status 2 naming the option (before any model where no model is needed)."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vit_patching.plotting as plotting
from vit_patching.cli import main
from vit_patching.patching.caap_interactions import caap_interactions
from vit_patching.patching.caap_shapley import caap_shapley
from vit_patching.zoo import load_dataset, load_model
from vit_patching.zoo.datasets import generate_sample

COALITION = ["--window", "0:2", "--coalitions", "4", "--coalition-groups", "2", "--coalition-seed", "3"]


@pytest.fixture(scope="module")
def model():
    return load_model("toy-shapes")


@pytest.fixture
def sections(monkeypatch):
    """The sections of every report written, by heading (the report is still written)."""
    seen: dict[str, plotting.ReportSection] = {}
    write = plotting.write_report

    def record(path, title, secs, settings):
        seen.update({s.heading: s for s in secs})
        seen["settings"] = settings
        return write(path, title, secs, settings)

    monkeypatch.setattr(plotting, "write_report", record)
    return seen


def _heatmap_z(section) -> torch.Tensor:
    z = next(t.z for t in section.content.data if t.type == "heatmap")
    return torch.tensor(np.asarray(z, dtype=np.float64))


def test_single_image_report_equals_caap_shapley_and_its_interactions(model, tmp_path, sections):
    out = tmp_path / "r.html"
    assert main(["caap", "--sample", "1", *COALITION, "--interactions", "3", "--out", str(out)]) == 0
    x = generate_sample("shapes", 1, seed=0).images
    with torch.inference_mode():
        ref = caap_shapley(model, x, None, (0, 2), n_permutations=4, groups=2, seed=3)
        inter = caap_interactions(model, x, ref, k=3)
    torch.testing.assert_close(_heatmap_z(sections["Patch-grid map"]), ref.map[0].double(), atol=0, rtol=0)
    torch.testing.assert_close(_heatmap_z(sections["Standard error per patch"]), ref.standard_error[0].double(),
                               atol=0, rtol=0)
    assert float(ref.standard_error.max()) > 0  # a spread to show, not a blank panel
    rows = {r["quantity"]: r["value"] for r in sections["Efficiency check"].content}
    assert rows["v(all): every player pinned"] == float(ref.v_all[0])
    assert rows["v(empty): no player pinned"] == float(ref.v_empty[0])
    assert abs(rows["sum of the Shapley map"] - rows["v(all) - v(empty)"]) < 1e-5  # efficiency, float32 map
    pairs = sections["Pairs by |pairwise interaction|"].content
    off = inter.matrix[0][~torch.eye(3, dtype=torch.bool)]
    assert sorted(r["pairwise interaction"] for r in pairs) == sorted(off.unique().tolist())
    summary = sections["Summary"].content
    assert "Coalition CAAP (denoising; Shapley values, 4 antithetic permutations, players: each 2x2 block" in summary
    assert "Efficiency: the Shapley map sums to" in summary and "a positive Shapley value" in summary
    assert sections["settings"]["method"] == "coalition CAAP (Shapley, 4 permutations, groups 2)"
    text = out.read_text(encoding="utf-8")
    assert ">Standard error per patch</h2>" in text and ">Interactions of the top 3 patches</h2>" in text
    assert "The 3 strongest pairs by |pairwise interaction|" in text  # 3 patches: 3 pairs


def _drawn(fig, value: float) -> str:
    """"red" or "blue": the colour the figure's heatmap draws for ``value``, from its own colour axis."""
    import plotly.colors

    heatmap = next(t for t in fig.data if t.type == "heatmap")
    axis = fig.layout[heatmap.coloraxis]
    scale = [(float(t), c) for t, c in axis.colorscale]
    if axis.reversescale:
        scale = [(1 - t, c) for t, c in reversed(scale)]
    rgb = [c if c.startswith("rgb(") else "rgb(" + ",".join(c[5:].split(",")[:3]) + ")" for _, c in scale]
    t = min(max((value - axis.cmin) / (axis.cmax - axis.cmin), 0.0), 1.0)
    r, _, b = plotly.colors.sample_colorscale([[s, c] for (s, _), c in zip(scale, rgb)], [t], colortype="tuple")[0]
    return "red" if r > b else "blue"


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_colour_sentence_of_shapley_values_matches_the_colours_drawn(tmp_path, sections, direction):
    argv = ["caap", "--sample", "0", *COALITION, "--direction", direction, "--out", str(tmp_path / "r.html")]
    assert main(argv) == 0
    sentence = next(p for p in sections["Summary"].content.split("\n\n") if p.startswith("Colours:"))
    positive = re.search(r"(\w+) = a positive Shapley value", sentence).group(1)
    negative = re.search(r"(\w+) = a negative one", sentence).group(1)
    for heading in ("Attribution over the image", "Patch-grid map"):
        fig = sections[heading].content
        heatmap = next(t for t in fig.data if t.type == "heatmap")
        axis = fig.layout[heatmap.coloraxis]
        assert (axis.cmin + axis.cmax) / 2 == pytest.approx(0.0, abs=1e-9)  # Shapley values: centred on 0
        z = np.asarray(heatmap.z, dtype=float)
        assert np.nanmax(z) > 0 > np.nanmin(z)  # both signs occur in this map
        assert _drawn(fig, float(np.nanmax(z))) == positive and _drawn(fig, float(np.nanmin(z))) == negative


def test_shapley_interaction_kind_in_the_report(model, tmp_path, sections):
    out = tmp_path / "r.html"
    argv = ["caap", "--sample", "0", "--window", "0:2", "--interactions", "2", "--interaction-kind", "shapley",
            "--coalitions", "4", "--coalition-groups", "4", "--out", str(out)]
    assert main(argv) == 0
    x = generate_sample("shapes", 0, seed=0).images
    with torch.inference_mode():
        ref = caap_shapley(model, x, None, (0, 2), n_permutations=4, groups=4)
        inter = caap_interactions(model, x, ref, k=2, kind="shapley", n_permutations=4)
    (row,) = sections["Pairs by |Shapley interaction index|"].content
    assert row["Shapley interaction index"] == float(inter.matrix[0, 0, 1])


def test_dataset_run_equals_caap_shapley_and_single_image_runs(model, tmp_path, sections):
    out = tmp_path / "run"
    argv = ["caap", "--dataset", "shapes", "--n", "3", "--chunk-size", "2", *COALITION, "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    maps = load_file(out / "maps.safetensors")
    x = load_dataset("shapes", n=3, seed=0).images
    for s, e in ((0, 2), (2, 3)):  # each chunk is caap_shapley of its images, bit for bit
        with torch.inference_mode():
            ref = caap_shapley(model, x[s:e], None, (0, 2), n_permutations=4, groups=2, seed=3)
        for key, want in (("map", ref.map), ("standard_error", ref.standard_error), ("v_all", ref.v_all),
                          ("v_empty", ref.v_empty), ("target", ref.target)):
            assert torch.equal(maps[key][s:e], want), key
    rows = list(csv.DictReader((out / "results.csv").open()))
    for i, r in enumerate(rows):
        assert float(r["v_all"]) == float(maps["v_all"][i]) and float(r["v_empty"]) == float(maps["v_empty"][i])
        assert float(r["mean_se"]) == float(maps["standard_error"][i].mean())
        # efficiency per image, from what the CSV and the maps hold
        assert abs(float(maps["map"][i].double().sum()) - (float(r["v_all"]) - float(r["v_empty"]))) < 1e-5
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"] == "coalition CAAP (Shapley, 4 permutations, groups 2)"
    assert settings["caap"]["coalitions"] == 4 and settings["caap"]["coalition_seed"] == 3
    assert "coalition CAAP (Shapley, 4 permutations, groups 2)" in (out / "gallery.html").read_text(encoding="utf-8")
    # The single-image run of each image gives its dataset row (other batch shapes: float32 rounding apart).
    for i in range(3):
        assert main(["caap", "--sample", str(i), *COALITION, "--out", str(tmp_path / f"{i}.html")]) == 0
        single = _heatmap_z(sections["Patch-grid map"])
        torch.testing.assert_close(single, maps["map"][i].double(), atol=2e-7, rtol=0)  # observed <= 6.0e-8
        torch.testing.assert_close(_heatmap_z(sections["Standard error per patch"]),
                                   maps["standard_error"][i].double(), atol=2e-7, rtol=0)


def _one_line(capsys, argv, expected, status=2):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == status and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("source", [["--sample", "0"], ["--dataset", "shapes", "--n", "2"]])
@pytest.mark.parametrize("extra, expected", [
    (["--coalitions", "3"], "--coalitions: expected 0 (single-patch CAAP) or an even number >= 4"),
    (["--coalitions", "-2"], "--coalitions: expected 0 (single-patch CAAP) or an even number >= 4 of permutations "
                             "(antithetic pairs; the standard error needs two pairs), got -2"),
    (["--coalitions", "2"], "--coalitions: expected 0"),
    (["--coalitions", "4", "--coalition-groups", "0"], "--coalition-groups: expected a positive int"),
    (["--coalitions", "4", "--coalition-seed", "-1"], "--coalition-seed: expected"),
    (["--coalition-groups", "2"], "--coalition-groups/--coalition-seed: they set coalition CAAP; add --coalitions"),
])
def test_bad_values_are_one_line_before_any_model(tmp_path, capsys, no_model, source, extra, expected):
    _one_line(capsys, ["caap", *source, *extra, "--out", str(tmp_path / "o")], expected)
    assert not (tmp_path / "o").exists()


def test_interactions_errors_are_one_line(tmp_path, capsys, no_model):
    _one_line(capsys, ["caap", "--dataset", "shapes", "--n", "2", "--interactions", "3", "--out", str(tmp_path / "o")],
              "--interactions: single-image reports only")
    _one_line(capsys, ["caap", "--sample", "0", "--interactions", "1", "--out", str(tmp_path / "o.html")],
              "--interactions: expected a number of patches >= 2 (pairs), got 1")


def test_groups_that_do_not_tile_the_grid_are_one_line(tmp_path, capsys):
    for source in (["--sample", "0"], ["--dataset", "shapes", "--n", "2"]):
        _one_line(capsys, ["caap", *source, "--coalitions", "4", "--coalition-groups", "3", "--out", str(tmp_path / "o")],
                  "--coalition-groups: expected a block side that divides the 8x8 patch grid (1, 2, 4, 8), got 3")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o" / "chunks").glob("*.safetensors"))
    _one_line(capsys, ["caap", "--sample", "0", "--interactions", "65", "--out", str(tmp_path / "o.html")],
              "--interactions: expected at most the 64 patches of the grid, got 65")


def test_docstring_examples_run():
    import doctest

    import vit_patching.cli_coalition as cli_coalition
    from vit_patching import checks
    from vit_patching.runs import chunks

    result = doctest.testmod(cli_coalition, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 2
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for fn in (checks.check_coalitions, checks.check_block_size, chunks.validate_chunk):
        for test in doctest.DocTestFinder().find(fn, globs={fn.__name__: fn, "torch": torch}):
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0 and runner.tries >= 5

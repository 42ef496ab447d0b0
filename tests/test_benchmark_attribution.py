"""The attribution benchmark: statistics, resume, sharding (in-process and with 2 real processes), outputs."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_patching.attribution import get_method
from vit_patching.benchmark import (
    BenchmarkConfig,
    BenchmarkData,
    BenchmarkResult,
    chunk_ranges,
    evaluate_maps,
    figures,
    folder_data,
    markdown_table,
    mean_ci,
    merge,
    run_shard,
    t_quantile,
    update_docs,
    validate_partial,
    write_csv,
)
from vit_patching.benchmark.stats import selection_split, summary_rows
from vit_patching.model import HookedViT

ROOT = Path(__file__).resolve().parents[1]
TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 5}


def tiny_model() -> HookedViT:
    torch.manual_seed(0)
    return HookedViT.from_timm("vit_tiny_patch16_224", **TINY)


def tiny_data(n: int = 5, masks: bool = True) -> BenchmarkData:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    m = torch.zeros(n, 32, 32, dtype=torch.bool)
    m[:, 8:20, 4:16] = True
    m[-1] = False  # an empty mask: the pointing game must skip it
    return BenchmarkData(images=images, labels=torch.arange(n) % 5, masks=m if masks else None, source={"data": "test"})


CFG = dict(methods=["rollout", "random"], chunk_size=2, batch_size=32)


# ---------------------------------------------------------------------------------------------------- statistics
def test_t_quantile_known_values():
    # Reference values from standard t tables (7 digits).
    for df, ref in [(1, 12.7062047), (2, 4.3026527), (5, 2.5705818), (10, 2.2281389), (63, 1.9983405), (1000, 1.9623391)]:
        assert t_quantile(0.975, df) == pytest.approx(ref, abs=1e-6)
    assert t_quantile(0.5, 7) == 0.0 and t_quantile(0.025, 5) == -t_quantile(0.975, 5)
    with pytest.raises(ValueError, match="p: expected a probability"):
        t_quantile(1.0, 3)


def test_mean_ci_ignores_nan_and_matches_the_formula():
    mean, half, n = mean_ci([1.0, 2.0, float("nan"), 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert (mean, n) == (pytest.approx(7 / 3), 3) and half == pytest.approx(4.3026527 * sd / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([2.0])[1]) and mean_ci([])[2] == 0


def test_chunks_and_config_errors():
    assert chunk_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="unit: expected one of"):
        BenchmarkConfig(methods=["rollout"], unit="row")
    with pytest.raises(ValueError, match="method_options: options given for methods not in the run"):
        BenchmarkConfig(methods=["rollout"], method_options={"rise": {"n_masks": 3}})
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        BenchmarkConfig(methods=["rollout"], chunk_size=0)
    with pytest.raises(ValueError, match="insertion_substrate: expected one of"):
        BenchmarkConfig(methods=["rollout"], insertion_substrate="grey")
    with pytest.warns(DeprecationWarning, match="'zero' is deprecated"):
        assert BenchmarkConfig(methods=["rollout"], deletion_substrate="zero").deletion_substrate == "zeros"


# ------------------------------------------------------------------------------------------------------ metrics
def test_evaluate_maps_uses_the_evaluation_metrics():
    from vit_patching import evaluation as ev

    model, data = tiny_model(), tiny_data(3)
    maps = get_method("gae", model).attribute(data.images)
    metrics, curves = evaluate_maps(model, data.images, maps, data.labels, data.masks, batch_size=32, pg_tolerance=0)
    assert sorted(metrics) == sorted(["insertion", "deletion", "ins_minus_del", "pos_perturbation", "neg_perturbation",
                                      "pointing_game", "energy_pg", "mask_iou", "mask_ap"])
    ins = ev.insertion_auc(model, data.images, maps.patch_map, maps.target, unit="patch")
    assert metrics["insertion"] == pytest.approx(ins.auc.tolist())
    assert len(curves["insertion"][0]) == 17  # 16 patches + the start
    pos = ev.perturbation_test(model, data.images, maps.patch_map, data.labels, order="positive", unit="patch",
                               substrate=ev.black_substrate((0.5,) * 3, (0.5,) * 3))
    assert sum(metrics["pos_perturbation"]) / 3 == pytest.approx(pos.auc)  # per-image AUCs average to the set AUC
    assert math.isnan(metrics["pointing_game"][2])  # empty mask
    no_masks, _ = evaluate_maps(model, data.images, maps, None, None)
    assert "pointing_game" not in no_masks
    zero, zc = evaluate_maps(model, data.images, maps, None, None, insertion_substrate="zeros", deletion_substrate="blur")
    ins0 = ev.insertion_auc(model, data.images, maps.patch_map, maps.target, unit="patch", substrate="zero")
    del_blur = ev.deletion_auc(model, data.images, maps.patch_map, maps.target, unit="patch", substrate="blur")
    assert zero["insertion"] == pytest.approx(ins0.auc.tolist()) and zero["deletion"] == pytest.approx(del_blur.auc.tolist())


# ------------------------------------------------------------------------------------------ resume and sharding
def test_resume_skips_finished_chunks_and_redoes_stale_ones(tmp_path):
    model, data = tiny_model(), tiny_data()
    cfg = BenchmarkConfig(**CFG)
    assert run_shard(model, data, cfg, tmp_path) == {"computed": 6, "skipped": 0}
    first = (tmp_path / "partials/random/000002-000004.json").read_text()
    assert run_shard(model, data, cfg, tmp_path) == {"computed": 0, "skipped": 6}
    (tmp_path / "partials/rollout/000000-000002.json").unlink()  # a chunk lost in an interrupted run
    (tmp_path / "partials/random/000004-000005.json").write_text("{truncated")  # a corrupt file
    assert run_shard(model, data, cfg, tmp_path) == {"computed": 2, "skipped": 4}
    changed = BenchmarkConfig(**{**CFG, "method_options": {"random": {"seed": 1}}})
    assert run_shard(model, data, changed, tmp_path) == {"computed": 3, "skipped": 3}  # new settings: recomputed
    assert (tmp_path / "partials/random/000002-000004.json").read_text() != first
    other = tiny_data()
    other.images[3] += 0.5  # different images in chunk [2, 4): its results no longer apply
    assert run_shard(model, other, changed, tmp_path) == {"computed": 2, "skipped": 4}
    assert run_shard(model, data, cfg, tmp_path, resume=False) == {"computed": 6, "skipped": 0}


def test_manual_shards_merge_to_the_single_process_result(tmp_path):
    model, data = tiny_model(), tiny_data()
    cfg = BenchmarkConfig(**CFG)
    run_shard(model, data, cfg, tmp_path / "one")
    with pytest.raises(RuntimeError, match="results are missing"):
        run_shard(model, data, cfg, tmp_path / "two", rank=1, world_size=2)
        merge(model, data, cfg, tmp_path / "two")
    run_shard(model, data, cfg, tmp_path / "two", rank=0, world_size=2)
    one, two = merge(model, data, cfg, tmp_path / "one"), merge(model, data, cfg, tmp_path / "two")
    strip = lambda rows: [r for r in rows if r["metric"] != "seconds_per_image"]  # noqa: E731
    assert json.dumps(strip(one.rows)) == json.dumps(strip(two.rows))
    assert one.per_image == two.per_image and torch.equal(one.patch_maps["rollout"], two.patch_maps["rollout"])
    assert one.row("rollout", "pointing_game")["n"] == 4  # the empty mask is excluded
    with pytest.raises(ValueError, match="rank, world_size"):
        run_shard(model, data, cfg, tmp_path, rank=2, world_size=2)


def test_table_lists_every_method_on_every_metric_with_ranks(tmp_path):
    model, data = tiny_model(), tiny_data()
    cfg = BenchmarkConfig(methods=["rollout", "caap", "random"], method_options={"caap": {"window": (0, 1)}}, chunk_size=5)
    run_shard(model, data, cfg, tmp_path)
    result = merge(model, data, cfg, tmp_path)
    table = markdown_table(result)
    lines = table.splitlines()
    assert lines[0].count("|") == 1 + 9 + 2  # method + 9 metrics + time
    assert [l.split("|")[1].strip() for l in lines[2:5]] == ["rollout", "**caap**", "random"]
    assert "Rank of `caap`" in table and "Speed rank of `caap`" in table
    for metric in ("insertion", "deletion", "mask_ap"):
        means = {m: result.row(m, metric)["mean"] for m in cfg.methods}
        best = max(means.values()) if metric != "deletion" else min(means.values())
        assert all((result.row(m, metric)["rank"] == 1) == (means[m] == best) for m in cfg.methods)
    paired = {c["metric"]: c for c in result.paired("caap")}
    for metric, c in paired.items():  # best other on the first 2 of 5 images, paired over the other 3
        sign = 1 if metric != "deletion" and metric != "pos_perturbation" else -1
        sel = {m: mean_ci(result.per_image[m][metric][:2])[0] for m in ("rollout", "random")}
        assert c["versus"] == max([m for m in sel if math.isfinite(sel[m])], key=lambda m: sign * sel[m])
        diffs = [a - b for a, b in zip(result.per_image["caap"][metric][2:], result.per_image[c["versus"]][metric][2:])
                 if math.isfinite(a) and math.isfinite(b)]
        assert (c["diff"], c["ci95"], c["n"]) == mean_ci(diffs)
        significant = math.isfinite(c["ci95"]) and abs(c["diff"]) > c["ci95"]
        assert (c["verdict"] == "no significant difference") == (not significant)
    assert "caap − other" in table
    csv = write_csv(result, tmp_path / "results.csv").read_text().splitlines()
    assert csv[0] == "method,metric,higher_is_better,mean,ci95,n,rank,n_methods,discriminating" and len(csv) == 1 + 3 * 10
    doc = tmp_path / "bench.md"
    update_docs(doc, "tiny", "### tiny\nv1")
    update_docs(doc, "other", "### other\nw")
    update_docs(doc, "tiny", "### tiny\nv2")
    text = doc.read_text()
    assert "v2" in text and "v1" not in text and text.index("tiny") < text.index("other")


def _split_result(**selection) -> BenchmarkResult:
    """8 images; on the first half `a` is the best non-CAAP method on insertion, on the second half `b` is."""
    per_image = {
        "caap": {"insertion": [0.70, 0.72, 0.74, 0.76, 0.60, 0.62, 0.64, 0.66]},
        "caap_noising": {"insertion": [0.99] * 8},  # a CAAP variant: never the "other" method
        "caap_shapley": {"insertion": [0.98] * 8},  # another
        "a": {"insertion": [0.80, 0.82, 0.84, 0.86, 0.10, 0.12, 0.10, 0.12]},
        "b": {"insertion": [0.50, 0.52, 0.54, 0.56, 0.70, 0.71, 0.73, 0.74]},
    }
    seconds = {m: 1.0 for m in per_image}
    return BenchmarkResult(summary_rows(per_image, seconds, 8), per_image, {}, {}, seconds, {}, **selection)


def test_best_other_method_is_chosen_on_the_selection_split_and_tested_on_the_report_split():
    result = _split_result()
    # over all 8 images b (0.625) beats a (0.470); on the selection half (images 0-3) a wins (0.83 > 0.53)
    assert result.row("b", "insertion")["rank"] < result.row("a", "insertion")["rank"]
    for method in ("caap", "caap_noising", "caap_shapley"):
        (c,) = result.paired(method)
        assert c["versus"] == "a" and c["n_selection"] == 4 and c["n"] == 4
        expected = mean_ci([x - y for x, y in zip(result.per_image[method]["insertion"][4:], result.per_image["a"]["insertion"][4:])])
        assert (c["diff"], c["ci95"], c["n"]) == expected
    (c,) = result.paired("caap")
    assert c["diff"] == pytest.approx(0.52) and c["verdict"] == "better"
    # selecting on the first 6 images instead: a still wins there (0.590 > 0.588)
    (c6,) = _split_result(selection_n=6).paired("caap")
    assert c6["versus"] == "a" and c6["n"] == 2 and c6["n_selection"] == 6
    # a fraction of 1/8 selects image 0 only
    (c1,) = _split_result(selection_fraction=0.125).paired("caap")
    assert c1["versus"] == "a" and c1["n"] == 7
    table = markdown_table(result)
    assert "`caap` against the best other method" in table and "`caap_noising` against the best other method" in table
    assert "first 4 of 8" in table and "Means ± 95 % CI over all 8 images" in table
    assert "| **caap_noising** |" in table and "| **caap_shapley** |" in table


def test_selection_split_known_answers_and_errors():
    assert selection_split(8) == (range(4), range(4, 8))
    assert selection_split(5, 0.5) == (range(2), range(2, 5))
    assert selection_split(5, selection_n=3) == (range(3), range(3, 5))
    for kwargs, name in (({"selection_fraction": 1.0}, "selection_fraction"), ({"selection_fraction": 0.0}, "selection_fraction"),
                         ({"selection_n": 5}, "selection_n"), ({"selection_n": 0}, "selection_n")):
        with pytest.raises(ValueError, match=name):
            selection_split(5, **kwargs)


def _result_with_insertion_starts(starts: list[float]) -> BenchmarkResult:
    per_image = {"a": {"insertion": [0.5] * len(starts)}}
    curves = {"a": {"insertion": [[s, 1.0] for s in starts]}}
    return BenchmarkResult(summary_rows(per_image, {"a": 1.0}, len(starts)), per_image, curves, {}, {"a": 1.0}, {})


def test_saturation_note_known_answers():
    # The insertion game starts at the substrate's probability; a mean start above 0.9 cannot separate methods.
    (note,) = _result_with_insertion_starts([0.95, 0.99, 0.97]).notes()
    assert "starts saturated" in note and "mean probability of 0.970" in note
    assert _result_with_insertion_starts([0.5, 1.0]).notes() == []  # mean 0.75
    assert _result_with_insertion_starts([0.9, 0.9]).notes() == []  # exactly 0.9 is not above it


# ------------------------------------------------------------------------------------- partial-file validation
def _rewrite(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def test_partials_that_do_not_validate_are_recomputed_with_a_warning(tmp_path, caplog):
    model, data = tiny_model(), tiny_data(5)
    cfg = BenchmarkConfig(**CFG)
    run_shard(model, data, cfg, tmp_path)
    p = tmp_path / "partials" / "rollout"
    (p / "000000-000002.json").write_text("[1, 2, 3]")  # valid JSON, not an object
    (p / "000002-000004.json").write_bytes(b'{"fingerprint": "\xff\xfe"}')  # not UTF-8
    _rewrite(p / "000004-000005.json", lambda d: d.pop("curves"))  # a missing key
    q = tmp_path / "partials" / "random"
    # Per-image lists one entry too long, fingerprint intact: merged as is, this chunk would count 2 images.
    _rewrite(q / "000004-000005.json", lambda d: [d["metrics"][k].append(0.5) for k in d["metrics"]])
    _rewrite(q / "000000-000002.json", lambda d: d["metrics"].update(insertion="0.5"))  # wrong type
    with caplog.at_level(logging.WARNING, logger="vit_patching.benchmark.runner"):
        assert run_shard(model, data, cfg, tmp_path) == {"computed": 5, "skipped": 1}
    warned = [r.getMessage() for r in caplog.records if "ignoring invalid partial result" in r.getMessage()]
    assert len(warned) == 5
    assert any("expected a JSON object, got list" in w for w in warned)
    assert any("not UTF-8" in w for w in warned)
    assert any("missing key 'curves'" in w for w in warned)
    assert any("expected 1 entries (one per image), got 2" in w for w in warned)
    result = merge(model, data, cfg, tmp_path)
    assert result.row("random", "insertion")["n"] == 5 and len(result.per_image["random"]["mask_iou"]) == 5
    assert validate_partial({"fingerprint": "x"}, "rollout", 0, 2, ["insertion"]) == "missing key 'method'"


def test_merge_only_reports_invalid_partials_instead_of_merging_them(tmp_path):
    model, data = tiny_model(), tiny_data(4)
    cfg = BenchmarkConfig(methods=["random"], chunk_size=2)
    run_shard(model, data, cfg, tmp_path)
    _rewrite(tmp_path / "partials/random/000002-000004.json", lambda d: d["patch_maps"].append(d["patch_maps"][0]))
    with pytest.raises(RuntimeError, match="1 \\(method, chunk\\) results are missing, invalid or stale"):
        merge(model, data, cfg, tmp_path)


# ------------------------------------------------------------------------------------------------ image folders
def test_folder_loader_closes_every_file(tmp_path):
    """200 images with room for only 32 more open files: the old loader held every file open and failed.

    In this process (no interpreter start-up): the limit is set just above the descriptors already in use (a
    new descriptor takes the lowest free number) and restored afterwards.
    """
    import resource

    images, masks = _image_folder(tmp_path, n=200)
    model = tiny_model()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = 32
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + room, hard))
    try:
        data = folder_data(model, images, masks)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(data) == 200 > room and tuple(data.masks.shape) == (200, 32, 32)


def test_folder_masks_are_non_zero_pixels_in_any_channel(tmp_path):
    import numpy as np
    from PIL import Image

    for sub in ("img", "dim", "bright"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "img" / "a.png")
    dim, bright = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)
    dim[4:12, 8:16, 2] = 1  # a dim blue object: non-zero, so foreground
    bright[4:12, 8:16] = 255
    Image.fromarray(dim).save(tmp_path / "dim" / "a.png")
    Image.fromarray(bright).save(tmp_path / "bright" / "a.png")
    model = tiny_model()
    got = folder_data(model, tmp_path / "img", tmp_path / "dim").masks
    want = folder_data(model, tmp_path / "img", tmp_path / "bright").masks  # same geometry (resize + crop)
    assert torch.equal(got, want) and 0 < int(want.sum()) < 32 * 32
    with pytest.raises(ValueError, match="images_dir: expected a folder of images, got a missing path"):
        folder_data(tiny_model(), tmp_path / "nope")


# ------------------------------------------------------------------------------------------------------ figures
def test_figure_titles_escape_image_names(tmp_path):
    model, data = tiny_model(), tiny_data(2)
    evil = '<a href="https:example.com">x.png'
    data.names = [evil, "<b>bold</b>.png"]
    cfg = BenchmarkConfig(methods=["random"], chunk_size=2)
    run_shard(model, data, cfg, tmp_path)
    figs = figures(merge(model, data, cfg, tmp_path), data)
    title = figs["maps_0"].layout.title.text
    assert "<a" not in title and "&lt;a href=&quot;https:example.com&quot;&gt;x.png" in title
    assert "<b>" not in figs["maps_1"].layout.title.text
    for fig in figs.values():  # every string a figure shows: titles, annotations, trace names, axis titles
        texts = [fig.layout.title.text or ""] + [a.text or "" for a in fig.layout.annotations]
        texts += [t.name or "" for t in fig.data]
        assert not any("<a" in t or "<b>" in t for t in texts)


# ------------------------------------------------------------------------------------------ script user errors
def _script_error(capsys, argv: list[str]) -> str:
    from vit_patching.benchmark.command import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("benchmark_attribution.py: error: "), lines
    return lines[0]


def test_script_user_errors_exit_2_in_one_line_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    import vit_patching.benchmark.command as command

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the argument error")

    monkeypatch.setattr(command, "load_model_and_data", refuse)
    (tmp_path / "file").write_text("x")
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["--methods", "rollout,bogus"], "--methods: expected 'all' or names from"),
        (["--exclude", "bogus"], "--exclude"),
        (["--n", "0"], "--n: expected a positive number, got 0"),
        (["--chunk-size", "-1"], "--chunk-size"),
        (["--images", str(tmp_path / "none")], "--images: expected a folder, got a missing path"),
        (["--masks", str(tmp_path)], "--masks: needs --images"),
        (["--device", "bogus"], "--device: expected cpu, cuda, cuda:N or mps, got 'bogus'"),
        (["--option", "rollout.x"], "--option: expected METHOD.KEY=VALUE"),
        (["--methods", "rollout", "--option", "rise.n_masks=3"], "--option: 'rise.n_masks=3' sets an option of 'rise'"),
        (["--model-kwargs", "{bad"], "--model-kwargs: expected a JSON object"),
        (["--model", "no_such_model_xyz"], "--model: expected a zoo model"),
        (["--model", "vit_tiny_patch16_224"], "--images: a timm model"),
        (["--rank", "0"], "--rank: --rank and --world-size go together"),
        (["--rank", "2", "--world-size", "2"], "--rank: expected 0 <= rank < --world-size = 2, got 2"),
        (["--write-docs", str(tmp_path)], "--write-docs: expected a file path, got the existing folder"),
        (["--selection-fraction", "1"], "--selection-fraction: expected a number in (0, 1), got 1.0"),
        (["--selection-n", "0"], "--selection-n: expected a positive number, got 0"),
        (["--n", "8", "--selection-n", "8"], "--selection-n: expected fewer than --n = 8 images, got 8"),
    ]
    for argv, expected in cases:
        assert expected in _script_error(capsys, [*argv, *out]), argv
    assert "error: --out: cannot create" in _script_error(capsys, ["--out", str(tmp_path / "file")])
    assert not (tmp_path / "out").exists()


def test_script_pretrained_without_cached_weights_fails_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    images, _ = _image_folder(tmp_path / "data", n=1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = _script_error(capsys, ["--model", "vit_tiny_patch16_224", "--pretrained", "--images", str(images),
                                  "--out", str(tmp_path / "out")])
    assert "--pretrained: the weights of 'vit_tiny_patch16_224'" in line and "not in the local" in line


def test_script_errors_found_with_the_model_exit_2_before_any_chunk(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out"), "--n", "2", "--no-png", "--no-progress"]
    line = _script_error(capsys, ["--methods", "random", "--option", "random.no_such_option=1", *out])
    assert line.startswith("benchmark_attribution.py: error: --option: random:")
    line = _script_error(capsys, ["--methods", "random", "--merge-only", *out])
    assert "--merge-only: out_dir: 1 (method, chunk) results are missing" in line
    assert not (tmp_path / "out" / "partials").exists()


# --------------------------------------------------------------------------------------- script, 2 processes
def _image_folder(root: Path, n: int = 6) -> tuple[Path, Path]:
    """``n`` random 32x32 images, each with a red square, and its mask (``img/``, ``mask/``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for i in range(n):
        a = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        r, c = rng.integers(0, 24, 2)
        a[r : r + 8, c : c + 8] = (255, 0, 0)
        m = np.zeros((32, 32), np.uint8)
        m[r : r + 8, c : c + 8] = 255
        Image.fromarray(a).save(root / "img" / f"im{i}.png")
        Image.fromarray(m).save(root / "mask" / f"im{i}.png")
    return root / "img", root / "mask"


def _without_timing(out: Path) -> tuple[list[str], list[str]]:
    csv = [l for l in (out / "results.csv").read_text().splitlines() if ",seconds_per_image," not in l]
    md = [l.rsplit("|", 2)[0] if l.startswith("|") else l for l in (out / "results.md").read_text().splitlines()
          if not l.startswith("Speed rank")]
    return csv, md


def _run_in_process(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``scripts/benchmark_attribution.py`` in this process: (exit status, stderr); its --threads and log level are
    restored afterwards."""
    from vit_patching.benchmark.command import main as benchmark_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads, level = torch.get_num_threads(), logging.getLogger("vit_patching").level
    capsys.readouterr()
    try:
        status = benchmark_main(argv)
    finally:
        torch.set_num_threads(threads)
        logging.getLogger("vit_patching").setLevel(level)
    return status, capsys.readouterr().err


def test_script_two_processes_equal_one_process(tmp_path, capsys, monkeypatch):
    """Two processes under ``accelerate launch`` equal one; the one-process run and the resuming rerun are run in
    this process (the two-process run checks the script's real start-up and exit status)."""
    images, masks = _image_folder(tmp_path / "data")
    args = [
        "scripts/benchmark_attribution.py", "--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY),
        "--images", str(images), "--masks", str(masks), "--n", "6", "--chunk-size", "2",
        "--methods", "rollout,gae,occlusion,smoothgrad,caap", "--option", "smoothgrad.n_samples=4",
        "--option", "caap.window=(0, 1)", "--no-png", "--threads", "1", "--no-progress",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    status, one_err = _run_in_process([*args[1:], "--out", str(tmp_path / "one")], capsys, monkeypatch)
    assert status == 0, one_err[-3000:]
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    two = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29563", *args, "--out", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 0/2" in two.stderr and "rank 1/2" in two.stderr  # really two processes, each with its shard
    assert "rank 0/1" in one_err
    assert _without_timing(tmp_path / "one") == _without_timing(tmp_path / "two")
    md = (tmp_path / "two" / "results.md").read_text()
    assert "- command: python scripts/benchmark_attribution.py --model vit_tiny_patch16_224" in md and "--out" not in md
    shards = {p.name for p in (tmp_path / "two" / "partials" / "gae").iterdir()}
    assert shards == {"000000-000002.json", "000002-000004.json", "000004-000006.json"}
    assert (tmp_path / "two" / "curves.html").stat().st_size > 100_000  # plotly.js embedded once, offline
    status, rerun_err = _run_in_process([*args[1:], "--out", str(tmp_path / "two")], capsys, monkeypatch)
    assert status == 0 and "0 chunks computed, 15 resumed" in rerun_err


def test_merge_only_with_another_selection_split_re_reports_without_recomputing(tmp_path):
    from vit_patching.benchmark.command import main

    out = tmp_path / "out"
    base = ["--model", "toy-shapes", "--n", "4", "--chunk-size", "2", "--methods", "random,center,caap,caap_noising",
            "--no-png", "--no-progress", "--threads", "1", "--out", str(out)]
    assert main(base) == 0
    md = (out / "results.md").read_text()
    assert "the first 2 of 4" in md and "`caap_noising` against the best other method" in md
    assert "`caap` against the best other method" in md
    partials = {p: p.stat().st_mtime_ns for p in (out / "partials").rglob("*.json")}
    assert main([*base, "--merge-only", "--selection-n", "3"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "partials").rglob("*.json")} == partials
    md3 = (out / "results.md").read_text()
    assert "the first 3 of 4" in md3 and "other 1 report images" in md3
    settings = json.loads((out / "settings.json").read_text())
    assert settings["best_other_selection"].startswith("first 3 images")
    for line in md3.splitlines():  # the CAAP variants are never the "best other method"
        if line.startswith("| ") and line.count("|") == 5 and "Best other" not in line:
            assert line.split("|")[2].strip() in ("random", "center"), line

"""The benchmark's non-discriminating-metric flag, the per-model insertion substrate ("auto") and the benchmark's
default options of coalition CAAP (issue 25)."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from vit_patching.benchmark import BenchmarkConfig, BenchmarkData, BenchmarkResult, markdown_table, merge, run_shard, write_csv
from vit_patching.benchmark.command import parse_args
from vit_patching.benchmark.config import METHOD_DEFAULTS
from vit_patching.benchmark.report import MARKER
from vit_patching.benchmark.runner import metric_settings
from vit_patching.benchmark.stats import is_discriminating, summary_rows
from vit_patching.benchmark.substrate import choose_insertion_substrate, resolve_insertion_substrate
from vit_patching.model import HookedViT


# ------------------------------------------------------------------------------------ non-discriminating metrics
def test_is_discriminating_known_answers():
    assert not is_discriminating([0.981, 0.985, 0.990], 0.01)
    assert not is_discriminating([0.98, 0.99], 0.01)  # exactly 0.01 apart (0.010000000000000009 in floats)
    assert is_discriminating([0.98, 0.9901], 0.01)
    assert not is_discriminating([50.0, 50.9, 51.0], 1.0) and is_discriminating([50.0, 51.2], 1.0)
    assert not is_discriminating([0.5], 0.01) and not is_discriminating([], 0.01)


def _synthetic_result() -> BenchmarkResult:
    """8 images, 3 methods. Insertion: every mean within 0.01 (0.990, 0.985, 0.995) although caap is lower than a on
    every image (a significant but meaningless difference). Deletion: caap clearly worse than a. Negative
    perturbation (x 100): means 60.0, 60.5, 60.9, within 1.0. Positive perturbation: 40.0 vs 45.0 vs 50.0."""
    per_image = {
        "caap": {"insertion": [0.985] * 8, "deletion": [0.50, 0.52, 0.48, 0.50, 0.60, 0.62, 0.58, 0.60],
                 "neg_perturbation": [59.0, 61.0, 60.0, 60.0, 61.0, 59.0, 60.5, 59.5], "pos_perturbation": [50.0, 45.0, 55.0, 50.0, 50.0, 45.0, 55.0, 50.0]},
        "a": {"insertion": [0.990] * 8, "deletion": [0.10, 0.12, 0.08, 0.10, 0.10, 0.12, 0.08, 0.10],
              "neg_perturbation": [60.5] * 8, "pos_perturbation": [40.0, 35.0, 45.0, 40.0, 40.0, 35.0, 45.0, 40.0]},
        "b": {"insertion": [0.995, 0.994, 0.996, 0.995, 0.995, 0.994, 0.996, 0.995], "deletion": [0.30] * 8,
              "neg_perturbation": [60.9] * 8, "pos_perturbation": [45.0] * 8},
    }
    seconds = {m: 1.0 for m in per_image}
    return BenchmarkResult(summary_rows(per_image, seconds, 8), per_image, {}, {}, seconds, {})


def test_non_discriminating_metrics_are_flagged_in_rows_verdicts_and_table(tmp_path):
    result = _synthetic_result()
    flags = {r["metric"]: r["discriminating"] for r in result.rows if r["method"] == "caap"}
    assert flags == {"insertion": False, "deletion": True, "pos_perturbation": True, "neg_perturbation": False,
                     "seconds_per_image": True}
    paired = {c["metric"]: c for c in result.paired("caap")}
    # insertion: best other on images 0-3 is b; caap - b = -0.010 +- 0.001 on the report images: "worse", but flagged
    assert paired["insertion"]["versus"] == "b" and paired["insertion"]["verdict"] == "worse (non-discriminating metric)"
    assert paired["neg_perturbation"]["verdict"] == "no significant difference (non-discriminating metric)"
    assert paired["deletion"]["verdict"] == "worse" and paired["deletion"]["discriminating"]
    assert paired["pos_perturbation"]["verdict"] == "worse" and paired["pos_perturbation"]["diff"] == pytest.approx(10.0)
    table = markdown_table(result)
    header = table.splitlines()[0]
    assert f"Insertion AUC ↑ {MARKER}" in header and f"Neg. perturb. AUC ↑ {MARKER}" in header
    assert f"Deletion AUC ↓ {MARKER}" not in header and f"Pos. perturb. AUC ↓ {MARKER}" not in header
    assert (f"{MARKER} Insertion AUC is **non-discriminating** here: the means of all 3 methods lie within 0.01 of each "
            "other (0.985–0.995)") in table
    assert f"{MARKER} Neg. perturb. AUC is **non-discriminating** here: the means of all 3 methods lie within 1 of each other (60.0–60.9)" in table
    # ranks: caap is 3rd of 3 on deletion and pos. perturbation; the flagged metrics are not ranked
    assert ("Rank of `caap` (1 = best, ties share a rank): Deletion AUC 3/3; Pos. perturb. AUC 3/3. "
            "Not ranked (non-discriminating): Insertion AUC, Neg. perturb. AUC.") in table
    assert "| Insertion AUC | b | -0.010 ± 0.001 | worse (non-discriminating metric) |" in table
    assert "On the 2 discriminating metrics `caap` is better on 0, worse on 2 and not significantly different on 0." in table
    csv = write_csv(result, tmp_path / "r.csv").read_text().splitlines()
    assert csv[0].endswith(",n_methods,discriminating") and csv[1].startswith("caap,insertion,") and csv[1].endswith(",False")


# ------------------------------------------------------------------------------------------ insertion substrate
C = 3.0 * math.sqrt(2.0)  # the crafted model's logit margin: head weight 3 on a LayerNorm output of +-sqrt(2)


def sign_model() -> HookedViT:
    """A GAP ViT whose prediction is the sign of the image's mean normalised pixel value s.

    Each patch embeds to [t, -t, 0, 0] (t = the patch's pixel mean), the block writes nothing, the pooled token
    [s, -s, 0, 0] goes through fc_norm (weight 1, bias 0) to sign(s) * [sqrt 2, -sqrt 2, 0, 0], and the head gives
    logits sign(s) * [C, -C, 0]: class 0 for s > 0, class 1 for s < 0, and exactly uniform for s = 0.
    """
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, embed_dim=4,
                          num_heads=1, num_classes=3, class_token=False, global_pool="avg").eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.patch_embed.proj.weight[0] = 1.0 / (3 * 8 * 8)
        m.patch_embed.proj.weight[1] = -1.0 / (3 * 8 * 8)
        m.fc_norm.weight.fill_(1.0)
        m.blocks[0].norm1.weight.fill_(1.0)
        m.blocks[0].norm2.weight.fill_(1.0)
        m.head.weight[0, 0], m.head.weight[1, 0] = 3.0, -3.0
    model = HookedViT.from_timm(m)
    assert list(model.cfg.data_config["mean"]) == [0.5] * 3 and list(model.cfg.data_config["std"]) == [0.5] * 3  # black = -1
    return model


def softmax3(margin: float) -> float:
    """p(class 0) for logits [margin, -margin, 0]."""
    return math.exp(margin) / (math.exp(margin) + math.exp(-margin) + 1.0)


def sign_data(sign: float, n: int = 6) -> BenchmarkData:
    g = torch.Generator().manual_seed(3)
    images = sign * (0.2 + 0.6 * torch.rand(n, 3, 32, 32, generator=g))  # every pixel of one sign
    return BenchmarkData(images=images, labels=torch.zeros(n, dtype=torch.long), masks=None, source={"data": "signs"})


def test_auto_substrate_on_a_crafted_model_with_known_start_probabilities():
    model = sign_model()
    # Positive images: predicted class 0. zeros: s = 0, uniform 1/3; black (-1 everywhere): class 1, p(0) = e^-C/Z;
    # blur and image_mean keep the sign: p(0) = e^C/Z. The answer is black.
    pos = sign_data(+1.0).images
    choice = choose_insertion_substrate(model, pos)
    assert choice.name == "black" and choice.n_images == 6 and list(choice.start_prob) == ["zeros", "black", "image_mean", "blur"]
    expected = {"zeros": 1 / 3, "black": softmax3(-C), "image_mean": softmax3(C), "blur": softmax3(C)}
    assert choice.start_prob == pytest.approx(expected, abs=1e-6)
    # Negative images: predicted class 1, which black also gives; zeros (1/3) is now the lowest start.
    neg = sign_data(-1.0).images
    choice = choose_insertion_substrate(model, neg)
    assert choice.name == "zeros" and choice.start_prob["black"] == pytest.approx(softmax3(C), abs=1e-6)
    # The explained class given (target="label"): class 0 on negative images, which black gives least.
    assert choose_insertion_substrate(model, neg, torch.zeros(6, dtype=torch.long)).name == "black"
    assert choice.describe() == (f"auto: lowest mean start p(class) on 6 selection images: zeros 0.333 vs black "
                                 f"{softmax3(C):.3f}, image_mean {softmax3(C):.3f}, blur {softmax3(C):.3f}")
    with pytest.raises(ValueError, match="candidates"):
        choose_insertion_substrate(model, pos, candidates=["grey"])


def test_auto_substrate_is_resolved_before_the_methods_recorded_and_fingerprinted(tmp_path):
    model, data = sign_model(), sign_data(+1.0, n=4)
    auto = BenchmarkConfig(methods=["random"], chunk_size=4, insertion_substrate="auto")
    resolved = resolve_insertion_substrate(model, data, auto)
    # chosen on the selection images (the first 2 of 4): black
    assert resolved.insertion_substrate == "black" and resolved.insertion_auto.startswith("auto: lowest mean start p(class) on 2 ")
    assert auto.insertion_substrate == "auto"  # the caller's config is not changed
    settings = metric_settings(model, data, resolved)
    assert settings["insertion"].startswith(f"from black pixels ({resolved.insertion_auto}), softmax prob")
    with pytest.raises(ValueError, match="insertion_substrate: expected a resolved substrate"):
        metric_settings(model, data, auto)
    assert run_shard(model, data, auto, tmp_path) == {"computed": 1, "skipped": 0}
    result = merge(model, data, auto, tmp_path)
    assert result.settings["insertion"] == settings["insertion"]
    # every curve starts from black: p(class 0) = e^-C / Z
    assert result.curves["random"]["insertion"][0][0] == pytest.approx(softmax3(-C), abs=1e-6)
    # the same substrate given by name is another protocol (no auto note): recomputed, not resumed
    assert run_shard(model, data, BenchmarkConfig(methods=["random"], chunk_size=4, insertion_substrate="black"), tmp_path) == {
        "computed": 1, "skipped": 0}
    assert run_shard(model, data, auto, tmp_path) == {"computed": 1, "skipped": 0}
    assert run_shard(model, data, auto, tmp_path) == {"computed": 0, "skipped": 1}
    assert parse_args(["--insertion-substrate", "auto"]).insertion_substrate == "auto"


# ------------------------------------------------------------------------------------------ coalition CAAP rows
def test_caap_shapley_gets_the_benchmark_defaults_unless_options_say_otherwise():
    assert METHOD_DEFAULTS["caap_shapley"] == {"n_permutations": 8, "groups": 2, "seed": 0}
    cfg = BenchmarkConfig(methods=["caap", "caap_shapley"])
    assert cfg.method_options == {"caap_shapley": {"n_permutations": 8, "groups": 2, "seed": 0}}
    cfg = BenchmarkConfig(methods=["caap_shapley"], method_options={"caap_shapley": {"groups": None, "n_permutations": 2}})
    assert cfg.method_options == {"caap_shapley": {"n_permutations": 2, "groups": None, "seed": 0}}
    assert BenchmarkConfig(methods=["gae"]).method_options == {}

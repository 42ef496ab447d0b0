"""The prose of docs/benchmark.md ("Where CAAP stands") against its generated tables: every rank, verdict,
difference and cost ratio the prose cites is read back from the tables here, so regenerating the tables without
updating the prose fails."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
LABELS = {"insertion": "Insertion AUC", "deletion": "Deletion AUC", "ins_minus_del": "Ins − Del",
          "pos": "Pos. perturb. AUC", "neg": "Neg. perturb. AUC", "pg": "Pointing game", "energy": "Energy PG",
          "iou": "Mask IoU", "ap": "Mask AP"}
KEYS = list(LABELS)


def section(path: Path, model: str) -> str:
    text = path.read_text(encoding="utf-8")
    return text[text.index(f"<!-- benchmark:{model}:start -->"): text.index(f"<!-- benchmark:{model}:end -->")]


def prose() -> str:
    text = (DOCS / "benchmark.md").read_text(encoding="utf-8")
    return " ".join(text[text.index("## Where CAAP stands"): text.index("## Results on the shipped models")].split())


def table(sec: str) -> dict[str, dict[str, str]]:
    """method -> metric key -> the mean as printed (and "s" -> seconds per image)."""
    out = {}
    for line in sec.splitlines():
        cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0] not in ("Method", "---"):
            out[cells[0]] = {**{k: c.split(" ± ")[0] for k, c in zip(KEYS, cells[1:10])}, "s": cells[10]}
    return out


def ranks(sec: str, method: str) -> dict[str, int]:
    line = next(l for l in sec.splitlines() if l.startswith(f"Rank of `{method}`"))
    return {k: int(re.search(re.escape(LABELS[k]) + r" (\d+)/", line).group(1)) for k in KEYS}


def verdicts(sec: str, method: str) -> dict[str, tuple[str, str, str]]:
    """metric key -> (best other method, difference as printed, verdict) from ``method``'s comparison table."""
    block = sec[sec.index(f"| Metric | Best other method | {method} − other |"):]
    out = {}
    for line in block.splitlines()[2:]:
        if not line.startswith("| "):
            break
        label, other, diff, verdict = (c.strip() for c in line.strip().strip("|").split("|"))
        out[next(k for k, v in LABELS.items() if v == label)] = (other, diff, verdict)
    return out


def worse(sec: str, method: str) -> list[str]:
    return [k for k, (_, _, v) in verdicts(sec, method).items() if v == "worse"]


def in_prose(*fragments: str) -> None:
    text = prose()
    for f in fragments:
        assert " ".join(f.split()) in text, f


@pytest.fixture(scope="module")
def secs() -> dict[str, str]:
    return {m: section(DOCS / "benchmark.md", m) for m in ("toy-shapes", "toy-conjunction", "toy-relation")}


def test_every_table_is_48_images_14_methods_auto_substrate_and_no_metric_is_flagged(secs):
    for model, sec in secs.items():
        assert f"### {model}: attribution benchmark (48 images)" in sec and len(table(sec)) == 14
        assert "--insertion-substrate auto" in sec and "†" not in sec and "(non-discriminating metric)" not in sec
    starts = {m: re.search(r"- insertion: from .*?\(auto: (.*?)\), softmax", s).group(1) for m, s in secs.items()}
    assert starts["toy-shapes"].endswith("zeros 0.249 vs black 0.250, image_mean 0.251, blur 1.000")
    assert starts["toy-conjunction"].endswith("zeros 0.334 vs black 0.334, image_mean 0.338, blur 0.999")
    assert starts["toy-relation"].endswith("image_mean 0.493 vs zeros 0.497, black 0.500, blur 0.955")
    in_prose("1.000 on toy-shapes, 0.999 on toy-conjunction, 0.955 on toy-relation",
             "(`zeros`) on toy-shapes (0.249; 4 classes) and toy-conjunction (0.334; 3 classes)",
             "toy-relation (0.493 against 0.497 for `zeros`")
    # the narrowest spread of means, on the metric's scale (perturbation AUCs / 100)
    spreads = []
    for model, sec in secs.items():
        t = table(sec)
        for k in KEYS:
            v = [float(row[k]) for row in t.values()]
            spreads.append(((max(v) - min(v)) / (100 if k in ("pos", "neg") else 1), model, k, min(v), max(v)))
    assert min(spreads)[1:] == ("toy-relation", "insertion", 0.714, 0.974)
    assert min(s for s, *_ in spreads) > 0.01
    in_prose("insertion on toy-relation, from 0.714 (`caap`) to 0.974 (GAE)")


def test_toy_shapes_prose(secs):
    sec = secs["toy-shapes"]
    assert ranks(sec, "caap") == dict(insertion=2, deletion=1, ins_minus_del=1, pos=1, neg=1, pg=1, energy=3, iou=1, ap=1)
    t = table(sec)
    assert sorted(m for m, r in t.items() if r["neg"] == "100.0") == sorted(
        ["rollout", "integrated_gradients", "smoothgrad", "caap", "caap_shapley"])
    assert t["caap"]["pg"] == t["integrated_gradients"]["pg"] == "1.000"
    v = verdicts(sec, "caap")
    assert [k for k in KEYS if v[k][2] == "better"] == ["deletion", "ins_minus_del", "pos", "pg", "iou", "ap"]
    assert worse(sec, "caap") == []
    assert ranks(sec, "caap_shapley") == dict(insertion=5, deletion=2, ins_minus_del=2, pos=2, neg=1, pg=5, energy=5,
                                              iou=5, ap=6)
    v = verdicts(sec, "caap_shapley")
    assert v["pos"] == ("rise", "-13.8 ± 13.2", "better") and v["insertion"] == ("integrated_gradients", "-0.009 ± 0.005", "worse")
    assert worse(sec, "caap_shapley") == ["insertion", "energy", "ap"] and v["energy"][0] == v["ap"][0] == "gae"
    r = ranks(sec, "caap_noising")
    assert (min(r.values()), max(r.values())) == (8, 12) and len(worse(sec, "caap_noising")) == 7
    in_prose("five methods tied at 100.0", "(tied with IG at 1.000)", "2nd on insertion and 3rd on energy PG",
             "better than RISE on positive perturbation (−13.8 ± 13.2)", "worse on insertion (−0.009 ± 0.005 against IG)",
             "`caap_noising` ranks 8th–12th and is worse on seven metrics")


def test_toy_conjunction_prose(secs):
    sec = secs["toy-conjunction"]
    t = table(sec)
    r = ranks(sec, "caap")
    assert (r["pg"], r["deletion"], r["iou"], r["ap"], r["ins_minus_del"], r["neg"], r["insertion"]) == (3, 5, 5, 5, 11, 12, 13)
    assert t["caap"]["pg"] == t["rollout"]["pg"] == t["rise"]["pg"] == "0.875"
    assert worse(sec, "caap") == ["insertion", "ins_minus_del", "neg", "energy", "iou", "ap"]
    r = ranks(sec, "caap_shapley")
    assert (r["deletion"], r["pos"], r["ins_minus_del"]) == (2, 2, 4)
    assert sorted(r[k] for k in ("insertion", "neg", "pg", "energy", "iou", "ap")) == [5, 7, 8, 8, 8, 9]
    assert (t["caap_shapley"]["deletion"], t["rise"]["deletion"], t["caap_shapley"]["pos"], t["rise"]["pos"]) == (
        "0.369", "0.330", "31.4", "29.2")
    assert (t["caap_shapley"]["ins_minus_del"], t["rise"]["ins_minus_del"]) == ("0.494", "0.581")
    assert worse(sec, "caap_shapley") == ["insertion", "neg", "energy", "iou", "ap"]
    r = ranks(sec, "caap_noising")
    assert (r["insertion"], r["neg"]) == (4, 4) and sorted(r.values())[2:] == [7, 7, 8, 8, 8, 11, 12]
    assert len(worse(sec, "caap_noising")) == 7
    # the bar: top two on at least 3 of deletion, Ins - Del, pointing game, mask AP
    tops = {m: [k for k in ("deletion", "ins_minus_del", "pg", "ap") if ranks(sec, m)[k] <= 2]
            for m in ("caap", "caap_noising", "caap_shapley")}
    assert tops == {"caap": [], "caap_noising": [], "caap_shapley": ["deletion"]}
    in_prose("3rd on the pointing game (tied with rollout and RISE at 0.875)", "11th–13th on Ins − Del",
             "2nd on deletion (0.369; RISE 0.330) and positive perturbation (31.4; RISE 29.2), 4th on Ins − Del (0.494; RISE 0.581), and 5th–9th on the other six",
             "ranks 4th on insertion and negative perturbation and 7th–12th on the rest, worse on seven metrics",
             "(Ins − Del 4th, pointing game 8th, mask AP 9th)")


def test_toy_relation_prose(secs):
    sec = secs["toy-relation"]
    t = table(sec)
    r = ranks(sec, "caap")
    assert (r["insertion"], r["ins_minus_del"], r["pos"], r["neg"]) == (14, 14, 14, 14)
    assert sorted(r[k] for k in ("deletion", "pg", "energy", "iou", "ap")) == [6, 7, 7, 8, 11]
    assert (t["caap"]["ins_minus_del"], t["random"]["ins_minus_del"]) == ("-0.081", "0.008")
    assert len(worse(sec, "caap")) == 6
    r = ranks(sec, "caap_shapley")
    assert (r["deletion"], r["ins_minus_del"], r["pg"], r["pos"], r["ap"]) == (1, 1, 2, 4, 8)
    assert sorted(r[k] for k in ("insertion", "neg", "energy", "iou", "ap")) == [5, 6, 7, 7, 8]
    assert (t["caap_shapley"]["deletion"], t["gae"]["deletion"], t["caap_shapley"]["ins_minus_del"], t["gae"]["ins_minus_del"],
            t["caap_shapley"]["pg"], t["integrated_gradients"]["pg"]) == ("0.437", "0.534", "0.447", "0.440", "0.833", "0.896")
    v = verdicts(sec, "caap_shapley")
    assert v["deletion"] == ("raw_attention", "-0.143 ± 0.124", "better")
    assert {k: v[k][:2] for k in worse(sec, "caap_shapley")} == {
        "insertion": ("gae", "-0.027 ± 0.017"), "energy": ("gae", "-0.251 ± 0.123"), "iou": ("gae", "-0.140 ± 0.099"),
        "ap": ("gae", "-0.196 ± 0.134")}
    r = ranks(sec, "caap_noising")
    assert (min(r.values()), max(r.values())) == (8, 14) and len(worse(sec, "caap_noising")) == 7
    in_prose("Ins − Del (−0.081, below the random map's 0.008)", "6th–11th on the other five",
             "1st on deletion (0.437; GAE 0.534) and Ins − Del (0.447; GAE 0.440)** and 2nd on the pointing game (0.833; IG 0.896), 4th on positive perturbation and 5th–8th",
             "better than raw attention on deletion (−0.143 ± 0.124), worse than GAE on insertion (−0.027 ± 0.017), energy PG (−0.251 ± 0.123), mask IoU (−0.140 ± 0.099) and mask AP (−0.196 ± 0.134)",
             "(1st, 1st, 2nd; mask AP 8th)")


def test_patch_players_diagnostic_and_cost_prose(secs):
    diag = {m: section(DOCS / "benchmark_caap_shapley_patches.md", m) for m in ("toy-conjunction", "toy-relation")}
    for m, sec in diag.items():  # every other row equals the main table's
        main, other = table(secs[m]), table(sec)
        assert {k: v for k, v in main.items() if k != "caap_shapley"} == {k: v for k, v in other.items() if k != "caap_shapley"}
        assert "--option caap_shapley.groups=None" in sec and "groups=None" in sec
    rel, con = diag["toy-relation"], diag["toy-conjunction"]
    r = ranks(rel, "caap_shapley")
    assert (r["insertion"], r["pg"], r["iou"], r["ap"], r["deletion"], r["ins_minus_del"]) == (1, 1, 2, 2, 6, 3)
    assert (table(rel)["caap_shapley"]["insertion"], table(rel)["caap_shapley"]["pg"]) == ("0.976", "0.979")
    assert worse(rel, "caap_shapley") == ["energy"]
    r = ranks(con, "caap_shapley")
    assert (r["ins_minus_del"], r["pg"], r["deletion"], r["ap"]) == (1, 1, 2, 3)
    assert table(con)["caap_shapley"]["pg"] == table(con)["integrated_gradients"]["pg"] == "0.917"
    assert table(con)["caap_shapley"]["ins_minus_del"] == "0.589"
    assert worse(con, "caap_shapley") == ["insertion", "energy", "iou", "ap"]
    in_prose("1st on insertion (0.976) and the pointing game (0.979), 2nd on mask IoU and mask AP",
             "1st on Ins − Del (0.589) and the pointing game (tied with IG at 0.917), 2nd on deletion and 3rd on mask AP",
             "(the pointing game and mask AP; deletion 6th, Ins − Del 3rd)")
    # cost: seconds per image as printed, ratios to one decimal
    s = {m: {k: float(v["s"]) for k, v in table(sec).items()} for m, sec in secs.items()}
    for model, (a, b, ratio) in {"toy-shapes": ("0.2562", "0.1070", "2.4"), "toy-conjunction": ("0.3586", "0.1148", "3.1"),
                                 "toy-relation": ("1.0701", "0.3727", "2.9")}.items():
        assert (f"{s[model]['caap_shapley']:.4f}", f"{s[model]['caap']:.4f}") == (a, b)
        assert f"{float(a) / float(b):.1f}" == ratio
        in_prose(f"{a} against {b} on {model} ({ratio}×)")
    for model, (a, ratio) in {"toy-conjunction": ("2.5982", "22.6"), "toy-relation": ("3.5558", "9.5")}.items():
        got = float(table(diag[model])["caap_shapley"]["s"])
        assert f"{got:.4f}" == a and f"{got / s[model]['caap']:.1f}" == ratio
        in_prose(f"{a} s on {model} ({ratio}×)")
    rise = [s[m]["rise"] / s[m]["caap"] for m in s]
    roll = [s[m]["caap"] / s[m]["rollout"] for m in s]
    assert 17 <= min(rise) and max(rise) < 20 and 22 <= min(roll) and max(roll) < 27
    near = [max(s[m][o] / s[m]["caap"], s[m]["caap"] / s[m][o]) for m in s for o in ("occlusion", "atman")]
    assert max(near) < 2.3
    in_prose("17–20 times less than RISE", "22–26 times more than attention rollout", "to within a factor of 2.3",
             "(0.1070–0.3727 s)", "occlusion (0.0945–0.4508 s) and AtMan (0.1348–0.5801 s)")

"""MIB-style scorer comparison: CPR / CMD and AUROC against known answers, faithfulness curves against
evaluate_circuit run by hand, and compare_scorers on the model whose circuit is known."""
from __future__ import annotations

import math

import pytest
import torch

from vit_patching.circuits import (
    MIB_SHARES, EdgeScores, FaithfulnessCurve, Graph, atp_heads, atp_layer_sweep, atp_node_edges, cmd,
    compare_scorers, cpr, eap, edge_auroc, evaluate_circuit, faithfulness_by_size, select_circuit,
)
from vit_patching.zoo.known_circuit import KNOWN_EDGES, known_circuit_model, known_circuit_pairs


@pytest.fixture(scope="module")
def model():
    return known_circuit_model()


@pytest.fixture(scope="module")
def pairs():
    return known_circuit_pairs(4, seed=0)


def hand_scores(graph: Graph, values: dict[tuple[str, str], float], default: float = 0.0) -> EdgeScores:
    """EdgeScores with the given value on listed edges and ``default`` on the others."""
    s = torch.full(graph.mask.shape, float("nan"))
    s[graph.mask] = default
    for (u, v), val in values.items():
        s[graph.senders.index(u), graph.receivers.index(v)] = val
    z = torch.zeros(1)
    return EdgeScores(graph, s, s[..., None], z, z, "hand", "hand")


# ---------------------------------------------------------------- CPR / CMD


def test_cpr_cmd_known_answers():
    ones = FaithfulnessCurve.from_values([0.0, 0.3, 1.0], [1.0, 1.0, 1.0])
    assert cpr(ones) == 1.0 and cmd(ones) == 0.0
    mib_ones = FaithfulnessCurve.from_values(MIB_SHARES, [1.0] * 10)  # MIB's axis spans 0.001 .. 1
    assert cpr(mib_ones) == pytest.approx(0.999, abs=1e-15) and cmd(mib_ones) == 0.0
    zeros = FaithfulnessCurve.from_values(MIB_SHARES, [0.0] * 10)
    assert cpr(zeros) == 0.0 and cmd(zeros) == pytest.approx(0.999, abs=1e-15)
    # a step from 0 to 1 between shares 0.05 and 0.1: half of that interval plus everything from 0.1 to 1
    step = FaithfulnessCurve.from_values(MIB_SHARES, [0.0] * 6 + [1.0] * 4)
    assert cpr(step) == pytest.approx(0.025 + 0.9, abs=1e-15)
    assert cmd(step) == pytest.approx((0.05 - 0.001) + 0.025, abs=1e-15)
    linear = FaithfulnessCurve.from_values([0.0, 0.25, 1.0], [0.0, 0.25, 1.0])  # trapezoids are exact on a line
    assert cpr(linear) == 0.5 and cmd(linear) == 0.5
    over = FaithfulnessCurve.from_values([0.0, 0.5, 1.0], [1.0, 2.0, 1.0])  # above 1 counts against CMD
    assert cpr(over) == 1.5 and cmd(over) == 0.5


def test_curve_from_values_checks():
    with pytest.raises(ValueError, match="share: expected strictly increasing"):
        FaithfulnessCurve.from_values([0.5, 0.1], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"share: expected a number in \[0, 1\]"):
        FaithfulnessCurve.from_values([0.5, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="faithfulness: expected 2 finite numbers"):
        FaithfulnessCurve.from_values([0.5, 1.0], [1.0])
    with pytest.raises(TypeError, match="curve"):  # the type check names the parameter
        cpr([1.0, 1.0])


# ---------------------------------------------------------------- AUROC


def roc_area(pos: list[float], neg: list[float]) -> float:
    """Independent AUROC: the ROC curve (TPR against FPR over every threshold) integrated by trapezoids."""
    thresholds = sorted(set(pos) | set(neg), reverse=True)
    pts = [(0.0, 0.0)] + [(sum(x >= t for x in neg) / len(neg), sum(x >= t for x in pos) / len(pos))
                          for t in thresholds]
    return sum((x2 - x1) * (y1 + y2) / 2 for (x1, y1), (x2, y2) in zip(pts, pts[1:]))


def test_edge_auroc_known_answers(model):
    g = Graph.of(model)
    others = [e for e in g.edges if e not in KNOWN_EDGES]
    perfect = hand_scores(g, {e: 2.0 for e in KNOWN_EDGES}, default=1.0)
    assert edge_auroc(perfect, KNOWN_EDGES) == 1.0
    reversed_ = hand_scores(g, {e: 0.5 for e in KNOWN_EDGES}, default=1.0)
    assert edge_auroc(reversed_, KNOWN_EDGES) == 0.0
    assert edge_auroc(hand_scores(g, {}, default=3.0), KNOWN_EDGES) == 0.5
    # ranked by |score|: -5 ranks first; signed, it ranks last
    neg = hand_scores(g, {e: -5.0 for e in KNOWN_EDGES}, default=1.0)
    assert edge_auroc(neg, KNOWN_EDGES) == 1.0 and edge_auroc(neg, KNOWN_EDGES, absolute=False) == 0.0
    # two known edges above all 106 others; one (0.5) above the 76 at 0.1 only; one (1.0) above those 76, tied
    # with the 20 at 1.0 (half a win each) and below the 10 at 2.0
    vals = {e: 10.0 for e in KNOWN_EDGES[:2]} | {KNOWN_EDGES[2]: 0.5, KNOWN_EDGES[3]: 1.0}
    vals |= {e: 2.0 for e in others[:10]} | {e: 1.0 for e in others[10:30]}
    assert edge_auroc(hand_scores(g, vals, default=0.1), KNOWN_EDGES) == (2 * 106 + 76 + 76 + 20 / 2) / (4 * 106)


def test_edge_auroc_equals_roc_curve_area(model):
    g = Graph.of(model)
    gen = torch.Generator().manual_seed(0)
    known = g.edges[::9]
    vals = {e: round(float(torch.randn(1, generator=gen)), 1) for e in g.edges}  # rounded: ties happen
    s = hand_scores(g, vals)
    pos = [abs(vals[e]) for e in known]
    neg = [abs(vals[e]) for e in g.edges if e not in known]
    assert edge_auroc(s, known) == pytest.approx(roc_area(pos, neg), abs=1e-12)


def test_edge_auroc_errors(model):
    g = Graph.of(model)
    s = hand_scores(g, {})
    with pytest.raises(ValueError, match="known_edges: unknown sender 'L9H0'"):
        edge_auroc(s, [("L9H0", "logits")])
    with pytest.raises(ValueError, match="known_edges: expected between 1 and 109 edges"):
        edge_auroc(s, [])
    with pytest.raises(TypeError, match="scores"):
        edge_auroc(torch.zeros(3), KNOWN_EDGES)
    s.scores[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scores: NaN score on an edge"):
        edge_auroc(s, KNOWN_EDGES)


# ---------------------------------------------------------------- faithfulness curves


def test_faithfulness_by_size_equals_evaluate_circuit(model, pairs):
    scores = eap(model, pairs.clean, pairs.corrupted, pairs.metric())
    curve = faithfulness_by_size(model, scores, pairs.clean, pairs.corrupted, pairs.metric())
    assert curve.share == list(MIB_SHARES)
    assert curve.top_n == [math.floor(s * 110 + 1e-9) for s in MIB_SHARES] == [0, 0, 0, 1, 2, 5, 11, 22, 55, 110]
    circuits = [select_circuit(scores, top_n=n) for n in curve.top_n]
    by_hand = evaluate_circuit(model, circuits, pairs.clean, pairs.corrupted, pairs.metric()).faithfulness
    assert torch.allclose(curve.faithfulness, by_hand, atol=1e-6, rtol=0)
    assert curve.kept == [c.n_edges for c in circuits]
    assert curve.faithfulness[0] == 0 and abs(float(curve.faithfulness[-1]) - 1) < 1e-6
    df = curve.to_dataframe()
    assert list(df.columns) == ["scorer", "share", "top_n", "kept", "faithfulness"] and len(df) == 10
    by_count = faithfulness_by_size(model, scores, pairs.clean, pairs.corrupted, pairs.metric(), counts=[4, 22])
    assert by_count.share == [4 / 110, 22 / 110]
    assert torch.allclose(by_count.faithfulness[1], curve.faithfulness[7], atol=1e-6, rtol=0)


def test_faithfulness_by_size_errors(model, pairs):
    scores = hand_scores(Graph.of(model), {})
    c, x = pairs.clean, pairs.corrupted
    with pytest.raises(ValueError, match="shares, counts: expected at most one"):
        faithfulness_by_size(model, scores, c, x, shares=[0.5], counts=[3])
    with pytest.raises(ValueError, match="counts: expected a non-empty list of edge counts in \\[0, 110\\]"):
        faithfulness_by_size(model, scores, c, x, counts=[3, 111])
    with pytest.raises(ValueError, match="shares: expected strictly increasing"):
        faithfulness_by_size(model, scores, c, x, shares=[0.5, 0.2])
    with pytest.raises(TypeError, match="scores"):
        faithfulness_by_size(model, None, c, x)


# ---------------------------------------------------------------- compare_scorers


def test_compare_scorers_oracle_known_answer(model, pairs):
    """An oracle scorer (known edges 1, others 0): AUROC 1, and the curve is the step the claim predicts:
    f = 0 below 4 edges (a known edge missing), 1 from 4 on (sizes 0, 0, 0, 1, 2, 5, 11, 22, 55, 110)."""
    oracle = lambda m, c, x, metric: hand_scores(Graph.of(m), {e: 1.0 for e in KNOWN_EDGES})  # noqa: E731
    res = compare_scorers(model, pairs.clean, pairs.corrupted, pairs.metric(), scorers={"oracle": oracle},
                          known_edges=KNOWN_EDGES, title="<b>known</b>")
    row = res.table.iloc[0]
    assert list(res.table.columns) == ["scorer", "cpr", "cmd", "auroc", "time_s", "edges"]
    assert row["auroc"] == 1.0 and row["edges"] == 110
    f = res.curves["oracle"].faithfulness
    assert f[:5].abs().max() < 3e-7 and (f[5:] - 1).abs().max() < 3e-7
    assert row["cpr"] == pytest.approx(0.03 / 2 + 0.95, abs=1e-6)
    assert row["cmd"] == pytest.approx(0.019 + 0.03 / 2, abs=1e-6)
    assert res.figure.layout.title.text == "&lt;b&gt;known&lt;/b&gt;"
    assert [t.name for t in res.figure.data] == ["oracle"]


def test_compare_scorers_eap_and_eap_ig_on_the_known_circuit(model):
    """The numbers docs/circuits_bench.md states (8 pairs, seed 0, MIB grid)."""
    p = known_circuit_pairs(8, seed=0)
    res = compare_scorers(model, p.clean, p.corrupted, p.metric(), known_edges=KNOWN_EDGES)
    t = res.table.set_index("scorer")
    assert list(t.index) == ["eap", "eap-ig", "atp-nodes"]
    assert t.loc["eap", "auroc"] == pytest.approx(0.976, abs=5e-4)
    assert t.loc["eap-ig", "auroc"] == pytest.approx(0.988, abs=5e-4)
    assert t.loc["eap", "cpr"] == pytest.approx(0.850, abs=5e-4)
    assert t.loc["eap", "cmd"] == pytest.approx(0.149, abs=5e-4)
    assert t.loc["eap-ig", "cpr"] == pytest.approx(0.925, abs=5e-4)
    assert t.loc["eap-ig", "cmd"] == pytest.approx(0.074, abs=5e-4)
    assert t.loc["atp-nodes", "auroc"] == pytest.approx(0.932, abs=5e-4)
    assert t.loc["atp-nodes", "cpr"] == pytest.approx(0.850, abs=5e-4)
    assert t.loc["atp-nodes", "cmd"] == pytest.approx(0.149, abs=5e-4)
    assert [tr.name for tr in res.figure.data] == ["eap", "eap-ig", "atp-nodes"]
    # where each curve reaches the clean run: EAP-IG at 11 edges (share 0.1), EAP and node-level AtP at 22 (0.2)
    first_one = {k: next(i for i, f in enumerate(c.faithfulness.tolist()) if abs(f - 1) < 3e-7)
                 for k, c in res.curves.items()}
    assert first_one == {"eap": 7, "eap-ig": 6, "atp-nodes": 7}
    assert all((c.faithfulness[first_one[k]:] - 1).abs().max() < 3e-7 for k, c in res.curves.items())
    # node-level AtP's largest node score is the distractor MLP0's
    node = res.scores["atp-nodes"].options["node_scores"]
    assert max(node, key=lambda n: abs(node[n])) == "MLP0"


def test_compare_scorers_errors(model, pairs):
    c, x = pairs.clean, pairs.corrupted
    with pytest.raises(ValueError, match="scorers: expected a non-empty mapping"):
        compare_scorers(model, c, x, scorers={})
    with pytest.raises(ValueError, match="known_edges: unknown receiver 'MLP7'"):
        compare_scorers(model, c, x, known_edges=[("embed", "MLP7")])
    with pytest.raises(ValueError, match="shares: expected a number in"):
        compare_scorers(model, c, x, shares=[0.1, 1.5])
    calls = []
    spy = {"spy": lambda *a: calls.append(1)}
    with pytest.raises(ValueError, match="ablation: expected one of"):
        compare_scorers(model, c, x, scorers=spy, ablation="median")
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        compare_scorers(model, c, x, scorers=spy, batch_size=0)
    with pytest.raises(ValueError, match=r"corrupted: expected clean's shape \(4, 3, 32, 32\)"):
        compare_scorers(model, c, x[:2], scorers=spy)
    assert calls == []  # every check ran before any scorer
    with pytest.raises(TypeError, match=r"scorers\['bad'\]: expected a function returning EdgeScores"):
        compare_scorers(model, c, x, scorers={"bad": lambda *a: 1.0})


# ---------------------------------------------------------------- node-level AtP as edge scores


def test_atp_node_edges_are_node_atp_and_the_min_rule(model, pairs):
    c, x, metric = pairs.clean, pairs.corrupted, pairs.metric()
    s = atp_node_edges(model, c, x, metric)
    node = s.options["node_scores"]
    heads = atp_heads(model, c, x, metric, sites="z")  # [site, layer, head, batch]
    sweep = atp_layer_sweep(model, c, x, metric, sites=("resid_pre", "mlp_out"))  # [site, layer, pos, batch]
    head_est = (heads.values - heads.target_score)[0].mean(-1)
    sweep_est = (sweep.values - sweep.target_score).sum(2).mean(-1)  # all positions at once: the sum (linear)
    for l in range(2):
        assert node[f"MLP{l}"] == pytest.approx(float(sweep_est[1, l]), abs=2e-5)
        for h in range(4):
            assert node[f"L{l}H{h}"] == pytest.approx(float(head_est[l, h]), abs=2e-5)
    assert node["embed"] == pytest.approx(float(sweep_est[0, 0]), abs=2e-5)
    assert max(abs(v) for v in node.values()) > 1  # the comparisons above are not all of zeros
    g = s.graph
    at = lambda u, v: float(s.scores[g.senders.index(u), g.receivers.index(v)])  # noqa: E731
    assert at("L0H0", "MLP1") == min(abs(node["L0H0"]), abs(node["MLP1"]))
    assert at("L1H0", "logits") == abs(node["L1H0"])
    assert at("embed", "L0H1.k") == min(abs(node["embed"]), abs(node["L0H1"]))
    assert torch.isnan(s.scores[~g.mask]).all() and (s.scores[g.mask] >= 0).all()


def test_faithfulness_by_size_passes_the_ablation_and_its_reference():
    """Under ``mean`` with a reference set, each point equals evaluate_circuit of that circuit with the same settings."""
    from vit_patching.circuits import eap, evaluate_circuit, select_circuit
    from vit_patching.circuits.compare import faithfulness_by_size
    from vit_patching.zoo.known_circuit import known_circuit_model, known_circuit_pairs

    model, pairs = known_circuit_model(), known_circuit_pairs(4, seed=0)
    reference = known_circuit_pairs(6, seed=1).clean
    scores = eap(model, pairs.clean, pairs.corrupted, pairs.metric())
    curve = faithfulness_by_size(model, scores, pairs.clean, pairs.corrupted, pairs.metric(), counts=[4, 20],
                                 ablation="mean", reference=reference)
    by_hand = evaluate_circuit(model, [select_circuit(scores, top_n=n) for n in (4, 20)], pairs.clean,
                               pairs.corrupted, pairs.metric(), ablation="mean", reference=reference).faithfulness
    torch.testing.assert_close(curve.faithfulness, by_hand, rtol=0, atol=0)
    corrupted_curve = faithfulness_by_size(model, scores, pairs.clean, pairs.corrupted, pairs.metric(), counts=[4, 20])
    assert not torch.equal(corrupted_curve.faithfulness, curve.faithfulness)  # the ablation reached the evaluation

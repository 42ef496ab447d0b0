"""Bad input raises a clear error naming the argument, and no hook or flag outlives a call (also after an
exception in the middle of a run)."""
import pytest
import torch

from circuit_toys import metric, no_hooks_left, pair, tiny
from vit_patching.circuits import (
    Circuit, Graph, atp_heads, atp_layer_sweep, caap_estimate, eap, eap_ig, evaluate_circuit, faithfulness_curve,
    select_circuit,
)


@pytest.fixture(scope="module")
def toy():
    model, (clean, corrupted) = tiny(), pair()
    return model, clean, corrupted, eap(model, clean, corrupted, metric())


@pytest.mark.parametrize("call, arg", [
    (lambda m, c, x, s: atp_layer_sweep(m, c, x[:1], metric()), "corrupted"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, metric(), sites=()), "sites"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, metric(), sites="resid_final"), "sites"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, metric(), layers=[5]), "layers"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, metric(), verify_top_k=-1), "verify_top_k"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, "logitdiff"), "metric"),
    (lambda m, c, x, s: atp_layer_sweep(m, c, x, metric(), direction="up"), "direction"),
    (lambda m, c, x, s: atp_heads(m, c, x, metric(), positions=[1]), "positions"),
    (lambda m, c, x, s: atp_heads(m, c, x, metric(), heads=[2]), "heads"),
    (lambda m, c, x, s: atp_heads(m, c, x, metric(), atp_star=1), "atp_star"),
    (lambda m, c, x, s: eap(m, c, x[:, :, :16], metric()), "corrupted"),
    (lambda m, c, x, s: eap_ig(m, c, x, metric(), steps=0), "steps"),
    (lambda m, c, x, s: Circuit.from_edges(Graph.of(m), [("L7H0", "logits")]), "edges"),
    (lambda m, c, x, s: Circuit.from_edges(Graph.of(m), [("L0H0", "L0H1.q")]), "edges"),
    (lambda m, c, x, s: Circuit.from_edges(Graph.of(m), [("L0H0", "L1H0.z")]), "edges"),
    (lambda m, c, x, s: select_circuit(s), "top_n, threshold"),
    (lambda m, c, x, s: select_circuit(s, top_n=3, threshold=0.1), "top_n, threshold"),
    (lambda m, c, x, s: select_circuit(s, top_n=-1), "top_n"),
    (lambda m, c, x, s: evaluate_circuit(m, [], c, x, metric()), "circuit"),
    (lambda m, c, x, s: evaluate_circuit(m, select_circuit(s, top_n=3), c, x, metric(), ablation="zeros"), "ablation"),
    (lambda m, c, x, s: evaluate_circuit(m, select_circuit(s, top_n=3), c, x[:1], metric()), "corrupted"),
    (lambda m, c, x, s: faithfulness_curve(m, s, c, x, metric(), sizes=[]), "sizes"),
    (lambda m, c, x, s: caap_estimate(m, c, window=(2, 1)), "window"),
    (lambda m, c, x, s: caap_estimate(m, c, neutral="grey"), "neutral"),
    (lambda m, c, x, s: caap_estimate(m, c, readout="delta"), "readout"),
])
def test_bad_input_names_the_argument_and_leaves_no_hook(toy, call, arg):
    model, clean, corrupted, scores = toy
    with pytest.raises((ValueError, TypeError), match=arg.replace("(", r"\(")):
        call(model, clean, corrupted, scores)
    assert no_hooks_left(model)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in


def test_a_circuit_of_another_models_graph_is_refused(toy):
    model, clean, corrupted, _ = toy
    other = Graph.of(tiny(depth=3))
    with pytest.raises(ValueError, match="circuit"):
        evaluate_circuit(model, Circuit(other, other.mask.clone()), clean, corrupted, metric())


class Boom(RuntimeError):
    pass


def _exploding_metric(after: int):
    calls = {"n": 0}
    base = metric()

    def fn(logits, ids):
        calls["n"] += 1
        if calls["n"] > after:
            raise Boom("metric failed")
        return base(logits, ids)

    return fn


@pytest.mark.parametrize("call", [
    lambda m, c, x, fn: atp_heads(m, c, x, fn),
    lambda m, c, x, fn: eap(m, c, x, fn),
    lambda m, c, x, fn: eap_ig(m, c, x, fn, steps=2),
])
def test_an_exception_mid_run_leaves_no_hook_and_restores_flags(toy, call):
    model, clean, corrupted, _ = toy
    with pytest.raises(Boom):
        call(model, clean, corrupted, _exploding_metric(0))
    assert no_hooks_left(model)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in
    with pytest.raises(Boom):  # evaluation: fails in the first patched pass, after the clean/corrupted scores
        evaluate_circuit(model, Circuit(Graph.of(model), Graph.of(model).mask.clone()), clean, corrupted,
                         _exploding_metric(2))
    assert no_hooks_left(model)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in

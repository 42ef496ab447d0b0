"""EAP-IG on activations, AtP* GradDrop and information flow routes against independent recomputations on tiny
float64 models: per-image autograd derivatives of the metric along one edge (sender differences from the model's
own per-head ``hook_result``), and IFR's proximities summed by hand position by position."""
import pytest
import torch

from circuit_toys import images, no_hooks_left, tiny
from vit_patching.circuits import (
    Ablation, Graph, atp_graddrop, atp_heads, atp_layer_sweep, eap, eap_ig_activations, information_flow_routes,
    NeuronCircuit, evaluate_neurons, neuron_scores, node_scores, select_neurons, select_nodes,
)
from vit_patching.hook_names import get_act_name
from vit_patching.patching import target_logit

CLASSES = torch.tensor([1, 2])
EDGES = [("embed", "L0H1.q"), ("L0H0", "L1H1.k"), ("L0H1", "MLP0"), ("MLP0", "L1H0.v"), ("L1H1", "logits"),
         ("MLP1", "logits"), ("embed", "logits"), ("L0H0", "L2H1.v"), ("MLP1", "L2H0.q")]


def metric():
    return target_logit(CLASSES)


@pytest.fixture(scope="module")
def setup():
    model = tiny(depth=3, dtype=torch.float64)
    return model, images(2, 32, 32, seed=1).double(), images(2, 32, 32, seed=2).double()


def _cache(model, x):
    with torch.no_grad(), model.flags(use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True):
        _, c = model.run_with_cache(x, return_cache_object=False)
    return c


def _sender(cache, u):
    """Sender u's output from the model's own hooks (per-head ``hook_result``, not z @ W_O)."""
    if u == "embed":
        return cache["blocks.0.hook_resid_pre"]
    if u.startswith("MLP"):
        return cache[f"blocks.{u[3:]}.hook_mlp_out"]
    l, h = u[1:].split("H")
    return cache[f"blocks.{l}.attn.hook_result"][:, :, int(h)]


def _receiver(v, n_layers):
    if v == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if v.startswith("MLP"):
        return f"blocks.{v[3:]}.hook_mlp_in", None
    node, c = v.split(".")
    l, h = node[1:].split("H")
    return f"blocks.{l}.hook_{c}_input", int(h)


def _derivative(model, x, delta, v, extra=()):
    """Per image: d metric / d alpha_b at 0 with receiver v's input += alpha_b * delta_b, in the run of x."""
    alpha = torch.zeros(x.shape[0], dtype=delta.dtype, requires_grad=True)
    hook, head = _receiver(v, model.cfg.n_layers)

    def add(act, hook):
        act = act.clone()
        if head is None:
            return act + alpha[:, None, None] * delta
        act[:, :, head] = act[:, :, head] + alpha[:, None, None] * delta
        return act

    with model.flags(use_split_qkv_input=True, use_hook_mlp_in=True):
        logits = model.run_with_hooks(x, fwd_hooks=list(extra) + [(hook, add)])
    (g,) = torch.autograd.grad(metric()(logits, torch.arange(x.shape[0])).sum(), alpha, allow_unused=True)
    return torch.zeros_like(alpha) if g is None else g  # None: every path from v to the metric is cut


def _score(scores, u, v):
    g = scores.graph
    return scores.per_image[g.senders.index(u), g.receivers.index(v)]


def test_eap_ig_activations_equals_the_hand_written_integral(setup):
    model, clean, corrupted = setup
    steps = 3
    scores = eap_ig_activations(model, clean, corrupted, metric(), steps=steps)
    c, x = _cache(model, clean), _cache(model, corrupted)
    for u, v in EDGES:
        stage = ("blocks.0.hook_resid_pre" if u == "embed" else f"blocks.{u[3:]}.hook_mlp_out" if u.startswith("MLP")
                 else f"blocks.{u[1:].split('H')[0]}.attn.hook_z")
        total = 0
        for k in range(1, steps + 1):
            point = x[stage] + k / steps * (c[stage] - x[stage])
            total = total + _derivative(model, clean, _sender(c, u) - _sender(x, u), v,
                                        extra=[(stage, lambda a, hook, p=point: p.clone())]) / steps
        torch.testing.assert_close(_score(scores, u, v), total, rtol=1e-9, atol=1e-12)
    # It is not plain EAP: the gradients are taken around the clean run.
    assert (scores.per_image - eap(model, clean, corrupted, metric()).per_image).nan_to_num().abs().max() > 1e-3


def test_graddrop_equals_its_definition(setup):
    model, clean, corrupted = setup
    L = model.cfg.n_layers
    scores = atp_graddrop(model, clean, corrupted, metric())
    c, x = _cache(model, clean), _cache(model, corrupted)
    plain = eap(model, clean, corrupted, metric())
    differs = False
    for u, v in EDGES:
        terms = []
        for l in range(L):
            cut = [(get_act_name(n, l), lambda a, hook: a.detach()) for n in ("attn_out", "mlp_out")]
            terms.append(_derivative(model, corrupted, _sender(c, u) - _sender(x, u), v, extra=cut).abs())
        expected = torch.stack(terms).sum(0) / (L - 1)
        torch.testing.assert_close(_score(scores, u, v), expected, rtol=1e-9, atol=1e-12)
        block = v[1] if v.startswith("L") else v[3] if v.startswith("MLP") else None
        if block is not None:
            assert float(terms[int(block)].abs().max()) == 0.0  # cutting v's own block leaves no gradient
        differs |= bool((expected - _score(plain, u, v).abs() * L / (L - 1)).abs().max() > 1e-4)
    assert differs  # the dropped paths change some edge


def test_graddrop_needs_two_blocks():
    model = tiny(depth=1)
    x = images(2, 32, 32, seed=1)
    with pytest.raises(ValueError, match="model: expected at least 2 blocks"):
        atp_graddrop(model, x, x.flip(0), metric())


def test_ifr_equals_hand_summed_contribution_norms(setup):
    model, clean, corrupted = setup
    scores = information_flow_routes(model, clean, corrupted, metric())
    assert float(scores.scores.nan_to_num().min()) >= 0 and float(scores.scores.nan_to_num().max()) <= 1
    c = _cache(model, clean)
    g = Graph.of(model)
    n_pos = clean.shape[0] and c["blocks.0.hook_resid_pre"].shape[1]
    for u, v in EDGES:
        hook, head = _receiver(v, model.cfg.n_layers)
        y = c[hook] if head is None else c[hook][:, :, head]
        ups = [s for s in g.senders if bool(g.mask[g.senders.index(s), g.receivers.index(v)])]
        expected = torch.zeros(clean.shape[0], dtype=torch.float64)
        for b in range(clean.shape[0]):
            for p in range(n_pos):
                yy = y[b, p]
                parts = {s: _sender(c, s)[b, p] for s in ups}
                parts["bias"] = yy - sum(parts.values())
                prox = {s: max(float(yy.abs().sum() - (yy - part).abs().sum()), 0.0) for s, part in parts.items()}
                if v.endswith((".k", ".v")):
                    l, h = v.split(".")[0][1:].split("H")
                    w = float(c[f"blocks.{l}.attn.hook_pattern"][b, int(h), :, p].mean())
                elif v == "logits":
                    w = 1.0 if p == 0 else 0.0  # class-token readout
                else:
                    w = 1.0 / n_pos
                expected[b] += w * prox[u] / sum(prox.values())
        torch.testing.assert_close(_score(scores, u, v), expected, rtol=1e-9, atol=1e-12)


def test_node_scores_are_the_atp_estimates_of_the_nodes(setup):
    """Sum of a node's outgoing EAP scores = AtP of patching its output (heads at z, MLPs at mlp_out)."""
    model, clean, corrupted = setup
    scores = eap(model, clean, corrupted, metric())
    ns = dict(zip(scores.graph.senders, node_scores(scores).tolist()))
    heads = atp_heads(model, clean, corrupted, metric(), sites="z")
    mlps = atp_layer_sweep(model, clean, corrupted, metric(), sites="mlp_out")
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            want = float((heads.values[0, l, h] - heads.target_score).mean())
            assert abs(ns[f"L{l}H{h}"] - want) < 1e-9 * max(1.0, abs(want))
        want = float((mlps.values[0, l] - mlps.target_score).sum(0).mean())
        assert abs(ns[f"MLP{l}"] - want) < 1e-9 * max(1.0, abs(want))


def test_select_nodes_keeps_every_edge_between_the_top_nodes(setup):
    model, clean, corrupted = setup
    scores = eap(model, clean, corrupted, metric())
    ns = node_scores(scores)
    g = scores.graph
    top = [g.senders[i] for i in torch.argsort(ns.abs(), descending=True)[:4].tolist()]
    c = select_nodes(scores, top_n=4, prune=False)
    expected = {(u, v) for u, v in g.edges if u in top and (v == "logits" or v.split(".")[0] in top)}
    assert set(c.edges) == expected and len(expected) > 4
    assert set(select_nodes(scores, top_n=4).edges) <= expected
    with pytest.raises(ValueError, match="top_n"):
        select_nodes(scores, top_n=-1)


class Boom(RuntimeError):
    pass


def _boom(logits, ids):
    raise Boom("metric failed")


@pytest.mark.parametrize("call", [
    lambda m, c, x: eap_ig_activations(m, c, x, _boom, steps=2),
    lambda m, c, x: atp_graddrop(m, c, x, _boom),
    lambda m, c, x: information_flow_routes(m, c, x, _boom),
    lambda m, c, x: eap(m, c, x, metric(), ablation=Ablation("optimal", fit_metric=_boom, steps=2)),
    lambda m, c, x: eap(m, c, x, _boom, ablation="mean"),
])
def test_an_exception_mid_run_leaves_no_hook_and_restores_flags(setup, call):
    model, clean, corrupted = setup
    with pytest.raises(Boom):
        call(model, clean, corrupted)
    assert no_hooks_left(model)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in


@pytest.mark.parametrize("call, arg", [
    (lambda m, c, x: eap_ig_activations(m, c, x, metric(), steps=0), "steps"),
    (lambda m, c, x: eap_ig_activations(m, c, x[:1], metric()), "corrupted"),
    (lambda m, c, x: atp_graddrop(m, c, x, metric(), ablation="nothing"), "ablation"),
    (lambda m, c, x: information_flow_routes(m, c, x, "logitdiff"), "metric"),
    (lambda m, c, x: eap_ig_activations(m, c, x, metric(), ablation="mean", reference=c[:, :1]), "reference"),
    (lambda m, c, x: neuron_scores(m, c, x, metric(), ablation="optimal"), "ablation"),
    (lambda m, c, x: evaluate_neurons(m, [NeuronCircuit(torch.ones(1, 2, dtype=torch.bool),
                                                        torch.ones(1, 2, 2, dtype=torch.bool))], c, x), "circuits"),
    (lambda m, c, x: select_neurons(neuron_scores(m, c, x, metric()), top_n=-1), "top_n"),
])
def test_bad_input_names_the_argument(setup, call, arg):
    model, clean, corrupted = setup
    with pytest.raises((ValueError, TypeError), match=arg):
        call(model, clean, corrupted)
    assert no_hooks_left(model)


def test_neuron_scores_sum_to_the_atp_estimates_of_their_node(setup):
    """Ablating every neuron of an MLP (every dimension of a head) at once is that node's AtP estimate."""
    model, clean, corrupted = setup
    ns = neuron_scores(model, clean, corrupted, metric())
    mlps = atp_layer_sweep(model, clean, corrupted, metric(), sites="mlp_out", direction="noising")
    heads = atp_heads(model, clean, corrupted, metric(), sites="z", direction="noising")
    torch.testing.assert_close(ns.mlp_per_image.sum(1), -(mlps.values[0] - mlps.target_score).sum(1),
                               rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ns.head_per_image.sum(2), -(heads.values[0] - heads.target_score),
                               rtol=1e-9, atol=1e-12)
    assert float(ns.mlp.abs().max()) > 1e-3


def test_evaluate_neurons_equals_a_hand_patched_run(setup):
    model, clean, corrupted = setup
    reference = images(5, 32, 32, seed=4).double()
    gen = torch.Generator().manual_seed(1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    c = NeuronCircuit(torch.rand(L, model.cfg.d_mlp, generator=gen) < 0.5,
                      torch.rand(L, H, model.cfg.d_head, generator=gen) < 0.5)
    full = NeuronCircuit(torch.ones_like(c.mlp), torch.ones_like(c.head))
    ev = evaluate_neurons(model, [c, full], clean, corrupted, metric(), ablation="mean_positional",
                          reference=reference, batch_size=3)
    r = _cache(model, reference)
    hooks = []
    for l in range(L):
        for name, keep in ((f"blocks.{l}.mlp.hook_post", c.mlp[l]), (f"blocks.{l}.attn.hook_z", c.head[l])):
            mean = r[name].mean(0, keepdim=True)
            hooks.append((name, lambda a, hook, k=keep, m=mean: torch.where(k, a, m.expand_as(a))))
    with torch.no_grad():
        expected = metric()(model.run_with_hooks(clean, fwd_hooks=hooks), torch.arange(2))
    torch.testing.assert_close(ev.values[0], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(ev.values[1], ev.clean_score, rtol=0, atol=1e-10)
    assert (ev.values[0] - ev.clean_score).abs().max() > 1e-3
    keep = select_neurons(neuron_scores(model, clean, corrupted, metric()), top_n=7)
    assert keep.n_neurons == 7


@pytest.mark.parametrize("scorer", [eap_ig_activations, atp_graddrop, information_flow_routes])
def test_scores_are_detached(scorer, setup):
    # a score tensor that still requires grad keeps the whole autograd graph of its passes alive
    model, clean, corrupted = setup
    s = scorer(model, clean, corrupted, metric())
    assert not s.scores.requires_grad and not s.per_image.requires_grad
    assert s.scores.grad_fn is None and s.per_image.grad_fn is None

"""EAP / EAP-IG scores against an independent autograd recomputation of the edge formula: the derivative of the
metric w.r.t. a scalar ``alpha`` that adds ``alpha * (clean_u - corrupted_u)`` to receiver ``v``'s input."""
import pytest
import torch

from circuit_toys import metric, pair, tiny
from vit_patching.circuits import Graph, eap, eap_ig

EDGES = [("embed", "L0H1.q"), ("L0H0", "L1H1.k"), ("L0H1", "MLP0"), ("MLP0", "L1H0.v"), ("L1H1", "logits"),
         ("MLP1", "logits"), ("embed", "logits")]


def _sender_diff(model, clean, corrupted, u):
    """clean_u - corrupted_u from the model's own per-head result hook (not z @ W_O)."""
    with model.flags(use_attn_result=True):
        _, c = model.run_with_cache(clean, return_cache_object=False)
        _, x = model.run_with_cache(corrupted, return_cache_object=False)
    if u == "embed":
        name, head = "blocks.0.hook_resid_pre", None
    elif u.startswith("MLP"):
        name, head = f"blocks.{u[3:]}.hook_mlp_out", None
    else:
        l, h = u[1:].split("H")
        name, head = f"blocks.{l}.attn.hook_result", int(h)
    d = c[name] - x[name]
    return d if head is None else d[:, :, head]


def _receiver_hook(v, n_layers):
    if v == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if v.startswith("MLP"):
        return f"blocks.{v[3:]}.hook_mlp_in", None
    node, c = v.split(".")
    l, h = node[1:].split("H")
    return f"blocks.{l}.hook_{c}_input", int(h)


def _edge_derivative(model, start_resid, delta, v, m):
    """d metric / d alpha at alpha = 0, input of v += alpha * delta, run from a block-0 residual."""
    alpha = torch.zeros((), dtype=delta.dtype, requires_grad=True)
    hook, head = _receiver_hook(v, model.cfg.n_layers)

    def add(act, hook):
        act = act.clone()
        if head is None:
            act = act + alpha * delta
        else:
            act[:, :, head] = act[:, :, head] + alpha * delta
        return act

    with model.flags(use_split_qkv_input=True, use_hook_mlp_in=True):
        logits = model.run_with_hooks(start_resid, start_at_layer=0, fwd_hooks=[(hook, add)])
    (g,) = torch.autograd.grad(m(logits, torch.arange(logits.shape[0])).sum(), alpha)
    return g


def test_eap_equals_the_autograd_edge_formula():
    model, (clean, corrupted) = tiny(dtype=torch.float64), pair(dtype=torch.float64)
    scores = eap(model, clean, corrupted, metric())
    with torch.no_grad():
        _, xc = model.run_with_cache(corrupted, return_cache_object=False)
    g = scores.graph
    for u, v in EDGES:
        delta = _sender_diff(model, clean, corrupted, u)
        expected = _edge_derivative(model, xc["blocks.0.hook_resid_pre"], delta, v, metric())
        got = scores.scores[g.senders.index(u), g.receivers.index(v)] * clean.shape[0]  # mean -> sum over images
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)  # float64 scores of a float64 model


def test_eap_ig_averages_the_edge_derivative_over_the_interpolation():
    model, (clean, corrupted) = tiny(dtype=torch.float64), pair(dtype=torch.float64)
    steps = 3
    scores = eap_ig(model, clean, corrupted, metric(), steps=steps)
    with torch.no_grad():
        _, cc = model.run_with_cache(clean, return_cache_object=False)
        _, xc = model.run_with_cache(corrupted, return_cache_object=False)
    e_clean, e_corr = cc["blocks.0.hook_resid_pre"], xc["blocks.0.hook_resid_pre"]
    g = scores.graph
    for u, v in EDGES[:4]:
        delta = _sender_diff(model, clean, corrupted, u)
        expected = sum(_edge_derivative(model, e_corr + k / steps * (e_clean - e_corr), delta, v, metric())
                       for k in range(1, steps + 1)) / steps
        got = scores.scores[g.senders.index(u), g.receivers.index(v)] * clean.shape[0]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)  # float64 scores of a float64 model


def test_per_position_scores_sum_to_the_edge_scores():
    model, (clean, corrupted) = tiny(), pair()
    scores = eap(model, clean, corrupted, metric(), by_pos=True)
    assert scores.by_pos.shape == (*scores.scores.shape, 17)
    mask = scores.graph.mask
    torch.testing.assert_close(scores.by_pos.sum(-1)[mask], scores.scores[mask], rtol=1e-4, atol=1e-5)
    assert scores.scores[~mask].isnan().all()


def test_graph_edges_follow_the_residual_stream_order():
    model = tiny()
    g = Graph.of(model)
    assert g.senders == ["embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1"]
    assert g.receivers[:3] == ["L0H0.q", "L0H0.k", "L0H0.v"] and g.receivers[-1] == "logits"
    edges = set(g.edges)
    assert ("L0H0", "MLP0") in edges and ("L0H0", "L0H1.q") not in edges and ("MLP0", "L0H0.q") not in edges
    # embed feeds all 2*2*3 head inputs, 2 MLPs and the logits; each of 7 senders feeds the logits
    assert len(edges) == sum(1 for s in g.senders for r in g.receivers if (s, r) in edges)
    assert all((s, "logits") in edges for s in g.senders)


@pytest.mark.parametrize("fn", [eap, eap_ig])
def test_flags_are_restored(fn):
    model, (clean, corrupted) = tiny(), pair()
    fn(model, clean, corrupted, metric())
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_hook_mlp_in

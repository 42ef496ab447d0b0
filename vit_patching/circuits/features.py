"""Feature circuits: the latents of an SAE spliced in the residual stream as nodes of the circuit graph.

With an SAE spliced at a residual hook ``H`` (``hook_resid_pre`` / ``_mid`` / ``_post``; ``model.add_sae``) the
residual stream at ``H`` is ``decode(latents) + error``: every latent ``F{k}`` is a node that reads the residual
written by the graph's senders before ``H`` and writes ``a_k * D[k]`` (``D[k] = decode(e_k) - decode(0)``, its
decoder direction) for the receivers after ``H``; the SAE's error ``ERR`` (with ``use_error_term=True``) is one
more node, reading the same residual and writing ``x - decode(encode(x))``. :func:`feature_eap` scores those
edges with EAP's formula (Syed et al. 2023; feature circuits as in Marks et al. 2024, "Sparse feature
circuits"), gradients in the corrupted run (denoising)::

    u -> F_k:   sum_pos dout_u . (dm/da_k  da_k/dx)         F_k -> v:   sum_pos (a_k' - a_k) D[k] . dm/din_v
    u -> ERR:   sum_pos dout_u . (dm/derr  derr/dx)         ERR -> v:   sum_pos (err' - err) . dm/din_v

and each feature node by attribution patching (``(a_k' - a_k) . dm/da_k``). Because the residual at ``H`` is
read only by the receivers after it, a node's edges to every downstream receiver sum to its node score, and the
edges from every upstream sender into ``F_k`` sum to ``dx . dm/da_k da_k/dx`` (tested). Edges that do not touch
the SAE are :func:`~vit_patching.circuits.eap.eap`'s. The decoder must be affine in the latents (this project's
SAEs without ``normalize_activations`` other than ``"none"`` / ``"expected_average_only_in"``).

:func:`evaluate_features` runs the clean images with every latent outside a kept set (and the error, unless kept)
replaced by its corrupted (or zero) value, through the patching engine, and reports faithfulness;
:func:`feature_faithfulness_curve` does so for the top ``n`` latents by node score, for several ``n`` at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_bool, check_choice, check_indices, is_int
from vit_patching.hook_names import get_act_name, sae_act_name, site_suffix
from vit_patching.model import HookedViT
from vit_patching.patching import Node, PatchSpec, Site, run_patch_spec
from vit_patching.patching.engine import cache_for, result_dtype
from vit_patching.sae.sites import get_splice, latent_width

from .common import Metric, check_pair, resolve_metric
from .eap import EDGE_FLAGS, receiver_hooks, sender_outputs, stack_receivers
from .graph import Graph
from .interventions import sender_hooks

__all__ = [
    "FEATURE_ABLATIONS", "FeatureCurve", "FeatureEdgeScores", "FeatureEvaluation", "evaluate_features", "feature_eap",
    "feature_faithfulness_curve",
]

# Residual-stream "time" of a residual hook in the stages of Node.write_stage / read_stage: senders at a smaller
# stage wrote before it, receivers at a larger stage read after it.
_RESID_STAGE = {"hook_resid_pre": 0.5, "hook_resid_mid": 1.5, "hook_resid_post": 2.5}
#: What :func:`evaluate_features` writes over the ablated latents: the corrupted run's values, or zeros.
FEATURE_ABLATIONS = ("corrupted", "zero")


def _resid_hook(model: HookedViT, hook: str) -> tuple[str, float]:
    name = get_act_name(hook)
    splice = get_splice(model, name)
    suffix = site_suffix(name)
    if suffix not in _RESID_STAGE or splice.positions != "all":
        raise ValueError(f"hook: expected an SAE on every token of a residual hook (blocks.N.hook_resid_pre / "
                         f"_mid / _post, positions='all'), got {name!r} with positions={splice.positions!r}")
    norm = getattr(getattr(splice.module, "cfg", None), "normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(f"hook: expected an SAE whose decoder is affine in its latents (normalize_activations "
                         f"'none'), got normalize_activations={norm!r} at {name!r}")
    layer = int(name.split(".")[1])
    return name, 2 * layer + _RESID_STAGE[suffix]


@dataclass
class FeatureEdgeScores:
    """Edges into and out of the nodes of an SAE (its latents ``F{k}`` and its error ``ERR``).

    Attributes:
        hook: The residual hook the SAE is spliced at.
        nodes: Feature node names, ``"F{k}"`` per scored latent, then ``"ERR"`` with the error term.
        senders: The graph's senders that write before ``hook`` (:class:`~vit_patching.circuits.graph.Graph`).
        receivers: The graph's receivers that read after it.
        into: Score of each edge sender -> node, per image ``[sender, node, batch]``.
        out_of: Score of each edge node -> receiver, per image ``[node, receiver, batch]``.
        node_scores: Attribution-patching score of each node per image ``[node, batch]``.
        clean_score, corrupted_score: Metric of the two runs ``[batch]``.
        metric: Metric name.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     fe = feature_eap(model, clean, corrupted, "logit", hook="blocks.1.hook_resid_post", latents=[0, 1])
        >>> [(u, v) for u, v, score in fe.top(2)] != []    # [(upstream, downstream, mean score), ...] by |score|
        True
    """

    hook: str
    nodes: list[str]
    senders: list[str]
    receivers: list[str]
    into: Float[Tensor, "sender node batch"]
    out_of: Float[Tensor, "node receiver batch"]
    node_scores: Float[Tensor, "node batch"]
    clean_score: Float[Tensor, " batch"]
    corrupted_score: Float[Tensor, " batch"]
    metric: str
    options: dict[str, Any] = field(default_factory=dict)

    def edges(self) -> list[tuple[str, str, float]]:
        """Every edge with its mean score over images, senders into nodes first."""
        into, out = self.into.mean(-1), self.out_of.mean(-1)
        return ([(s, n, float(into[i, j])) for i, s in enumerate(self.senders) for j, n in enumerate(self.nodes)]
                + [(n, r, float(out[j, i])) for j, n in enumerate(self.nodes) for i, r in enumerate(self.receivers)])

    def top(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` edges with the largest |mean score|."""
        return sorted(self.edges(), key=lambda e: -abs(e[2]))[:k]


def feature_eap(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    hook: str,
    latents: int | Sequence[int] | None = None,
) -> FeatureEdgeScores:
    """EAP scores of the edges into and out of the latents (and error) of the SAE spliced at residual ``hook``.

    Args:
        model: A HookedViT with an SAE spliced at ``hook`` (with ``use_error_term=True`` the error is a node).
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        hook: ``blocks.N.hook_resid_pre`` / ``_mid`` / ``_post`` with an SAE spliced on every token.
        latents: Latents to score (default all; the edges into a latent cost one encoder backward each).

    Returns:
        :class:`FeatureEdgeScores` (float64 for a float64 model).

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     fe = feature_eap(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, latents=range(16))
        >>> fe.node_scores.shape                             # 16 latents and the error, per image
        torch.Size([17, 2])
    """
    check_pair(model, clean, corrupted)
    name, stage = _resid_hook(model, hook)
    splice = get_splice(model, name)
    ids = check_indices(list(latents) if isinstance(latents, range) else latents, latent_width(splice) or 0,
                        "latents", "latent")
    graph = Graph.of(model)
    up = [i for i, s in enumerate(graph.senders) if Node.parse(s).write_stage() < stage]
    down = [i for i, r in enumerate(graph.receivers) if Node.parse(r).read_stage() > stage]
    lat, err = sae_act_name(name, "acts_post"), sae_act_name(name, "error")
    has_err = splice.use_error_term
    s_hooks, r_hooks = sender_hooks(model), receiver_hooks(model)
    cached = [*s_hooks, name, lat] + ([err] if has_err else [])
    with model.flags(**EDGE_FLAGS):
        clean_logits, clean_cache = cache_for(model, clean, cached)
        corr_logits, corr_cache = cache_for(model, corrupted, cached)
        fn, metric_name = resolve_metric(metric, clean_logits, corr_logits)
        grads = _gradients(model, corrupted, [*r_hooks, lat] + ([err] if has_err else []), fn)
    sae = splice.module
    lat_ids = torch.tensor(ids, device=clean_logits.device)
    with torch.no_grad():
        d_lat = (clean_cache[lat] - corr_cache[lat])[..., lat_ids]  # [b pos K]
        z = torch.zeros(1, latent_width(splice), dtype=d_lat.dtype, device=d_lat.device)
        directions = sae.decode(torch.eye(z.shape[1], dtype=z.dtype, device=z.device)[lat_ids]) - sae.decode(z)
        d_send = (sender_outputs(model, clean_cache) - sender_outputs(model, corr_cache))[:, :, up]  # [b pos S d]
        g_recv = stack_receivers(model, grads)[:, :, down]  # [b pos R d]
    # dm/dx through each latent (and through the error) at the corrupted run's SAE input: encoder backwards.
    x = corr_cache[name].detach().clone().requires_grad_(True)
    g_lat = grads[lat][..., lat_ids]
    with torch.enable_grad():
        acts = sae.encode(x)[..., lat_ids]
        g_in = [torch.autograd.grad(acts[..., j], x, grad_outputs=g_lat[..., j], retain_graph=True)[0]
                for j in range(len(ids))]
        if has_err:
            error = x - sae.decode(sae.encode(x))
            g_in.append(torch.autograd.grad(error, x, grad_outputs=grads[err])[0])
    g_in = torch.stack(g_in, dim=2)  # [b pos node d]
    with torch.no_grad():
        d_out = d_lat[..., None] * directions  # [b pos K d]: each latent's write
        node = (d_lat * g_lat).sum(1).T  # [K, b]
        if has_err:
            d_err = clean_cache[err] - corr_cache[err]
            d_out = torch.cat([d_out, d_err[:, :, None]], dim=2)
            node = torch.cat([node, (d_err * grads[err]).sum((1, 2))[None]])
        into = torch.einsum("bpsd,bpnd->snb", d_send, g_in)
        out_of = torch.einsum("bpnd,bprd->nrb", d_out, g_recv)
    dtype = result_dtype(d_out.dtype)
    b_ids = torch.arange(clean.shape[0], device=clean_logits.device)
    return FeatureEdgeScores(
        hook=name, nodes=[f"F{k}" for k in ids] + (["ERR"] if has_err else []),
        senders=[graph.senders[i] for i in up], receivers=[graph.receivers[i] for i in down],
        into=into.to(dtype).cpu(), out_of=out_of.to(dtype).cpu(), node_scores=node.to(dtype).cpu(),
        clean_score=fn(clean_logits, b_ids).to(dtype).cpu(), corrupted_score=fn(corr_logits, b_ids).to(dtype).cpu(),
        metric=metric_name, options={"latents": ids, "error_node": has_err},
    )


def _gradients(model: HookedViT, images: Tensor, hooks: list[str], metric: Metric) -> dict[str, Tensor]:
    """Metric gradients at ``hooks`` in the run of ``images`` (hooks removed on exit)."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        logits = model(images.detach().clone().requires_grad_(True))
        total = metric(logits, torch.arange(images.shape[0], device=logits.device)).sum()
        grads = torch.autograd.grad(total, [acts[h] for h in hooks], allow_unused=True)
    return {h: torch.zeros_like(acts[h]) if g is None else g.detach() for h, g in zip(hooks, grads)}


@dataclass
class FeatureEvaluation:
    """The metric with only some of an SAE's latents (and optionally its error) kept from the clean run.

    Attributes:
        values: Metric of the clean images with the other latents ablated ``[batch]``.
        clean_score: Clean-run metric ``[batch]``.
        empty_score: Metric with every latent (and the error) ablated ``[batch]``.
        kept: The kept latents; ``keep_error`` whether the error was kept.
        metric, ablation: Names.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     ev = evaluate_features(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, keep=[3, 17])
        >>> ev.faithfulness.shape                       # a scalar: 0 = everything ablated, 1 = the clean run
        torch.Size([])
    """

    values: Float[Tensor, " batch"]
    clean_score: Float[Tensor, " batch"]
    empty_score: Float[Tensor, " batch"]
    kept: list[int]
    keep_error: bool
    metric: str
    ablation: str

    @property
    def faithfulness(self) -> Float[Tensor, ""]:
        """``(mean m(kept) - mean m(empty)) / (mean m(clean) - mean m(empty))``."""
        empty = self.empty_score.mean()
        return (self.values.mean() - empty) / (self.clean_score.mean() - empty)


def evaluate_features(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    hook: str,
    keep: Sequence[int],
    keep_error: bool = True,
    ablation: str = "corrupted",
    batch_size: int = 64,
) -> FeatureEvaluation:
    """Keep latents ``keep`` of the SAE spliced at ``hook`` from the clean run and ablate the others (and the
    error unless ``keep_error``), through the patching engine.

    Args:
        model: A HookedViT with an SAE spliced at ``hook`` (the error is ablated only with ``use_error_term``).
        clean: Clean images ``[batch, C, H, W]`` (the run evaluated).
        corrupted: Corrupted images, same shape (the ablated values for ``ablation="corrupted"``).
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        hook: The hook the SAE is spliced at.
        keep: Latents kept at their clean values (may be empty).
        keep_error: Keep the SAE's error at its clean value.
        ablation: ``"corrupted"`` (the corrupted run's latents and error) or ``"zero"``.
        batch_size: Rows per forward pass.

    Returns:
        :class:`FeatureEvaluation`.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     ev = evaluate_features(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, keep=[3, 17])
        >>> ev.kept
        [3, 17]
    """
    check_pair(model, clean, corrupted)
    name = get_act_name(hook)
    d_sae = _width(model, name)
    kept = [] if isinstance(keep, Sequence) and len(keep) == 0 else check_indices(list(keep), d_sae, "keep", "latent")
    values, clean_score, empty, metric_name, keep_error = _evaluate_sets(
        model, clean, corrupted, metric, name, [kept], keep_error, ablation, batch_size)
    return FeatureEvaluation(values[0], clean_score, empty, kept, keep_error, metric_name, ablation)


def _width(model: HookedViT, name: str) -> int:
    d_sae = latent_width(get_splice(model, name))
    if d_sae is None:
        raise ValueError(f"hook: the module spliced at {name!r} states no d_sae; expected one of this project's SAEs "
                         f"or a module with a d_sae attribute")
    return d_sae


def _evaluate_sets(model: HookedViT, clean: Tensor, corrupted: Tensor, metric: Metric | str, name: str,
                   sets: list[list[int]], keep_error: bool, ablation: str, batch_size: int,
                   ) -> tuple[Tensor, Tensor, Tensor, str, bool]:
    """Metric per kept set ``[set, batch]``, the clean and empty scores, the metric name, and whether the error was
    kept (always, without an error term): every set's run and the empty circuit's in one engine call."""
    splice = get_splice(model, name)
    d_sae = _width(model, name)
    check_bool(keep_error, "keep_error")
    check_choice(ablation, FEATURE_ABLATIONS, "ablation")
    lat, err = sae_act_name(name, "acts_post"), sae_act_name(name, "error")
    has_err = splice.use_error_term
    if not keep_error and not has_err:
        raise ValueError(f"keep_error: the SAE at {name!r} runs without its error term (nothing to ablate); "
                         f"expected True, got False")
    hooks = [lat] + ([err] if has_err else [])
    clean_logits, _ = cache_for(model, clean, [])
    corr_logits, source_cache = cache_for(model, corrupted, hooks)
    fn, metric_name = resolve_metric(metric, clean_logits, corr_logits)
    if ablation == "zero":
        source_cache = {h: torch.zeros_like(v) for h, v in source_cache.items()}
    error_sites = [] if keep_error or not has_err else [Site(err)]
    variants = [tuple([Site(lat)] + ([Site(err)] if has_err else []))]  # the empty circuit: everything ablated
    rows = []  # each set's variant, or None when it ablates nothing (its value is the clean run's)
    for kept in sets:
        ablated = tuple([Site(lat, latent=k) for k in range(d_sae) if k not in set(kept)] + error_sites)
        rows.append(len(variants) if ablated else None)
        if ablated:
            variants.append(ablated)
    run = run_patch_spec(model, PatchSpec(variants), fn, target=clean, source_cache=source_cache,
                         source_logits=corr_logits, batch_size=batch_size, progress=False)
    values = torch.stack([run.target_score if r is None else run.values[r] for r in rows])
    return values, run.target_score, run.values[0], metric_name, keep_error or not has_err


@dataclass
class FeatureCurve:
    """Faithfulness with the top ``n`` latents kept, for each ``n`` (see :func:`feature_faithfulness_curve`).

    Attributes:
        sizes: Latents kept per point.
        kept: The kept latents per point (largest |node score| first).
        values: Metric per point and image ``[size, batch]``.
        clean_score, empty_score: Baselines ``[batch]``.
        keep_error: Whether the error was kept.
        metric, ablation: Names.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     fe = feature_eap(model, clean, corrupted, "logit", hook=sae.cfg.hook_name, latents=range(8))
        ...     curve = feature_faithfulness_curve(model, clean, corrupted, "logit", hook=sae.cfg.hook_name,
        ...                                        scores=fe, sizes=[1, 4, 8])
        >>> curve.faithfulness.shape                    # one value per size
        torch.Size([3])
    """

    sizes: list[int]
    kept: list[list[int]]
    values: Float[Tensor, "size batch"]
    clean_score: Float[Tensor, " batch"]
    empty_score: Float[Tensor, " batch"]
    keep_error: bool
    metric: str
    ablation: str

    @property
    def faithfulness(self) -> Float[Tensor, " size"]:
        """``(mean m(top n) - mean m(empty)) / (mean m(clean) - mean m(empty))`` per size."""
        empty = self.empty_score.mean()
        return (self.values.mean(-1) - empty) / (self.clean_score.mean() - empty)

    def plot(self, title: str = "faithfulness vs features kept"):
        """Faithfulness against the number of latents kept (Plotly figure, as ``CircuitEvaluation.plot``; the
        trace is named by whether the error was kept, so two curves can share a figure)."""
        from vit_patching.plotting.curves import faithfulness_vs_size  # plotly: loaded on the first figure

        return faithfulness_vs_size(self.sizes, self.faithfulness.tolist(), ablation=self.ablation, metric=self.metric,
                                    title=title, unit="latents", x_title="latents kept",
                                    name=f"top latents (error {'kept' if self.keep_error else 'ablated'})")


def feature_faithfulness_curve(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    hook: str,
    scores: FeatureEdgeScores,
    sizes: Sequence[int],
    keep_error: bool = True,
    ablation: str = "corrupted",
    batch_size: int = 64,
) -> FeatureCurve:
    """:func:`evaluate_features` for the top ``n`` latents of ``scores`` (by |mean node score|), for each ``n`` in
    ``sizes``, in one engine call.

    Args:
        model, clean, corrupted, metric, hook, keep_error, ablation, batch_size: As :func:`evaluate_features`.
        scores: :func:`feature_eap` scores of the SAE at ``hook`` (its latent nodes are ranked; ``ERR`` is not).
        sizes: Latent counts, each in ``[0, scored latents]``.

    Returns:
        :class:`FeatureCurve`.

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     fe = feature_eap(model, clean, corrupted, "logit", hook=sae.cfg.hook_name)
        ...     curve = feature_faithfulness_curve(model, clean, corrupted, "logit", hook=sae.cfg.hook_name,
        ...                                        scores=fe, sizes=[1, 4, 16])
        >>> curve.kept[0] == curve.kept[1][:1]
        True
    """
    check_pair(model, clean, corrupted)
    name = get_act_name(hook)
    if not isinstance(scores, FeatureEdgeScores) or scores.hook != name:
        raise ValueError(f"scores: expected feature_eap scores of the SAE at {name!r}, got "
                         f"{getattr(scores, 'hook', type(scores).__name__)!r}")
    latents = scores.options["latents"]
    n_lat = len(latents)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes \
            or not all(is_int(n) and 0 <= n <= n_lat for n in sizes):
        raise ValueError(f"sizes: expected a non-empty list of latent counts in [0, {n_lat}], got {sizes!r}")
    order = torch.argsort(scores.node_scores[:n_lat].mean(-1).abs(), descending=True, stable=True).tolist()
    sets = [[latents[j] for j in order[:n]] for n in sizes]
    values, clean_score, empty, metric_name, kept_err = _evaluate_sets(
        model, clean, corrupted, metric, name, sets, keep_error, ablation, batch_size)
    return FeatureCurve(list(sizes), sets, values, clean_score, empty, kept_err, metric_name, ablation)

"""Interventions: what an ablated edge carries. One :class:`Ablation` produces, for every sender of the
:class:`~vit_patching.circuits.graph.Graph`, the replacement output the edge machinery patches in; circuit
evaluation (:func:`~vit_patching.circuits.evaluate.evaluate_circuit`) and every edge scorer
(:func:`~vit_patching.circuits.eap.eap`, :func:`~vit_patching.circuits.eap.eap_ig`,
:mod:`vit_patching.circuits.scorers`) take the same ``ablation=`` / ``reference=`` arguments.

Values are given at the sender hooks (``blocks.0.hook_resid_pre`` for the embedding, each block's ``hook_z`` for
its heads, ``hook_mlp_out`` for its MLP), so a head's replacement output is ``z_repl[:, :, h] @ W_O[h]``.
For a sender hook with clean activation ``a[b, p]`` (image ``b``, position ``p``) and a reference set
``r_1..r_N`` (default: the corrupted images; for ``resample`` the clean images):

* ``"corrupted"``: ``a(corrupted_b)[p]``, the corrupted run (activation patching; the default).
* ``"zero"``: ``0``.
* ``"mean"``: ``1/(N P) sum_{n, q} a(r_n)[q]``, one vector for every image and position.
* ``"mean_positional"``: ``1/N sum_n a(r_n)[p]``, one vector per position.
* ``"resample"``: ``a(r_{pi(b)})[p]`` with ``pi`` a derangement of ``0..B-1`` drawn with ``seed`` (``pi(b) != b``);
  the reference set must have the clean batch's size.
* ``"optimal"`` (optimal ablation, Li & Janson 2024): a constant ``c_u[p]`` per sender ``u`` and position,
  fitted on the reference set by Adam (``steps``, ``lr``) from the ``mean_positional`` value, minimising::

      J_u(c) = 1/N sum_n (m(r_n; u <- c) - m(r_n))^2

  where ``m(r_n; u <- c)`` is the metric of reference image ``r_n`` with only ``u``'s output replaced by ``c``
  (every node fitted on its own, all as rows of the same passes) and ``m`` is ``fit_metric(logits, index)``
  (default: each reference image's logit of its own predicted class).

Example:
    >>> ev = evaluate_circuit(model, circuit, clean, corrupted, ablation="mean", reference=images)
    >>> scores = eap(model, clean, corrupted, ablation=Ablation("resample", seed=3))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_choice, check_positive_int, check_positive_number, check_seed
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching import target_logit
from vit_patching.patching.engine import check_image_batch

__all__ = ["ABLATIONS", "Ablation", "ablated_logits", "ablated_run_gradients", "ablation_values", "derangement",
           "fit_optimal", "resolve_ablation", "sender_hooks"]

ABLATIONS = ("corrupted", "zero", "mean", "mean_positional", "resample", "optimal")

Metric = Callable[[Tensor, Tensor], Tensor]


def sender_hooks(model: HookedViT) -> list[str]:
    """Hooks whose values give every sender's output (block-0 input, each ``hook_z``, each ``hook_mlp_out``)."""
    L = model.cfg.n_layers
    return [get_act_name("resid_pre", 0)] + [get_act_name(n, l) for l in range(L) for n in ("z", "mlp_out")]


@dataclass(frozen=True)
class Ablation:
    """A named intervention for ablated edges (see the module docstring for each kind's formula).

    Attributes:
        kind: One of :data:`ABLATIONS`.
        reference: Reference images ``[N, C, H, W]`` for ``mean`` / ``mean_positional`` / ``resample`` /
            ``optimal`` (None: the corrupted images; for ``resample`` the clean images).
        seed: Seed of the ``resample`` derangement.
        fit_metric: ``optimal`` only: ``fit_metric(logits, reference_index) -> [rows]`` (None: each reference
            image's logit of its own predicted class).
        steps: ``optimal`` only: Adam steps.
        lr: ``optimal`` only: Adam learning rate.

    Example:
        >>> Ablation("mean_positional", reference=images).kind
        'mean_positional'
    """

    kind: str = "corrupted"
    reference: Tensor | None = None
    seed: int = 0
    fit_metric: Metric | None = None
    steps: int = 100
    lr: float = 0.05

    def __post_init__(self) -> None:
        check_choice(self.kind, ABLATIONS, "ablation")
        check_seed(self.seed)
        check_positive_int(self.steps, "steps")
        check_positive_number(self.lr, "lr")
        if self.reference is not None and not isinstance(self.reference, Tensor):
            raise TypeError(f"reference: expected a tensor of images [N, C, H, W], got {type(self.reference).__name__}")
        if self.fit_metric is not None and not callable(self.fit_metric):
            raise TypeError(f"fit_metric: expected a callable (logits, index) -> [rows], got {self.fit_metric!r}")

    def check(self, model: HookedViT, clean: Tensor) -> None:
        """Refuse, before any compute, reference images that do not fit ``model`` and ``clean``."""
        _check_reference(model, self, clean)


def resolve_ablation(ablation: Any, reference: Tensor | None = None) -> Ablation:
    """An :class:`Ablation` from a name (with ``reference``) or an :class:`Ablation` (then ``reference`` must be
    None: it is the object's).

    Example:
        >>> resolve_ablation("zero").kind
        'zero'
    """
    if isinstance(ablation, Ablation):
        if reference is not None:
            raise ValueError("reference: expected None when ablation is an Ablation (set Ablation.reference)")
        return ablation
    if not isinstance(ablation, str):
        raise TypeError(f"ablation: expected one of {list(ABLATIONS)} or an Ablation, got {ablation!r}")
    return Ablation(ablation, reference)


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``0..n-1`` with no fixed point (``n >= 2``), drawn uniformly with ``seed`` by rejection.

    Example:
        >>> p = derangement(5, 0)
        >>> sorted(p) == list(range(5)) and all(p[i] != i for i in range(5))
        True
    """
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not bool((p == torch.arange(n)).any()):
            return p.tolist()


def _cache(model: HookedViT, images: Tensor, hooks: list[str]) -> dict[str, Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in hooks, return_cache_object=False)
    return cache


def _check_reference(model: HookedViT, ablation: Ablation, clean: Tensor) -> None:
    ref = ablation.reference
    if ablation.kind == "resample" and clean.shape[0] < 2:
        raise ValueError(f"clean: expected at least 2 images for 'resample' (another image of the set), "
                         f"got {clean.shape[0]}")
    if ref is None:
        return
    check_image_batch(model, ref, "reference")
    if tuple(ref.shape[1:]) != tuple(clean.shape[1:]):
        raise ValueError(f"reference: expected images of clean's shape {tuple(clean.shape[1:])} per image, "
                         f"got {tuple(ref.shape[1:])}")
    if ablation.kind == "resample" and ref.shape[0] != clean.shape[0]:
        raise ValueError(f"reference: expected {clean.shape[0]} images for 'resample' (one per clean image), "
                         f"got {ref.shape[0]}")


def ablation_values(
    model: HookedViT,
    ablation: Ablation,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],
    *,
    corrupted_cache: dict[str, Tensor] | None = None,
    hooks: list[str] | None = None,
) -> dict[str, Tensor]:
    """Replacement values at every sender hook (:func:`sender_hooks`), or at ``hooks``, each of the clean run's
    shape.

    Args:
        model: A HookedViT.
        ablation: The intervention.
        clean: Clean images ``[batch, C, H, W]`` (the batch the values are for).
        corrupted: Corrupted images, same shape.
        corrupted_cache: The corrupted run's activations at the hooks when already computed (saves a forward).
        hooks: Other hooks (AtP's sites); every kind but ``"optimal"`` (fitted per graph node) applies to any hook.

    Returns:
        ``{hook name: values}`` with ``values`` of shape ``[batch, pos, ...]`` (the model's dtype).

    Example:
        >>> vals = ablation_values(model, Ablation("zero"), clean, corrupted)
        >>> float(vals["blocks.0.hook_resid_pre"].abs().max())
        0.0
    """
    _check_reference(model, ablation, clean)
    kind, batch = ablation.kind, clean.shape[0]
    if hooks is None:
        hooks = sender_hooks(model)
    elif kind == "optimal" and not set(hooks) <= set(sender_hooks(model)):
        raise ValueError("ablation: 'optimal' constants are fitted per graph node (embedding, head, MLP outputs); "
                         f"got other hooks {sorted(set(hooks) - set(sender_hooks(model)))}")
    if kind == "corrupted":
        return corrupted_cache if corrupted_cache is not None else _cache(model, corrupted, hooks)
    if kind == "zero":
        return {h: torch.zeros(batch, *a.shape[1:], dtype=a.dtype, device=a.device)
                for h, a in _cache(model, clean[:1], hooks).items()}
    if kind == "resample":
        ref = clean if ablation.reference is None else ablation.reference
        perm = torch.tensor(derangement(batch, ablation.seed), device=ref.device)
        return _cache(model, ref[perm], hooks)
    ref = corrupted if ablation.reference is None else ablation.reference
    cache = _cache(model, ref, sender_hooks(model) if kind == "optimal" else hooks)
    if kind == "mean":  # over images and token positions (a pattern's positions are its queries, axis 2)
        return {h: a.mean(dim=(0, 2 if h.endswith("hook_pattern") else 1), keepdim=True).expand(batch, *a.shape[1:])
                for h, a in cache.items()}
    means = {h: a.mean(0, keepdim=True) for h, a in cache.items()}
    if kind == "optimal":
        means = fit_optimal(model, ref, means, ablation)
    return {h: means[h].expand(batch, *means[h].shape[1:]) for h in hooks}


def fit_optimal(model: HookedViT, reference: Tensor, init: dict[str, Tensor], ablation: Ablation) -> dict[str, Tensor]:
    """Fit the optimal-ablation constants (module docstring): rows ``(sender, image)``, one Adam run.

    Returns ``{hook: [1, pos, ...]}``, the fitted constants (detached).
    """
    hooks = sender_hooks(model)
    H, N = model.cfg.n_heads, reference.shape[0]
    # Senders: embed, then per block (heads of z as H senders, mlp); row block k of the batch replaces sender k.
    units = [(hooks[0], None)] + [(h, i) for h in hooks[1:] for i in (range(H) if h.endswith("hook_z") else [None])]
    with torch.no_grad():
        ref_logits = model(reference)
    fn = ablation.fit_metric or target_logit(ref_logits.argmax(-1))
    target = fn(ref_logits, torch.arange(N, device=ref_logits.device)).detach().repeat(len(units))
    params = {h: init[h].detach().clone().expand(len(units), *init[h].shape[1:]).clone().requires_grad_(True)
              for h in hooks}  # one constant per sender: row k of params[h] is used only by sender k
    opt = torch.optim.Adam(list(params.values()), lr=ablation.lr)
    images = reference.repeat(len(units), 1, 1, 1)
    ids = torch.arange(N, device=reference.device).repeat(len(units))

    def make_hook(name: str):
        rows = [(k, i) for k, (h, i) in enumerate(units) if h == name]

        def hook(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            for k, i in rows:
                sl = slice(k * N, (k + 1) * N)
                if i is None:
                    act[sl] = params[name][k]
                else:
                    act[sl, :, i] = params[name][k][:, i]
            return act
        return hook

    with torch.enable_grad():
        for _ in range(ablation.steps):
            opt.zero_grad()
            with model.hooks(fwd_hooks=[(h, make_hook(h)) for h in hooks]):
                logits = model(images)
            loss = ((fn(logits, ids) - target) ** 2).sum() / N
            grads = torch.autograd.grad(loss, list(params.values()))
            for p, g in zip(params.values(), grads):
                p.grad = g
            opt.step()
    # Sender k's constant lives in row k; assemble one [1, pos, ...] value per hook.
    out: dict[str, Tensor] = {}
    for h in hooks:
        rows = [(k, i) for k, (hh, i) in enumerate(units) if hh == h]
        val = init[h].detach().clone()
        for k, i in rows:
            if i is None:
                val[0] = params[h][k].detach()
            else:
                val[0, :, i] = params[h][k][:, i].detach()
        out[h] = val
    return out


def ablated_run_gradients(
    model: HookedViT,
    images: Float[Tensor, "batch channel height width"],
    values: dict[str, Tensor],
    hooks: list[str],
    metric: Metric,
    *,
    extra_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Metric gradients at ``hooks`` in the *ablated run*: the forward of ``images`` with every sender hook's
    value replaced by ``values`` (straight-through: the value is the replacement, the gradient passes through
    the node's own computation from the input it receives in that run).

    Every receiver then reads the sum of its upstream senders' replacement outputs, the empty circuit's input,
    and each node's Jacobian is taken there. For ``"corrupted"`` the replacement is the corrupted run's own
    value, so this is the corrupted run's gradient (plain EAP).

    ``extra_hooks`` are attached after the replacements (e.g. GradDrop's gradient stops).

    Returns:
        ``(logits, grads)`` with ``grads[h]`` detached, of the hook's shape.

    Example:
        >>> _, grads = ablated_run_gradients(model, corrupted, vals, ["blocks.1.hook_mlp_in"], fn)
    """
    names = sorted(set(hooks))
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    def replace(act: Tensor, hook: Any) -> Tensor:
        return values[hook.name].to(act.dtype) + (act - act.detach())

    # Gradients flow from the input even when the weights are frozen (requires_grad=False).
    x = images.detach().clone().requires_grad_(True)
    fwd = [(h, replace) for h in sender_hooks(model)] + list(extra_hooks) + [(n, keep) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd):
        logits = model(x)
        total = metric(logits, torch.arange(x.shape[0], device=logits.device)).sum()
        grads = torch.autograd.grad(total, [acts[n] for n in names], allow_unused=True)
    return logits.detach(), {n: torch.zeros_like(acts[n]) if g is None else g.detach() for n, g in zip(names, grads)}


def ablated_logits(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    values: dict[str, Tensor],
) -> Float[Tensor, "batch n_classes"]:
    """Logits of the clean images with every graph node's output replaced by ``values`` (the empty circuit).

    Example:
        >>> ablated_logits(model, clean, ablation_values(model, Ablation("zero"), clean, corrupted)).shape
    """
    hooks = [(h, lambda act, hook: values[hook.name].to(act.dtype).expand_as(act).clone()) for h in sender_hooks(model)]
    with torch.no_grad():
        return model.run_with_hooks(clean, fwd_hooks=hooks)

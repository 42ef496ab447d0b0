"""Attribution patching (AtP): a first-order estimate of every activation-patching cell from one forward pass
per run and one backward pass.

For a site with target-run activation ``a`` and source-run activation ``a'``, patching ``a -> a'`` changes the
metric by about ``(a' - a) . dm/da`` (the gradient taken in the target run): Nanda 2023, "Attribution
patching"; Syed et al. 2023. :func:`atp_layer_sweep` and :func:`atp_heads` return the same
:class:`~vit_patching.patching.PatchingResult` layout as :func:`~vit_patching.patching.layer_sweep` and
:func:`~vit_patching.patching.patch_heads` (values = target metric + estimated change, so ``normalized`` is 0
at the target run and 1 at the source run), so the same figures apply.

AtP* (Kramár et al. 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to
components"): a query or key only acts through the attention softmax, which saturates, so the linear
estimate can miss large effects. For ``q`` and ``k`` sites (``atp_star=True``) the attention pattern is
recomputed exactly with the patched queries or keys and only the pattern's change is linearised:
``sum (softmax(s') - softmax(s)) . dm/dpattern``. On RoPE models the scores are recomputed from the rotated
queries and keys (``hook_rot_q`` / ``hook_rot_k``), the ones the scores are made of. The GradDrop part of
AtP* (dropping one layer's gradient) is :func:`~vit_patching.circuits.scorers.atp_graddrop`, over the edge graph.

``verify_top_k=k`` re-runs the ``k`` cells with the largest |mean estimate| exactly through the patching
engine (:func:`~vit_patching.patching.run_patch_spec`) and stores both in
``result.options["verification"]`` (a :class:`~vit_patching.circuits.common.Verification`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from vit_patching.checks import check_batch_size, check_bool, check_indices, check_names, is_int
from vit_patching.hook_names import get_act_name
from vit_patching.model import HookedViT
from vit_patching.patching import HEAD_SITES, SWEEP_SITES, PatchingResult, Site
from vit_patching.patching.engine import result_dtype
from vit_patching.patching.experiment import axis_labels, layout_options

from .common import Metric, check_pair, forward_backward, resolve_metric, source_target, top_cells, verify_cells
from .interventions import Ablation, ablated_logits, ablation_values, resolve_ablation

__all__ = ["atp_heads", "atp_layer_sweep", "pattern_effect_k", "pattern_effect_q"]


def _wide(t: Tensor) -> Tensor:
    """Estimates in the engine's result dtype (float64 models keep float64), so AtP and exact results compare."""
    return t.to(result_dtype(t.dtype))


def _check_k(verify_top_k: Any) -> int:
    if not is_int(verify_top_k) or verify_top_k < 0:
        raise ValueError(f"verify_top_k: expected a non-negative int (cells to re-run exactly), got {verify_top_k!r}")
    return verify_top_k


def _check_ablation(model: HookedViT, clean: Tensor, ablation: Any, reference: Any, direction: str,
                    verify_top_k: int) -> Ablation:
    """The ablation, refused before compute where AtP cannot use it (an ablation is written into the clean run)."""
    abl = resolve_ablation(ablation, reference)
    abl.check(model, clean)
    if abl.kind == "optimal":
        raise ValueError("ablation: 'optimal' constants are fitted per graph node (see circuits.interventions); "
                         "AtP sites take 'corrupted', 'zero', 'mean', 'mean_positional' or 'resample', got 'optimal'")
    if abl.kind != "corrupted":
        if direction != "noising":
            raise ValueError(f"direction: ablation {abl.kind!r} replaces cells of the clean run; expected "
                             f"'noising', got {direction!r}")
        if verify_top_k:
            raise ValueError(f"verify_top_k: the exact re-run patches images' activations; expected 0 with "
                             f"ablation {abl.kind!r}, got {verify_top_k!r}")
    return abl


def _runs(model: HookedViT, clean: Tensor, corrupted: Tensor, metric: Metric | str, direction: str,
          hooks: list[str], source_hooks: list[str], abl: Ablation | None = None,
          ) -> tuple[dict, dict, dict, Tensor, Tensor, Metric, str]:
    """Source run (cached), target run forward + backward; returns source acts, target acts and grads.

    With an ablation other than ``"corrupted"`` (direction ``"noising"``) the source values are the ablation's
    and the source score is the empty circuit's (every graph node ablated)."""
    source, target = source_target(direction, clean, corrupted)
    with torch.no_grad():
        source_logits, source_cache = model.run_with_cache(
            source, names_filter=lambda n: n in source_hooks, return_cache_object=False
        )
        target_logits_ng = model(target)
    clean_logits, corrupted_logits = (
        (source_logits, target_logits_ng) if direction == "denoising" else (target_logits_ng, source_logits)
    )
    fn, name = resolve_metric(metric, clean_logits, corrupted_logits)
    if abl is not None and abl.kind != "corrupted":
        source_cache = ablation_values(model, abl, clean, corrupted, hooks=source_hooks)
        source_logits = ablated_logits(model, clean, ablation_values(model, abl, clean, corrupted))
    target_logits, acts, grads = forward_backward(model, target, hooks, fn)
    ids = torch.arange(target.shape[0], device=target_logits.device)
    return source_cache, acts, grads, _wide(fn(source_logits, ids)).cpu(), _wide(fn(target_logits, ids)).cpu(), fn, name


def atp_layer_sweep(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    sites: str | Sequence[str] = ("resid_pre", "resid_mid", "attn_out", "mlp_out"),
    layers: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    direction: str = "denoising",
    verify_top_k: int = 0,
    batch_size: int = 128,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> PatchingResult:
    """Attribution-patching estimate of :func:`~vit_patching.patching.layer_sweep` (same axes and values).

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable ``metric(logits, image_index) -> [rows]`` or ``"logit_diff"`` / ``"logit"`` /
            ``"prob"`` (as ``layer_sweep``).
        sites: Names from :data:`~vit_patching.patching.SWEEP_SITES`.
        layers: Blocks (default all).
        positions: Token positions (default all).
        direction: ``"denoising"`` (clean values into the corrupted run) or ``"noising"``.
        verify_top_k: Re-run this many cells (largest |mean estimate|) exactly through the engine.
        batch_size: Rows per forward pass of the verification runs.
        pixels: Optional display images for the figure's underlay.
        ablation: What a cell is replaced by (:data:`~vit_patching.circuits.interventions.ABLATIONS`, or an
            ``Ablation``): ``"corrupted"`` (the default) or, with ``direction="noising"``, ``"zero"`` / ``"mean"`` /
            ``"mean_positional"`` / ``"resample"`` values written into the clean run (``"optimal"`` is fitted per
            graph node, not per site). Not with ``verify_top_k``.
        reference: Reference images for the ablations that use them.

    Returns:
        :class:`~vit_patching.patching.PatchingResult` with axes ``("site", "layer", "pos")``, kind
        ``"atp_layer_sweep"``; ``options["verification"]`` holds the exact re-runs when ``verify_top_k > 0``.

    Example:
        >>> est = atp_layer_sweep(model, clean, corrupted, "logit_diff", sites="resid_pre", verify_top_k=5)
        >>> est.mean().shape, est.options["verification"].exact.shape
        (torch.Size([1, 4, 65]), torch.Size([5, 8]))
    """
    layout = check_pair(model, clean, corrupted)
    site_names = check_names(sites, list(SWEEP_SITES), "sites")
    layer_ids = check_indices(layers, model.cfg.n_layers, "layers", "layer")
    pos_ids = check_indices(positions, layout.n_pos, "positions", "token position")
    k = _check_k(verify_top_k)
    check_batch_size(batch_size)
    source_target(direction, clean, corrupted)  # the direction checked before the ablation's own check
    abl = _check_ablation(model, clean, ablation, reference, direction, k)
    hooks = [get_act_name(s, l) for s in site_names for l in layer_ids]
    source_cache, acts, grads, source_score, target_score, fn, name = _runs(
        model, clean, corrupted, metric, direction, hooks, hooks, abl
    )
    pos = torch.tensor(pos_ids, device=clean.device)
    est = torch.stack([
        torch.stack([((source_cache[h] - acts[h]) * grads[h]).sum(-1)[:, pos] for h in
                     (get_act_name(s, l) for l in layer_ids)]) for s in site_names
    ])  # [site, layer, batch, pos]
    values = target_score + _wide(est.permute(0, 1, 3, 2)).cpu()
    axes = {"site": site_names, "layer": layer_ids, "pos": pos_ids}
    opts = layout_options(layout, pixels)
    opts.update(layer_indices=layer_ids, pos_indices=pos_ids, method="atp", batch_size=batch_size,
                ablation=abl.kind)
    result = PatchingResult(values, tuple(axes), {a: axis_labels(a, v, layout) for a, v in axes.items()},
                            target_score, source_score, name, direction, "atp_layer_sweep", opts, n_forwards=0)
    if k:
        result.options["verification"] = verify_cells(
            model, result, top_cells(values - target_score, k),
            lambda c: Site(get_act_name(site_names[c[0]], layer_ids[c[1]]), pos=pos_ids[c[2]]),
            fn, clean, corrupted, batch_size,
        )
    return result


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """Attention scores ``[batch head query key]`` from ``q``/``k`` ``[batch pos head d_head]``."""
    return torch.einsum("bihe,bjhe->bhij", q * scale, k)


def pattern_effect_q(
    q_new: Float[Tensor, "batch pos head d_head"],
    q: Float[Tensor, "batch pos head d_head"],
    k: Float[Tensor, "batch pos head d_head"],
    pattern: Float[Tensor, "batch head query key"],
    grad_pattern: Float[Tensor, "batch head query key"],
    scale: float,
) -> Float[Tensor, "batch pos head"]:
    """AtP* for queries: per query position ``i``, ``sum_j (softmax(q'_i k / sqrt d) - pattern_i)_j g_ij``.

    Patching the query at ``i`` changes only row ``i`` of the pattern, exactly recomputed here.

    Example:
        >>> pattern_effect_q(q_src, q, k, pattern, grad, model.blocks[0].attn.scale).shape   # [batch pos head]
    """
    del q  # the row is recomputed from the new query; the old pattern is given
    new = _scores(q_new, k, scale).softmax(-1)
    return ((new - pattern) * grad_pattern).sum(-1).transpose(1, 2)


def pattern_effect_k(
    k_new: Float[Tensor, "batch pos head d_head"],
    q: Float[Tensor, "batch pos head d_head"],
    k: Float[Tensor, "batch pos head d_head"],
    grad_pattern: Float[Tensor, "batch head query key"],
    scale: float,
) -> Float[Tensor, "batch pos head"]:
    """AtP* for keys: per key position ``j``, ``sum_i sum_l (p'_il - p_il) g_il`` with only key ``j`` patched.

    Replacing one score ``s_ij`` by ``s'_ij`` rescales the rest of row ``i`` by ``(1 - p'_ij) / (1 - p_ij)``;
    in log space: with ``a = log p_ij + s'_ij - s_ij`` and ``L = logaddexp(a, log(1 - p_ij))``,
    ``p'_ij = exp(a - L)`` and the rescale factor is ``exp(-L)`` (stable for saturated rows).

    Example:
        >>> pattern_effect_k(k_src, q, k, grad, model.blocks[0].attn.scale).shape             # [batch pos head]
    """
    s = _scores(q, k, scale).double()
    logp = s.log_softmax(-1)
    p = logp.exp()
    g = grad_pattern.double()
    delta = _scores(q, k_new, scale).double() - s  # [b h i j]: score change of (query i, key j)
    a = logp + delta
    lse = torch.logaddexp(a, torch.log1p(-p.clamp(max=1.0)))
    p_new = (a - lse).exp()
    row = (p * g).sum(-1, keepdim=True)  # G_i
    changed = (row - p * g) * (-lse).exp() + p_new * g - row
    return changed.sum(2).transpose(1, 2).to(grad_pattern.dtype)  # sum over queries -> [b, key, head]


def atp_heads(
    model: HookedViT,
    clean: Float[Tensor, "batch channel height width"],
    corrupted: Float[Tensor, "_batch _channel _height _width"],  # checked against clean with a clear error
    metric: Metric | str = "logit_diff",
    *,
    sites: str | Sequence[str] = ("z", "q", "k", "v", "pattern"),
    by_pos: bool = False,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    positions: int | Sequence[int] | None = None,
    direction: str = "denoising",
    atp_star: bool = True,
    verify_top_k: int = 0,
    batch_size: int = 128,
    pixels: Float[Tensor, "_batch _channel _height _width"] | None = None,
    ablation: str | Ablation = "corrupted",
    reference: Float[Tensor, "_n _channel _height _width"] | None = None,
) -> PatchingResult:
    """Attribution-patching estimate of :func:`~vit_patching.patching.patch_heads` (same axes and values).

    Args:
        model: A HookedViT.
        clean: Clean images ``[batch, C, H, W]``.
        corrupted: Corrupted images, same shape.
        metric: A metric callable or ``"logit_diff"`` / ``"logit"`` / ``"prob"``.
        sites: Names from :data:`~vit_patching.patching.HEAD_SITES`.
        by_pos: One token position at a time (for ``pattern`` the query row; for ``k`` the key position).
        layers: Blocks (default all).
        heads: Heads (default all).
        positions: Token positions for ``by_pos`` (default all).
        direction: ``"denoising"`` or ``"noising"``.
        atp_star: For ``q``/``k``: recompute the attention pattern exactly and linearise only after the
            softmax (AtP*); ``False`` gives the plain linear estimate.
        verify_top_k: Re-run this many cells (largest |mean estimate|) exactly through the engine.
        batch_size: Rows per forward pass of the verification runs.
        pixels: Optional display images for by-position figures.
        ablation: As :func:`atp_layer_sweep`.
        reference: Reference images for the ablations that use them.

    Returns:
        :class:`~vit_patching.patching.PatchingResult`, axes ``("site", "layer", "head")`` or, with ``by_pos``,
        ``("site", "layer", "pos", "head")``; kind ``"atp_head_patch"`` / ``"atp_head_patch_by_pos"``.

    Example:
        >>> est = atp_heads(model, clean, corrupted, "logit_diff", sites=("z", "k"), verify_top_k=3)
        >>> est.axes
        ('site', 'layer', 'head')
        >>> est.options["verification"].labels[0]      # e.g. 'z L3 H1': the largest estimate, re-run exactly
    """
    layout = check_pair(model, clean, corrupted)
    check_bool(by_pos, "by_pos")
    check_bool(atp_star, "atp_star")
    if positions is not None and not by_pos:
        raise ValueError(f"positions: needs by_pos=True (without it every position is patched at once), got {positions!r}")
    site_names = check_names(sites, list(HEAD_SITES), "sites")
    layer_ids = check_indices(layers, model.cfg.n_layers, "layers", "layer")
    head_ids = check_indices(heads, model.cfg.n_heads, "heads", "head")
    pos_ids = check_indices(positions, layout.n_pos, "positions", "token position") if by_pos else None
    k = _check_k(verify_top_k)
    check_batch_size(batch_size)
    source_target(direction, clean, corrupted)  # the direction checked before the ablation's own check
    abl = _check_ablation(model, clean, ablation, reference, direction, k)
    star = atp_star and bool({"q", "k"} & set(site_names))
    # The scores are computed from the queries and keys after RoPE (hook_rot_q/hook_rot_k); hook_q/hook_k sit
    # before the rotation. The rotation acts on each (position, head) alone, so patching hook_q/hook_k at a
    # position and head replaces the rotated value there by the source run's rotated value.
    qk = {"q": "rot_q", "k": "rot_k"} if model.cfg.rope else {"q": "q", "k": "k"}
    source_hooks = [get_act_name(s, l) for s in site_names for l in layer_ids]
    hooks = list(source_hooks)
    if star:  # the pattern's gradient and the unpatched (rotated) q and k, in both runs
        star_hooks = [get_act_name(qk[s], l) for s in ("q", "k") if s in site_names for l in layer_ids]
        source_hooks += star_hooks
        hooks += star_hooks + [get_act_name(n, l) for n in (qk["q"], qk["k"], "pattern") for l in layer_ids]
    source_cache, acts, grads, source_score, target_score, fn, name = _runs(
        model, clean, corrupted, metric, direction, sorted(set(hooks)), sorted(set(source_hooks)), abl
    )
    per_site = []
    for s in site_names:
        per_layer = []
        for l in layer_ids:
            h = get_act_name(s, l)
            if s in ("q", "k") and atp_star:
                q, kk = acts[get_act_name(qk["q"], l)], acts[get_act_name(qk["k"], l)]
                scale, new_qk = model.blocks[l].attn.scale, source_cache[get_act_name(qk[s], l)]
                g = grads[get_act_name("pattern", l)]
                # The unpatched pattern recomputed as the patched one is, so a patch that changes nothing gives
                # exactly 0 (the model's own pattern may differ from it by rounding).
                pattern = _scores(q, kk, scale).softmax(-1)
                if s == "q":
                    e = pattern_effect_q(new_qk, q, kk, pattern, g, scale)
                elif by_pos:
                    e = pattern_effect_k(new_qk, q, kk, g, scale)
                else:  # every key at once: the whole pattern recomputed
                    new = _scores(q, new_qk, scale).softmax(-1)
                    e = ((new - pattern) * g).sum(-1).transpose(1, 2)
            elif s == "pattern":
                e = ((source_cache[h] - acts[h]) * grads[h]).sum(-1).transpose(1, 2)  # per query row
            else:
                e = ((source_cache[h] - acts[h]) * grads[h]).sum(-1)  # [batch pos head]
            e = e[:, :, head_ids]
            per_layer.append(e[:, pos_ids] if by_pos else e.sum(1))
        per_site.append(torch.stack(per_layer))
    est = _wide(torch.stack(per_site)).cpu()  # [site, layer, batch, (pos,) head]
    est = est.movedim(2, -1)  # batch last
    values = target_score + est
    axes: dict[str, list[Any]] = {"site": site_names, "layer": layer_ids}
    if by_pos:
        axes["pos"] = pos_ids
    axes["head"] = head_ids
    opts = layout_options(layout, pixels)
    opts.update({f"{a}_indices": list(v) for a, v in axes.items() if a != "site"})
    opts.update(method="atp*" if star else "atp", batch_size=batch_size, ablation=abl.kind)
    kind = "atp_head_patch_by_pos" if by_pos else "atp_head_patch"
    result = PatchingResult(values, tuple(axes), {a: axis_labels(a, v, layout) for a, v in axes.items()},
                            target_score, source_score, name, direction, kind, opts, n_forwards=0)
    if k:
        def make_site(c: tuple[int, ...]) -> Site:
            hook = get_act_name(site_names[c[0]], layer_ids[c[1]])
            return Site(hook, pos=pos_ids[c[2]] if by_pos else None, head=head_ids[c[-1]])

        result.options["verification"] = verify_cells(
            model, result, top_cells(values - target_score, k), make_site, fn, clean, corrupted, batch_size
        )
    return result

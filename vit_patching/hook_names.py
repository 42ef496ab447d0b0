"""Hook names: the one place where a TransformerLens-style hook name is built or parsed.

Every module builds names with :func:`get_act_name` (the counterpart of TransformerLens's
``utils.get_act_name``) instead of typing ``f"blocks.{layer}...."`` by hand, and asks :func:`site_axes` which
index axes a patch may address. The full table of hook points, with shapes, is ``docs/hook_points.md``.

Example:
    >>> get_act_name("resid_pre", 3)
    'blocks.3.hook_resid_pre'
    >>> get_act_name("pattern", 0), get_act_name("scale", 1, "ln2"), get_act_name("logits")
    ('blocks.0.attn.hook_pattern', 'blocks.1.ln2.hook_scale', 'hook_logits')
    >>> hook_layer("blocks.11.attn.hook_z"), site_axes("blocks.11.attn.hook_z")
    (11, ('pos', 'head'))
    >>> sae_act_name("blocks.1.hook_resid_post"), site_axes(sae_act_name("blocks.1.hook_resid_post"))
    ('blocks.1.hook_resid_post.sae.hook_sae_acts_post', ('pos', 'latent'))
"""
from __future__ import annotations

import re

__all__ = [
    "BLOCK_ACTS", "GLOBAL_ACTS", "SAE_HOOKS", "SAE_LATENT_HOOKS", "SITE_AXES", "get_act_name", "hook_layer",
    "sae_act_name", "site_axes", "site_suffix", "split_sae_name",
]

#: Short name -> hook suffix inside ``blocks.{layer}.``.
BLOCK_ACTS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "mlp_in": "hook_mlp_in",
    "attn_in": "hook_attn_in",
    "q_input": "hook_q_input",
    "k_input": "hook_k_input",
    "v_input": "hook_v_input",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
    # Model families (HookedViT.from_timm docs): RoPE, gated MLPs, sub-norms.
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "z_pre_norm": "attn.hook_z_pre_norm",
    "pre_linear": "mlp.hook_pre_linear",
    "mid": "mlp.hook_mid",
}
#: Short name -> hook name outside the blocks.
GLOBAL_ACTS: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "pooled": "hook_pooled",
    "logits": "hook_logits",
}
# TransformerLens's aliases (utils.get_act_name), so TL users' habits work unchanged.
_ALIASES = {
    "attn": "pattern", "attn_logits": "attn_scores", "query": "q", "key": "k", "value": "v",
    "mlp_pre": "pre", "mlp_post": "post",
}
# Hooks of a norm module: ``get_act_name("scale", l, "ln1")``; without a layer, the final norms.
_NORM_ACTS = {"scale": "hook_scale", "normalized": "hook_normalized"}
_BLOCK_NORMS = ("ln1", "ln2")
_GLOBAL_NORMS = ("ln_pre", "ln_final", "fc_norm")

#: Hook suffix -> names of the leading non-batch axes a patch may index (activation ``[batch, *axes, ...]``).
SITE_AXES: dict[str, tuple[str, ...]] = {
    **{BLOCK_ACTS[n]: ("pos",) for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")},
    **{BLOCK_ACTS[n]: ("pos",) for n in ("pre", "post", "pre_linear", "mid")},
    **{GLOBAL_ACTS[n]: ("pos",) for n in ("embed", "pos_embed")},
    **{BLOCK_ACTS[n]: ("pos", "head") for n in ("q", "k", "v", "z", "result", "q_input", "k_input", "v_input", "attn_in")},
    **{BLOCK_ACTS[n]: ("pos", "head") for n in ("rot_q", "rot_k", "z_pre_norm")},
    **{BLOCK_ACTS[n]: ("head", "pos") for n in ("attn_scores", "pattern")},
}
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")

#: The hook points of an SAE spliced at hook ``H`` (``vit_patching.sae.splice``), named ``{H}.sae.{point}`` as
#: SAELens names them (``hook_sae_acts_pre`` only for this project's SAEs, ``hook_sae_error`` only with the error
#: term).
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")
#: The SAE hook points with a latent axis ``[batch pos d_sae]``; the others have the spliced hook's own axes.
SAE_LATENT_HOOKS = ("hook_sae_acts_pre", "hook_sae_acts_post")
_SAE_INFIX = ".sae."  # the splice is the hook point's child module ``sae``


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of an activation, as TransformerLens's ``utils.get_act_name`` builds it.

    Args:
        name: A short name (``"resid_pre"``, ``"attn_out"``, ``"q"``, ``"z"``, ``"pattern"``, ``"pre"``,
            ``"embed"``, ``"logits"``, ``"scale"``, ...; TransformerLens's aliases such as ``"attn"`` work) or a
            full hook name, returned unchanged.
        layer: Block index, for block activations.
        layer_type: For ``"scale"`` / ``"normalized"``: ``"ln1"`` or ``"ln2"`` with a layer, ``"ln_pre"``,
            ``"ln_final"`` or ``"fc_norm"`` without.

    Returns:
        The hook name, e.g. ``"blocks.3.attn.hook_z"``.

    Raises:
        ValueError: unknown name, a block activation without a layer (or a global one with a layer), or a
            layer that is not a non-negative int.

    Example:
        >>> get_act_name("z", 2), get_act_name("attn", 1), get_act_name("normalized", None, "ln_final")
        ('blocks.2.attn.hook_z', 'blocks.1.attn.hook_pattern', 'ln_final.hook_normalized')
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected an activation name (str), got {type(name).__name__}")
    if "hook_" in name:  # already a full name
        return name
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise ValueError(f"layer: expected a non-negative int or None, got {layer!r}")
    short = _ALIASES.get(name, name)
    if short in _NORM_ACTS:
        norms = _BLOCK_NORMS if layer is not None else _GLOBAL_NORMS
        if layer_type not in norms:
            raise ValueError(f"layer_type: expected one of {list(norms)} for {name!r} (layer={layer!r}), got {layer_type!r}")
        prefix = f"blocks.{layer}.{layer_type}" if layer is not None else layer_type
        return f"{prefix}.{_NORM_ACTS[short]}"
    if short in BLOCK_ACTS:
        if layer is None:
            raise ValueError(f"layer: {name!r} is a block activation and needs a layer index, got None")
        return f"blocks.{layer}.{BLOCK_ACTS[short]}"
    if short in GLOBAL_ACTS:
        if layer is not None:
            raise ValueError(f"layer: {name!r} is not a block activation, expected None, got {layer!r}")
        return GLOBAL_ACTS[short]
    known = sorted({*BLOCK_ACTS, *GLOBAL_ACTS, *_NORM_ACTS, *_ALIASES})
    raise ValueError(f"name: expected one of {known} or a full hook name, got {name!r}")


def sae_act_name(hook: str, point: str = "acts_post") -> str:
    """The name of a hook point of the SAE spliced at ``hook``: ``{hook}.sae.hook_sae_{point}``.

    Args:
        hook: The hook the SAE is spliced at (a full name, or a short one as :func:`get_act_name` takes with no
            layer, e.g. ``"embed"``).
        point: ``"input"``, ``"acts_pre"``, ``"acts_post"`` (the latents, default), ``"recons"``, ``"error"``
            or ``"output"`` (with or without the ``hook_sae_`` prefix).

    Raises:
        ValueError: an unknown ``point``, or a ``hook`` that is itself an SAE hook point.

    Example:
        >>> sae_act_name(get_act_name("resid_post", 1), "error")
        'blocks.1.hook_resid_post.sae.hook_sae_error'
    """
    hook = get_act_name(hook)
    if split_sae_name(hook) is not None:
        raise ValueError(f"hook: expected the hook an SAE is spliced at, got the SAE hook point {hook!r}")
    full = point if isinstance(point, str) and point.startswith("hook_sae_") else f"hook_sae_{point}"
    if full not in SAE_HOOKS:
        raise ValueError(f"point: expected one of {[p.removeprefix('hook_sae_') for p in SAE_HOOKS]}, got {point!r}")
    return f"{hook}{_SAE_INFIX}{full}"


def split_sae_name(hook: str) -> tuple[str, str] | None:
    """``(spliced hook, SAE hook point)`` of an SAE hook name, ``None`` for any other hook.

    Example:
        >>> split_sae_name("blocks.0.hook_resid_post.sae.hook_sae_acts_post"), split_sae_name("hook_embed")
        (('blocks.0.hook_resid_post', 'hook_sae_acts_post'), None)
    """
    base, sep, point = hook.rpartition(_SAE_INFIX)
    return (base, point) if sep and point in SAE_HOOKS else None


def site_suffix(hook: str) -> str:
    """The part of a hook name after ``blocks.{layer}.`` (the whole name for global hooks)."""
    m = _LAYER_RE.match(hook)
    return hook[m.end():] if m else hook


def hook_layer(hook: str) -> int | None:
    """Block index of a hook name (``None`` for hooks outside the blocks).

    Example:
        >>> hook_layer("blocks.2.hook_resid_pre"), hook_layer("hook_embed")
        (2, None)
    """
    m = _LAYER_RE.match(hook)
    return int(m.group(1)) if m else None


def site_axes(hook: str) -> tuple[str, ...]:
    """The index axes a patch of ``hook`` may address, e.g. ``("pos", "head")`` for ``attn.hook_z``.

    The hook points of a spliced SAE (:func:`sae_act_name`) are patchable where the hook it is spliced at is
    patchable per position: the latents (:data:`SAE_LATENT_HOOKS`, ``[batch pos d_sae]``) with axes
    ``("pos", "latent")``, the others (input, reconstruction, error, output) with that hook's own axes.

    Raises:
        ValueError: the hook cannot be patched position- or head-wise.
    """
    sae = split_sae_name(hook)
    if sae is not None:
        base, point = sae
        base_axes = site_axes(base)
        if point not in SAE_LATENT_HOOKS:
            return base_axes
        if base_axes[0] != "pos":
            raise ValueError(f"hook: {hook!r} cannot be patched by the engine: latents are patched per position, "
                             f"and {base!r} has axes {base_axes}")
        return ("pos", "latent")
    axes = SITE_AXES.get(site_suffix(hook))
    if axes is None:
        raise ValueError(f"hook: {hook!r} cannot be patched by the engine; patchable suffixes: {sorted(SITE_AXES)}")
    return axes

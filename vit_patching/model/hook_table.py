"""The table of every HookedViT hook point, generated from real (tiny, random) models: ``docs/hook_points.md``.

Names, shapes, firing order and when each point exists are read off converted timm models run with every gate
switched on, so the document cannot drift from the code (a test regenerates it and compares). Only the one-line
descriptions are written by hand, and a hook point without one is an error.

Regenerate the document with ``python -m vit_patching.model.hook_table docs/hook_points.md``.

Example:
    >>> rows = hook_rows()
    >>> rows[0].pattern, rows[0].shape
    ('hook_embed', '`batch pos d_model`')
"""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..hook_names import BLOCK_ACTS, GLOBAL_ACTS, hook_layer, site_axes, site_suffix
from ..readouts import ZeroShotHead
from .hooked_vit import HookedViT

__all__ = ["HookRow", "hook_rows", "render_hook_table", "main"]

# Gate flags (setter: ``model.set_<flag>``); a point that fires only with the flag on is gated by it.
_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result", "use_hook_mlp_in")

# Architecture conditions: hook-name pattern -> (config field, when it is true). Checked against the models.
_ARCH = (
    (re.compile(r"^ln_pre\."), "`cfg.pre_norm` (CLIP-style `norm_pre`)"),
    (re.compile(r"\.attn\.[qk]_norm\."), "`cfg.qk_norm`"),
    (re.compile(r"^ln_final\."), "`cfg.final_norm` (per-token final norm)"),
    (re.compile(r"^fc_norm\."), "`cfg.fc_norm` (norm after pooling)"),
    (re.compile(r"^hook_pooled_dist$"), "`cfg.has_dist` (distilled DeiT)"),
    (re.compile(r"^hook_logits$"), "`cfg.n_classes > 0` (a classifier or projection head) or a readout"),
    (re.compile(r"^readout\."), "a normalising readout (`ZeroShotHead`, `EmbeddingSimilarity`)"),
)

# What each point is, by hook suffix (the part after ``blocks.{layer}.`` for block points).
_WHAT = {
    "hook_embed": "Patch embedding (conv) with the prefix tokens (CLS, DIST, registers) in front",
    "hook_pos_embed": "Position embedding rows for every token (zeros for prefix tokens under `no_embed_class`)",
    "ln_pre.hook_scale": "`ln_pre` scale sqrt(var + eps) of `hook_embed + hook_pos_embed`",
    "ln_pre.hook_normalized": "`ln_pre` normalised input, before its affine",
    "hook_resid_pre": "Residual stream entering the block (block 0: the embedding, after `ln_pre` if any)",
    "hook_q_input": "Per-head copy of `resid_pre` feeding the queries",
    "hook_k_input": "Per-head copy of `resid_pre` feeding the keys",
    "hook_v_input": "Per-head copy of `resid_pre` feeding the values",
    "hook_attn_in": "Per-head copy of `resid_pre` feeding attention (fires before the q/k/v inputs)",
    "ln1.hook_scale": "LN1 scale sqrt(var + eps)",
    "ln1.hook_normalized": "LN1 normalised input, before its affine",
    "attn.q_norm.hook_scale": "q_norm scale (per head)",
    "attn.q_norm.hook_normalized": "q_norm normalised queries",
    "attn.k_norm.hook_scale": "k_norm scale (per head)",
    "attn.k_norm.hook_normalized": "k_norm normalised keys",
    "attn.hook_q": "Queries (after q_norm if any)",
    "attn.hook_k": "Keys (after k_norm if any)",
    "attn.hook_v": "Values",
    "attn.hook_attn_scores": "Scaled attention scores q.k / sqrt(d_head), before softmax",
    "attn.hook_pattern": "Attention pattern (softmax over key_pos)",
    "attn.hook_z": "Per-head attention output, pattern @ v",
    "attn.hook_result": "Per-head output written to the stream, z @ W_O (LayerScale folded in)",
    "hook_attn_out": "Attention output added to the stream (LayerScale applied)",
    "hook_resid_mid": "Residual stream between attention and MLP",
    "hook_mlp_in": "Copy of `resid_mid` feeding the MLP",
    "ln2.hook_scale": "LN2 scale sqrt(var + eps)",
    "ln2.hook_normalized": "LN2 normalised input, before its affine",
    "mlp.hook_pre": "MLP pre-activation (fc1 output)",
    "mlp.hook_post": "MLP activation output",
    "hook_mlp_out": "MLP output added to the stream (LayerScale applied)",
    "hook_resid_post": "Residual stream leaving the block",
    "ln_final.hook_scale": "Final per-token norm scale",
    "ln_final.hook_normalized": "Final per-token norm, normalised input",
    "hook_pooled": "Pooled features (CLS token, or avg/max over tokens; all tokens for `global_pool=''`)",
    "hook_pooled_dist": "Distillation-token features (distilled DeiT)",
    "fc_norm.hook_scale": "`fc_norm` scale of the pooled features",
    "fc_norm.hook_normalized": "`fc_norm` normalised pooled features",
    "readout.hook_scale": "L2 norm of the image embedding a normalising readout divides by (frozen by linear tools)",
    "hook_logits": "Class logits (distilled DeiT: mean of the two heads), or the readout's scores (`model.with_readout`)",
}

# Reference models: together they switch on every hook point. Sizes are distinct so each axis has one name.
_BASE = dict(img_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=4, num_classes=10, mlp_ratio=5)
_MODELS = (
    ("vit_tiny_patch16_224", dict(pre_norm=True, qk_norm=True, reg_tokens=1)),
    ("deit_tiny_distilled_patch16_224", {}),
    ("vit_tiny_patch16_224", dict(global_pool="avg", class_token=False)),
    ("vit_tiny_patch16_224", dict(num_classes=0)),
    ("vit_tiny_patch16_224", dict(num_classes=0, readout=True)),  # headless + ZeroShotHead over 10 classes
)
# Flag settings run on every model: none, then each gate alone (use_attn_in and use_split_qkv_input also change
# LN1's input shape, so the modes are kept apart to tell which flag a point or shape belongs to).
_GATE_MODES = ({},) + tuple({flag: True} for flag in _FLAGS)
_BATCH = 2


@dataclass(frozen=True)
class HookRow:
    """One hook point: name pattern, shape (TransformerLens axis words), when it exists, what it is."""

    pattern: str
    act_name: str
    shape: str
    exists: str
    patch_axes: str
    what: str


def _pattern(name: str) -> str:
    return name if hook_layer(name) is None else f"blocks.{{layer}}.{site_suffix(name)}"


def _act_name(name: str) -> str:
    """How :func:`vit_patching.hook_names.get_act_name` spells the point."""
    suffix = site_suffix(name)
    block = hook_layer(name) is not None
    for short, full in (BLOCK_ACTS if block else GLOBAL_ACTS).items():
        if full == suffix:
            return f'get_act_name("{short}"{", layer" if block else ""})'
    m = re.fullmatch(r"(ln1|ln2|ln_pre|ln_final|fc_norm)\.hook_(scale|normalized)", suffix)
    if m:
        return f'get_act_name("{m.group(2)}", {"layer" if block else "None"}, "{m.group(1)}")'
    return "(full name)"


def _axes(shape: tuple[int, ...], model: HookedViT) -> str:
    cfg = model.cfg
    words = {_BATCH: "batch", cfg.n_pos: "pos", cfg.d_model: "d_model", cfg.n_heads: "head_index",
             cfg.d_head: "d_head", cfg.d_mlp: "d_mlp", 1: "1", 3: "qkv"}  # fmt: skip
    if cfg.n_classes:
        words[cfg.n_classes] = "n_classes"
    if len(words) != 8 + bool(cfg.n_classes):
        raise RuntimeError(f"reference model sizes collide, axes would be ambiguous: {words}")
    out = [words[s] for s in shape]
    if out.count("pos") == 2:  # attention scores / pattern: [batch head query key]
        i = out.index("pos")
        out[i], out[i + 1] = "query_pos", "key_pos"
    return " ".join(out)


def hook_rows() -> list[HookRow]:
    """Every hook point of a HookedViT, in firing order, read off tiny random timm models.

    Raises:
        RuntimeError: a hook point without a description, or one whose existence no gate or architecture
            condition explains (the table would then be wrong).
    """
    return list(_hook_rows())


@functools.cache  # 20 forward passes of tiny models; the rows depend on the code only
def _hook_rows() -> tuple[HookRow, ...]:
    import timm

    order: list[str] = []
    shapes: dict[str, dict[str, set[int]]] = {}  # pattern -> shape -> gate modes it had that shape in
    seen_in: dict[str, set[tuple[int, int]]] = {}  # pattern -> (model, gate mode) pairs it fired in
    for mi, (name, kwargs) in enumerate(_MODELS):
        torch.manual_seed(0)
        kwargs = dict(kwargs)
        readout = kwargs.pop("readout", False)
        model = HookedViT.from_timm(timm.create_model(name, pretrained=False, **{**_BASE, **kwargs}).eval())
        if readout:
            model = model.with_readout(ZeroShotHead(torch.randn(_BASE["num_classes"], model.cfg.d_model), 10.0))
        images = torch.randn(_BATCH, model.cfg.in_chans, *model.cfg.img_size)
        for gi, flags in enumerate(_GATE_MODES):
            with torch.no_grad(), model.flags(**flags):
                _, cache = model.run_with_cache(images)
            prev = None
            for hook in cache.keys():
                if hook_layer(hook) not in (None, 0):
                    continue
                pat = _pattern(hook)
                if pat not in order:
                    order.insert(order.index(prev) + 1 if prev is not None else 0, pat)
                prev = pat
                shapes.setdefault(pat, {}).setdefault(_axes(tuple(cache[hook].shape), model), set()).add(gi)
                seen_in.setdefault(pat, set()).add((mi, gi))
    rows = []
    all_models = set(range(len(_MODELS)))
    for pat in order:
        key = site_suffix(pat.replace("{layer}", "0"))
        if key not in _WHAT:
            raise RuntimeError(f"hook point {pat!r} has no description in vit_patching.model.hook_table._WHAT")
        modes = {g for _, g in seen_in[pat]}
        models = {m for m, _ in seen_in[pat]}
        arch = [cond for rx, cond in _ARCH if rx.search(pat)]
        conditions = []
        if modes != set(range(len(_GATE_MODES))):
            gates = [f for f in _FLAGS if all(_GATE_MODES[g].get(f) for g in modes)]
            if len(gates) != 1:
                raise RuntimeError(f"hook point {pat!r} fires under gate modes {sorted(modes)}: no single flag explains it")
            conditions.append(f"`{gates[0]}` on (`model.set_{gates[0]}(True)`)")
        if models != all_models:
            if not arch:
                raise RuntimeError(f"hook point {pat!r} exists on some reference models only, and no condition says why")
            conditions.append(arch[0])
        elif arch:
            raise RuntimeError(f"hook point {pat!r} fired on every reference model despite {arch[0]}")
        # The shape without flags first; a shape that only some gate gives is labelled with that gate.
        parts = []
        for shape, in_modes in sorted(shapes[pat].items(), key=lambda kv: min(kv[1])):
            flags = sorted({f for g in in_modes for f in _GATE_MODES[g]})
            parts.append(f"`{shape}`" + (f" with `{'`, `'.join(flags)}`" if len(shapes[pat]) > 1 and 0 not in in_modes else ""))
        try:
            axes = " ".join(site_axes(pat.replace("{layer}", "0")))
        except ValueError:
            axes = "-"
        rows.append(HookRow(pat, _act_name(pat.replace("{layer}", "0")), "; ".join(parts),
                            " and ".join(conditions) or "always", axes, _WHAT[key]))  # fmt: skip
    return tuple(rows)


def render_hook_table() -> str:
    """``docs/hook_points.md``: the hook table as Markdown (see the module docstring)."""
    lines = [
        "# HookedViT hook points",
        "",
        "<!-- Generated by `python -m vit_patching.model.hook_table docs/hook_points.md`; do not edit by hand."
        " tests/model/test_hook_table.py fails when this file and the code disagree. -->",
        "",
        "Every hook point of a `HookedViT`, in firing order (block points are listed once, for `blocks.{layer}`).",
        "Shapes use TransformerLens's axis words: `pos` counts the prefix tokens (CLS, DIST, registers) first,",
        "then the patches in row-major order; `qkv` is the stacked q/k/v axis LN1 sees with",
        "`use_split_qkv_input`. *Patch axes* are the index axes `vit_patching.hook_names.site_axes` lets a patch",
        "address. Every hook's return value replaces the activation; hooks on `hook_attn_scores`/`hook_pattern`",
        "(or a LayerNorm's hooks) switch that site from the fused kernel to the explicit computation.",
        "",
        "| Hook point | `get_act_name` | Shape | Exists | Patch axes | What it is |",
        "|---|---|---|---|---|---|",
    ]
    for r in hook_rows():
        lines.append(f"| `{r.pattern}` | `{r.act_name}` | {r.shape} | {r.exists} | {r.patch_axes} | {r.what} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the hook table document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="docs/hook_points.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated table")
    args = parser.parse_args(argv)
    text = render_hook_table()
    path = Path(args.path)
    if args.check:
        return 0 if path.is_file() and path.read_text(encoding="utf-8") == text else 1
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

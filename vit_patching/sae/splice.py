"""Splice SAEs into a hooked model's forward pass, in the spirit of SAELens's ``HookedSAETransformer``.

An SAE spliced at hook ``H`` runs right after ``H``'s own hooks, on the activation ``H`` gives (hooks on ``H`` see
and may patch the SAE's input; ``run_with_cache`` caches it under ``H``). The model then continues with the SAE's
output. Its intermediate values are hook points under ``{H}.sae.``:

| hook point | shape | value |
| --- | --- | --- |
| ``hook_sae_input`` | ``[batch pos d_in]`` | the activation the SAE encodes |
| ``hook_sae_acts_pre`` | ``[batch pos d_sae]`` | the pre-activation (this project's SAEs only; gated: the magnitude path) |
| ``hook_sae_acts_post`` | ``[batch pos d_sae]`` | the latents |
| ``hook_sae_recons`` | ``[batch pos d_in]`` | ``decode(latents)`` |
| ``hook_sae_error`` | ``[batch pos d_in]`` | ``input - recons`` of the unpatched run (exists only with the error term) |
| ``hook_sae_output`` | ``[batch pos d_in]`` | what the model continues with |

(``pos`` counts only the SAE's tokens when it applies to ``"patches"`` or ``"cls"``; a ``hook_z`` SAE's
activations keep their ``head d_head`` axes.) Without the error term the output is ``recons``; with it the output
is ``recons + error``, computed as ``input + (recons - recons_clean) + (error - error_clean)`` so that, when no hook
changes a latent, the reconstruction or the error, the output is the input bit for bit and the model's outputs
and every downstream hook equal the unspliced model's. Unlike SAELens (which computes the error under
``no_grad``), gradients flow through the error term: the gradient upstream of the SAE is the unspliced model's,
and the error has a gradient of its own (an error node, as in feature circuits).

These functions work on any TransformerLens ``HookedRootModule``; ``HookedViT.add_sae`` / ``saes`` /
``reset_saes`` call them.

Example:
    >>> model.add_sae(sae, use_error_term=True)                 # at sae.cfg.hook_name
    >>> logits, cache = model.run_with_cache(images)
    >>> cache[f"{sae.cfg.hook_name}.sae.hook_sae_acts_post"].shape   # [batch, pos, d_sae]
    >>> model.reset_saes()
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from vit_patching.checks import check_bool, check_choice
from vit_patching.hook_names import SAE_HOOKS  # noqa: F401  (re-exported by vit_patching.sae)
from vit_patching.model.components import is_hooked
from vit_patching.sae.saes import POSITIONS, SAE

SPLICE_NAME = "sae"  # the spliced module's attribute on the hook point, hence the ``{hook}.sae.`` prefix
# The hook points of a splice (SAELens's names) live with every other hook name: vit_patching.hook_names.SAE_HOOKS.


class SAESplice(nn.Module):
    """An SAE (or any module with ``encode`` / ``decode``) wrapped with SAELens's hook points.

    Attributes:
        module: The SAE.
        hook_name: The hook it is spliced at.
        use_error_term: Whether the output adds the SAE's error back (see the module docstring).
        positions: ``"all"``, ``"patches"`` or ``"cls"``: the tokens it applies to; others pass through.
        n_prefix: Tokens before the patch tokens (CLS, distillation, registers).
    """

    def __init__(self, module: nn.Module, hook_name: str, use_error_term: bool, positions: str, n_prefix: int):
        super().__init__()
        self.module = module
        self.hook_name = hook_name
        self.use_error_term = use_error_term
        self.positions = positions
        self.n_prefix = n_prefix
        self.hook_sae_input = HookPoint()  # [batch, pos, d_in]
        if isinstance(module, SAE):  # our SAEs expose their pre-activation; a foreign encode() does not
            self.hook_sae_acts_pre = HookPoint()  # [batch, pos, d_sae]
        self.hook_sae_acts_post = HookPoint()  # [batch, pos, d_sae]
        self.hook_sae_recons = HookPoint()  # [batch, pos, d_in]
        if use_error_term:  # absent otherwise, so that no listed hook point stays silent
            self.hook_sae_error = HookPoint()  # [batch, pos, d_in]
        self.hook_sae_output = HookPoint()  # [batch, pos, d_in]

    def _encode(self, x: Tensor) -> Tensor:
        sae = self.module
        if not isinstance(sae, SAE):
            return sae.encode(x)
        processed = sae.process_input(x)
        return sae.activation(self.hook_sae_acts_pre(sae.hidden_pre(processed)), processed)

    def splice(self, x: Tensor) -> Tensor:
        """The SAE's output for activations ``x`` of its tokens."""
        sae, exact = self.module, self.use_error_term
        # With the error term, hooks get copies where they might edit in place a tensor the clean path still needs
        # (x, and the latents autograd saved for the clean decode).
        x_in = self.hook_sae_input(x.clone() if exact and is_hooked(self.hook_sae_input) else x)
        recons_clean = None
        # The clean reconstruction reads the activation the model gave, without hooks (as SAELens's error term
        # does): a patch of hook_sae_input or hook_sae_acts_pre then acts only through the SAE.
        pre_hooked = is_hooked(self.hook_sae_input) or (hasattr(self, "hook_sae_acts_pre")
                                                        and is_hooked(self.hook_sae_acts_pre))
        if exact and pre_hooked:
            recons_clean = sae.decode(sae.encode(x))
        latents = self._encode(x_in)
        if exact and recons_clean is None:
            recons_clean = sae.decode(latents)
        latents = self.hook_sae_acts_post(latents.clone() if exact and is_hooked(self.hook_sae_acts_post)
                                          else latents)
        recons = self.hook_sae_recons(sae.decode(latents))
        if not exact:
            return self.hook_sae_output(recons)
        error_clean = x - recons_clean
        error = self.hook_sae_error(x - recons_clean)  # a tensor of its own: a hook may edit it in place
        # Both differences are exactly 0 when nothing was patched, so the output is x bit for bit.
        return self.hook_sae_output(x + (recons - recons_clean) + (error - error_clean))

    def _check_width(self, act: Tensor) -> None:
        d_in = getattr(self.module, "d_in", None)
        if not isinstance(d_in, int):  # a foreign module states no width: its own encode will complain
            return
        flat = getattr(getattr(self.module, "cfg", None), "reshape_activations", "none") == "hook_z"
        width = act.shape[-2] * act.shape[-1] if flat and act.ndim >= 2 else act.shape[-1]
        if width != d_in:
            what = "head * d_head" if flat else "last axis"
            raise ValueError(f"sae: expected an SAE whose d_in is the {what} of {self.hook_name!r} ({width}), "
                             f"got d_in={d_in}")

    def forward(self, act: Tensor) -> Tensor:
        self._check_width(act)
        if self.positions == "all":
            out = self.splice(act)
        elif act.ndim < 3:
            raise ValueError(f"positions: expected 'all' for {self.hook_name!r}, whose activations "
                             f"{tuple(act.shape)} have no pos axis, got {self.positions!r}")
        elif self.positions == "cls":
            out = torch.cat([self.splice(act[:, :1]), act[:, 1:]], dim=1)
        else:
            out = torch.cat([act[:, : self.n_prefix], self.splice(act[:, self.n_prefix:])], dim=1)
        return out.to(act.dtype)  # an SAE kept in another dtype must not change the model's

    def extra_repr(self) -> str:
        return f"hook_name={self.hook_name!r}, use_error_term={self.use_error_term}, positions={self.positions!r}"


class SplicedHookPoint(HookPoint):
    """A hook point whose value, after its own hooks ran, goes through the spliced SAE (its ``sae`` child)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, SPLICE_NAME)(super().__call__(*args, **kwargs))


def _hook_point(model: HookedRootModule, hook_name: str) -> HookPoint:
    point = model.hook_dict.get(hook_name)
    if point is None:
        raise ValueError(f"hook_name: expected a hook point of the model (see model.hook_dict), got {hook_name!r}")
    return point


def spliced_saes(model: HookedRootModule) -> dict[str, SAESplice]:
    """``{hook name: SAESplice}`` of every SAE spliced into ``model`` now.

    Example:
        >>> list(spliced_saes(model))
        ['blocks.1.hook_resid_post']
    """
    return {name: getattr(p, SPLICE_NAME) for name, p in model.hook_dict.items() if isinstance(p, SplicedHookPoint)}


def add_sae(
    model: HookedRootModule,
    sae: nn.Module,
    hook_name: str | None = None,
    use_error_term: bool = False,
    positions: str | None = None,
) -> SAESplice:
    """Splice ``sae`` into ``model`` at ``hook_name`` (default: ``sae.cfg.hook_name``).

    Args:
        model: A HookedViT (or any TransformerLens ``HookedRootModule``).
        sae: One of this project's SAEs, or any module with ``encode(x) -> latents`` and ``decode(latents) -> x``.
        hook_name: Where it runs; needed when ``sae`` states no ``cfg.hook_name``, and must equal it when it does.
        use_error_term: Add the SAE's error back, so that the unpatched model's outputs are unchanged.
        positions: Tokens it applies to (``"all"``, ``"patches"``, ``"cls"``); default ``sae.cfg.positions`` or
            ``"all"``.

    Returns:
        The splice (a module under ``{hook_name}.sae``).

    Example:
        >>> splice = add_sae(model, sae, use_error_term=True)
        >>> f"{sae.cfg.hook_name}.sae.hook_sae_acts_post" in model.hook_dict
        True
    """
    if not isinstance(sae, nn.Module) or not callable(getattr(sae, "encode", None)) \
            or not callable(getattr(sae, "decode", None)):
        raise TypeError(f"sae: expected an nn.Module with encode(x) and decode(latents), got {type(sae).__name__}")
    stated = getattr(getattr(sae, "cfg", None), "hook_name", None)
    if hook_name is None:
        if stated is None:
            raise ValueError("hook_name: expected the hook the SAE reads (the SAE states none), got None")
        hook_name = stated
    elif stated is not None and hook_name != stated:
        raise ValueError(f"hook_name: expected the SAE's own hook {stated!r} (sae.cfg.hook_name), got {hook_name!r}")
    check_bool(use_error_term, "use_error_term")
    if positions is None:
        positions = getattr(getattr(sae, "cfg", None), "positions", "all")
    check_choice(positions, POSITIONS, "positions")
    point = _hook_point(model, hook_name)
    if isinstance(point, SplicedHookPoint):
        raise ValueError(f"hook_name: {hook_name!r} already has an SAE spliced; remove it first "
                         f"(model.reset_saes())")
    if type(point) is not HookPoint:
        raise TypeError(f"hook_name: expected a plain HookPoint at {hook_name!r}, got {type(point).__name__}")
    cfg = getattr(model, "cfg", None)
    n_prefix = getattr(cfg, "n_prefix", 0)
    if positions == "cls" and not getattr(cfg, "has_cls", False):
        raise ValueError("positions: expected 'all' or 'patches' for a model without a CLS token, got 'cls'")
    if positions == "patches" and cfg is None:
        raise ValueError("positions: expected 'all' for a model without a token layout (model.cfg.n_prefix), "
                         "got 'patches'")
    device = next((p.device for p in model.parameters()), None)
    splice = SAESplice(sae, hook_name, use_error_term, positions, n_prefix)
    if device is not None:
        splice.to(device)
    try:
        setattr(point, SPLICE_NAME, splice)
        point.__class__ = SplicedHookPoint
        model.setup()  # registers {hook_name}.sae.* in hook_dict
    except BaseException:
        _unsplice(model, point)
        raise
    return splice


def _unsplice(model: HookedRootModule, point: HookPoint) -> None:
    point.__class__ = HookPoint
    if SPLICE_NAME in point._modules:
        for hp in getattr(point, SPLICE_NAME).children():  # hooks added to the SAE's points go with it
            if isinstance(hp, HookPoint):
                hp.remove_hooks("both", including_permanent=True)
        delattr(point, SPLICE_NAME)
    model.setup()


def remove_sae(model: HookedRootModule, hook_name: str) -> None:
    """Take the SAE spliced at ``hook_name`` out of ``model``.

    Example:
        >>> remove_sae(model, "blocks.1.hook_resid_post")
    """
    point = _hook_point(model, hook_name)
    if not isinstance(point, SplicedHookPoint):
        raise ValueError(f"hook_name: expected a hook with a spliced SAE (one of {list(spliced_saes(model))}), "
                         f"got {hook_name!r}")
    _unsplice(model, point)


def reset_saes(model: HookedRootModule) -> None:
    """Take every spliced SAE out of ``model`` (its forward is the unspliced one again).

    Example:
        >>> reset_saes(model); spliced_saes(model)
        {}
    """
    for name in list(spliced_saes(model)):
        _unsplice(model, model.hook_dict[name])


@contextmanager
def saes(
    model: HookedRootModule,
    saes: nn.Module | Iterable[nn.Module] = (),
    use_error_term: bool = False,
    positions: str | None = None,
) -> Iterator[HookedRootModule]:
    """Splice ``saes`` (each at its ``cfg.hook_name``) for the ``with`` block; removed on exit, also after an
    exception (SAEs spliced before the block stay).

    Example:
        >>> with saes(model, [sae], use_error_term=True):
        ...     logits, cache = model.run_with_cache(images)
    """
    saes = [saes] if isinstance(saes, nn.Module) else list(saes)
    added: list[str] = []
    try:
        for sae in saes:
            added.append(add_sae(model, sae, use_error_term=use_error_term, positions=positions).hook_name)
        yield model
    finally:
        for name in added:
            if isinstance(model.hook_dict.get(name), SplicedHookPoint):
                _unsplice(model, model.hook_dict[name])

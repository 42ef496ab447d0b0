"""The gated hook points of a :class:`~vit_patching.model.HookedViT` (TransformerLens's ``use_*`` flags).

Some hook points cost memory or compute when they fire (per-head results, split q/k/v inputs): they exist on
every model but are registered in ``hook_dict`` only while their flag is on, and hooking one that is off raises
an error naming the setter that switches it on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from transformer_lens.hook_points import HookPoint

from ..checks import check_bool

# Gated hook points: (config flag, hook-name suffixes it enables, setter to name in errors).
_GATES = (
    ("use_attn_result", ("attn.hook_result",), "set_use_attn_result"),
    ("use_split_qkv_input", ("hook_q_input", "hook_k_input", "hook_v_input"), "set_use_split_qkv_input"),
    ("use_attn_in", ("hook_attn_in",), "set_use_attn_in"),
    ("use_hook_mlp_in", ("hook_mlp_in",), "set_use_hook_mlp_in"),
)


class HookGates:
    """Mixin of :class:`HookedViT`: the ``use_*`` flags, ``setup`` leaving switched-off points out of
    ``hook_dict``, and the errors that name the setter to call.

    Example:
        >>> model.set_use_attn_result(True)
        >>> "blocks.0.attn.hook_result" in model.hook_dict
        True
    """

    def _disabled_hook_names(self) -> set[str]:
        names = set()
        for flag, suffixes, _ in _GATES:
            if not getattr(self.cfg, flag):
                names |= {n for n in self.mod_dict if isinstance(self.mod_dict[n], HookPoint) and n.endswith(suffixes)}
        return names

    def setup(self) -> None:
        """Register hook points; gated points that are switched off stay out of ``hook_dict``."""
        super().setup()
        disabled = self._disabled_hook_names()
        self.hook_dict = {n: hp for n, hp in self.hook_dict.items() if n not in disabled}

    def hook_points(self):
        """Every HookPoint, switched-off gated ones included, so ``reset_hooks`` also clears hooks that were
        added while a gate was on (``hook_dict`` only lists the points that fire)."""
        return [m for m in self.mod_dict.values() if isinstance(m, HookPoint)]

    def _gate_error(self, name: str) -> ValueError:
        for flag, suffixes, setter in _GATES:
            if name.endswith(suffixes):
                return ValueError(f"hook point {name!r} is switched off; enable it with model.{setter}(True)")
        return ValueError(f"unknown hook point {name!r}")

    def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False):
        if hook_point_name not in self.hook_dict:
            raise self._gate_error(hook_point_name)

    def _enable_hook_with_name(self, name: str, hook: Callable, dir: str) -> None:
        if name not in self.hook_dict:
            if name in self.mod_dict and isinstance(self.mod_dict[name], HookPoint):
                raise self._gate_error(name)
            raise ValueError(f"unknown hook point {name!r}; see model.hook_dict for the {len(self.hook_dict)} names")
        super()._enable_hook_with_name(name, hook, dir)

    def _set_flag(self, flag: str, value: bool) -> None:
        check_bool(value, flag)
        setattr(self.cfg, flag, value)
        self.setup()

    def set_use_attn_result(self, use: bool) -> None:
        """Compute per-head outputs ``attn.hook_result [batch pos head d_model]`` (more memory)."""
        self._set_flag("use_attn_result", use)

    def set_use_split_qkv_input(self, use: bool) -> None:
        """Give each head separate q/k/v inputs (``hook_q_input`` etc., ``[batch pos head d_model]``)."""
        self._set_flag("use_split_qkv_input", use)

    def set_use_attn_in(self, use: bool) -> None:
        """Give each head one shared input copy ``hook_attn_in [batch pos head d_model]``."""
        self._set_flag("use_attn_in", use)

    def set_use_hook_mlp_in(self, use: bool) -> None:
        """Expose the MLP input as ``hook_mlp_in`` (a copy of ``resid_mid``)."""
        self._set_flag("use_hook_mlp_in", use)

    def set_use_fused_attn(self, use: bool) -> None:
        """Use ``scaled_dot_product_attention`` when no hook reads the scores or pattern (default on)."""
        self._set_flag("use_fused_attn", use)

    @contextmanager
    def flags(self, **flags: bool) -> Iterator["HookedViT"]:
        """Temporarily set ``use_*`` flags, restoring them afterwards (also after an exception).

        Example:
            >>> with model.flags(use_split_qkv_input=True):
            ...     logits = model.run_with_hooks(images, fwd_hooks=[("blocks.1.hook_q_input", fn)])
        """
        known = {g[0] for g in _GATES} | {"use_fused_attn"}
        unknown = set(flags) - known
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)}; expected some of {sorted(known)}")
        old = {k: getattr(self.cfg, k) for k in flags}
        try:
            for k, v in flags.items():
                self._set_flag(k, v)
            yield self
        finally:
            for k, v in old.items():
                self._set_flag(k, v)


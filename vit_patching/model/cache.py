"""``ActivationCache`` with the ViT-specific corrections TransformerLens cannot know about."""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


class ViTActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache`` for a HookedViT.

    Differences, all for exactness on ViTs:

    * ``decompose_resid(incl_embeds=True)`` on a CLIP-style ``pre_norm`` model starts from ``ln_pre``'s output
      (``blocks.0.hook_resid_pre``, label ``"embed_ln_pre"``) rather than from ``hook_embed + hook_pos_embed``,
      which do not sum to the residual stream there; the components then add up to the final residual.

    Example:
        >>> logits, cache = model.run_with_cache(images)
        >>> parts, labels = cache.decompose_resid(return_labels=True)
        >>> torch.allclose(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5)
        True
    """

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: Any = None, incl_embeds: bool = True,
                        return_labels: bool = False):  # fmt: skip
        if not (incl_embeds and self.model.cfg.pre_norm):
            return super().decompose_resid(layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels)
        parts, labels = super().decompose_resid(
            layer, mlp_input, mode, apply_ln=False, pos_slice=pos_slice, incl_embeds=False, return_labels=True
        )
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        first = pos_slice.apply(self["blocks.0.hook_resid_pre"], dim=-2)[None]
        parts = torch.cat([first, parts], dim=0) if parts.numel() else first
        labels = ["embed_ln_pre"] + labels
        if apply_ln:
            parts = self.apply_ln_to_stack(parts, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (parts, labels) if return_labels else parts

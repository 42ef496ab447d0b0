"""``ActivationCache`` with the ViT-specific corrections TransformerLens cannot know about."""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice

# What TransformerLens accepts as a position slice (its ``SliceInput``, spelled without deprecated typing aliases).
PosSlice = Slice | int | np.integer | tuple | list | torch.Tensor | np.ndarray | None

# Label of the single embedding component of a CLIP-style (``pre_norm``) model: ln_pre's output.
EMBED_LN_PRE = "embed_ln_pre"


class ViTActivationCache(ActivationCache):
    """TransformerLens's ``ActivationCache`` for a HookedViT.

    Differences, all for exactness on ViTs:

    * On a CLIP-style ``pre_norm`` model, ``hook_embed + hook_pos_embed`` precede ``ln_pre`` and do not sum to
      the residual stream. ``decompose_resid(incl_embeds=True)`` and ``get_full_resid_decomposition`` therefore
      use one embedding component, ``ln_pre``'s output (``blocks.0.hook_resid_pre``, label ``"embed_ln_pre"``),
      instead of the ``"embed"`` and ``"pos_embed"`` rows; the components then add up to the residual stream.

    Example:
        >>> logits, cache = model.run_with_cache(images)
        >>> parts, labels = cache.decompose_resid(return_labels=True)
        >>> torch.allclose(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5)
        True
    """

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: PosSlice = None, incl_embeds: bool = True,
                        return_labels: bool = False):  # fmt: skip
        if not (incl_embeds and self.model.cfg.pre_norm):
            return super().decompose_resid(layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels)
        parts, labels = super().decompose_resid(
            layer, mlp_input, mode, apply_ln=False, pos_slice=pos_slice, incl_embeds=False, return_labels=True
        )
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        first = pos_slice.apply(self["blocks.0.hook_resid_pre"], dim=-2)[None]
        parts = torch.cat([first, parts], dim=0) if parts.numel() else first
        labels = [EMBED_LN_PRE] + labels
        if apply_ln:
            parts = self.apply_ln_to_stack(parts, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (parts, labels) if return_labels else parts

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: PosSlice = None,
                                     return_labels: bool = False, project_output_onto: torch.Tensor | None = None):  # fmt: skip
        """TransformerLens's full decomposition (heads, neurons, embeddings, biases); on a ``pre_norm`` model the
        embedding rows are replaced by one ``"embed_ln_pre"`` row (see the class docstring)."""
        args = dict(layer=layer, mlp_input=mlp_input, expand_neurons=expand_neurons, apply_ln=apply_ln,
                    pos_slice=pos_slice, return_labels=True, project_output_onto=project_output_onto)  # fmt: skip
        if not self.model.cfg.pre_norm:
            parts, labels = super().get_full_resid_decomposition(**args)
        else:
            if "blocks.0.hook_resid_pre" not in self.cache_dict:
                raise KeyError(
                    "get_full_resid_decomposition on a pre_norm (CLIP-style) model needs 'blocks.0.hook_resid_pre' "
                    "(ln_pre's output, the embedding component) in the cache"
                )
            # The same computation on a view of this cache whose only embedding is ln_pre's output: TransformerLens
            # then treats it exactly like its "embed" row (same slicing, LayerNorm and projection), and no
            # tensor is copied or changed.
            view = {k: v for k, v in self.cache_dict.items() if k not in ("hook_embed", "hook_pos_embed")}
            view["hook_embed"] = self.cache_dict["blocks.0.hook_resid_pre"]
            parts, labels = ActivationCache.get_full_resid_decomposition(
                ActivationCache(view, self.model, has_batch_dim=self.has_batch_dim), **args
            )
            labels = [EMBED_LN_PRE if lab == "embed" else lab for lab in labels]
        return (parts, labels) if return_labels else parts

"""TransformerLens weight views of :class:`~vit_patching.model.hooked_vit.HookedViT` (``W_Q``, ``b_O``,
``W_U``...), stacked over layers, plus the readout helpers built on them (``accumulated_bias``,
``tokens_to_residual_directions``).

A mixin, so the properties stay ``HookedViT`` attributes; it relies on the model's ``cfg``, ``embed``,
``pos_embed``, ``blocks``, ``head``, ``device``, ``dtype`` and ``check_classes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .components import TransformerBlock
from .config import UnsupportedModelError, ViTConfig
from .inputs import check_layer


class WeightViews:
    """Weight properties and residual-stream readout helpers of a HookedViT (mixed into :class:`HookedViT`)."""

    cfg: ViTConfig

    def _stack(self, get: Callable[[TransformerBlock], Tensor]) -> Tensor:
        return torch.stack([get(b) for b in self.blocks], dim=0)

    @property
    def W_E(self) -> Float[Tensor, "d_model channel patch_h patch_w"]:
        """Patch-embedding conv kernel (stride = kernel = patch size)."""
        return self.embed.W_E

    @property
    def b_E(self) -> Float[Tensor, "d_model"]:
        return self.embed.b_E

    @property
    def W_pos(self) -> Float[Tensor, "pos_embed d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_K)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack(lambda b: b.attn.W_V)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_K)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack(lambda b: b.attn.b_V)

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda b: b.attn.b_O)

    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        return self._stack(lambda b: b.mlp.W_in)

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack(lambda b: b.mlp.W_out)

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack(lambda b: b.mlp.b_in)

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack(lambda b: b.mlp.b_out)

    @property
    def W_H(self) -> Float[Tensor, "d_model n_classes"]:
        self._require_head_module()
        return self.head.W_H

    @property
    def b_H(self) -> Float[Tensor, "n_classes"]:
        self._require_head_module()
        return self.head.b_H

    @property
    def W_U(self) -> Float[Tensor, "d_model n_classes"]:
        """TransformerLens's unembedding: ``W_H``, or with a linear readout the composed map from the pooled
        (normed) residual to the scores, ``W_H @ W_readout`` through a projection head. A readout that normalises
        (``ZeroShotHead``, ``EmbeddingSimilarity``) divides by the image embedding's norm, a positive per-image
        scalar frozen at ``readout.hook_scale``: ``W_U`` gives the direction, as ``W_U`` of a model with a final
        LayerNorm does."""
        readout = self._modules.get("readout")
        if readout is None or readout.reads == "head":
            return self.W_H
        lin = readout.linear_map()
        if lin is None or (readout.reads == "tokens" and readout.d_in != self.cfg.d_model):
            raise ValueError(f"the readout ({readout.describe()}) is not one linear map of one residual vector: "
                             "no unembedding direction exists")
        W = lin[0]
        if readout.reads == "features" and getattr(self, "head", None) is not None and self.cfg.head_kind == "projection":
            W = self.head.W_H @ W
        return W

    @property
    def b_U(self) -> Float[Tensor, "n_classes"]:
        readout = self._modules.get("readout")
        if readout is not None and readout.reads != "head":
            raise ValueError("b_U: with a readout the bias depends on the frozen per-image scale; use "
                             "vit_patching.model.logit_attribution.head_bias(model, cache)")
        return self.b_H

    def _require_head(self) -> None:
        if not self.cfg.n_classes:
            raise ValueError("this model has no classifier head (num_classes=0): it outputs pooled features")

    def _require_head_module(self) -> None:
        if getattr(self, "head", None) is None:
            raise ValueError("this model has no head (num_classes=0): it outputs pooled features")

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d_model"]:
        """Sum of the output biases written to the residual stream before ``layer`` (TransformerLens semantics).

        ``b_O`` of every earlier block (LayerScale folded in), plus ``b_out`` if ``include_mlp_biases``, plus
        this block's ``b_O`` if ``mlp_input``. Used by ``cache.get_full_resid_decomposition``.

        Example:
            >>> model.accumulated_bias(2).shape
            torch.Size([192])
        """
        layer = check_layer(layer, "layer", self.cfg.n_layers)
        acc = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for block in self.blocks[:layer]:
            acc = acc + block.attn.b_O
            if include_mlp_biases:
                acc = acc + block.mlp.b_out
        if mlp_input:
            if layer == self.cfg.n_layers:
                raise ValueError("mlp_input=True needs a layer below n_layers")
            acc = acc + self.blocks[layer].attn.b_O
        return acc

    def tokens_to_residual_directions(self, classes: int | Sequence[int] | Tensor) -> Tensor:
        """Class -> residual direction (``W_U[:, c]``: ``W_H[:, c]``, or the linear readout's composed direction,
        see :attr:`W_U`), as TransformerLens's ``logit_attrs`` expects."""
        readout = self._modules.get("readout")
        pooled = readout is None or readout.reads != "tokens"  # a probe reads the normed tokens, not the pool
        if self.cfg.has_dist and pooled:
            raise ValueError("distilled DeiT reads two tokens with two heads; use vit_patching's head attribution")
        if self.cfg.global_pool == "map" and pooled:
            raise UnsupportedModelError(
                "global_pool='map': the logits read the attention pool's output, a non-linear function of the"
                " residual stream, so no residual direction gives a class's logit"
            )
        W_U = self.W_U
        idx = torch.as_tensor(classes, device=self.device)
        self.check_classes(idx, "classes")
        return W_U[:, idx].T if idx.ndim else W_U[:, idx]

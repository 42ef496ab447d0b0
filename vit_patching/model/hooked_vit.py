"""HookedViT: a TransformerLens ``HookedRootModule`` that reproduces a timm ``VisionTransformer`` exactly."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..checks import check_bool, is_int
from .cache import ViTActivationCache
from .components import Attention, Embed, Head, LayerNorm, PosEmbed, TransformerBlock, is_hooked
from .config import UnsupportedModelError, ViTConfig, config_from_timm
from .convert import convert_timm_state_dict
from .positions import TokenLayout

logger = logging.getLogger(__name__)

# Gated hook points: (config flag, hook-name suffixes it enables, setter to name in errors).
_GATES = (
    ("use_attn_result", ("attn.hook_result",), "set_use_attn_result"),
    ("use_split_qkv_input", ("hook_q_input", "hook_k_input", "hook_v_input"), "set_use_split_qkv_input"),
    ("use_attn_in", ("hook_attn_in",), "set_use_attn_in"),
    ("use_hook_mlp_in", ("hook_mlp_in",), "set_use_hook_mlp_in"),
)


class HookedViT(HookedRootModule):
    """A timm Vision Transformer with TransformerLens hook points, weights and caches.

    Build it with :meth:`from_timm`. The forward pass equals timm's eval-mode forward to float rounding;
    every hook point's return value takes effect. Hook names follow TransformerLens
    (``blocks.3.attn.hook_z``, ``blocks.5.hook_resid_pre``, ...) plus ``hook_pooled``, ``fc_norm.*`` and
    ``hook_logits`` for the classifier end.

    Example:
        >>> import timm, torch
        >>> model = HookedViT.from_timm(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2))
        >>> logits, cache = model.run_with_cache(torch.randn(1, 3, 32, 32))
        >>> tuple(cache["blocks.1.attn.hook_pattern"].shape)
        (1, 3, 5, 5)
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        if cfg.pre_norm:
            self.ln_pre = LayerNorm(cfg.d_model, cfg.eps)
        self.blocks = nn.ModuleList([TransformerBlock(cfg, i) for i in range(cfg.n_layers)])
        if cfg.final_norm:
            self.ln_final = LayerNorm(cfg.d_model, cfg.eps)
        self.hook_pooled = HookPoint()
        if cfg.has_dist:
            self.hook_pooled_dist = HookPoint()
        if cfg.fc_norm:
            self.fc_norm = LayerNorm(cfg.d_model, cfg.eps)
        if cfg.n_classes:
            self.head = Head(cfg)
            self.hook_logits = HookPoint()
        if cfg.normalization_type == "LNPre":  # the config of a processed model: its folded norms have no affine
            for ln in [n for b in self.blocks for n in (b.ln1, b.ln2)] + [self._head_norm()]:
                if ln is not None:
                    ln.remove_affine()
        self.setup()
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_timm(
        cls,
        model: nn.Module | str,
        *,
        pretrained: bool = False,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        **timm_kwargs: Any,
    ) -> "HookedViT":
        """Convert a timm ``VisionTransformer`` instance (or build one by name) into a HookedViT.

        The architecture is read from the module itself; anything that cannot be reproduced exactly
        (attention pooling, EVA/RoPE, gated attention, ``scale_attn_norm``, non-ViT modules, unconsumed
        weights) raises :class:`UnsupportedModelError`. The timm model is not modified.

        Args:
            model: A timm model instance, or a timm model name for ``timm.create_model``.
            pretrained: With a name, load timm's pretrained weights (needs network access or a local cache).
            fold_ln: Fold LayerNorm affine weights into the following linear maps (logits unchanged).
            center_writing_weights: Centre every weight writing to the residual stream (logits unchanged).
            fold_value_biases: Fold ``b_V`` into ``b_O`` (logits unchanged; ``hook_v``/``hook_z`` change).
            **timm_kwargs: Passed to ``timm.create_model`` when ``model`` is a name (e.g. ``img_size=64``).

        Returns:
            The HookedViT, in eval mode, on the timm model's device and dtype.

        Example:
            >>> model = HookedViT.from_timm("vit_small_patch16_224", pretrained=False, img_size=64, depth=2)
            >>> model.cfg.grid_size
            (4, 4)
        """
        if isinstance(model, str):
            import timm

            model = timm.create_model(model, pretrained=pretrained, **timm_kwargs)
        elif timm_kwargs or pretrained:
            raise ValueError(
                "pretrained and timm keyword arguments only apply when model is a timm name; "
                f"got a {type(model).__name__} instance with pretrained={pretrained}, kwargs={sorted(timm_kwargs)}"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a timm VisionTransformer or a timm model name, got {type(model).__name__}")
        cfg = config_from_timm(model)
        state = convert_timm_state_dict(model, cfg)
        ref = next(iter(model.parameters()))
        hooked = cls(cfg).to(device=ref.device, dtype=ref.dtype)
        hooked.load_state_dict(state, strict=True)
        if fold_ln or center_writing_weights or fold_value_biases:
            hooked.process_weights_(
                fold_ln=fold_ln, center_writing_weights=center_writing_weights, fold_value_biases=fold_value_biases
            )
        return hooked

    # ------------------------------------------------------------------ inputs
    @property
    def layout(self) -> TokenLayout:
        """Token layout (prefix labels and patch grid) at the configured image size."""
        return TokenLayout(self.cfg.grid_size, self.cfg.prefix_labels)

    def layout_for(self, images: Tensor) -> TokenLayout:
        """Token layout for an image batch (differs from :attr:`layout` only under ``dynamic_img_size``)."""
        return TokenLayout(self.grid_size_for(images), self.cfg.prefix_labels)

    def grid_size_for(self, images: Tensor) -> tuple[int, int]:
        """Patch grid of an image batch; the grid never comes from the input's last axis alone."""
        self.check_images(images)
        return (images.shape[-2] // self.cfg.patch_size[0], images.shape[-1] // self.cfg.patch_size[1])

    def check_images(self, images: object, name: str = "images") -> None:
        """Raise a clear error unless ``images`` is a float ``[batch, channel, height, width]`` batch this model takes."""
        cfg = self.cfg
        if not isinstance(images, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [batch, {cfg.in_chans}, H, W], got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(
                f"{name} must have shape [batch, {cfg.in_chans}, height, width], got {tuple(images.shape)}"
                + (" (add a batch axis with images[None])" if images.ndim == 3 else "")
            )
        if not images.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (normalised pixels), got dtype {images.dtype}")
        if images.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty batch (at least one image), got shape {tuple(images.shape)}")
        if images.shape[1] != cfg.in_chans:
            raise ValueError(f"{name} must have {cfg.in_chans} channels on axis 1, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if cfg.dynamic_img_size:
            if h % cfg.patch_size[0] or w % cfg.patch_size[1]:
                raise ValueError(f"{name} height/width must be multiples of the patch size {cfg.patch_size}, got {(h, w)}")
        elif (h, w) != tuple(cfg.img_size):
            raise ValueError(
                f"{name} must be {cfg.img_size[0]}x{cfg.img_size[1]} pixels (the model's img_size), got {h}x{w}; "
                "resize with model.transform or build the timm model with dynamic_img_size=True"
            )
        # Last, after the cheap shape checks: one pass over the values. A NaN/Inf pixel would otherwise spread
        # through attention to every token and surface only as NaN scores far from its cause.
        if images.device.type != "meta" and not bool(torch.isfinite(images).all()):  # meta tensors hold no values
            n_bad = int((~torch.isfinite(images)).sum())
            raise ValueError(f"{name}: expected finite pixel values, got {n_bad} NaN/Inf value(s)")

    @property
    def transform(self) -> Callable:
        """timm eval transform (resize, crop, to-tensor, normalise) from the model's data config."""
        if not self.cfg.data_config:
            raise ValueError("this model has no timm data config (its timm model had no pretrained_cfg)")
        from timm.data import create_transform

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.cfg.data_config.items()}
        return create_transform(**cfg, is_training=False)

    def preprocess(self, images: object) -> Float[Tensor, "batch channel height width"]:
        """Turn PIL images (one or a list) into a normalised batch on the model's device."""
        from PIL import Image

        items = [images] if isinstance(images, Image.Image) else list(images)
        if not items or not all(isinstance(i, Image.Image) for i in items):
            raise TypeError("images must be a PIL.Image or a non-empty sequence of PIL.Images")
        tf = self.transform
        batch = torch.stack([tf(i.convert("RGB") if self.cfg.in_chans == 3 else i) for i in items])
        return batch.to(device=self.device, dtype=self.dtype)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> "HookedViT":
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.embed.W_E.device)
        return out

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    # ------------------------------------------------------------------ forward
    def embed_input(self, images: Float[Tensor, "batch channel height width"]) -> Float[Tensor, "batch pos d_model"]:
        """Embedding: ``hook_embed + hook_pos_embed``, then ``ln_pre`` if the model has it (= resid_pre of block 0)."""
        self.check_images(images)
        return self._embed_checked(images)

    def _embed_checked(self, images: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """:meth:`embed_input` for images already checked by :meth:`check_images` (one finiteness pass only)."""
        if images.device != self.device:
            raise ValueError(f"images are on {images.device} but the model is on {self.device}; move one of them")
        images = images.to(self.dtype)
        embed = self.hook_embed(self.embed(images))
        gh, gw = images.shape[-2] // self.cfg.patch_size[0], images.shape[-1] // self.cfg.patch_size[1]
        pos = self.pos_embed.table((gh, gw))[None].expand(embed.shape[0], -1, -1)
        if is_hooked(self.hook_pos_embed):
            pos = pos.clone()  # a real tensor, so hooks may write into it in place
        if self.cfg.has_pos_embed or is_hooked(self.hook_pos_embed):
            resid = embed + self.hook_pos_embed(pos)
        else:  # timm only concatenates here (a contiguous copy): same layout, hence the same rounding downstream
            resid = embed.contiguous()
        if self.cfg.pre_norm:
            resid = self.ln_pre(resid)
        return resid

    def pool(self, resid: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor | None]:
        """Final norm and pooling (``hook_pooled``; ``hook_pooled_dist`` for distilled DeiT)."""
        cfg = self.cfg
        if cfg.final_norm:
            resid = self.ln_final(resid)
        if cfg.has_dist:
            return self.hook_pooled(resid[:, 0]), self.hook_pooled_dist(resid[:, 1])
        pool = cfg.global_pool
        if pool == "token":
            pooled = resid[:, 0]
        elif pool == "":
            pooled = resid
        else:
            tokens = resid if cfg.pool_include_prefix else resid[:, cfg.n_prefix :]
            if pool == "avg":
                pooled = tokens.mean(dim=1)
            elif pool == "max":
                pooled = tokens.amax(dim=1)
            else:  # avgmax
                pooled = 0.5 * (tokens.amax(dim=1) + tokens.mean(dim=1))
        return self.hook_pooled(pooled), None

    def unembed(self, resid: Float[Tensor, "batch pos d_model"]) -> Tensor:
        """Everything after the last block: final norm, pooling, ``fc_norm``, head (``hook_logits``)."""
        pooled, pooled_dist = self.pool(resid)
        if self.cfg.fc_norm:
            pooled = self.fc_norm(pooled)
        if not self.cfg.n_classes:
            # timm's distilled DeiT returns the mean of the CLS and DIST features when it has no heads.
            return pooled if pooled_dist is None else (pooled + pooled_dist) / 2
        return self.hook_logits(self.head(pooled, pooled_dist))

    def forward(
        self,
        input: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Tensor:
        """Run the model.

        Args:
            input: Normalised images ``[batch, channel, height, width]``; or, with ``start_at_layer``, the
                residual stream ``[batch, pos, d_model]`` entering that block.
            start_at_layer: Start at this block, from a cached residual (skips the embedding and earlier blocks).
            stop_at_layer: Stop before this block and return its input residual ``[batch, pos, d_model]``.

        Returns:
            Logits ``[batch, n_classes]`` (pooled features ``[batch, d_model]`` if the model has no head),
            or the residual stream when ``stop_at_layer`` is given.

        Example:
            >>> resid = model(images, stop_at_layer=2)        # blocks 0..1
            >>> logits = model(resid, start_at_layer=2)       # blocks 2..L-1 + head
        """
        L = self.cfg.n_layers
        start = 0 if start_at_layer is None else self._check_layer(start_at_layer, "start_at_layer", L)
        stop = L if stop_at_layer is None else self._check_layer(stop_at_layer, "stop_at_layer", L)
        if stop < start:
            raise ValueError(f"stop_at_layer ({stop}) must be >= start_at_layer ({start})")
        if start_at_layer is None:
            self.check_images(input)  # clear errors before any (jaxtyping) annotation check of the embedding
            resid = self._embed_checked(input)
        else:
            if not isinstance(input, Tensor) or input.ndim != 3 or input.shape[-1] != self.cfg.d_model:
                raise ValueError(
                    f"with start_at_layer, input must be a residual stream [batch, pos, {self.cfg.d_model}], "
                    f"got {tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}"
                )
            resid = input
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        return self.unembed(resid)

    @staticmethod
    def _check_layer(value: int, name: str, n_layers: int) -> int:
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        v = value + n_layers if value < 0 else value
        if not 0 <= v <= n_layers:
            raise ValueError(f"{name} must be in [-{n_layers}, {n_layers}], got {value}")
        return v

    # ------------------------------------------------------------------ hooks and caches
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

    @contextmanager
    def hooks(self, fwd_hooks=[], bwd_hooks=[], reset_hooks_end=True, clear_contexts=False):  # noqa: B006
        """TransformerLens's ``hooks`` context manager; hooks added before a failure are removed too."""
        self.context_level += 1
        try:
            for name, hook in fwd_hooks:
                self._enable_hook(name=name, hook=hook, dir="fwd")
            for name, hook in bwd_hooks:
                self._enable_hook(name=name, hook=hook, dir="bwd")
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
            self.context_level -= 1

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any):
        """Run and cache activations; returns ``(output, ViTActivationCache)`` (TransformerLens semantics).

        Example:
            >>> logits, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("hook_z"))
        """
        names = kwargs.get("names_filter")
        # TransformerLens silently caches nothing for a listed name that never fires; say why instead.
        for name in [names] if isinstance(names, str) else (names if isinstance(names, (list, tuple)) else []):
            if name not in self.hook_dict:
                if isinstance(self.mod_dict.get(name), HookPoint):
                    raise self._gate_error(name)
                raise ValueError(f"unknown hook point {name!r} in names_filter; see model.hook_dict")
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if return_cache_object:
            return out, ViTActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache_dict

    # ------------------------------------------------------------------ weights
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
        self._require_head()
        return self.head.W_H

    @property
    def b_H(self) -> Float[Tensor, "n_classes"]:
        self._require_head()
        return self.head.b_H

    # TransformerLens names for the readout.
    W_U = W_H
    b_U = b_H

    def _require_head(self) -> None:
        if not self.cfg.n_classes:
            raise ValueError("this model has no classifier head (num_classes=0): it outputs pooled features")

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
        layer = self._check_layer(layer, "layer", self.cfg.n_layers)
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
        """Class -> residual direction (``W_H[:, c]``), as TransformerLens's ``logit_attrs`` expects."""
        self._require_head()
        if self.cfg.has_dist:
            raise ValueError("distilled DeiT reads two tokens with two heads; use vit_patching's head attribution")
        idx = torch.as_tensor(classes, device=self.device)
        self.check_classes(idx, "classes")
        return self.head.W_H[:, idx].T if idx.ndim else self.head.W_H[:, idx]

    def check_target(self, target: object, batch: int) -> Tensor | None:
        """Validate a per-image target: ``None``, an int, or an integer tensor ``[batch]`` of class indices.

        Returns:
            ``None`` for ``None``, else a long CPU tensor ``[batch]`` (an int is broadcast to every image).

        Example:
            >>> model.check_target(3, batch=2)
            tensor([3, 3])
        """
        if target is None:
            return None
        if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
            raise TypeError(f"target: expected None, an int or an integer tensor [batch], got {type(target).__name__}")
        t = torch.as_tensor(target)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"target: expected integer class indices, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"target: expected one class per image, shape [{batch}], got shape {tuple(t.shape)}")
        self.check_classes(t, "target")
        return t.long().cpu()

    def check_classes(self, classes: Tensor, name: str = "target") -> None:
        """Raise a clear error if any class index is out of range."""
        self._require_head()
        if classes.is_floating_point():
            raise TypeError(f"{name} must hold integer class indices, got dtype {classes.dtype}")
        if classes.numel() and (classes.min() < 0 or classes.max() >= self.cfg.n_classes):
            raise ValueError(
                f"{name} must be class indices in [0, {self.cfg.n_classes}), got values in "
                f"[{int(classes.min())}, {int(classes.max())}]"
            )

    # ------------------------------------------------------------------ weight processing
    def process_weights_(
        self,
        *,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        fold_layer_scale: bool = False,
    ) -> "HookedViT":
        """Apply TransformerLens-style weight processing in place; logits are unchanged.

        Args:
            fold_ln: Fold LayerNorm affine weights into Q/K/V, MLP input and the head. The LNs then only
                normalise (``cfg.normalization_type == "LNPre"``); ``ln_pre`` (CLIP) and ``qk_norm`` stay.
            center_writing_weights: Remove the mean over ``d_model`` from everything written to the residual
                stream. Needs every reader of the residual to be a LayerNorm.
            fold_value_biases: ``b_O += sum_h b_V[h] @ W_O[h]`` and ``b_V = 0`` (pattern rows sum to 1).
            fold_layer_scale: Multiply LayerScale's gamma into ``w_proj``/``b_proj`` and ``w_fc2``/``b_fc2``
                (``cfg.layer_scale`` becomes False), so ``W_O``/``b_O``/``W_out``/``b_out`` are writable views again.
                The model then equals timm to float rounding instead of bit for bit. Implied by
                ``center_writing_weights`` and ``fold_value_biases``, which write to those weights.

        Returns:
            ``self``.

        Example:
            >>> model.process_weights_(fold_layer_scale=True).cfg.layer_scale
            False
        """
        self._check_processing(fold_ln, center_writing_weights)
        for flag, value in (("fold_ln", fold_ln), ("center_writing_weights", center_writing_weights),
                            ("fold_value_biases", fold_value_biases), ("fold_layer_scale", fold_layer_scale)):  # fmt: skip
            check_bool(value, flag)
        with torch.no_grad():
            if fold_layer_scale or center_writing_weights or fold_value_biases:
                self._fold_layer_scale()
            if fold_ln:
                self._fold_ln()
            if center_writing_weights:
                self._center_writing_weights()
            if fold_value_biases:
                for b in self.blocks:
                    b.attn.b_proj.add_(torch.einsum("he,hed->d", b.attn.b_V, b.attn.W_O))
                    b.attn.b_V.zero_()
        self.setup()
        return self

    def _fold_layer_scale(self) -> None:
        """Fold every LayerScale gamma into its output projection (exact per-channel scaling, new rounding)."""
        for b in self.blocks:
            for module, w, bias in ((b.attn, b.attn.w_proj, b.attn.b_proj), (b.mlp, b.mlp.w_fc2, b.mlp.b_fc2)):
                if module.ls_gamma is not None:
                    w.mul_(module.ls_gamma[:, None])
                    bias.mul_(module.ls_gamma)
                    del module.ls_gamma
                    module.ls_gamma = None
        self.cfg.layer_scale = False

    def _check_processing(self, fold_ln: bool, center_writing_weights: bool) -> None:
        """Refuse inexact processing before any weight is touched (no half-processed model on error)."""
        cfg = self.cfg
        if fold_ln:
            if cfg.normalization_type == "LNPre":
                raise ValueError("LayerNorms are already folded")
            if cfg.global_pool in ("max", "avgmax") and cfg.final_norm:
                raise UnsupportedModelError(
                    f"cannot fold the per-token final norm through global_pool={cfg.global_pool!r} (not linear)"
                )
        if center_writing_weights:
            if not (cfg.final_norm or cfg.fc_norm):
                raise UnsupportedModelError("center_writing_weights needs a final norm or fc_norm reading the residual")
            if cfg.fc_norm and cfg.global_pool in ("max", "avgmax"):
                raise UnsupportedModelError(
                    f"center_writing_weights does not commute with global_pool={cfg.global_pool!r}"
                )

    def _fold_ln(self) -> None:
        cfg = self.cfg
        for b in self.blocks:
            w, bb = b.ln1.w, b.ln1.b
            for n in "QKV":
                W = getattr(b.attn, f"W_{n}")
                getattr(b.attn, f"b_{n}").add_(torch.einsum("d,hde->he", bb, W))
                W.mul_(w[None, :, None])
            b.ln1.remove_affine()
            b.mlp.b_in.add_(b.ln2.b @ b.mlp.W_in)
            b.mlp.W_in.mul_(b.ln2.w[:, None])
            b.ln2.remove_affine()
        final = self._head_norm()
        if final is not None:
            for wn, bn in (("W_H", "b_H"), ("W_H_dist", "b_H_dist")):
                if hasattr(self.head, wn):
                    W = getattr(self.head, wn)
                    getattr(self.head, bn).add_(final.b @ W)
                    W.mul_(final.w[:, None])
            final.remove_affine()
        cfg.normalization_type = "LNPre"

    def _head_norm(self) -> LayerNorm | None:
        """The norm that ``fold_ln`` folds into the head: ``fc_norm``, else the per-token final norm."""
        cfg = self.cfg
        if not cfg.n_classes:
            return None
        return self.fc_norm if cfg.fc_norm else (self.ln_final if cfg.final_norm else None)

    def _center_writing_weights(self) -> None:
        cfg = self.cfg

        def center(t: Tensor) -> None:
            t.sub_(t.mean(-1, keepdim=True))

        if not cfg.pre_norm:
            # With CLIP's ln_pre the residual starts as ln_pre's output (normalised * w + b), which no weight
            # change can centre; only the block writes are centred then. Logits are unchanged either way.
            center(self.embed.W_E.permute(1, 2, 3, 0))
            center(self.embed.b_E.view(1, -1))
            for t in (self.embed.cls_token, self.embed.dist_token, self.embed.reg_tokens):
                if t is not None:
                    center(t.view(-1, cfg.d_model))
            center(self.pos_embed.W_pos)
        for b in self.blocks:
            center(b.attn.W_O)  # views: LayerScale was folded first
            center(b.attn.b_proj.view(1, -1))
            center(b.mlp.W_out)
            center(b.mlp.b_fc2.view(1, -1))


def check_classifier(model: object, name: str = "model") -> HookedViT:
    """Return ``model`` if it is a :class:`HookedViT` with a classification head, else raise naming ``name``.

    The one check every experiment and attribution method that reads class scores makes first.

    Example:
        >>> check_classifier("vit_base")
        Traceback (most recent call last):
        ...
        TypeError: model: expected a HookedViT (HookedViT.from_timm(...) or zoo.load_model(...)), got str
    """
    if not isinstance(model, HookedViT):
        raise TypeError(
            f"{name}: expected a HookedViT (HookedViT.from_timm(...) or zoo.load_model(...)), got {type(model).__name__}"
        )
    if not model.cfg.n_classes:
        raise ValueError(f"{name}: expected a model with a classification head (n_classes > 0), got a headless model")
    return model

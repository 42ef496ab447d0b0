"""HookedViT: a TransformerLens ``HookedRootModule`` that reproduces a timm ``VisionTransformer`` exactly."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Callable, Iterable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..checks import check_bool
from ..sae import splice as sae_splice
from .attn_pool import AttentionPool
from .cache import ViTActivationCache
from .components import Embed, Head, LayerNorm, PosEmbed, TransformerBlock, is_hooked
from .config import UnsupportedModelError, ViTConfig
from .convert import convert_timm_state_dict
from .hook_gates import HookGates
from .inputs import ImageInputs, check_layer
from .parallel import ParallelBlock
from .processing import head_norm, process_weights
from .readout_attach import current_readout, with_readout
from .torch_hooks import global_hooks, module_hook_kinds
from .timm_config import config_from_timm
from .weights import WeightViews

logger = logging.getLogger(__name__)



class HookedViT(ImageInputs, WeightViews, HookGates, HookedRootModule):
    """A timm Vision Transformer with TransformerLens hook points, weights and caches.

    Build it with :meth:`from_timm`. Without hooks the forward pass runs timm's own parameters and kernels and
    equals timm's eval-mode forward bit for bit (LayerScale models included); with hooks that switch a site to
    its explicit computation, to float rounding. Every hook point's return value takes effect. Hook names follow TransformerLens
    (``blocks.3.attn.hook_z``, ``blocks.5.hook_resid_pre``, ...) plus ``hook_pooled``, ``fc_norm.*`` and
    ``hook_logits`` for the classifier end.

    Input checks and layouts come from :class:`~vit_patching.model.inputs.ImageInputs`, the ``W_*``/``b_*``
    weight views from :class:`~vit_patching.model.weights.WeightViews` and ``process_weights_`` from
    :func:`~vit_patching.model.processing.process_weights`.

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
            self.ln_pre = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")
        block_cls = ParallelBlock if cfg.parallel_attn_mlp else TransformerBlock
        self.blocks = nn.ModuleList([block_cls(cfg, i) for i in range(cfg.n_layers)])
        if cfg.final_norm:
            self.ln_final = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")
        if cfg.global_pool == "map":
            self.attn_pool = AttentionPool(cfg)
        self.hook_pooled = HookPoint()
        if cfg.has_dist:
            self.hook_pooled_dist = HookPoint()
        if cfg.fc_norm:
            self.fc_norm = LayerNorm(cfg.d_model, cfg.eps, rms=cfg.norm_kind == "RMS")
        if cfg.n_classes:
            self.head = Head(cfg)
            self.hook_logits = HookPoint()
        if cfg.normalization_type in ("LNPre", "RMSPre"):  # the config of a processed model: its folded norms have no affine
            for ln in [n for b in self.blocks for n in (b.ln1, getattr(b, "ln2", None))] + [head_norm(self)]:
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
        """Convert a timm ``VisionTransformer`` or ``Eva`` instance (or build one by name) into a HookedViT.

        The architecture is read from the module itself; anything that cannot be reproduced exactly
        (PRR attention pooling, gated or differential attention, post-norm blocks, non-ViT modules,
        unconsumed weights, ...) raises :class:`UnsupportedModelError`; ``docs/support_matrix.md`` lists every
        timm ViT architecture with its status. The timm model is not modified.

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

    @classmethod
    def from_hf(
        cls, model: Any, *, fold_ln: bool = False, center_writing_weights: bool = False, fold_value_biases: bool = False
    ) -> "HookedViT":
        """Convert a Hugging Face ``transformers`` vision model (ViT, DeiT, CLIP, SigLIP, DINOv2) into a HookedViT.

        Maps the model to the equivalent timm architecture and converts that (:mod:`vit_patching.model.hf` lists
        the classes, what the converted forward equals and what is refused); the weight-processing options are
        those of :meth:`from_timm`.

        Example:
            >>> from transformers import ViTConfig, ViTForImageClassification
            >>> hf = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            ...     intermediate_size=64, image_size=32, patch_size=8, num_labels=10)).eval()
            >>> HookedViT.from_hf(hf).cfg.n_classes
            10
        """
        from .hf import hooked_from_hf  # transformers is optional and heavy: imported only when used

        return hooked_from_hf(model, cls=cls, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                              fold_value_biases=fold_value_biases)

    @classmethod
    def from_open_clip(cls, model: object, **kwargs: Any) -> "HookedViT":
        """Convert an open_clip model's image tower; see :func:`vit_patching.model.open_clip.from_open_clip`.

        Example:
            >>> import open_clip
            >>> model = HookedViT.from_open_clip(open_clip.create_model("ViT-B-32", pretrained=None))
            >>> model.cfg.head_kind, model.cfg.n_classes  # CLIP's proj: the 512-d image embedding
            ('projection', 512)
        """
        from .open_clip import from_open_clip  # open_clip is an optional dependency

        return from_open_clip(model, cls=cls, **kwargs)

    def process_weights_(
        self,
        *,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        fold_value_biases: bool = False,
        fold_layer_scale: bool = False,
    ) -> "HookedViT":
        """TransformerLens-style weight processing in place (logits unchanged); returns ``self``. The options
        are those of :func:`~vit_patching.model.processing.process_weights`.

        Example:
            >>> model.process_weights_(fold_layer_scale=True).cfg.layer_scale
            False
        """
        process_weights(self, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                        fold_value_biases=fold_value_biases, fold_layer_scale=fold_layer_scale)
        return self

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
        elif pool == "map":
            pooled = self.attn_pool(resid if cfg.pool_include_prefix else resid[:, cfg.n_prefix :])
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
        """Everything after the last block: final norm, pooling, ``fc_norm``, head, readout (``hook_logits``)."""
        readout = self._modules.get("readout")
        if readout is not None and readout.reads == "tokens":  # a probe on the normed token stream
            return self.hook_logits(readout(self.ln_final(resid) if self.cfg.final_norm else resid))
        if readout is not None and readout.reads == "features":
            return self.hook_logits(readout(self.output_features(resid)))
        if getattr(self, "head", None) is None:
            return self.output_features(resid)
        pooled, pooled_dist = self.pool(resid)
        if self.cfg.fc_norm:
            pooled = self.fc_norm(pooled)
        return self.hook_logits(self.head(pooled, pooled_dist))

    def output_features(self, resid: Float[Tensor, "batch pos d_model"]) -> Tensor:
        """The output features a ``"features"`` readout reads: pooled, ``fc_norm``, projection head if any."""
        pooled, pooled_dist = self.pool(resid)
        if self.cfg.fc_norm:
            pooled = self.fc_norm(pooled)
        if getattr(self, "head", None) is not None and self.cfg.head_kind == "projection":
            return self.head(pooled, pooled_dist)
        # timm's distilled DeiT returns the mean of the CLS and DIST features when it has no heads.
        return pooled if pooled_dist is None else (pooled + pooled_dist) / 2

    def feature_width(self) -> int:
        """Width of the output features a readout reads: the projection head's output, else ``d_model``."""
        head = getattr(self, "head", None)
        return head.b_H.shape[0] if head is not None and self.cfg.head_kind == "projection" else self.cfg.d_model

    def with_readout(self, readout: nn.Module) -> "HookedViT":
        """A model sharing these weights whose ``hook_logits`` are ``readout``'s scores ``[batch, n_classes]``: after
        pooling, ``fc_norm`` and a projection head (or on the normed tokens, for a probe); this model is unchanged.
        Process weights (``process_weights_``) before attaching: the two models share the weight tensors.

        Example:
            >>> from vit_patching.readouts import ZeroShotHead
            >>> scored = model.with_readout(ZeroShotHead(torch.randn(3, model.feature_width()), 100.0))
            >>> scored(images).shape
            torch.Size([2, 3])
        """
        return with_readout(self, readout)

    @property
    def readout(self) -> nn.Module | None:
        """The readout in force: the attached one, ``ClassifierHead`` for a classifier, else ``None``."""
        return current_readout(self)

    def forward(
        self,
        input: Tensor,
        *,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        readout_only: bool = False,
    ) -> Tensor:
        """Run the model.

        Args:
            input: Normalised images ``[batch, channel, height, width]``; or, with ``start_at_layer``, the
                residual stream ``[batch, pos, d_model]`` entering that block.
            start_at_layer: Start at this block, from a cached residual (skips the embedding and earlier blocks).
            stop_at_layer: Stop before this block and return its input residual ``[batch, pos, d_model]``.
            readout_only: In the last block, compute only the tokens the head reads (CLS; CLS and DIST for
                distilled DeiT): every token is still a key and a value, but only those get a query, the
                projection and the MLP. Same logits to float32 rounding, about ``1 / n_layers`` less compute; the
                patching engine turns it on when its hooks allow. Refused (``ValueError`` naming the reason, see
                :meth:`readout_only_blockers`) when the head reads every token, the last block is a parallel
                block, split q/k/v inputs are on, or a hook would see the pruned tokens: a hook point after
                ``blocks.{L-1}.hook_resid_pre``, or a plain PyTorch hook (forward, pre, backward; global too) on
                the last block, one of its modules, the final norm, the pooling or the head.

        Returns:
            Logits ``[batch, n_classes]`` (pooled features ``[batch, d_model]`` if the model has no head),
            or the residual stream when ``stop_at_layer`` is given.

        Example:
            >>> resid = model(images, stop_at_layer=2)        # blocks 0..1
            >>> logits = model(resid, start_at_layer=2)       # blocks 2..L-1 + head
        """
        L = self.cfg.n_layers
        start = 0 if start_at_layer is None else check_layer(start_at_layer, "start_at_layer", L)
        stop = L if stop_at_layer is None else check_layer(stop_at_layer, "stop_at_layer", L)
        if stop < start:
            raise ValueError(f"stop_at_layer ({stop}) must be >= start_at_layer ({start})")
        check_bool(readout_only, "readout_only")
        if readout_only:
            if stop_at_layer is not None:
                raise ValueError(f"readout_only: expected False with stop_at_layer (the residual of every token is "
                                 f"returned), got True with stop_at_layer={stop_at_layer}")
            blockers = self.readout_only_blockers()
            if blockers:
                raise ValueError(f"readout_only: expected a model and hooks that read only the head's tokens, got "
                                 f"{'; '.join(blockers)}")
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
        readout = self._modules.get("readout")
        if readout is not None and readout.reads == "latent" and stop_at_layer is None:
            return readout.run(self, resid, start)  # read inside the network: stops after the SAE's block
        prune = readout_only and start < L  # from start_at_layer=L no block runs: nothing to prune
        for block in self.blocks[start : stop - 1 if prune else stop]:
            resid = block(resid)
        if prune:
            resid = self.blocks[L - 1](resid, n_out=self.readout_tokens())
        if stop_at_layer is not None:
            return resid
        return self.unembed(resid)

    def readout_tokens(self) -> int | None:
        """How many leading tokens the head reads: 1 (CLS) for token pooling, 2 (CLS, DIST) for distilled DeiT;
        ``None`` when pooling reads every token (``avg``, ``max``, ``avgmax``, ``map``, none).

        Example:
            >>> model.readout_tokens()  # a CLS-token ViT
            1
        """
        readout = self._modules.get("readout")
        if readout is not None and readout.reads == "tokens":
            return readout.tokens_read()
        if self.cfg.has_dist:
            return 2
        return 1 if self.cfg.global_pool == "token" else None

    def readout_only_blockers(self, hooks: Iterable[str] = ()) -> list[str]:
        """Why :meth:`forward` cannot run with ``readout_only=True`` now (empty list: it can).

        Args:
            hooks: Hook names the caller is about to add (e.g. a ``run_with_hooks`` list); hooks already attached
                to the model are counted too, and so are plain PyTorch module hooks (``register_forward_hook``,
                ``register_forward_pre_hook``, ``register_full_backward_hook``, ... and torch's global
                ``register_module_*_hook``) on the last block, its modules, ``ln_final``, the pooling, ``fc_norm``
                and the head.

        Example:
            >>> model.readout_only_blockers(["blocks.11.hook_resid_pre"])
            []
            >>> model.readout_only_blockers(["blocks.11.hook_resid_post"])
            ["hook 'blocks.11.hook_resid_post' reads every token of the last block"]
            >>> handle = model.blocks[11].attn.register_forward_hook(lambda mod, args, out: out)
            >>> model.readout_only_blockers()
            ["a forward hook on module 'blocks.11.attn' would see only the head's tokens"]
        """
        cfg = self.cfg
        reasons = []
        if self.readout_tokens() is None:
            readout = self._modules.get("readout")
            reasons.append(f"the readout ({type(readout).__name__}) reads every token"
                           if readout is not None and readout.reads == "tokens"
                           else f"global_pool={cfg.global_pool!r} reads every token")
        if getattr(self._modules.get("readout"), "reads", None) == "latent":
            reasons.append("the readout reads an SAE latent inside the network, not the head's tokens")
        if cfg.parallel_attn_mlp:
            reasons.append("the last block is a parallel block")
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            reasons.append("split q/k/v inputs (use_split_qkv_input / use_attn_in) are on")
        last = f"blocks.{cfg.n_layers - 1}."
        after = {n for n in self.hook_dict if (n.startswith(last) and n != last + "hook_resid_pre")
                 or n.startswith("ln_final.")}  # the final norm runs on the kept tokens only
        named = set(hooks)
        spliced = sae_splice.spliced_saes(self)  # an SAE there would run on the kept tokens only
        for n in sorted(after):
            if n in named or is_hooked(self.hook_dict[n]):
                reasons.append(f"hook {n!r} reads every token of the last block")
            if n in spliced:
                reasons.append(f"an SAE spliced at {n!r} reads every token of the last block")
        return reasons + self._module_hook_blockers()

    def _module_hook_blockers(self) -> list[str]:
        """Plain PyTorch hooks (``register_forward_hook`` & co., on a module or global) that would run on the
        pruned part: the last block after its ``hook_resid_pre`` and everything after it.

        Such a hook sees, and may mix, the tokens of the last block's modules; pruned, it sees only the head's
        tokens and can change the logits. Hook points are left to :meth:`readout_only_blockers`' name rules
        (a hook on ``hook_pooled`` or ``hook_logits`` sees the same values either way).
        """
        reasons = [f"{g} would see only the head's tokens in the last block's modules" for g in global_hooks()]
        L = self.cfg.n_layers
        modules = list(self.blocks[L - 1].named_modules(prefix=f"blocks.{L - 1}"))
        for name, child in self.named_children():  # what runs after the blocks: final norm, pooling, head
            if name not in ("embed", "pos_embed", "hook_embed", "hook_pos_embed", "ln_pre", "blocks"):
                modules += list(child.named_modules(prefix=name))
        for name, module in modules:
            if not isinstance(module, HookPoint):  # hook points are named by the rules above
                reasons += [f"a {kind} hook on module {name!r} would see only the head's tokens"
                            for kind in module_hook_kinds(module)]
        return reasons

    # ------------------------------------------------------------------ hooks and caches
    # ------------------------------------------------------------------ SAEs (vit_patching.sae.splice)
    def add_sae(self, sae: nn.Module, hook_name: str | None = None, use_error_term: bool = False,
                positions: str | None = None) -> nn.Module:
        """Splice ``sae`` at ``hook_name`` (default ``sae.cfg.hook_name``); its latents become the hook point
        ``{hook_name}.sae.hook_sae_acts_post`` (:func:`vit_patching.sae.splice.add_sae`, ``docs/sae.md``).

        Example:
            >>> model.add_sae(sae, use_error_term=True)   # logits unchanged bit for bit until a latent is patched
        """
        return sae_splice.add_sae(self, sae, hook_name, use_error_term, positions)

    def saes(self, saes: nn.Module | Iterable[nn.Module] = (), use_error_term: bool = False,
             positions: str | None = None):
        """Context manager: splice ``saes`` for the block, removed on exit (also after an exception).

        Example:
            >>> with model.saes([sae], use_error_term=True):
            ...     logits, cache = model.run_with_cache(images)
        """
        return sae_splice.saes(self, saes, use_error_term, positions)

    def reset_saes(self) -> None:
        """Remove every spliced SAE (:func:`vit_patching.sae.splice.reset_saes`)."""
        sae_splice.reset_saes(self)

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


def check_scores(model: object, name: str = "model") -> HookedViT:
    """Return ``model`` if it is a :class:`HookedViT` that outputs class scores, else raise naming ``name``.

    Class scores come from a classifier head or an attached readout (``model.with_readout(...)``); a headless or
    projection-head model (DINOv2, CLIP's image tower) outputs features and is refused with what to attach.
    The one check every experiment and attribution method that reads class scores makes first.

    Example:
        >>> check_scores("vit_base")
        Traceback (most recent call last):
        ...
        TypeError: model: expected a HookedViT (HookedViT.from_timm(...) or zoo.load_model(...)), got str
    """
    if not isinstance(model, HookedViT):
        raise TypeError(
            f"{name}: expected a HookedViT (HookedViT.from_timm(...) or zoo.load_model(...)), got {type(model).__name__}"
        )
    if model._modules.get("readout") is None and (model.cfg.head_kind != "classifier" or not hasattr(model, "head")):
        kind = "projection-head model (image embeddings)" if hasattr(model, "head") else "headless model"
        raise ValueError(
            f"{name}: expected a model that outputs class scores (a classifier head or a readout), got a {kind}; "
            "attach a readout: model.with_readout(ZeroShotHead(text_embeddings, logit_scale)), "
            "model.with_readout(LinearProbe.fit(model, images, labels)) or "
            "model.with_readout(EmbeddingSimilarity(reference)) (vit_patching.readouts)"
        )
    return model


# The former name of check_scores (it refused every model without a classifier head).
check_classifier = check_scores

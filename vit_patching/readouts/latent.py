"""A readout that scores one latent of a spliced SAE: "which image patches drive feature k".

``model.with_readout(LatentReadout(hook, latent))`` gives a model whose single class score (``hook_logits``
``[batch, 1]``) is latent ``k`` of the SAE spliced at ``hook`` (``model.add_sae`` first), summed or averaged over
the SAE's positions, or read at one position. Every experiment then runs on the latent unchanged: CAAP maps
(``caap(scored, images, target=0, window=...)``: which patches, pinned into a neutral context, drive the
feature), layer sweeps, AtP, attribution methods.

The latent is read at its hook, inside the network, so the forward stops after the SAE's block (later blocks do
not run) and never takes the ``readout_only`` shortcut (which prunes the last block for the head's tokens).
Patching experiments must write upstream of it: CAAP refuses a window that ends after the SAE's block
(:meth:`LatentReadout.max_window_end`).

Example:
    >>> splice = model.add_sae(sae, use_error_term=True)          # at blocks.1.hook_resid_post
    >>> scored = model.with_readout(LatentReadout("blocks.1.hook_resid_post", latent=7))
    >>> scored(images).shape                                      # latent 7 summed over positions
    torch.Size([2, 1])
    >>> model.reset_saes()                                        # scored keeps its own copy of the splice
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor, nn

from vit_patching.checks import check_choice, is_int
from vit_patching.hook_names import hook_layer, sae_act_name, site_suffix, split_sae_name
from vit_patching.model.readout import Readout
from vit_patching.sae.sites import get_splice, latent_width, token_span

__all__ = ["LATENT_REDUCTIONS", "LatentReadout"]

#: How the latent's activations over the SAE's positions become one score (or an int: one position).
LATENT_REDUCTIONS = ("sum", "mean")


class LatentReadout(Readout):
    """Latent ``latent`` of the SAE spliced at ``hook`` as the model's one score.

    Args:
        hook: The hook the SAE is spliced at (``"blocks.1.hook_resid_post"``) or its latent hook name
            (``...sae.hook_sae_acts_post``; ``...sae.hook_sae_acts_pre`` reads the pre-activation).
        latent: The latent index ``k``.
        reduce: ``"sum"`` (default) or ``"mean"`` over the SAE's positions, or an int: the model token position
            to read (one the SAE covers).

    Attributes:
        reads: ``"latent"``: the score is read inside the network (``HookedViT.forward`` stops after the SAE's
            block).

    Example:
        >>> with model.saes([sae]):
        ...     scored = model.with_readout(LatentReadout(sae.cfg.hook_name, latent=3, reduce=0))  # at the CLS token
        >>> scored.readout.class_names
        ['F3@0']
    """

    reads = "latent"

    def __init__(self, hook: str, latent: int, reduce: str | int = "sum"):
        if not isinstance(hook, str):
            raise TypeError(f"hook: expected a hook name (str), got {type(hook).__name__}")
        sae = split_sae_name(hook)
        if sae is not None and sae[1] not in ("hook_sae_acts_post", "hook_sae_acts_pre"):
            raise ValueError(f"hook: expected an SAE's latents or the hook it is spliced at, got {hook!r}")
        name = hook if sae is not None else sae_act_name(hook)
        if hook_layer(name) is None:
            raise ValueError(f"hook: expected an SAE spliced at a block's hook (blocks.N....), got {hook!r}")
        if not is_int(latent) or latent < 0:
            raise ValueError(f"latent: expected a non-negative int (the latent index), got {latent!r}")
        if not is_int(reduce):
            check_choice(reduce, LATENT_REDUCTIONS, "reduce")
        elif reduce < 0:
            raise ValueError(f"reduce: expected 'sum', 'mean' or a token position >= 0, got {reduce!r}")
        where = f"@{reduce}" if is_int(reduce) else ""
        super().__init__(1, [f"F{latent}{where}"])
        self.hook, self.latent, self.reduce = name, int(latent), reduce
        self.layer = hook_layer(name)

    def check_model(self, model: nn.Module) -> None:
        base = split_sae_name(self.hook)[0]
        splice = get_splice(model, base)
        d_sae = latent_width(splice)
        if d_sae is not None and self.latent >= d_sae:
            raise ValueError(f"latent: expected a latent in [0, {d_sae}) of the SAE at {base!r}, got {self.latent}")
        if self.hook not in model.hook_dict:
            raise ValueError(f"hook: the SAE at {base!r} has no {self.hook.rsplit('.', 1)[1]} hook point")
        if is_int(self.reduce):
            first, count = token_span(splice, model.cfg.n_pos)
            if not first <= self.reduce < first + count:
                raise ValueError(f"reduce: expected a token position the SAE covers, [{first}, {first + count}), "
                                 f"got {self.reduce}")

    def max_window_end(self) -> int:
        """The last ``end`` of a patching window ``[start, end)`` that writes upstream of the latent: blocks before
        the SAE's, and the SAE's own block when the SAE reads its ``hook_resid_post`` (all of the block precedes it).

        Example:
            >>> [LatentReadout(f"blocks.2.hook_resid_{w}", 0).max_window_end() for w in ("pre", "post")]
            [2, 3]
        """
        base = split_sae_name(self.hook)[0]
        return self.layer + 1 if site_suffix(base) == "hook_resid_post" else self.layer

    def score(self, latents: Float[Tensor, "batch pos d_sae"], n_prefix: int) -> Float[Tensor, "batch 1"]:
        """The score from the SAE's latents; ``n_prefix``: the model token position of the SAE's position 0."""
        a = latents[..., self.latent]
        if self.reduce == "sum":
            return a.sum(-1, keepdim=True)
        if self.reduce == "mean":
            return a.mean(-1, keepdim=True)
        return a[:, self.reduce - n_prefix, None]

    def run(self, model: nn.Module, resid: Float[Tensor, "batch pos d_model"], start: int) -> Tensor:
        """``model``'s blocks ``start..`` up to the SAE's, the latent captured at its hook (after every hook on it
        ran, so a patched latent is read patched); returns ``hook_logits`` of the score ``[batch, 1]``."""
        if start > self.layer:
            raise ValueError(f"start_at_layer: expected at most {self.layer} (the latent readout reads "
                             f"{self.hook!r}), got {start}")
        point = model.hook_dict[self.hook]
        captured: dict[str, Tensor] = {}

        def capture(module: Any, args: Any, out: Tensor) -> None:
            captured["latents"] = out

        handle = point.register_forward_hook(capture)  # registered last: runs after the hooks of this run
        try:
            for block in model.blocks[start : self.layer + 1]:
                resid = block(resid)
        finally:
            handle.remove()
        if "latents" not in captured:
            raise RuntimeError(f"the latent readout's hook {self.hook!r} never fired")
        first = token_span(get_splice(model, split_sae_name(self.hook)[0]), resid.shape[1])[0]
        return model.hook_logits(self.score(captured["latents"], first).to(resid.dtype))

    def describe(self) -> str:
        how = f"at token {self.reduce}" if is_int(self.reduce) else f"{self.reduce} over positions"
        return f"LatentReadout (latent {self.latent} of {self.hook}, {how})"

"""Where a spliced SAE's hook points sit in a model: the splice at a hook, the tokens it covers, its latent count.

The patching engine (:mod:`vit_patching.patching.spec`), the latent experiments and the latent readout ask these
questions of a model with spliced SAEs (``model.add_sae``); the hook names themselves are built by
:func:`vit_patching.hook_names.sae_act_name`.

Example:
    >>> with model.saes([sae]):
    ...     splice = get_splice(model, sae.cfg.hook_name)
    ...     print(token_span(splice, model.cfg.n_pos), latent_width(splice))    # (first token, tokens), d_sae
    (0, 17) 64
"""

from __future__ import annotations

from transformer_lens import HookedRootModule

from vit_patching.hook_names import get_act_name
from vit_patching.sae.splice import SAESplice, spliced_saes

__all__ = ["get_splice", "latent_width", "token_span"]


def get_splice(model: HookedRootModule, hook: str) -> SAESplice:
    """The SAE splice at ``hook`` (a full or short hook name).

    Raises:
        ValueError: no SAE is spliced there (the message lists where SAEs are spliced).

    Example:
        >>> with model.saes([sae], use_error_term=True):
        ...     print(get_splice(model, "blocks.1.hook_resid_post").use_error_term)
        True
    """
    name = get_act_name(hook)
    splices = spliced_saes(model)
    if name not in splices:
        raise ValueError(f"hook: expected a hook with a spliced SAE (model.add_sae; spliced now: "
                         f"{sorted(splices)}), got {name!r}")
    return splices[name]


def token_span(splice: SAESplice, n_pos: int) -> tuple[int, int]:
    """``(first token, token count)`` the splice's activations cover among ``n_pos`` tokens: its ``pos`` axis
    index ``p`` is the model's token ``first + p`` (``positions="patches"`` skips the prefix tokens).

    Example:
        >>> with model.saes([sae], positions="patches"):     # a model with a CLS token
        ...     print(token_span(get_splice(model, sae.cfg.hook_name), 17))
        (1, 16)
    """
    if splice.positions == "patches":
        return splice.n_prefix, n_pos - splice.n_prefix
    if splice.positions == "cls":
        return 0, 1
    return 0, n_pos


def latent_width(splice: SAESplice) -> int | None:
    """The SAE's latent count ``d_sae`` (``None`` for a foreign module that states none).

    Example:
        >>> with model.saes([sae]):
        ...     print(latent_width(get_splice(model, sae.cfg.hook_name)))
        64
    """
    for owner in (splice.module, getattr(splice.module, "cfg", None)):
        d_sae = getattr(owner, "d_sae", None)
        if isinstance(d_sae, int) and not isinstance(d_sae, bool):
            return d_sae
    return None

"""How good an SAE is on a HookedViT: reconstruction, sparsity, and what the reconstruction does to the readout.

:func:`evaluate_sae` streams images in batches (memory bounded by the batch), splices the SAE *without* the error
term (the model continues with ``decode(encode(x))`` at the SAE's tokens) and accumulates, over every token the SAE
reads:

* ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (sums over tokens and the ``d_in``
  axis, ``mean(x)`` the mean token; float64 accumulation);
* ``l0``: mean number of non-zero latents per token;
* ``dead_fraction``: latents non-zero on no token; ``dense_fraction``: latents non-zero on more than
  ``dense_threshold`` of the tokens;

and, per image, with ``p`` the clean readout's softmax and ``q`` the spliced one's (when the model has a readout):

* ``accuracy_clean`` / ``accuracy_spliced`` / ``accuracy_change``: against the labels when the data has them,
  else against the clean model's own prediction (``reference`` says which);
* ``agreement``: the fraction of images whose spliced prediction equals the clean one;
* ``kl``: the mean ``KL(p || q)`` in nats.

Example:
    >>> m = evaluate_sae(model, sae, "shapes", n_images=32, progress=False)
    >>> sorted(m)[:3]
    ['accuracy_change', 'accuracy_clean', 'accuracy_spliced']
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vit_patching.checks import check_batch_size, check_fraction
from vit_patching.sae.activations import check_hook, image_set, select_positions
from vit_patching.sae.splice import saes

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["evaluate_sae"]


def evaluate_sae(model: "HookedViT", sae: nn.Module, data: Any, *, hook_name: str | None = None,
                 positions: str | None = None, n_images: int | None = None, data_seed: int = 0,
                 batch_size: int = 32, dense_threshold: float = 0.1, progress: bool = True) -> dict[str, Any]:
    """Reconstruction, sparsity and readout metrics of ``sae`` spliced into ``model`` (module docstring).

    Args:
        model: The HookedViT (left unchanged: the SAE is removed again, also after an exception).
        sae: An SAE (this project's classes, or a module with ``encode`` / ``decode`` and ``hook_name=``).
        data: Images as :func:`vit_patching.sae.activations.image_set` takes them (zoo name, folder, tensor,
            ``ImageSet``).
        hook_name: Default ``sae.cfg.hook_name``.
        positions: Tokens the SAE applies to; default ``sae.cfg.positions`` (else ``"all"``).
        n_images, data_seed: As for :func:`vit_patching.sae.activations.image_set`.
        batch_size: Images per forward pass.
        dense_threshold: Firing frequency above which a latent counts as dense.
        progress: A tqdm bar.

    Returns:
        ``explained_variance``, ``l0``, ``dead_fraction``, ``dense_fraction``, ``n_tokens``, ``n_images`` and, when
        the model has a readout, ``accuracy_clean``, ``accuracy_spliced``, ``accuracy_change``, ``agreement``,
        ``kl`` and ``reference`` (``"labels"`` or ``"prediction"``).

    Example:
        >>> evaluate_sae(model, sae, batch.images, progress=False)["l0"]
    """
    cfg = getattr(sae, "cfg", None)
    hook = hook_name if hook_name is not None else getattr(cfg, "hook_name", None)
    positions = positions if positions is not None else getattr(cfg, "positions", "all")
    check_hook(model, hook, positions)
    check_batch_size(batch_size)
    check_fraction(dense_threshold, "dense_threshold")
    images = image_set(data, n_images, data_seed)
    names = [hook, f"{hook}.sae.hook_sae_acts_post", f"{hook}.sae.hook_sae_recons"]
    n_tok, sx, sxx, serr, l0 = 0, None, 0.0, 0.0, 0.0
    fired = None
    n_img, correct_clean, correct_sae, agree, kl_sum, reference = 0, 0, 0, 0, 0.0, None
    has_readout = model.readout is not None
    for s in tqdm(range(0, len(images), batch_size), desc="evaluate_sae", unit="batch", disable=not progress):
        loaded = images.load(model, s, min(s + batch_size, len(images)))
        with torch.no_grad():
            clean = model(loaded.images)
            with saes(model, [sae], use_error_term=False, positions=positions):
                spliced, cache = model.run_with_cache(loaded.images, names_filter=names)
        x = select_positions(cache[hook], positions, model.cfg.n_prefix).flatten(0, -2).double()
        latents = cache[names[1]].flatten(0, -2)
        recons = cache[names[2]].flatten(0, -2).double()
        n_tok += x.shape[0]
        sx = x.sum(0) if sx is None else sx + x.sum(0)
        sxx += float(x.pow(2).sum())
        serr += float((x - recons).pow(2).sum())
        nz = latents != 0
        l0 += float(nz.sum())
        fired = nz.sum(0) if fired is None else fired + nz.sum(0)
        if has_readout:
            pred_clean, pred_sae = clean.argmax(-1), spliced.argmax(-1)
            reference = "labels" if loaded.labels is not None else "prediction"
            target = loaded.labels.to(pred_clean.device) if loaded.labels is not None else pred_clean
            correct_clean += int((pred_clean == target).sum())
            correct_sae += int((pred_sae == target).sum())
            agree += int((pred_sae == pred_clean).sum())
            logp, logq = clean.double().log_softmax(-1), spliced.double().log_softmax(-1)
            kl_sum += float((logp.exp() * (logp - logq)).sum())
        n_img += loaded.images.shape[0]
    assert sx is not None and fired is not None
    total_var = sxx - float(sx.pow(2).sum()) / n_tok
    freq = fired.double() / n_tok
    out: dict[str, Any] = {
        "explained_variance": 1.0 - serr / total_var, "l0": l0 / n_tok,
        "dead_fraction": float((fired == 0).double().mean()), "dense_fraction": float((freq > dense_threshold).double().mean()),
        "dense_threshold": dense_threshold, "n_tokens": n_tok, "n_images": n_img, "positions": positions,
    }
    if has_readout:
        out.update(accuracy_clean=correct_clean / n_img, accuracy_spliced=correct_sae / n_img,
                   accuracy_change=(correct_sae - correct_clean) / n_img, agreement=agree / n_img,
                   kl=kl_sum / n_img, reference=reference)
    return out

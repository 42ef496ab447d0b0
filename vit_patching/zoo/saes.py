"""The shipped SAEs: one top-k SAE per zoo model at its middle block's residual stream, with a card.

Each lives in ``vit_patching/zoo/saes/<model>/`` as a SAELens folder (``cfg.json``, ``sae_weights.safetensors``)
with ``metrics.json``, ``training.json`` and its card ``README.md``; ``scripts/train_toy_saes.py`` made them. The
card's metrics are measured on ``load_dataset(SAE_DATASETS[model], SAE_EVAL_N, seed=SAE_EVAL_SEED)``.

Example:
    >>> sae = load_sae("toy-shapes")
    >>> sae.cfg.hook_name, sae.d_sae
    ('blocks.2.hook_resid_pre', 512)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vit_patching.sae import SAE

__all__ = ["SAES_DIR", "SAE_DATASETS", "SAE_EVAL_N", "SAE_EVAL_SEED", "available_saes", "load_sae", "sae_card"]

SAES_DIR = Path(__file__).resolve().parent / "saes"
SAE_DATASETS = {"toy-shapes": "shapes", "toy-conjunction": "conjunction", "toy-relation": "relation",
                "toy-clip": "captions"}  # each model's own zoo data set: trained and evaluated on it
SAE_EVAL_N = 48  # a few dozen images: the card's numbers are re-measured by the tests
SAE_EVAL_SEED = 2000  # never a training seed of the SAEs (1000) or of the zoo models (62-bit draws)


def available_saes() -> list[str]:
    """The zoo models with a shipped SAE.

    Example:
        >>> available_saes()
        ['toy-clip', 'toy-conjunction', 'toy-relation', 'toy-shapes']
    """
    return sorted(SAE_DATASETS)


def _folder(name: str) -> Path:
    if name not in SAE_DATASETS:
        raise ValueError(f"name: expected one of the zoo models with a shipped SAE {available_saes()}, got {name!r}")
    return SAES_DIR / name


def load_sae(name: str = "toy-shapes", device: str = "cpu") -> "SAE":
    """The shipped SAE of zoo model ``name`` (offline; read with :func:`vit_patching.sae.load_saelens`).

    Args:
        name: A zoo model (``available_saes()``).
        device: Where to put the weights.

    Returns:
        The SAE, its ``cfg.hook_name`` the hook it reads and ``cfg.positions`` the tokens it was trained on.

    Example:
        >>> model, sae = load_model("toy-shapes"), load_sae("toy-shapes")
        >>> with model.saes([sae], use_error_term=True):
        ...     logits, cache = model.run_with_cache(images)
    """
    from vit_patching.sae import load_saelens

    return load_saelens(_folder(name), device=device)


def sae_card(name: str = "toy-shapes") -> str:
    """The card (markdown) of the shipped SAE of ``name``: training data, settings, metrics, training time.

    Example:
        >>> sae_card("toy-shapes").startswith("# SAE for toy-shapes")
        True
    """
    return (_folder(name) / "README.md").read_text(encoding="utf-8")

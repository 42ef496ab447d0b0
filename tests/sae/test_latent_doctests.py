"""The docstring examples of the latent-site modules run as written (a 2-block ViT, a ReLU SAE with 64 latents at
blocks.1.hook_resid_post, 2 image pairs)."""
import doctest
import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import images, make_pair  # noqa: E402
from test_latent_sites import sae_at  # noqa: E402

from vit_patching.sae import spliced_saes  # noqa: E402

MODULES = ["vit_patching.hook_names", "vit_patching.sae.sites", "vit_patching.patching.latents",
           "vit_patching.circuits.atp_latents", "vit_patching.readouts.latent", "vit_patching.circuits.features"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    model = make_pair()[1]
    globs = {"torch": torch, "model": model, "sae": sae_at("blocks.1.hook_resid_post", arch="standard"),
             "clean": images(2, seed=3), "corrupted": images(2, seed=4), "images": images(2)}
    result = doctest.testmod(importlib.import_module(name), extraglobs=globs,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
    assert not spliced_saes(model)  # every example took its SAE out again

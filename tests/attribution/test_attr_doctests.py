"""The docstring examples of vit_patching.attribution run as written (on a tiny CLS ViT, 4x4 grid, 2 images)."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from attribution_toys import tiny_images, tiny_model

MODULES = ["base", "attention", "gradients", "perturbation", "sanity", "caap", "__init__"]


@pytest.fixture(scope="module")
def globs():
    from vit_patching.attribution import AttributionMaps, AttributionMethod, get_method

    class Ones(AttributionMethod):
        name, native = "ones", "patch"

        def _attribute(self, images, target, batch_size):
            return images.new_ones(images.shape[0], *self.model.grid_size_for(images))

    x = tiny_images(4)
    method = get_method("rollout", tiny_model(seed=3))
    return {
        "torch": torch, "model": tiny_model(seed=3), "images": tiny_images(2), "x": x, "method": method,
        "get_method": get_method, "AttributionMaps": AttributionMaps, "Ones": Ones,
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, globs):
    module = importlib.import_module("vit_patching.attribution" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, extraglobs=dict(globs), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0

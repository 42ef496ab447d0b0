"""The docstring examples of vit_patching.readouts run as written (tiny headless, classifier and projection-head
ViTs, 2 images)."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

from readout_toys import headless, make_pair, pair, projection

MODULES = ["vit_patching.model.readout", "vit_patching.model.readout_attach", "vit_patching.readouts.zero_shot",
           "vit_patching.readouts.probe", "vit_patching.readouts.command", "vit_patching.readouts"]


@pytest.fixture(scope="module")
def globs(tmp_path_factory):
    from vit_patching.cli import build_parser

    return {
        "torch": torch, "nn": nn, "model": headless()[1], "clf": make_pair(depth=2, num_classes=10)[1],
        "proj": projection()[1], "images": pair()[0], "labels": torch.tensor([0, 1]),
        "tmp": tmp_path_factory.mktemp("doctest"), "build_parser": build_parser,
    }


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, globs):
    module = importlib.import_module(name)
    result = doctest.testmod(module, extraglobs=dict(globs), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and (result.attempted > 0 or name.endswith("readout_attach"))

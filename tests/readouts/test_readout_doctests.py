"""The docstring examples of vit_patching.readouts run as written (tiny headless, classifier and projection-head
ViTs, 2 images)."""
from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

from readout_toys import headless, make_pair, pair, projection

MODULES = ["base", "zero_shot", "probe", "attach", "command", "__init__"]


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
    module = importlib.import_module("vit_patching.readouts" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, extraglobs=dict(globs), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and (result.attempted > 0 or name == "attach")

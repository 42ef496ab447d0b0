"""The docstring examples of the plotting modules run and give the output they show."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["attribution", "colors", "curves", "export", "grids", "report", "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("vit_patching.plotting" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0

"""The docstring examples of the plotting modules run and give the output they show (none is skipped: a skipped
example would pass whatever the code does)."""
from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

MODULES = ["attention", "attribution", "colors", "curves", "export", "grids", "interactions", "report", "__init__"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("vit_patching.plotting" + ("" if name == "__init__" else f".{name}"))
    assert "+SKIP" not in inspect.getsource(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    # Every public function and class with a docstring shows at least one example.
    finder = doctest.DocTestFinder()
    public = [t for t in finder.find(module) if not t.name.split(".")[-1].startswith("_")]
    assert result.attempted > 0 and all(t.examples for t in public if t.docstring and t.name != module.__name__), [
        t.name for t in public if t.docstring and not t.examples and t.name != module.__name__]

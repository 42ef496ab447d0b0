"""Package hygiene: cheap import, public API, docstring examples that run."""
import doctest
import subprocess
import sys

import pytest

import vit_patching.evaluation as evaluation
from vit_patching.evaluation import faithfulness, localization, perturbation, statistics


def test_import_does_not_pull_heavy_dependencies():
    code = (
        "import sys, vit_patching.evaluation\n"
        "heavy = [m for m in ('timm', 'transformer_lens', 'plotly', 'captum', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_exported():
    for name in evaluation.__all__:
        assert hasattr(evaluation, name), name


@pytest.mark.parametrize("module", [evaluation, perturbation, faithfulness, localization, statistics])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and (module is evaluation or result.attempted > 0)

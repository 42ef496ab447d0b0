"""`import vit_patching` stays cheap: plotly (and kaleido) load only with vit_patching.plotting."""
from __future__ import annotations

import subprocess
import sys


def test_import_vit_patching_does_not_import_plotly():
    code = (
        "import sys, vit_patching; assert 'plotly' not in sys.modules, 'plotly imported'; "
        "import vit_patching.plotting; assert 'plotly' in sys.modules; assert 'kaleido' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

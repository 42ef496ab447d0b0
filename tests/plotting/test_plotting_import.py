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


def test_public_api_is_exported():
    import inspect

    import vit_patching.plotting as plotting

    assert all(hasattr(plotting, name) for name in plotting.__all__)
    public = {n for n, o in vars(plotting).items() if (inspect.isfunction(o) or inspect.isclass(o)) and not n.startswith("_")}
    assert public <= set(plotting.__all__)
    assert {"layer_patch_grid", "write_report", "save_png", "window_slider", "metric_curves"} <= set(plotting.__all__)

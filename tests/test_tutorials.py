"""Every notebook in tutorials/ executes top to bottom (kernel ``python3`` = this interpreter) and is stored clean."""
import json
import os
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


@pytest.fixture(scope="session")
def python3_kernel(tmp_path_factory):
    """A ``python3`` kernelspec running this interpreter, first on the Jupyter path for the whole session.

    A fresh clone after ``pip install -e .[dev]`` may have no kernelspec, or a user-level ``python3`` pointing
    at another Python; installing one into a private prefix and putting it first on ``JUPYTER_PATH`` avoids
    both without touching the user's Jupyter configuration.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", display_name="Python 3", prefix=str(prefix))
    with pytest.MonkeyPatch.context() as mp:
        data_dir = prefix / "share" / "jupyter"
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(data_dir), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
        spec = KernelSpecManager().get_kernel_spec("python3")
        assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve(), spec.argv
        yield "python3"


def test_there_are_tutorials():
    assert any(nb.name.startswith("01_") for nb in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, "clear the notebook outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_executes(path, python3_kernel):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, kernel_name=python3_kernel, timeout=300, resources={"metadata": {"path": str(TUTORIALS)}}
    )
    # Offline, and one intra-op thread: the tutorials use tiny models on a shared CPU.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    client.execute(env=env)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_export_keeps_plotly_figures(tmp_path, python3_kernel):
    """scripts/export_tutorials.py turns Plotly's mimetype outputs (which nbconvert drops) into drawn figures that
    load the one shared, local plotly.js: nothing fetched from the network."""
    import importlib.util

    import nbformat

    spec = importlib.util.spec_from_file_location("export_tutorials", TUTORIALS.parent / "scripts" / "export_tutorials.py")
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(
        "import plotly.graph_objects as go\n"
        "go.Figure(go.Heatmap(z=[[0.0, 1.0]]), layout_title_text='exported <b>grid</b>').show()\n"
        "go.Figure(go.Bar(y=[3, 1]))"
    )]
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    out = tmp_path / "html"
    js = exporter.write_plotly_js(out)
    page = exporter.export_notebook(path, out, timeout=120, kernel_name=python3_kernel).read_text()

    assert page.count("Plotly.newPlot(") == 2                     # both figures, the .show() and the bare one
    assert exporter.PLOTLY_MIME not in page                        # no output left for the browser to drop
    assert '<script src="plotly.min.js"></script>' in page and page.index("plotly.min.js") < page.index("Plotly.newPlot(")
    assert "cdn.plot.ly" not in page and "exported" in page        # the figure's own title is in the page
    assert js.stat().st_size > 1_000_000 and "Plotly" in js.read_text()[:5000]

"""Every notebook in tutorials/ executes top to bottom (kernel ``python3`` = this interpreter) and is stored clean."""
import json
import re
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


# ---- every number the prose states is checked by an assert ------------------------------------------------------
# A markdown cell's numbers are its claims. Each must be a numeric literal of an ``assert`` in the code cells next
# to it (the run of code cells just before it, whose output it reads, or just after it, which check what it says).
# Not claims, and so ignored: headings, fenced and inline code, numbered-list markers, layer / head / node names
# (L5H3, L3, MLP2, H0, P(3,4)), section numbers, windows ``[0, 4)`` / ``(0, 2)`` and colour ranges ``[-1, 1]``, tutorial numbers ("tutorial 02"), arXiv ids and
# years. Structural numbers that no assert can hold (a citation, an image size in a sentence about the dataset)
# are listed in the cell itself: ``<!-- not claims: 64 2022 -->``, so each exception is visible where it is made.
NOT_CLAIMS = re.compile(r"<!--\s*not claims:([^>]*)-->")
_STRIP = [
    re.compile(r"```.*?```", re.S),                                   # fenced code
    re.compile(r"`[^`]*`"),                                           # inline code
    re.compile(r"<!--.*?-->", re.S),                                  # comments (the allow-list itself)
    re.compile(r"^\s*#.*$", re.M),                                    # headings
    re.compile(r"^\s*\d+\.\s", re.M),                                 # numbered-list markers
    re.compile(r"\b(?:L\d+H\d+|L\d+|MLP\d+|H\d+|P\(\d+,\s*\d+\))"),   # layer / head / node / patch names
    re.compile(r"[\[(]\s*[-−]?\d+\s*,\s*[-−]?\d+\s*[\])]"),             # windows, grid cells, colour ranges
    re.compile(r"(?:\b[Ss]ections?\s+|§\s*)\d+(?:\s*(?:-|–|,|and|or)\s*\d+)*"),  # section numbers
    re.compile(r"\b(?:tutorials?|notebooks?)\s+0\d(?:\s*(?:,|and|or)\s*0\d)*", re.I),  # cross-references
    re.compile(r"\barXiv\s+\d+\.\d+|\b(?:19|20)\d\d\b"),              # arXiv ids and years
]
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?(?:\s*%)?")


def prose_numbers(markdown: str) -> list[str]:
    """The numbers a markdown cell states as claims (see the comment above), as written."""
    allowed = {tok for m in NOT_CLAIMS.finditer(markdown) for tok in m.group(1).split()}
    text = markdown
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    found = [m.group(0).replace("−", "-").lstrip("+") for m in _NUMBER.finditer(text)]
    return [n for n in found if n.rstrip("% ").lstrip("-") not in allowed]


def assert_literals(code: str) -> set[float]:
    """Every numeric literal inside the ``assert`` statements of a code cell (negated literals too), and the numbers
    written inside their string literals (``assert "237 exact" in text`` holds 237)."""
    import ast

    out: set[float] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Assert):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, (int, float)) and not isinstance(sub.value, bool):
                    out |= {float(sub.value), -float(sub.value)}
                elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    out |= {sign * float(n) for n in re.findall(r"\d+(?:\.\d+)?", sub.value) for sign in (1, -1)}
    return out


def unasserted_numbers(cells: list[dict]) -> list[str]:
    """``"cell i: n"`` for every prose number no neighbouring assert holds (a percentage may be held as a fraction)."""
    missing = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        near = []
        for step in (-1, 1):
            j = i + step
            while 0 <= j < len(cells) and cells[j]["cell_type"] == "code":
                near.append(cells[j])
                j += step
        literals = set().union(*(assert_literals("".join(c["source"])) for c in near)) if near else set()
        for n in prose_numbers("".join(cell["source"])):
            value = float(n.rstrip("% "))
            options = {value, value / 100} if n.endswith("%") else {value}
            if not any(abs(o - lit) <= 1e-9 * max(1.0, abs(o)) for o in options for lit in literals):
                missing.append(f"cell {i}: {n}")
    return missing


def test_the_number_check_fails_on_an_unasserted_number():
    md = lambda s: {"cell_type": "markdown", "source": [s]}
    code = lambda s: {"cell_type": "code", "source": [s]}
    cells = [code("x = 0.41\nassert 0.4 <= x <= 0.6"), md("## 3. Section\nAbout 0.4 to 0.6 of it, 80 % of the gap, "
             "in L5H3 at window [0, 4); 7 images."), code("assert y > 0.8")]
    assert unasserted_numbers(cells) == ["cell 1: 7"]
    cells[1]["source"] = ["About 0.4 of it; 7 images. <!-- not claims: 7 -->"]
    assert unasserted_numbers(cells) == []
    assert unasserted_numbers([md("1/3 each"), code("print(1 / 3)")]) == ["cell 0: 1", "cell 0: 3"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_number_in_the_prose_is_asserted(path):
    missing = unasserted_numbers(json.loads(path.read_text())["cells"])
    assert not missing, f"numbers stated in markdown with no assert next to them: {missing}"

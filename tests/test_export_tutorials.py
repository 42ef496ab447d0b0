"""scripts/export_tutorials.py without a kernel: which notebooks it exports, and what a page references.

(The end-to-end export of an executed notebook is in tests/test_tutorials.py::test_export_keeps_plotly_figures.)
"""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))


@pytest.fixture(scope="module")
def exporter():
    spec = importlib.util.spec_from_file_location("export_tutorials", ROOT / "scripts" / "export_tutorials.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_run_exports_every_tutorial_and_indexes_it(exporter, tmp_path, monkeypatch):
    exported = []

    def fake_export(path, out_dir, *, timeout):
        exported.append(path)
        page = out_dir / f"{path.stem}.html"
        page.write_text("<html></html>")
        return page

    monkeypatch.setattr(exporter, "export_notebook", fake_export)
    monkeypatch.setattr(exporter, "write_plotly_js", lambda out: None)
    assert exporter.main(["--out", str(tmp_path)]) == 0
    assert any(p.name.startswith("06_") for p in NOTEBOOKS)  # the newest tutorial is among them
    assert [p.name for p in exported] == [p.name for p in NOTEBOOKS]
    index = (tmp_path / "index.html").read_text()
    assert re.findall(r'href="([^"]+)"', index) == [f"{p.stem}.html" for p in NOTEBOOKS]


def _plotly_output(fig):
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": json.loads(fig.to_json()), "text/plain": ["Figure"]}}


def test_page_draws_every_figure_with_shared_relative_plotly_and_css(exporter):
    import nbformat
    import plotly.graph_objects as go

    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_code_cell("fig_a"), nbformat.v4.new_code_cell("print('x'); fig_b"),
             nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("bar")]
    # a tqdm bar as a kernel saves it: a widget view with its text fallback, the widget state in the metadata
    cells[3].outputs = [{"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0, "model_id": "abc"},
        "text/plain": "  0%|          | 0/4"}}]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                          "version_minor": 0}}
    cells[0].outputs = [_plotly_output(go.Figure(go.Heatmap(z=[[0.0, 1.0]]), layout_title_text="first <b>map</b>"))]
    cells[1].outputs = [{"output_type": "stream", "name": "stdout", "text": "x\n"},
                        _plotly_output(go.Figure(go.Bar(y=[3, 1], name="second bars")))]
    nb.cells = cells
    page, css, n = exporter.notebook_to_html(nb)

    assert n == 2 and page.count("Plotly.newPlot(") == 2
    assert re.findall(r'<div class="plotly-graph-div" id="(figure-\d+)"', page) == ["figure-0", "figure-1"]  # one div per figure
    assert "first" in page and "second bars" in page and exporter.PLOTLY_MIME not in page
    head = page[: page.index("</head>")]
    # plotly.js: the one shared copy, by a relative path, before any figure is drawn; never a CDN or embedded copy
    assert re.findall(r'<script src="([^"]*plotly[^"]*)"', page) == ["plotly.min.js"]
    assert head.index('<script src="plotly.min.js"></script>') < page.index("Plotly.newPlot(")
    assert "cdn.plot.ly" not in page and len(page) < 100_000
    # nothing else loaded from the network or inlined in every page: no require.js, MathJax or Mermaid script
    assert re.findall(r"<script[^>]*>", head) == ['<script src="plotly.min.js">']
    assert "mathjax" not in page.lower() and "mermaid" not in page.lower()
    assert "widget" not in page and "unpkg" not in page and "0/4" not in page  # nor the bar's stale first frame
    # the template's stylesheet: linked relatively, written once by the caller, not inlined in the page
    assert head.count('<link rel="stylesheet" href="notebook.css">') == 1
    assert not re.search(r'<style(?: type="text/css")?>', head)
    assert len(css) > 100_000 and ".jp-Notebook" in css and "<style" not in css

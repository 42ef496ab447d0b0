"""Execute the tutorials and export them to HTML with their figures, for reading offline (``docs/tutorials/``).

Why a script and not ``jupyter nbconvert --execute --to html``: in a kernel Plotly's default renderer is
``plotly_mimetype`` (``application/vnd.plotly.v1+json``), which nbconvert's HTML templates do not draw, so every
figure would be lost. This script executes each notebook, replaces every Plotly output by a ``<div>`` and a
``Plotly.newPlot`` call, and writes one ``plotly.min.js`` (the copy shipped with the installed plotly package)
next to the pages, which load it by a relative path: no network, and plotly.js stored once for all pages. The
notebook template's stylesheet (about 260 KB, the same for every page) is likewise written once, as
``notebook.css``, and linked by a relative path. The page template (``tutorial_page.html.j2``, nbconvert's "lab"
page) leaves out require.js and MathJax (loaded from CDNs) and the Mermaid script (inlined in every page): the
tutorials use none of them.

Usage::

    python scripts/export_tutorials.py                      # every tutorials/*.ipynb -> docs/tutorials/
    python scripts/export_tutorials.py tutorials/02_activation_patching.ipynb --out /tmp/html
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE_TEMPLATE = Path(__file__).resolve().parent / "tutorial_page.html.j2"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOTLY_JS = "plotly.min.js"
NOTEBOOK_CSS = "notebook.css"
# The template's plain <style> blocks in <head> (styles with other attributes, e.g. media queries, stay inline).
_HEAD_STYLE = re.compile(r'<style(?: type="text/css")?>(.*?)</style>', re.S)


def plotly_outputs_to_html(nb) -> int:
    """Replace every Plotly mimetype output of the executed notebook ``nb`` by HTML drawing it; returns the count."""
    import plotly.io as pio

    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME not in data:
                continue
            fig = pio.from_json(_as_json(data[PLOTLY_MIME]), skip_invalid=True)
            div = pio.to_html(
                fig, include_plotlyjs=False, full_html=False, div_id=f"figure-{n}", config={"responsive": True}
            )
            out["data"] = {"text/html": div}
            n += 1
    return n


def drop_widget_outputs(nb) -> int:
    """Remove every Jupyter widget output (e.g. TransformerLens's tqdm bar) and the notebook's widget state;
    returns the count. Drawing a widget needs scripts from unpkg.com, which an offline page cannot load, and the
    text a kernel saves beside a progress bar is its first frame ("0/260"), which would mislead."""
    n = 0
    for cell in nb.cells:
        if "outputs" in cell:
            kept = [out for out in cell.outputs if WIDGET_MIME not in out.get("data", {})]
            n += len(cell.outputs) - len(kept)
            cell.outputs = kept
    nb.metadata.pop("widgets", None)
    return n


def _as_json(payload) -> str:
    import json

    return payload if isinstance(payload, str) else json.dumps(payload)


def notebook_to_html(nb) -> tuple[str, str, int]:
    """HTML page of an executed notebook: ``(page, css, n_figures)``.

    Plotly outputs become drawn figures loading ``plotly.min.js`` by a relative path, widget outputs are dropped;
    the template's head stylesheet is cut out (returned as ``css``, to be written once as ``notebook.css``) and
    linked relatively.
    """
    from nbconvert import HTMLExporter

    n_figures = plotly_outputs_to_html(nb)
    drop_widget_outputs(nb)
    page, _ = HTMLExporter(template_name="lab", template_file=str(PAGE_TEMPLATE)).from_notebook_node(nb)
    head_end = page.index("</head>")
    head, rest = page[:head_end], page[head_end:]
    blocks = list(_HEAD_STYLE.finditer(head))
    css = "\n".join(m.group(1).strip("\n") for m in blocks) + "\n"
    if blocks:  # the link takes the place of the first style block: the cascade order is unchanged
        link = f'<link rel="stylesheet" href="{html.escape(NOTEBOOK_CSS)}">'
        head = head[: blocks[0].start()] + link + _HEAD_STYLE.sub("", head[blocks[0].end() :])
    # plotly.js first in <head>: loaded before any AMD loader the template may add, it defines window.Plotly.
    head = head.replace("<head>", f'<head>\n<script src="{html.escape(PLOTLY_JS)}"></script>', 1)
    return head + rest, css, n_figures


def _write_atomic(target: Path, text: str) -> None:
    """Write to a temporary file and rename: a failed export leaves no half-written file."""
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        f.write(text)
    os.chmod(f.name, 0o644)  # a published page: readable like any other file, not private like a temp file
    os.replace(f.name, target)


def export_notebook(path: Path, out_dir: Path, *, timeout: int = 600, kernel_name: str = "python3") -> Path:
    """Execute ``path`` (in its own folder), export it to ``out_dir/<stem>.html``; returns the written path.

    Also writes ``out_dir/notebook.css`` (the template's stylesheet, the same for every page). The page is
    written to a temporary file and renamed, so a failed export leaves no half-written page.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    NotebookClient(nb, kernel_name=kernel_name, timeout=timeout,
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    body, css, n_figures = notebook_to_html(nb)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}.html"
    _write_atomic(out_dir / NOTEBOOK_CSS, css)
    _write_atomic(target, body)
    print(f"{path.name}: {n_figures} figures -> {target} ({target.stat().st_size // 1024} KiB)")
    return target


def write_plotly_js(out_dir: Path) -> Path:
    """Copy the installed plotly package's ``plotly.min.js`` to ``out_dir`` (shared by every exported page)."""
    from plotly.offline import get_plotlyjs

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PLOTLY_JS
    target.write_text(get_plotlyjs(), encoding="utf-8")
    return target


def write_index(out_dir: Path) -> Path:
    """``out_dir/index.html``: a link to every exported page in the folder."""
    pages = sorted(p.name for p in out_dir.glob("*.html") if p.name != "index.html")
    items = "\n".join(f'<li><a href="{html.escape(n)}">{html.escape(n[:-5])}</a></li>' for n in pages)
    target = out_dir / "index.html"
    target.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vit_patching tutorials</title></head>"
                      f"<body><h1>vit_patching tutorials</h1><ul>\n{items}\n</ul></body></html>\n", encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: tutorials/*.ipynb)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "tutorials", help="output folder")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "tutorials").glob("*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        print(f"notebooks: expected existing .ipynb files, got {missing}", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    write_plotly_js(args.out)
    failed = []
    for path in notebooks:
        try:
            export_notebook(path.resolve(), args.out, timeout=args.timeout)
        except CellExecutionError as err:  # export the others; the failing page keeps its previous version
            failed.append(path.name)
            print(f"{path.name}: a cell failed, not exported: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
    write_index(args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

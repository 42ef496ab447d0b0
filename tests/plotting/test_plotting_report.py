"""HTML report: one embedded plotly.js, sections of every kind, every user string escaped."""
from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from vit_patching.plotting import ReportSection, render_report, write_report

EVIL = "<script>alert(1)</script>"


def _plotly_copies(page: str) -> int:
    # The plotly.js bundle starts with its licence banner; one per embedded copy.
    return page.count("* plotly.js v")


def test_report_escapes_every_user_string():
    fig = go.Figure(go.Heatmap(z=[[1, 2]]), layout=dict(title=dict(text=EVIL)))
    sections = [
        ReportSection.figure(EVIL, fig, caption=EVIL),
        ReportSection.table(EVIL, [{EVIL: EVIL, "n": 1}], caption=EVIL),
        ReportSection.text(EVIL, EVIL + "\n\n" + EVIL),
        ReportSection.images(EVIL, {EVIL: torch.rand(3, 4, 4)}),
    ]
    page = render_report(EVIL, sections, settings={EVIL: EVIL, "nested": {"k": EVIL}})
    assert EVIL not in page
    assert "<script>alert" not in page
    escaped = html.escape(EVIL)
    # title (x2: <title> and <h1>), 4 headings + 4 table-of-contents entries, 2 captions, table header +
    # cell, 2 paragraphs, image alt + caption, settings key + value.
    assert page.count(escaped) >= 19
    assert "alert(1)" in page  # the text is shown, just not as markup


def test_report_embeds_plotlyjs_once_and_renders_sections(tmp_path):
    figs = [go.Figure(go.Scatter(y=[1, 3, 2])), go.Figure(go.Bar(y=[2, 1]))]
    df = pd.DataFrame({"method": ["caap", "rollout"], "insertion AUC": [0.71234, 0.5], "n": [10, 10]})
    sections = [ReportSection.figure(f"Figure {i}", f) for i, f in enumerate(figs)]
    sections += [ReportSection.table("Scores", df), ReportSection.text("Notes", "line one\nline two")]
    path = write_report(tmp_path / "r" / "report.html", "CAAP report", sections, {"model": "vit_tiny", "layers": [0, 3]})
    page = path.read_text(encoding="utf-8")
    assert _plotly_copies(page) == 1
    assert "<script src=" not in page and 'src="https://cdn.plot.ly' not in page
    assert page.count('<div id="figure-') == 2
    assert "<th>insertion AUC</th>" in page and '<td class="num">0.7123</td>' in page and "<td>rollout</td>" in page
    assert "<p>line one<br>line two</p>" in page
    assert "<th>layers</th><td>[0, 3]</td>" in page
    assert [f'href="#section-{i}"' in page for i in range(1, 5)] == [True] * 4


def test_report_without_figures_has_no_plotlyjs():
    page = render_report("r", [ReportSection.table("t", [{"a": 1.0, "b": None}, {"c": float("nan")}])])
    assert _plotly_copies(page) == 0
    assert "<th>a</th><th>b</th><th>c</th>" in page  # union of keys, first-seen order


def test_report_section_validation():
    with pytest.raises(TypeError, match=r"content: expected a plotly.graph_objects.Figure for kind='figure', got str"):
        ReportSection("x", "figure", "not a figure")
    with pytest.raises(TypeError, match=r"content: expected a list of dicts or a pandas DataFrame for kind='table'"):
        ReportSection("x", "table", [{"a": 1}, "not a row"])
    with pytest.raises(TypeError, match=r"sections\[0\]: expected a ReportSection, got dict"):
        render_report.__wrapped__("r", [{"heading": "x"}])


def test_report_content_errors_are_the_library_s_value_errors(tmp_path):
    # Values of the right type with bad content: the report's own checks, not the type checker, reject them.
    with pytest.raises(ValueError, match=r"images\['bright'\]: expected pixel values in \[0, 1\] .* got range \[2, 2\]"):
        render_report("r", [ReportSection.images("Inputs", {"bright": torch.full((3, 2, 2), 2.0)})])
    with pytest.raises(ValueError, match=r"images\['two'\]: expected 1 or 3 channels"):
        render_report("r", [ReportSection.images("Inputs", {"two": torch.zeros(2, 4, 4)})])
    with pytest.raises(ValueError, match=r"images\['nan'\]: expected finite pixel values"):
        render_report("r", [ReportSection.images("Inputs", {"nan": torch.full((1, 2, 2), float("nan"))})])
    with pytest.raises(ValueError, match="path: expected an HTML file path, got the existing folder"):
        write_report(tmp_path, "r", [ReportSection.text("t", "x")])


def test_write_report_failing_midway_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import os

    path = tmp_path / "report.html"
    path.write_text("OLD")
    real_fsync = os.fsync

    def disk_full(fd):  # the page has been written to the temporary file; flushing it to disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_report(path, "new", [ReportSection.text("t", "x" * 100_000)])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_text() == "OLD" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    write_report(path, "new", [ReportSection.text("t", "fresh")])
    assert "fresh" in path.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]

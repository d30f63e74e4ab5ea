"""Exports: PNG, SVG and offline HTML charts, CSV tables, the report zip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from engine.evaluation import results
from engine.reports import export


def test_exports_png_svg_html_csv_and_report(cache, two_evals):
    from PIL import Image

    from ui import report

    evals, _ = results.list_evaluations()
    figs, tables = report.figures(evals), report.tables(evals)
    assert len(figs) == 2 + len(evals)
    png = export.figure_bytes(figs["macro-F1 by model and method"], "png")
    img = Image.open(io.BytesIO(png))
    img.verify()
    assert img.format == "PNG" and img.size[0] >= 1000
    svg = export.figure_bytes(figs["per-class F1"], "svg").decode()
    assert svg.startswith("<svg") and "Per-class F1" in svg
    html = export.figure_bytes(figs["per-class F1"], "html").decode()
    assert len(html) > 1_000_000 and 'src="http' not in html  # plotly.js embedded, nothing fetched: opens offline
    zf = zipfile.ZipFile(io.BytesIO(export.report_zip(figs, tables, {"dataset": "small"})))
    names = set(zf.namelist())
    assert "figures/macro-f1-by-model-and-method.png" in names and "tables/macro-f1-by-model-and-method.csv" in names
    pages = [n for n in names if n.endswith(".html")]
    assert len(pages) == len(figs) and "figures/plotly.min.js" in names
    for page in pages:  # each page loads the zip's one copy of plotly.js, nothing from outside
        html = zf.read(page).decode()
        assert 'src="plotly.min.js"' in html and len(html) < 100_000 and 'src="http' not in html
    assert zf.getinfo("figures/plotly.min.js").file_size > 1_000_000
    meta = json.loads(zf.read("report.json"))
    assert len(meta["figures"]) == len(figs) and meta["dataset"] == "small"


def test_letter_text_in_hover_labels_is_escaped():
    import numpy as np

    from ui import charts

    letter = 'Pt seen <script>alert("x")</script> with <b>pain</b> & fever'
    fig = charts.umap_scatter(np.zeros((1, 2)), ["a"], [letter], "map", "label")
    (hover,) = fig.data[0].text
    assert "<script>" not in hover and "&lt;script&gt;" in hover and "&lt;b&gt;pain&lt;/b&gt; &amp; fever" in hover


def test_formulas_in_labels_are_exported_as_text_in_csv_and_raw_in_json():
    """Issue 29, item 3 (OWASP CSV injection): a cell or column name beginning with =, +, -, @, tab or CR gets a leading '
    in every CSV (a download, the report zip); numbers stay numbers and report.json keeps the raw text."""
    import csv

    import pandas as pd

    attacks = ['=HYPERLINK("http://x.example","click")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    df = pd.DataFrame({"Label": [*attacks, "cardio"], "=cmd": [-0.5, 1, 2, 3, 4, 5, 6]})
    for raw in (
        export.table_csv(df),
        zipfile.ZipFile(io.BytesIO(export.report_zip({}, {"t": df}, {"label": attacks[0]}))).read("tables/t.csv"),
    ):
        rows = list(csv.reader(io.StringIO(raw.decode(), newline="")))
        assert rows[0] == ["Label", "'=cmd"]
        assert [r[0] for r in rows[1:]] == [f"'{a}" for a in attacks] + ["cardio"]
        assert rows[1][1] == "-0.5"  # a number is not text
    meta = json.loads(zipfile.ZipFile(io.BytesIO(export.report_zip({}, {"t": df}, {"label": attacks[0]}))).read("report.json"))
    assert meta["label"] == attacks[0]


def test_the_report_zip_holds_methods_md_with_the_figures_of_the_manifests(cache, two_evals):
    from engine import api
    from ui import report

    evals, _ = results.list_evaluations()
    text = report.documents(evals)["methods.md"]
    zf = zipfile.ZipFile(io.BytesIO(export.report_zip({}, report.tables(evals), formats=("html",), documents=report.documents(evals))))
    assert zf.read("methods.md").decode() == text and json.loads(zf.read("report.json"))["documents"] == ["methods.md"]
    first = evals[0].manifest
    assert f"We used {first['data']['n_letters']} letters from letters.csv" in text and "/" not in text.split("letters.csv")[0][-40:]
    for e in evals:  # every figure is the manifest's, as written
        lo, hi = e.metrics["macro_f1_ci"]
        assert f"| {e.label} | cv | 60 | {e.metrics['macro_f1']:.3f} | {lo:.3f}–{hi:.3f} |" in text
        assert f"method {e.manifest['method_title']}" in text
    counts = {c: v["support"] // first["protocol"]["n_repeats"] for c, v in first["metrics"]["per_class"].items()}
    assert all(f"{c} ({n})" in text for c, n in counts.items()) and sum(counts.values()) == 60
    n_dup = first["protocol"]["groups"]["n_duplicate_groups"]
    assert (f"{n_dup} groups of copies" if n_dup else "No duplicate letters were found") in text
    assert f"torch {first['versions']['torch']}" in text and "corrected resampled t-test" in text
    assert api.significance(evals)["summary"].iloc[0] in text
    assert "## TRIPOD+AI" in text and "Yours to write" in text and "14 fairness" in text  # no subgroup column here


def test_a_browser_page_that_never_loads_fails_the_render_in_time_and_the_next_render_works(monkeypatch):
    """The CI hang of 2026-12-07: kaleido's page waited for a script from outside and its sync server waited without a
    limit. A page script served by a socket that never answers stands in for a network that drops packets."""
    import socket

    import kaleido
    import plotly.graph_objects as go

    from engine.reports.renderer import Renderer, RenderTimeout

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    real, opened = kaleido.Kaleido, []

    def stalled(**kwargs):
        opened.append(real(**{**kwargs, "mathjax": f"http://127.0.0.1:{silent.getsockname()[1]}/tex.js"}))
        return opened[-1]

    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    renderer = Renderer(start_timeout=5, render_timeout=5)
    try:
        monkeypatch.setattr(kaleido, "Kaleido", stalled)
        with pytest.raises(RenderTimeout, match="opening the browser took longer than 5 s"):
            renderer.render(fig, "png", 400, 300, 1)
        assert opened[0].subprocess.poll() is not None  # the stalled browser was killed, not left behind
        monkeypatch.setattr(kaleido, "Kaleido", real)
        assert renderer.render(fig, "png", 400, 300, 1).startswith(b"\x89PNG")  # a fresh browser renders
        page = Path(renderer._kaleido._index.removeprefix("file://")).read_text()
        assert "<script" in page and "http://" not in page and "https://" not in page  # every script is a file here
    finally:
        renderer.close()
        silent.close()


def test_figure_bytes_reports_an_overrun_render_as_an_export_error(monkeypatch):
    from engine.reports import renderer

    def overran(*args, **kwargs):
        raise renderer.RenderTimeout("rendering the chart took longer than 60 s")

    monkeypatch.setattr(renderer.RENDERER, "render", overran)
    import plotly.graph_objects as go

    with pytest.raises(export.ExportError, match=r"RenderTimeout: rendering the chart took longer than 60 s.*HTML export works"):
        export.figure_bytes(go.Figure(), "svg")

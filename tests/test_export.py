"""Exports: PNG, SVG and offline HTML charts, CSV tables, the report zip."""

from __future__ import annotations

import io
import json
import zipfile

from engine import export, results


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
    meta = json.loads(zf.read("report.json"))
    assert len(meta["figures"]) == len(figs) and meta["dataset"] == "small"

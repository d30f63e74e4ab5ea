"""Exports for papers and meetings: a plotly figure as PNG, SVG or standalone HTML, a table as
CSV, and a report (zip) bundling a comparison's figures, tables and its methods section (engine.reports.methods).

Every CSV ClinBench writes goes through `table_csv`, which neutralises text cells that a spreadsheet would run as a
formula (a leading '); report.json and the JSON a caller gets keep the raw text.

PNG and SVG are rendered by kaleido (v1), which drives a local Chrome/Chromium: it finds
`chromium` on PATH (Debian's package, installed by scripts/setup.sh), or the executable named
by BROWSER_PATH; engine.reports.renderer keeps that browser and bounds every render in time. HTML embeds plotly.js,
so it opens offline and fetches nothing.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from pathlib import Path

from engine.errors import ClinBenchError
from engine.reports.renderer import RENDERER

FORMATS = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html"}
EXPORT_WIDTH, EXPORT_HEIGHT, PNG_SCALE = 1100, 650, 2


class ExportError(ClinBenchError):
    """A chart could not be rendered (usually: no Chrome/Chromium for kaleido)."""


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "chart"


BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido will use: $BROWSER_PATH, else the first of BROWSER_NAMES on PATH; None when there is none."""
    import os
    import shutil

    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.exists(env) else None
    return next((p for p in map(shutil.which, BROWSER_NAMES) if p), None)


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as PNG (2x scale), SVG or standalone HTML."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode()
    if fmt not in ("png", "svg"):
        raise ValueError(f"unknown format {fmt!r}; use png, svg or html")
    try:
        return RENDERER.render(
            fig,
            fmt,
            width=fig.layout.width or EXPORT_WIDTH,
            height=fig.layout.height or EXPORT_HEIGHT,
            scale=PNG_SCALE if fmt == "png" else 1,
        )
    except Exception as exc:  # kaleido raises several kinds when no browser is found, it crashes or it overruns
        raise ExportError(
            f"Rendering the chart as {fmt.upper()} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). "
            "PNG/SVG export needs Chromium: run scripts/setup.sh (it installs the Debian package 'chromium'), or set "
            "BROWSER_PATH to a Chrome/Chromium executable. HTML export works without it."
        ) from None


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP "CSV Injection")


def neutralised(value):
    """A text cell as a spreadsheet must show it: one that begins like a formula gets a leading ' so it stays text (a label
    '=HYPERLINK(...)' is exported as the text it is). Numbers and other values are unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def table_csv(df) -> bytes:
    """A table as CSV, every text cell and column name neutralised (the one CSV writer: downloads and the report zip)."""
    return (
        df.rename(columns=neutralised).map(neutralised).to_csv(index=False, lineterminator="\r\n").encode()
    )  # (RFC 4180: a CR in a cell is quoted)


def report_zip(
    figures: dict, tables: dict, info: dict | None = None, formats=("png", "svg", "html"), documents: dict[str, str] | None = None
) -> bytes:
    """A zip with every figure in every format (figures/<name>.<fmt>; the HTML pages share figures/plotly.min.js), every
    table as CSV (tables/<name>.csv), `documents` ({file name: text}, e.g. methods.md) at its top, and report.json (what
    is inside, when, and `info`)."""
    buf = io.BytesIO()
    contents = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {}), "figures": [], "tables": [], "documents": []}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, fig in figures.items():
            for fmt in formats:
                if fmt == "html":  # every page loads the zip's one plotly.min.js (4.8 MB once, not per figure)
                    zf.writestr(f"figures/{slug(name)}.html", fig.to_html(include_plotlyjs="directory", full_html=True))
                else:
                    zf.writestr(f"figures/{slug(name)}.{fmt}", figure_bytes(fig, fmt))
            contents["figures"].append({"name": name, "files": [f"figures/{slug(name)}.{fmt}" for fmt in formats]})
        for name, df in tables.items():
            zf.writestr(f"tables/{slug(name)}.csv", table_csv(df))
            contents["tables"].append({"name": name, "file": f"tables/{slug(name)}.csv", "rows": int(len(df))})
        if "html" in formats and figures:
            from plotly.offline import get_plotlyjs

            zf.writestr("figures/plotly.min.js", get_plotlyjs())
        for name, text in (documents or {}).items():
            zf.writestr(slug(Path(name).stem) + Path(name).suffix, text)
            contents["documents"].append(slug(Path(name).stem) + Path(name).suffix)
        zf.writestr("report.json", json.dumps(contents, indent=2, default=str))
    return buf.getvalue()

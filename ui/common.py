"""Streamlit helpers every page shares: page set-up, errors a user can act on, charts and tables
with their downloads, the dataset/run filter, and worker status. No model or data logic here."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from engine import api
from engine.errors import ClinBenchError
from ui import compare


def _leave_pages_folder_mode() -> None:
    """A fresh server whose first visit is a page URL (/Compare) runs that page without app.py: Streamlit's
    pages-folder mode, with a sidebar headed "app". Leave that mode (as st.navigation would) and rerun, so the
    app's router draws the real navigation. The flag is Streamlit's own (1.67); absent, nothing happens."""
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        st.rerun()


def page(title: str, intro: str | None = None) -> None:
    _leave_pages_folder_mode()
    st.set_page_config(page_title=title if title == "ClinBench" else f"{title} · ClinBench", layout="wide")
    st.title(title)
    if intro:
        st.caption(intro)


def error(exc: BaseException | str, what: str = "") -> None:
    """st.error with the engine's message (it says what was wrong, where and how to fix it)."""
    if isinstance(exc, str):
        st.error(exc)
    elif isinstance(exc, ClinBenchError):
        st.error(f"{what + ': ' if what else ''}{exc}")
    else:  # a bug: still say what happened, and keep the traceback at hand
        st.error(
            f"{what + ': ' if what else ''}unexpected {type(exc).__name__}: {exc}. Nothing stored was changed. "
            "If it happens again, report it with the details below."
        )
        with st.expander("details"):
            st.code("".join(traceback.format_exception(exc)))


def _render(fig, fmt: str) -> Callable[[], bytes]:
    def make() -> bytes:
        try:
            return api.figure_bytes(fig, fmt)
        except ClinBenchError as exc:  # a download cannot show st.error; send the reason as the file
            return str(exc).encode()

    return make


LETTERS_WARNING = (
    "The downloads will contain the letters' text. Letters are patient data: keep these files where the letters "
    "themselves may be kept, and do not send them on."
)


def letters_in_downloads(key: str) -> bool:
    """Exports of letter text are opt-in (privacy): a checkbox, off by default, with the warning shown once ticked."""
    on = st.checkbox(
        "Include letter text in downloads",
        key=f"letters-{key}",
        help="Off: downloaded tables leave out the Letter column, and downloaded maps leave the letters' words out of the hover labels.",
    )
    if on:
        st.warning(LETTERS_WARNING)
    return on


def chart(fig, name: str, key: str, downloads: bool = True, download_fig=None, **plotly_kwargs):
    """Show a plotly figure with PNG / SVG / HTML downloads (rendered when clicked; `download_fig` replaces the shown
    figure in the files, e.g. a map without letter text). Returns plotly_chart's value."""
    value = st.plotly_chart(fig, key=f"chart-{key}", width="stretch", config={"displaylogo": False}, **plotly_kwargs)
    fig = fig if download_fig is None else download_fig
    if downloads:
        stem = api.slug(name)
        no_browser = api.browser_path() is None
        row = st.container(horizontal=True)
        for fmt in ("png", "svg", "html"):
            row.download_button(
                f"{fmt.upper()} ⬇",
                data=_render(fig, fmt),
                file_name=f"{stem}.{fmt}",
                mime=api.export_formats()[fmt],
                key=f"dl-{key}-{fmt}",
                on_click="ignore",
                disabled=no_browser and fmt != "html",
                help="needs Chromium (run scripts/setup.sh)" if no_browser and fmt != "html" else None,
            )
    return value


def table(df: pd.DataFrame, name: str, key: str, letters: bool = True, **kwargs) -> None:
    """A table on screen with its CSV download; letters=False leaves the "Letter" column out of the CSV."""
    st.dataframe(df, hide_index=True, width="stretch", **kwargs)
    st.download_button(
        "CSV" if letters or "Letter" not in df else "CSV (without letter text)",
        data=api.table_csv(compare.split_intervals(df if letters else df.drop(columns=["Letter"], errors="ignore"))),
        file_name=f"{api.slug(name)}.csv",
        mime="text/csv",
        key=f"dl-{key}-csv",
        on_click="ignore",
    )


def page_link(page: str, label: str, **kwargs) -> None:
    """A link to another of the app's pages (`pages/5_Compare.py`); a page run on its own, outside app.py's navigation
    (AppTest), has no such page: the label is shown as text."""
    try:
        st.page_link(page, label=label, **kwargs)
    except StreamlitPageNotFoundError:
        st.markdown(label)


def _url_value(v) -> str:
    return "all" if v is None else str(v)


def from_url(param: str, options: list, key: str, many: bool = False) -> None:
    """Before the widget `key` is drawn: preset it from the page URL (?param=value, repeated for several) when the
    URL names one of its options and the user has not chosen yet in this session."""
    if key in st.session_state or param not in st.query_params:
        return
    named = {_url_value(o): o for o in options}
    picked = [named[v] for v in st.query_params.get_all(param) if v in named]
    if picked:
        st.session_state[key] = picked if many else picked[0]


def to_url(param: str, value) -> None:
    """Keep a choice in the page URL, so the view can be bookmarked or shared on this machine."""
    st.query_params[param] = [_url_value(v) for v in value] if isinstance(value, list) else _url_value(value)


def pick_evaluations(key: str) -> tuple[list, dict | None]:
    """Sidebar filter: dataset (by data hash) and run. Returns the chosen evaluations and the dataset row (with `name`)."""
    evals, skipped = api.evaluations()
    if skipped:
        with st.sidebar.expander(f"{len(skipped)} stored evaluation(s) skipped"):
            for s in skipped:
                st.write(f"`{s.folder}`: {s.reason}")
    if not evals:
        return [], None
    sets = api.result_datasets(evals)
    saved = {os.path.realpath(s.file): s.name for s in api.saved_datasets()[0]}  # by its name, not its storage file

    def shown(source: str) -> str:
        return saved.get(os.path.realpath(source)) or (source if source == "default" else source.rsplit("/", 1)[-1])

    names = {d["data_hash"]: shown(d["source"]) for d in sets}  # short enough for the sidebar's box; the counts below it
    from_url("dataset", list(names), f"{key}-dataset")
    chosen = st.sidebar.selectbox("Dataset", list(names), format_func=names.get, key=f"{key}-dataset")
    picked = next(d for d in sets if d["data_hash"] == chosen)
    st.sidebar.caption(f"{names[chosen]}: {picked['n_letters']} letters, {picked['n_evaluations']} evaluation(s)")
    run_ids = [None] + [r.id for r in api.list_runs() if any(s.result for s in r.steps)]
    from_url("run", run_ids, f"{key}-run")
    run_id = st.sidebar.selectbox("Run", run_ids, format_func=lambda r: "all runs" if r is None else f"run {r}", key=f"{key}-run")
    to_url("dataset", chosen)
    to_url("run", run_id)
    try:
        evals, _ = api.evaluations(data_hash=chosen, run_id=run_id)
    except ClinBenchError as exc:
        error(exc)
        return [], None
    row = next(d for d in sets if d["data_hash"] == chosen)
    return evals, {**row, "name": shown(row["source"])}  # name: as the sidebar shows it (a saved dataset's name), no path


WOKEN_SHOWN_S = 30.0  # how long the line saying that this page started a worker stays (the live part reruns every 2 s)


def worker_status() -> None:
    """The workers and what each does; first, a worker started for steps queued with none running (and a line saying so)."""
    try:
        woken = api.wake_workers()
        live = api.workers()
    except ClinBenchError as exc:
        error(exc)
        return
    if woken:
        st.session_state["worker-woken"] = (woken, time.time())
    lines, when = st.session_state.get("worker-woken", ([], 0.0))
    for line in lines if time.time() - when < WOKEN_SHOWN_S else []:
        st.info(line)
    if not live:
        st.caption("Workers: none running (one starts when steps are queued).")
    for w in live:
        doing = f"run {w['step']['run_id']}, step {w['step']['idx'] + 1}: {w['step']['title']}" if w.get("step") else "idle"
        if w.get("kind") == "ray":
            doing = f"{len(w['steps'])} step(s) sent to the cluster" if w["steps"] else "idle"
        st.caption(f"{'Ray driver' if w.get('kind') == 'ray' else 'Worker'} pid {w['pid']}: {doing}")


def answer_costs(row: dict) -> dict:
    """The columns every Classify table gives one classifier's answer (an engine.serving.predict.classify row): its latency, the
    time its model took to load, whether the letter was cut to its max_length."""
    return {"Latency (ms)": round(row["latency_ms"], 1), "Model load (s)": round(row["load_s"], 2), "Cut to max length": row["truncated"]}


def pickled_notice(evals: list) -> None:
    """Classifiers that ClinBench 0.2 or earlier stored as pickles answer only once converted: say why, and offer the button
    that converts them (a pickle runs any code it names when loaded, so it is loaded only on the user's word)."""
    old = api.pickled(evals)
    if not old:
        return
    st.warning(
        f"{len(old)} classifier(s) were stored by ClinBench 0.2 or earlier as pickles, which can run any code when they are "
        f"loaded: {', '.join(e.label for e in old)}. They answer once rewritten in a format that cannot; convert them only if "
        "no one else can write to this cache."
    )
    if st.button("Convert (I trust this cache)", key="convert-pickles"):
        try:
            done = api.convert_pickles(old)
            st.success(f"Converted {len(done)} classifier(s); they answer now.")
        except ClinBenchError as exc:
            error(exc)

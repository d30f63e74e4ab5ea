"""The Runs page's pieces: the dataset and method choices of the form, one step's live progress and curves, the link
from a finished run to its Compare view, and the time estimate shown before a run starts.

Methods that train a model (fine-tuning: they read `epochs` or `setfit_epochs`) take minutes to hours per model on a
CPU. On a CPU they are offered apart from the others, each with its estimated time on this machine, so the Methods
box's "Select all" queues only the methods that fit the machine; with a GPU every method is in one box.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import api
from engine.errors import ClinBenchError
from ui import charts, common

REFERENCE_NOTE = (
    "Every run ends with the **tf-idf reference** (word 1-2-gram tf-idf → logistic regression, no language model): one more row "
    "in the results, the floor a language model has to beat."
)
TRAINING_HELP = (
    "Methods that train the model itself (fine-tuning). This machine has no GPU, so they are listed apart from the "
    "Methods box above and its 'Select all' leaves them out; each shows its estimated time for {model} on this dataset, "
    "from this machine's earlier runs (none yet: no figure). Choose them here one by one."
)


def dataset_choice(choices: dict) -> str:
    """The form's dataset (outside the form: the methods offered follow it); a dataset just saved on the Data page starts chosen."""
    just_saved = st.session_state.pop("saved-dataset", None)
    if just_saved in choices:
        st.session_state["run-dataset"] = just_saved
    return st.columns(2)[0].selectbox("Dataset", list(choices), format_func=choices.get, key="run-dataset")


def trains(method: dict) -> bool:
    return "epochs" in method["reads"] or "setfit_epochs" in method["reads"]


@st.cache_data(ttl=60, show_spinner=False, max_entries=32)
def _training_estimates(data, model: str, methods: tuple[str, ...]) -> dict[str, str]:
    spec = {"name": "estimate", "models": [model], "methods": list(methods), "data": data, "options": {}}
    try:
        steps, rows = api.parse_spec(spec, where="the form").steps(), api.estimate(spec, where="the form")
    except ClinBenchError:
        return {}
    return {s["method"]: api.fmt_duration(r.seconds) for s, r in zip(steps, rows) if s["method"] in methods and r.seconds is not None}


def server_choice() -> list[str]:
    """The form's models on a server (those the Models page's "test connection" reached in this session), offered for the
    methods that can use one (zero-shot, few-shot); the spec check refuses any other method with them."""
    known = st.session_state.get("servers", [])
    if not known:
        st.caption("A model on a server (OpenAI-compatible API): test its connection on the Models page first.")
        return []
    can = ", ".join(m["name"] for m in api.methods() if m["remote_models"])
    return st.multiselect(
        f"Models on a server (for {can} only)",
        known,
        default=[],
        key="run-servers",
        help=f"Letters are sent to that server. Only {can} can use a server model: the other methods need the weights.",
    )


def method_choice(choices: dict[str, str], data, model: str = "minilm") -> list[str]:
    """The form's methods (inside the form). On a CPU, the fine-tuning methods in a box of their own, each with its
    estimated time for `model` on this dataset (module docstring)."""
    on_cpu = api.device().lower().startswith("cpu")
    training = [m["name"] for m in api.methods() if m["name"] in choices and trains(m)] if on_cpu else []
    quick = [m for m in choices if m not in training]
    chosen = st.multiselect(
        "Methods",
        quick,
        default=quick[:1],
        format_func=lambda m: f"{m} — {choices[m]}",
        key="run-methods",
        help="'Select all' offers the methods that fit this machine" + (" (no fine-tuning on this CPU: below)" if training else "") + ".",
    )
    if training:
        times = _training_estimates(data, model, tuple(training))
        chosen += st.multiselect(
            "Fine-tuning methods (slow on this CPU)",
            training,
            format_func=lambda m: f"{m} — {choices[m]} · " + (f"about {times[m]} for {model}" if m in times else "no estimate yet"),
            select_all=False,
            key="run-training",
            help=TRAINING_HELP.format(model=model),
        )
    return chosen


def compare_link(run: api.RunView) -> None:
    """A finished run's link to Compare, filtered on its dataset and this run."""
    if run.status.final and any(s.result for s in run.steps):
        st.page_link(
            "pages/5_Compare.py",
            label=f"Compare the results of run {run.id} →",
            query_params={"dataset": run.data_hash, "run": str(run.id)},
        )


def step(s: api.StepView, on_ray: bool = False) -> None:
    """A progress bar with the step's state, stage or result and duration (and, on a Ray cluster, the node that ran it);
    its error; its training curves."""
    st.progress(
        s.fraction,
        text=" · ".join(
            b
            for b in (
                f"**{s.index + 1}. {s.title}** — {s.status}",
                s.detail if s.status != "failed" else "",
                api.fmt_duration(s.seconds),
                f"on Ray node {s.node}" if on_ray and s.node else "",
            )
            if b
        ),
    )
    if s.error and s.status != "cancelled":
        st.error(f"Step {s.index + 1}: {s.error}")
    if s.metrics:
        common.chart(
            charts.training_curves(s.metrics, f"Training curves: {s.title}"),
            f"training curves {s.title}",
            f"curves-{s.index}",
            downloads=s.status.final,
        )


def estimate(spec: dict) -> None:
    """How long the run would take on this machine, per step, and what each figure rests on."""
    try:
        with st.spinner("Estimating from this machine's earlier runs…"):
            rows = api.estimate(spec, where="the form")
    except ClinBenchError as exc:
        common.error(exc, "No estimate")
        return
    known = [r.seconds for r in rows if r.seconds is not None]
    if len(known) == len(rows):
        st.info(f"Estimated time on this machine: about **{api.fmt_duration(sum(known))}** (cached embeddings make it quicker).")
    elif known:
        st.info(f"Estimated time: at least **{api.fmt_duration(sum(known))}**, plus the steps this machine has not run before.")
    else:
        st.info("No estimate yet: this machine has not finished these models and methods before. The first run gives the figures.")
    table = [{"step": r.title, "estimate": api.fmt_duration(r.seconds) if r.seconds is not None else "–", "from": r.basis} for r in rows]
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")


def prompt_preview(spec: dict) -> None:
    """The filled prompt template for the dataset's first letter, and the answers each label is scored on."""
    try:
        d = spec["data"]
        ds = api.default_dataset() if d == api.DEFAULT_DATASET else api.load_dataset(**d)
        text = api.prompt_preview(ds, spec["options"])
    except ClinBenchError as exc:
        common.error(exc, "No preview")
        return
    st.caption(
        "The prompt zero-shot, few-shot and instruct-lora give the first letter (the letter shortened here; cut by tokens when scored):"
    )
    st.code(text, language=None, wrap_lines=True)

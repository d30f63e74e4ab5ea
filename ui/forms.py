"""The Runs form's option widgets, drawn from the engine's option fields (engine.options via engine.api).

One widget per option, grouped by concern, each with its bounds, choices, default and help from the
field itself: a new option appears here without a change to this file. Widget keys are `opt-<name>`.
"""

from __future__ import annotations

import streamlit as st

from engine import api

OPEN_GROUPS = ("protocol", "embedding", "classifier")  # the rest (fine-tuning, domain adaptation) start folded
LABEL_SET_METHODS = (
    "Several labels per letter: only the methods that predict a set of labels are offered (zero-shot, few-shot, "
    "instruct-lora and setfit predict one label per letter)."
)
SMOTE_MULTI_LABEL = (
    "Several labels per letter (multi-label data): SMOTE is not defined for label sets, so it is replaced by class weights "
    "per label (each label's classifier weighs its rare 'yes' letters up), with one tuned threshold per label."
)


def _label(name: str) -> str:
    """The option's own name, as spec files and (with dashes) CLI flags spell it."""
    return name


def _number(col, f, key: str, help_text: str):
    is_int = f.kind == "int"
    cast = int if is_int else float
    kw = {"key": key, "help": help_text}
    if f.min is not None:
        kw["min_value"] = cast(f.min)
    if f.max is not None:
        kw["max_value"] = cast(f.max)
    if not is_int:
        kw["step"] = f.step or (0.05 if (f.max or 2) <= 1 else 0.5)
        kw["format"] = "%g"
    if f.optional:
        kw["placeholder"] = f.describe_default()
    if f.optional and f.default is None and f.per_method:  # "by method: 2 tfidf, 1 svc, ..." would be cut in the box: said below it
        kw["placeholder"] = "by method ↓"
    value = col.number_input(_label(f.name), value=None if f.default is None else cast(f.default), **kw)
    if f.optional and f.default is None and f.per_method:
        col.caption(f"Empty: {f.describe_default()}.")
    return value


def widget(col, f):
    """One option's widget in `col`; returns its value as a spec would hold it."""
    key, help_text = f"opt-{f.name}", f"{f.help} (default: {f.describe_default()})"
    if f.kind == "bool":
        return col.toggle(_label(f.name), f.default, key=key, help=help_text)
    if f.choices is not None:
        choices = list(f.choices)
        return col.selectbox(
            _label(f.name),
            choices,
            index=choices.index(f.default),
            key=key,
            help=help_text,
            format_func=lambda c: "none" if c is None else str(c),
        )
    if f.kind == "list":
        text = col.text_input(
            _label(f.name), ", ".join(f.default or []), key=key, help=help_text + "; comma-separated", placeholder=f.describe_default()
        )
        return [t.strip() for t in text.split(",") if t.strip()] or None
    if f.kind == "sizes":  # whole numbers, comma-separated
        text = col.text_input(_label(f.name), "", key=key, help=help_text + "; comma-separated", placeholder="e.g. 8, 16, 32, 64")
        return text.strip() or None  # the engine parses it when the run is checked (a bad number is a clear error there)
    if f.kind == "map":  # one name=text per line
        text = col.text_area(_label(f.name), "", key=key, help=help_text + "; one name=text per line", placeholder=f.describe_default())
        return text.strip() or None  # the engine parses it when the run is checked (a bad pair is a clear error there)
    if f.kind == "str" and f.multiline:
        return col.text_area(_label(f.name), f.default or "", key=key, help=help_text, placeholder=f.describe_default()) or None
    if f.kind == "str":
        return col.text_input(_label(f.name), f.default or "", key=key, help=help_text) or None
    return _number(col, f, key, help_text)


def method_choices(multi_label: bool) -> dict[str, str]:
    """{method: title} the Runs form offers (the tf-idf reference ends every run); for several labels per letter, only
    the methods that predict label sets."""
    return {m["name"]: m["title"] for m in api.methods() if m["stage"] != "reference" and (m["label_sets"] or not multi_label)}


def option_widgets(columns: int = 4) -> dict:
    """Every option, grouped by concern in expanders (inside the caller's form); returns {name: value}."""
    values = {}
    for g in api.option_groups():
        users = f"used by {', '.join(g['used_by'])}" if g["used_by"] else "every step"
        box = st.expander(f"{g['title']} — {users}", expanded=g["group"] in OPEN_GROUPS)
        box.caption(g["doc"])
        cols = box.columns(columns)
        for i, f in enumerate(g["fields"]):
            values[f.name] = widget(cols[i % columns], f)
        if any(f.name == "smote" for f in g["fields"]):
            box.caption(SMOTE_MULTI_LABEL)
    return values


def data_option_widgets(columns: list[str]) -> dict:
    """The data options of an uploaded file (engine.data.dataset.DATA_OPTIONS, besides its test-ids file): a text template joining
    several columns, the file's own train/test split, a column of reference answers, a column of subgroups. Returns the
    ones given."""
    box = st.expander("Letters from several columns · the file's own train/test split · reference answers · subgroups")
    c1, c2, c3 = box.columns(3)
    template = c1.text_area(
        "Text template",
        "",
        key="data-template",
        placeholder="e.g. Question: {QUESTION}\nContext: {CONTEXTS}",
        help="Build each letter from several columns instead of the text column: {column} is replaced by the row's value "
        "(lists joined by line). A prompt can then lay these columns out its own way.",
    )
    none = "(none)"
    split = c2.selectbox(
        "Split column", [none, *columns], key="data-split", help="A column saying train or test for each row: protocol 'fixed' scores it."
    )
    answer = c3.selectbox(
        "Answer column",
        [none, *columns],
        key="data-answer",
        help="Reference answers (e.g. a conclusion), never part of a letter: what a tuned model's written answers are scored against.",
    )
    subgroup = c2.selectbox(
        "Subgroup column",
        [none, *columns],
        key="data-subgroup",
        help="A column such as site, sex, age band or note type, never part of a letter: every evaluation also reports "
        "macro-F1 with its 95% CI for each of its values, and the gap between the best and the worst (Compare charts them).",
    )
    given = {"text_template": template.strip() or None, "split_column": split, "answer_column": answer, "subgroup_column": subgroup}
    return {k: v for k, v in given.items() if v not in (None, none)}

"""One way of saying things on every page (issue 30): rows counted from 1 as the input file's data rows, letters counted
once under cv with repeats, one headline per task, one definition of a wrong letter, CIs as two numbers in downloads,
chart labels kept whole.
Unit tests on the ui helpers (no streamlit session, no model): they run in well under a second."""

from __future__ import annotations

import pandas as pd

from ui import compare


def test_compared_labels_lists_each_evaluation_once():
    # every pair of three evaluations tested: the third is `other` twice; the disagreement table needs unique columns
    sig = pd.DataFrame({"best": ["a", "a", "b"], "other": ["b", "c", "c"]})
    assert compare.compared_labels(sig, ["a", "b", "c"]) == ["a", "b", "c"]
    assert compare.compared_labels(None, ["a", "b", "c"]) == ["a", "b"]


def test_rows_are_counted_from_one_as_the_input_file_shows_them():
    from ui import numbering

    assert numbering.file_row(0) == 1 and numbering.file_row(81) == 82
    assert numbering.file_row(1, rows=[0, 4, 9]) == 5  # a letter left out before it: the file's row, not the position
    df = pd.DataFrame({"row": [0, 254], "truth": ["a", "b"], "prediction": ["b", "a"], "score": [0.4, 0.3], "letter": ["x", "y"]})
    shown = compare.letters_table(df)
    assert list(shown["Row"]) == [1, 255] and list(df["row"]) == [0, 254]  # the engine's table keeps its 0-based rows
    assert "counted from 1" in compare.LETTER_COLUMNS["Row"]["help"]


def test_map_hover_names_the_row_counted_from_one():
    import numpy as np

    from ui import charts

    fig = charts.umap_scatter(np.zeros((3, 2)), ["a", "b", "a"], ["x", "y", "z"], "map", "label", rows=[1, 2, 7])
    first = fig.data[0]
    assert [list(map(int, c)) for c in first.customdata] == [[0, 1], [2, 7]]  # position for selection, row for people
    assert "row %{customdata[1]}" in first.hovertemplate and "row %{customdata[1]}" in charts.without_letters(fig).data[0].hovertemplate


def test_confusion_matrix_counts_each_letter_once_under_repeated_cv():
    from ui import charts

    cm = {"labels": ["a", "b"], "matrix": [[20, 4], [3, 21]]}  # 12 letters per label, cv with 2 repeats
    fig = charts.confusion_chart(cm, "cm", repeats=2)
    heat = fig.data[0]
    assert [sum(r) for r in heat.z] == [12, 12]
    assert heat.text[1] == ("1.5", "10.5") or list(heat.text[1]) == ["1.5", "10.5"]
    assert "2 repeats" in heat.colorbar.title.text
    assert list(charts.confusion_chart(cm, "cm").data[0].text[0]) == ["20", "4"]  # holdout: the counts as they are


def _ev(metrics: dict, protocol: dict | None = None, label: str = "m · svc"):
    from engine.evaluation.results import Evaluation

    manifest = {"model": {"name": "m"}, "method": "svc", "data": {"data_hash": "h"}, "metrics": metrics, "protocol": protocol}
    return Evaluation("k", None, manifest, label)


def test_per_class_letters_are_counted_once_under_repeated_cv():
    from engine.evaluation import results

    cv = {"name": "cv", "n_splits": 3, "n_repeats": 2}
    single = _ev({"macro_f1": 0.5, "per_class": {"a": {"precision": 1, "recall": 1, "f1": 1, "support": 24}}}, cv)
    multi = _ev({"macro_f1": 0.5, "task": "multi-label", "per_label": [{"label": "a", "support": 44, "predicted": 65}]}, cv, "x")
    held = _ev({"macro_f1": 0.5, "per_class": {"a": {"support": 7}}}, {"name": "holdout"}, "y")
    t = results.per_class_table([single, multi, held]).set_index("evaluation")
    assert t.loc["m · svc", "support"] == 12 and t.loc["x", "support"] == 22 and t.loc["x", "predicted"] == 32.5
    assert t.loc["y", "support"] == 7
    assert "counted once" in compare.LETTERS_ONCE


def test_one_headline_per_task_on_every_page_log_and_report():
    from engine.evaluation import headline
    from engine.runs import stepcall
    from engine.runs.states import Status
    from engine.runs.view import StepView

    single = {"macro_f1": 0.68, "macro_f1_ci": [0.6, 0.75]}
    multi = {"task": "multi-label", "macro_f1": 0.68, "macro_f1_ci": [0.6, 0.75], "micro_f1": 0.654, "micro_f1_ci": [0.61, 0.695]}
    assert headline.metric("single-label") == headline.metric("binary") == "macro_f1" == headline.metric(None, "micro_f1")
    assert headline.metric("multi-label") == "micro_f1" and headline.metric("multi-label", "samples_f1") == "samples_f1"
    assert headline.text(multi) == "micro-F1 0.654 (95% CI 0.610–0.695)" and headline.text(single).startswith("macro-F1 0.680")
    assert stepcall.end_line("done", None, multi) == ": micro-F1 0.654"
    step = StepView(0, "t", "m", "svc", Status.DONE, {"done": 1, "total": 1, "stage": "", "rate": None, "eta_s": None}, None,
                    multi | {"protocol": "cv", "n_scored": 60}, None, None, 0, None, None, None)  # fmt: skip
    assert step.detail == "micro-F1 0.654 (95% CI 0.610–0.695, cv, n=60)"


def test_exported_intervals_are_two_numbers():
    df = pd.DataFrame({"Evaluation": ["a", "b"], "95% CI": ["0.614–0.707", ""], "Diff CI": ["-0.120–0.050", "0.100–0.200"], "n": [1, 2]})
    out = compare.split_intervals(df)
    assert list(out.columns) == ["Evaluation", "95% CI low", "95% CI high", "Diff CI low", "Diff CI high", "n"]
    assert out["95% CI low"].iloc[0] == 0.614 and out["Diff CI low"].iloc[0] == -0.12 and pd.isna(out["95% CI high"].iloc[1])
    cal = compare.split_intervals(pd.DataFrame({"Brier (95% CI)": ["0.120 (0.100 to 0.140)", ""]}))  # ui.calibration's cells
    assert list(cal.columns) == ["Brier", "Brier 95% CI low", "Brier 95% CI high"] and cal.iloc[0].tolist() == [0.12, 0.1, 0.14]


def test_report_json_names_the_dataset_without_a_path():
    from ui import report

    single = _ev({"macro_f1": 0.5})
    info = report.info([single], {"source": "/home/someone/cache/datasets/letters.csv", "data_hash": "h"})
    assert info["dataset"] == "letters.csv" and info["headline"] == "macro_f1" and "/" not in str(info)
    saved = report.info([single], {"source": "/home/someone/cache/datasets/3f2a.csv", "data_hash": "h", "name": "ward letters"})
    assert saved["dataset"] == "ward letters"


def test_wrong_letters_are_one_definition_on_compare_and_embeddings(monkeypatch):
    """Compare's misclassified list and the Embeddings map's correct/wrong colours count the same letters: each letter once
    (repeat 0 under cv), wrong when its label (set) is not the prediction."""
    from engine.evaluation import results
    from ui import multilabel

    p = {"test_index": [0, 1, 2, 0, 1, 2], "repeat": [0, 0, 0, 1, 1, 1], "classes": ["a", "b"],
         "y_true": [["a"], ["a", "b"], [], ["a"], ["a", "b"], []], "y_pred": [["a"], ["a"], [], ["b"], ["a"], ["b"]]}  # fmt: skip
    monkeypatch.setattr(results, "predictions", lambda ev: p)
    ev = _ev({"macro_f1": 0.5, "task": "multi-label"}, {"name": "cv", "n_repeats": 2})
    scored = results.scored_letters(ev)
    wrong = results.misclassified(ev, texts=["x", "y", "z"])
    assert list(wrong["row"]) == [r for r, s in scored.items() if s["wrong"]] == [1]
    colour, _ = multilabel.colours(scored, [("a",), ("a", "b"), ()], "a", "correct / wrong")
    assert colour == ["correct", "wrong", "correct"]  # label a alone was right on row 1: its label set was not


def test_charts_keep_labels_whole_and_the_baseline_off_the_values():
    from ui import charts

    comp = pd.DataFrame({"evaluation": ["a · svc", "a · logreg"], "method": ["svc", "logreg"], "macro_f1": [0.4, 0.2],
                         "ci_low": [0.3, 0.1], "ci_high": [0.5, 0.3], "baseline_macro_f1": [0.07, 0.07]})  # fmt: skip
    fig = charts.macro_f1_chart(comp)
    (line,) = fig.layout.shapes
    assert line.layer == "below" and line.x0 == line.x1 == 0.07  # under the bars, so not through the values written in them
    assert any(t.name == "majority baseline 0.07" for t in fig.data)  # still named in the legend
    names = ["sustaining proliferative signaling", "evading growth suppressors"]
    co = charts.cooccurrence_heatmap({"labels": names, "matrix": [[3, 1], [1, 2]]})
    assert list(co.data[0].x) == names and co.layout.xaxis.tickangle == -35  # whole names, slanted: no overlap
    cm = charts.confusion_chart({"labels": ["Cardiovascular / Pulmonary", "Urology"], "matrix": [[3, 1], [0, 4]]}, "cm")
    assert cm.layout.yaxis.automargin and cm.layout.yaxis.ticklabelstandoff > 0


def test_cli_results_table_leads_with_the_tasks_headline(capsys):
    from types import SimpleNamespace

    from engine.cli import commands

    r = {"task": "multi-label", "macro_f1": 0.68, "macro_f1_ci": [0.6, 0.75], "micro_f1": 0.654, "micro_f1_ci": [0.61, 0.695]}
    step = SimpleNamespace(status="done", result=r, model="minilm", method="svc", title="minilm · svc", detail="")
    commands._print_results_table(SimpleNamespace(steps=[step]))
    out = capsys.readouterr().out
    assert "micro-F1" in out and "0.654  0.610-0.695" in out and "0.680" not in out

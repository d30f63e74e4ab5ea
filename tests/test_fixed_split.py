"""Letters built from several columns (text templates), JSON objects keyed by id, and the fixed-split protocol
(a dataset's own train/test split: a split column or a file of test ids); PubMedQA's official split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import api
from engine.cli.parser import main
from engine.data import dataset
from engine.errors import ClinBenchError, DataError, SpecError
from engine.methods import prompting
from engine.options.groups import ProtocolOptions
from engine.protocols import plans
from engine.runs import experiment
from tests.conftest import SHARED_DATA, cli, run_step, write_csv

WORDS = {
    "a": "cardiac chest pain angina troponin ecg murmur",
    "b": "renal kidney creatinine dialysis urine nephron",
    "c": "skin rash eczema dermatitis itch lesion",
}


def _rows(n_per_class: int = 8, test_every: int = 4) -> list[dict]:
    rows = []
    for lab, words in WORDS.items():
        for i in range(n_per_class):
            w = words.split()
            rows.append(
                {
                    "id": f"{lab}{i}",
                    "title": f"{w[i % 6]} note {i}",
                    "body": f"{' '.join(w[i % 3 :])} patient {lab} {i}",
                    "label": lab,
                    "split": "test" if i % test_every == 0 else "train",
                }
            )
    return rows


@pytest.fixture
def split_csv(tmp_path):
    return write_csv(tmp_path / "letters.csv", _rows())


# --- text templates -----------------------------------------------------------


def test_template_joins_columns_and_lists(tmp_path):
    path = tmp_path / "qa.jsonl"
    recs = [{"q": f"question {i}?", "ctx": [f"first {i}.", f"second {i}."], "label": "yn"[i % 2]} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    ds = dataset.load_dataset(path, "unused", "label", text_template="Q: {q}\nC: {ctx}")
    assert ds.texts[0] == "Q: question 0?\nC: first 0.\nsecond 0."
    assert ds.text_column == "Q: {q}\nC: {ctx}"  # what a manifest records, and a rerun reads back
    again = dataset.load_dataset(path, "Q: {q}\nC: {ctx}", "label")  # a text column holding a template is one
    assert again.texts == ds.texts


def test_template_missing_column_names_the_columns(split_csv):
    with pytest.raises(DataError) as err:
        dataset.load_dataset(split_csv, "body", "label", text_template="{title} {abstract}")
    msg = str(err.value)
    assert "'abstract'" in msg and "Columns present: id, title, body, label, split" in msg
    with pytest.raises(DataError, match="label column 'label'"):
        dataset.load_dataset(split_csv, "body", "label", text_template="{body} {label}")
    report = dataset.validate_file(split_csv, "body", "label", text_template="{nope}")
    assert not report.ok and "'nope'" in report.errors[0].message


def test_data_hash_changes_with_the_template(split_csv):
    plain = dataset.load_dataset(split_csv, "body", "label")
    both = dataset.load_dataset(split_csv, "body", "label", text_template="{title}\n{body}")
    other = dataset.load_dataset(split_csv, "body", "label", text_template="{body} / {title}")
    assert len({plain.text_hash, both.text_hash, other.text_hash}) == 3
    assert len({plain.data_hash, both.data_hash, other.data_hash}) == 3
    assert both.texts[0].startswith(_rows()[0]["title"] + "\n")


def test_spec_takes_the_data_options(split_csv):
    spec = experiment.parse_spec(
        {
            "data": {"path": str(split_csv), "text_template": "{title}: {body}", "label_column": "label", "split_column": "split"},
            "models": ["tfidf"],
            "options": {"protocol": "fixed"},
        }
    )
    ds = spec.data.load()
    assert ds.texts[0].startswith(_rows()[0]["title"] + ": ") and ds.split.count("test") == 6
    assert experiment.parse_spec(spec.to_dict()).data == spec.data  # as the run store keeps it
    with pytest.raises(SpecError, match="unknown data key"):
        experiment.parse_spec({"data": {"path": "x.csv", "text_column": "t", "label_column": "l", "split": "s"}, "models": ["m"]})


# --- JSON object keyed by id --------------------------------------------------


def test_json_object_of_objects_reads_with_an_id_column(tmp_path):
    obj = {str(100 + i): {"QUESTION": f"q{i}", "CONTEXTS": ["c1", "c2"], "final_decision": "yn"[i % 2]} for i in range(4)}
    path = tmp_path / "pq.json"
    path.write_text(json.dumps(obj))
    df = dataset.read_table(path)
    assert list(df.columns) == ["id", "QUESTION", "CONTEXTS", "final_decision"]
    assert df["id"].tolist() == ["100", "101", "102", "103"] and df["CONTEXTS"][0] == ["c1", "c2"]
    records = tmp_path / "list.json"
    records.write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]))
    assert dataset.read_table(records)["text"].tolist() == ["x", "y"]
    lines = tmp_path / "lines.json"  # JSON lines in a .json file
    lines.write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": "b"}\n')
    assert dataset.read_table(lines)["label"].tolist() == ["a", "b"]
    scalar = tmp_path / "scalar.json"
    scalar.write_text('{"a": 1}')
    with pytest.raises(DataError, match="object of records keyed by id"):
        dataset.read_table(scalar)


# --- the fixed split ----------------------------------------------------------


def test_fixed_split_uses_exactly_the_rows_given(split_csv):
    ds = dataset.load_dataset(split_csv, "body", "label", split_column="split")
    rows = _rows()
    pl = plans.plan(ds, ProtocolOptions(protocol="fixed"))
    (fold,) = pl.folds
    assert pl.name == "fixed" and pl.n_splits == 1
    assert fold.test.tolist() == [i for i, r in enumerate(rows) if r["split"] == "test"]
    assert fold.train.tolist() == [i for i, r in enumerate(rows) if r["split"] == "train"]
    assert pl.manifest()["name"] == "fixed"
    # auto never picks it, and the split is then named as ignored
    auto = plans.plan(ds, ProtocolOptions(protocol="auto"))
    assert auto.name == "cv" and any("ignored" in w for w in auto.warnings)
    # the same split from a file of test ids (one per line, or a JSON object's keys)
    ids = split_csv.parent / "test_ids.txt"
    ids.write_text("\n".join(r["id"] for r in rows if r["split"] == "test") + "\n")
    by_ids = dataset.load_dataset(split_csv, "body", "label", test_ids=ids)
    assert by_ids.split == ds.split
    ids_json = split_csv.parent / "test_ids.json"
    ids_json.write_text(json.dumps({r["id"]: r["label"] for r in rows if r["split"] == "test"}))
    assert dataset.load_dataset(split_csv, "body", "label", test_ids=ids_json).split == ds.split


def test_fixed_split_needs_a_split(split_csv):
    ds = dataset.load_dataset(split_csv, "body", "label")
    with pytest.raises(DataError, match="split_column"):
        plans.plan(ds, ProtocolOptions(protocol="fixed"))


def test_bad_split_values_and_unknown_ids_are_named(tmp_path):
    rows = _rows()
    rows[2]["split"], rows[5]["split"] = "dev", ""
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as err:
        dataset.load_dataset(path, "body", "label", split_column="split")
    assert "2 row(s)" in str(err.value) and "rows 3 ('dev'), 6 ('')" in str(err.value)
    with pytest.raises(DataError, match="Split column 'part' not found"):
        dataset.load_dataset(path, "body", "label", split_column="part")
    ids = tmp_path / "ids.txt"
    ids.write_text("a0\nzz9\n")
    with pytest.raises(DataError, match="zz9"):
        dataset.load_dataset(path, "body", "label", test_ids=ids)


def test_a_class_only_in_test_is_refused(tmp_path):
    rows = _rows()
    for r in rows:
        if r["label"] == "c":
            r["split"] = "test"
    ds = dataset.load_dataset(write_csv(tmp_path / "c.csv", rows), "body", "label", split_column="split")
    with pytest.raises(DataError, match=r"Class 'c' .* no training letter in the dataset's own split"):
        plans.plan(ds, ProtocolOptions(protocol="fixed"))


def test_duplicates_straddling_the_split_warn_and_stay(tmp_path):
    rows = _rows()
    rows[1]["body"] = rows[0]["body"]  # row 0 tests, row 1 trains: copies across the split
    ds = dataset.load_dataset(write_csv(tmp_path / "d.csv", rows), "body", "label", split_column="split")
    pl = plans.plan(ds, ProtocolOptions(protocol="fixed"))
    assert 0 in pl.folds[0].test and 1 in pl.folds[0].train
    assert any("1 group(s) of duplicate letters (2 letters) straddle" in w for w in pl.warnings)


def test_cli_evaluate_fixed_writes_the_split(split_csv, tmp_path):
    out_json = tmp_path / "m.json"
    argv = ["evaluate", "--data", str(split_csv), "--text-template", r"{title}\n{body}", "--label-column", "label"]
    argv += ["--protocol", "fixed", "--split-column", "split", "--model", "tfidf", "--method", "tfidf", "--json", str(out_json)]
    assert main(argv) == 0
    m = json.loads(out_json.read_text())
    rows = _rows()
    assert m["protocol"] == "fixed" and m["n_scored"] == 6
    assert m["test_rows"] == [i for i, r in enumerate(rows) if r["split"] == "test"]
    assert m["train_rows"] == [i for i, r in enumerate(rows) if r["split"] == "train"]


def test_cli_validate_takes_the_data_flags(split_csv):
    out = cli("data", "validate", str(split_csv), "--text-template", "{title} {missing}", "--label-column", "label")
    assert out.returncode == 1 and "'missing'" in out.stdout
    out = cli("data", "validate", str(split_csv), "--text-column", "body", "--split-column", "split")
    assert out.returncode == 0, out.stdout


# --- PubMedQA ---------------------------------------------------------------------

PUBMEDQA = SHARED_DATA / "pubmedqa_ori_pqal.json"
PUBMEDQA_TEST = SHARED_DATA / "pubmedqa_test_ground_truth.json"


@pytest.mark.skipif(not PUBMEDQA.exists() or not PUBMEDQA_TEST.exists(), reason="../shared/data has no PubMedQA")
def test_pubmedqa_reads_with_the_official_split():
    spec = experiment.load_spec(Path(__file__).resolve().parents[1] / "examples" / "pubmedqa.yaml")
    spec.data.path, spec.data.test_ids = str(PUBMEDQA), str(PUBMEDQA_TEST)  # (the example's paths are relative to the repo root)
    ds = spec.data.load()
    table = dataset.read_table(PUBMEDQA)
    official = set(json.loads(PUBMEDQA_TEST.read_text()))
    assert len(ds) == 1000 and len(official) == 500
    assert {table["id"][i] for i, s in enumerate(ds.split) if s == "test"} == official
    assert "LONG_ANSWER" not in spec.data.text_template and ds.texts[0].startswith("Question: ")
    pl = plans.plan(ds, spec.options.protocol)
    assert pl.name == "fixed" and (len(pl.folds[0].train), len(pl.folds[0].test)) == (500, 500)


# --- columns beside the letters: a prompt's own layout, reference answers ------------


def test_a_prompt_lays_out_the_template_columns_and_only_the_letter_side_is_cut(tmp_path, tiny_decoder):
    path = tmp_path / "qa.jsonl"
    recs = [{"q": f"question {i}?", "ctx": [f"first {i}.", "word " * 80], "ans": f"because {i}", "label": "yn"[i % 2]} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    ds = dataset.load_dataset(path, "unused", "label", text_template="{q} {ctx}", answer_column="ans")
    assert ds.letter_fields == {"q": [r["q"] for r in recs], "ctx": [f"first {i}.\n" + "word " * 80 for i in range(8)]}
    assert ds.answers == [r["ans"] for r in recs] and all("because" not in t for t in ds.texts)  # answers are never letters
    template, letters = prompting.with_columns("Question: {q}\nContext: {ctx}\nAnswer ({labels}):", ds.letter_fields, ds.texts)
    assert template == "Question: {text}\nAnswer ({labels}):" and letters[0].startswith("question 0?\nContext: first 0.")
    lm = prompting.load_lm(str(tiny_decoder))
    scorer = prompting.Scorer(lm, ds.classes, template, None, max_length=48)
    ids = scorer.prompt_ids(letters[0], scorer.letter_budget())
    assert len(ids) + max(len(x) for x in scorer.label_ids) <= 48
    whole = scorer.encode(letters[0])
    assert ids[: len(scorer.head_ids)] == scorer.head_ids and ids[len(ids) - len(scorer.tail_ids) :] == scorer.tail_ids
    assert ids[len(scorer.head_ids) : len(ids) - len(scorer.tail_ids)] == whole[: scorer.letter_budget()]  # the context's end is cut
    assert len(whole) > scorer.letter_budget()
    for bad, why in [("{ans} {text}", "both"), ("{ans}", "ans"), ("{q} {labels} {ctx}", "between")]:
        with pytest.raises(ClinBenchError, match=why):
            prompting.with_columns(bad, ds.letter_fields, ds.texts)  # the answer column is never a letter's


def test_zero_shot_with_a_column_prompt_scores_and_previews(tmp_path, cache, tiny_decoder):
    path = tmp_path / "qa.jsonl"
    recs = [{"q": f"is it {i}?", "ctx": f"context {i}", "label": "yn"[i % 2]} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    ds = dataset.load_dataset(path, "unused", "label", text_template="{q} {ctx}")
    opts = {"prompt_template": "Q: {q}\nC: {ctx}\nA:", "protocol": "holdout", "test_size": 0.5, "max_length": 32, "n_boot": 100}
    assert api.prompt_preview(ds, opts).startswith("Q: is it 0?\nC: context 0\nA:")
    res = run_step(ds, tiny_decoder, "zero-shot", **opts)
    assert res.manifest["prompt"]["template"] == "Q: {text}\nA:" and 0 <= res.metrics["macro_f1"] <= 1
    with pytest.raises(ClinBenchError, match="columns of the data's text template: ctx, q"):
        run_step(ds, tiny_decoder, "zero-shot", **{**opts, "prompt_template": "{question}"})


def test_the_answer_column_must_exist_and_be_its_own(split_csv):
    with pytest.raises(DataError, match="Did you mean 'title'"):
        dataset.load_dataset(split_csv, "body", "label", answer_column="titel")
    with pytest.raises(DataError, match="only holds answers"):
        dataset.load_dataset(split_csv, "body", "label", answer_column="label")

"""Duplicate letters: normalisation, exact groups, near groups (leader clustering, no chaining, size cap),
label conflicts, the summary, and the warnings of the validation report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from engine import api
from engine.data import dataset, duplicates
from engine.errors import DataError
from tests.conftest import SHARED_DATA, write_csv

VOCAB = [f"word{i}" for i in range(5000)]


def letter(n_words: int, seed: int) -> list[str]:
    """n distinct words (so every 5-word shingle is distinct), drawn deterministically."""
    return random.Random(seed).sample(VOCAB, n_words)


def edit(words: list[str], *positions: int) -> list[str]:
    out = list(words)
    for p in positions:
        out[p] = f"changed{p}"
    return out


def text(words: list[str]) -> str:
    return " ".join(words)


def test_normalize_collapses_case_spacing_and_punctuation_but_keeps_digits():
    assert duplicates.normalize("  Dear Dr. SMITH,\n\tthank you!! ") == "dear dr smith thank you"
    assert duplicates.normalize("BP 120/80") != duplicates.normalize("BP 120/90")
    assert duplicates.normalize("BP 120/80") == duplicates.normalize("bp   120-80.")


def test_exact_groups_numbered_by_first_appearance():
    ids = duplicates.exact_groups(["B letter", "A letter", "b  LETTER!", "BP 120/80", "BP 120/90", "a letter"])
    assert ids.tolist() == [0, 1, 0, 2, 3, 1]


def test_near_groups_catch_a_one_word_edit_but_not_unrelated_letters():
    base = letter(60, 1)
    texts = [text(base), text(letter(60, 2)), text(edit(base, 30)), text(letter(60, 3)), text(base).upper()]
    ids = duplicates.near_groups(texts, 0.8)
    assert ids.tolist() == [0, 1, 0, 2, 0]  # the edit and the exact copy join letter 0; unrelated letters stay alone


def test_near_groups_do_not_chain():
    # A~B and B~C are within 0.85, A and C are not (checked on the exact shingle sets): C must not join A through B.
    a = letter(100, 4)
    b = edit(a, 30)
    c = edit(b, 70)
    sets = [duplicates._shingles(duplicates.normalize(text(x)), 5) for x in (a, b, c)]
    assert duplicates._jaccard(sets[0], sets[1]) >= 0.85 and duplicates._jaccard(sets[1], sets[2]) >= 0.85
    assert duplicates._jaccard(sets[0], sets[2]) < 0.85
    assert duplicates.near_groups([text(a), text(b), text(c)], 0.85).tolist() == [0, 0, 1]
    # whichever letter leads, every member is within the threshold of its leader
    assert duplicates.near_groups([text(b), text(a), text(c)], 0.85).tolist() == [0, 0, 0]


def test_max_group_caps_near_groups_but_keeps_exact_copies_whole():
    base = letter(100, 5)
    texts = [text(base)] + [text(edit(base, p)) for p in (10, 30, 50, 70, 90)]
    assert duplicates.near_groups(texts, 0.8).tolist() == [0] * 6
    capped = duplicates.near_groups(texts, 0.8, max_group=2)
    assert np.bincount(capped).max() == 2 and capped.tolist() == [0, 0, 1, 1, 2, 2]
    copies = [text(base)] * 3 + [text(edit(base, 10))]
    assert duplicates.near_groups(copies, 0.8, max_group=2).tolist() == [0, 0, 0, 1]


def test_near_groups_short_and_empty_letters_and_determinism():
    texts = ["chest pain", "Chest pain.", "chest pain left", "", "  ", "knee pain"]
    assert duplicates.near_groups(texts, 0.8).tolist() == [0, 0, 1, 2, 2, 3]
    many = [text(letter(40, s)) for s in range(30)] + [text(edit(letter(40, s), 20)) for s in range(30)]
    first = duplicates.near_groups(many, 0.7)
    assert (first == duplicates.near_groups(many, 0.7)).all() and first[:30].tolist() == first[30:].tolist()


def test_bad_threshold_is_a_clear_error():
    with pytest.raises(DataError, match="threshold must be a Jaccard similarity"):
        duplicates.near_groups(["a b c"], 1.5)
    with pytest.raises(DataError, match="max_group"):
        duplicates.near_groups(["a b c"], 0.8, max_group=0)


def test_conflicts_are_exact_copies_with_different_labels():
    texts = ["same letter", "other", "Same letter.", "other", "third", "third!"]
    labels = ["a", "b", "b", "b", ("x", "y"), ("x",)]
    assert duplicates.conflicts(texts, labels) == [[0, 2], [4, 5]]
    assert duplicates.conflicts(texts, ["a", "b", "a", "b", ["x"], ("x",)]) == []


def test_summary_counts_examples_conflicts_and_warnings():
    base = letter(60, 6)
    texts = [text(letter(30, 100 + i)) for i in range(16)] + [text(base)] * 3 + [text(edit(base, 30))]
    labels = ["a", "b"] * 8 + ["a", "a", "b", "a"]
    s = duplicates.summary(texts, labels, near_threshold=0.8, folds=5)
    json.dumps(s)  # JSON-ready
    assert s["n_letters"] == 20
    assert s["exact"]["n_groups"] == 1 and s["exact"]["n_letters_in_groups"] == 3 and s["exact"]["largest"] == 3
    assert s["exact"]["examples"][0]["rows"] == [16, 17, 18] and s["exact"]["examples"][0]["labels"] == ["a", "a", "b"]
    assert s["exact"]["examples"][0]["preview"][0] == texts[16][:160]
    assert s["near"]["n_groups"] == 1 and s["near"]["largest"] == 4 and s["near"]["examples"][0]["rows"] == [16, 17, 18, 19]
    near = s["near"]["examples"][0]
    assert near["similarity"][:3] == [1.0, 1.0, 1.0] and 0.8 <= near["similarity"][3] < 1
    assert near["first_difference"][:3] == [None, None, None] and "changed30" in near["first_difference"][3]
    assert s["conflicts"]["n_groups"] == 1 and s["conflicts"]["groups"][0] == {
        "rows": [16, 17, 18],
        "row_numbers": [17, 18, 19],
        "labels": ["a", "a", "b"],
    }
    # n/(2K) = 20/10 = 2: the exact group of 3 and the near group of 4 both unbalance the folds
    assert len(s["warnings"]) == 2
    assert "rows 17, 18, 19 holds 3 letters" in s["warnings"][0] and "unbalance the 5" in s["warnings"][0]
    assert "if grouped" in s["warnings"][1] and "holds 4 letters" in s["warnings"][1]
    quiet = duplicates.summary(texts, labels, near_threshold=None, folds=2)
    assert quiet["near"] is None and quiet["warnings"] == []  # 20/(2x2) = 5 >= 3


ROWS = [{"text": f"letter number {i} about {lab}", "label": lab} for i, lab in enumerate(["a", "b"] * 10)]


def test_validation_names_duplicate_groups_and_conflicting_rows(tmp_path):
    rows = [*ROWS, {"text": ROWS[0]["text"].upper() + "!", "label": "b"}, {"text": ROWS[3]["text"], "label": "b"}]
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    assert report.ok
    warn = {w.code: w.message for w in report.warnings}
    assert "2 letter(s) repeat another letter" in warn["duplicate_text"] and "2 group(s)" in warn["duplicate_text"]
    assert "rows 1, 21" in warn["duplicate_text"] and "never straddle training and test" in warn["duplicate_text"]
    assert "1 group(s) of copies (2 letters) carry different labels: rows 1, 21 ('a' vs 'b')" in warn["conflicting_labels"]
    d = report.to_dict()["duplicates"]
    assert d["exact"]["n_groups"] == 2 and d["conflicts"]["n_groups"] == 1 and d["near"] is None
    json.dumps(report.to_dict())


def test_validation_rows_count_from_the_file_even_after_blank_rows(tmp_path):
    rows = [{"text": "", "label": "a"}, *ROWS, {"text": ROWS[2]["text"], "label": "b"}]
    report = dataset.validate_file(write_csv(tmp_path / "x.csv", rows), "text", "label")
    conflict = next(w.message for w in report.warnings if w.code == "conflicting_labels")
    assert "rows 4, 22 ('a' vs 'b')" in conflict
    s = api.duplicate_summary(tmp_path / "x.csv", "text", "label", near_threshold=0.8)
    assert s["conflicts"]["groups"][0]["row_numbers"] == [4, 22] and s["near"]["threshold"] == 0.8


def test_validation_multi_label_conflicts_and_large_groups(tmp_path):
    rows = [{"text": f"note {i}", "labels": "x|y" if i % 2 else "x"} for i in range(8)]
    rows += [{"text": "copied note", "labels": "x|y"}, {"text": "copied note", "labels": "y"}, {"text": "copied note", "labels": "y"}]
    report = dataset.validate_file(write_csv(tmp_path / "m.csv", rows), "text", "labels", label_sep="|")
    warn = {w.code: w.message for w in report.warnings}
    assert "rows 9, 10, 11 ('x'+'y' vs 'y')" in warn["conflicting_labels"]
    assert "holds 3 letters, more than n/(2K) = 11/(2x5)" in warn["large_duplicate_group"]


def test_no_duplicates_no_warnings(tmp_path):
    report = dataset.validate_file(write_csv(tmp_path / "ok.csv", ROWS), "text", "label")
    assert not report.issues and report.duplicates["exact"]["n_groups"] == 0 and report.duplicates["exact"]["largest"] == 1


@pytest.mark.skipif(not (SHARED_DATA / "mtsamples.csv").exists(), reason="shared MTSamples not present")
def test_mtsamples_copies_nearly_all_carry_two_specialties():
    import pandas as pd

    df = pd.read_csv(SHARED_DATA / "mtsamples.csv", dtype=str, keep_default_na=False)
    df = df[df["transcription"].str.strip() != ""]
    texts, labels = df["transcription"].tolist(), df["medical_specialty"].tolist()
    ids = duplicates.exact_groups(texts)
    assert len(texts) == 4966 and ids.max() + 1 == 2355
    clash = duplicates.conflicts(texts, labels)
    assert len(clash) > 2100 and all(len({labels[i] for i in rows}) > 1 for rows in clash)

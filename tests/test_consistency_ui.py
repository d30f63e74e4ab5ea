"""One way of saying things on every page (issue 30): rows counted from 1 as the input file's data rows, letters counted
once under cv with repeats, one headline per task, one definition of a wrong letter, CIs as two numbers in downloads.
Unit tests on the ui helpers (no streamlit session, no model): they run in well under a second."""

from __future__ import annotations

import pandas as pd

from ui import compare


def test_compared_labels_lists_each_evaluation_once():
    # every pair of three evaluations tested: the third is `other` twice; the disagreement table needs unique columns
    sig = pd.DataFrame({"best": ["a", "a", "b"], "other": ["b", "c", "c"]})
    assert compare.compared_labels(sig, ["a", "b", "c"]) == ["a", "b", "c"]
    assert compare.compared_labels(None, ["a", "b", "c"]) == ["a", "b"]

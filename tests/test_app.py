"""Smoke test of the dashboard's home page with Streamlit's AppTest (no browser)."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def test_home_page_shows_default_dataset_and_models():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "ClinBench"
    text = " ".join(m.value for m in at.markdown)
    assert "600 MTSamples letters" in text
    models_table = at.dataframe[1].value
    assert list(models_table["name"])[:2] == ["minilm", "smollm2"]
    assert models_table.set_index("name").loc["minilm", "offline"] == "yes"

"""End to end in a real browser: `streamlit run app.py` on 127.0.0.1 (a free port), headless Chromium
driven by Playwright, at 1280 px. Through the UI only: a first visit straight to a page URL gets the app's
navigation; start a small comparison of the bundled MiniLM, watch it finish, see the Compare chart, download its
PNG (a valid image), classify a pasted letter. No request may leave 127.0.0.1.

Needs Chromium (Debian package `chromium`, installed by scripts/setup.sh); without it the test is
skipped on a developer machine and fails in CI (CI=true), so a CI without a browser cannot pass.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from engine.reports import export
from tests.conftest import ROOT, stop_workers

pytestmark = pytest.mark.slow
BROWSER = export.browser_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if BROWSER is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: scripts/setup.sh should have installed it (apt-get install chromium).")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    cache = tmp_path / "cache"
    port = _free_port()
    env = {**os.environ, "CLINBENCH_CACHE": str(cache)}
    env.pop("CLINBENCH_BATCH_DELAY_S", None)
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 (the server writes to it until the test ends)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield base, tmp_path
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    stop_workers(cache)


@contextlib.contextmanager
def _app_page(base: str, **page_options):
    """A 1280 px page of headless Chromium for the app at `base`; on leaving, no request may have left this machine
    (letters are private and the app works offline)."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, **page_options)
            page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:")) else outside.append(r.url))
            yield page
        finally:
            browser.close()
    assert outside == [], f"requests left 127.0.0.1: {sorted(set(outside))[:5]}"


def _settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished the current script run."""
    page.wait_for_timeout(500)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def test_comparison_compare_png_and_classify_in_a_real_browser(server):
    from PIL import Image
    from playwright.sync_api import expect

    base, tmp = server
    with _app_page(base, accept_downloads=True) as page:
        page.goto(f"{base}/Runs")  # a fresh server's first visit is a page URL: the app's navigation, not Streamlit's "app" list
        expect(page.get_by_role("heading", name="New run")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("link", name="Home", exact=True)).to_be_visible()
        expect(page.get_by_role("link", name="app", exact=True)).to_have_count(0)
        page.get_by_label("Run name").fill("e2e")
        page.get_by_label("max_length", exact=True).fill("128")
        page.get_by_role("button", name="Start run").click()
        expect(page.get_by_text("queued with 2 step(s), the tf-idf reference last")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Protocol holdout: one hold-out test split of 120 letters")).to_be_visible()
        expect(page.get_by_role("heading", name="Run 1: e2e — done")).to_be_visible(timeout=240_000)
        expect(page.get_by_text("macro-F1", exact=False).first).to_be_visible()

        page.goto(f"{base}/Compare")
        chart_title = page.locator(".js-plotly-plot .gtitle", has_text="Macro-F1 per model and method")
        expect(chart_title).to_be_visible(timeout=60_000)
        _settle(page)
        with page.expect_download(timeout=60_000) as dl:
            page.get_by_role("button", name="PNG ⬇").first.click()
        png = tmp / "chart.png"
        dl.value.save_as(png)
        img = Image.open(io.BytesIO(png.read_bytes()))
        img.verify()
        assert img.format == "PNG" and img.size[0] >= 1000, img.size

        page.goto(f"{base}/Classify")
        box = page.get_by_label("Letter", exact=True)
        expect(box).to_be_visible(timeout=60_000)
        letter = (
            "HISTORY: The patient is a 64-year-old man with crushing substernal chest pain radiating to the left arm, "
            "shortness of breath and diaphoresis. ECG shows ST elevation in the inferior leads; troponin is raised. "
            "Cardiac catheterization showed an occluded right coronary artery, treated with a stent."
        )
        box.fill(letter)
        box.press("Control+Enter")
        _settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text("Majority label")).to_be_visible(timeout=120_000)
        expect(page.locator("[data-testid='stMetricValue']")).to_have_text("cardiovascular-pulmonary")
        page.screenshot(path=str(tmp / "classify.png"), full_page=True)
        page.goto(base)  # the home page, with the app's navigation
        expect(page.get_by_role("link", name="Compare")).to_be_visible(timeout=60_000)
        _settle(page)


def test_multi_label_compare_and_classify_in_a_real_browser(server, monkeypatch, default_ds, tiny_encoder):
    """Two multi-label evaluations (svc of a tiny encoder, tf-idf) in the server's cache: Compare names micro-, macro- and
    samples-F1 (the headline selectable) and draws the per-label heatmap instead of confusion matrices; Classify shows each
    label's probability and threshold. $CLINBENCH_SCREENSHOTS (a folder), when set, receives both pages' screenshots."""
    import json
    import shutil
    from pathlib import Path

    from playwright.sync_api import expect

    from engine import api
    from tests.conftest import run_step
    from tests.test_multilabel import multi_label_ds

    base, tmp = server
    monkeypatch.setenv("CLINBENCH_CACHE", str(tmp / "cache"))  # the server's cache
    ml = multi_label_ds(default_ds)
    path = tmp / "multi.jsonl"
    path.write_text("".join(json.dumps({"text": t, "labels": list(labs)}) + "\n" for t, labs in zip(ml.texts, ml.labels)))
    ds = api.load_dataset(str(path), "text", "labels")
    for model, method in ((tiny_encoder, "svc"), ("tfidf", "tfidf")):
        run_step(ds, model, method, protocol="holdout", test_size=0.3, max_length=64, grid=False, n_boot=100)
    shots = os.environ.get("CLINBENCH_SCREENSHOTS")
    with _app_page(base) as page:
        page.goto(f"{base}/Compare")
        expect(page.locator(".js-plotly-plot .gtitle", has_text="Micro-F1 per model and method")).to_be_visible(timeout=90_000)
        expect(page.get_by_text("whole label set only one of the two got right")).to_be_visible(timeout=60_000)  # paired tests
        expect(page.get_by_text("micro-F1 difference").or_(page.get_by_text("better by")).first).to_be_visible()
        expect(page.locator(".js-plotly-plot .gtitle", has_text="Per label: precision, recall and F1")).to_be_visible()
        expect(page.get_by_text("Confusion matrices")).to_have_count(0)
        page.get_by_test_id("stRadioGroup").get_by_text("Samples-F1", exact=True).click()
        expect(page.locator(".js-plotly-plot .gtitle", has_text="Samples-F1 per model and method")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("samples-F1 difference").or_(page.get_by_text("samples-F1 (95% CI")).first).to_be_visible()
        _settle(page)
        page.set_viewport_size({"width": 1280, "height": 3600})  # the whole page (Streamlit scrolls an inner element)
        page.screenshot(path=str(tmp / "ml-compare.png"))
        page.set_viewport_size({"width": 1280, "height": 900})

        page.goto(f"{base}/Classify")
        expect(page.get_by_label("Letter", exact=True)).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Load a test letter").click()
        _settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text("Majority label set")).to_be_visible(timeout=120_000)
        expect(page.locator(".js-plotly-plot .gtitle", has_text="Each label's probability and threshold")).to_be_visible()
        _settle(page)
        page.set_viewport_size({"width": 1280, "height": 3600})  # the whole page (Streamlit scrolls an inner element)
        page.screenshot(path=str(tmp / "ml-classify.png"))
        page.set_viewport_size({"width": 1280, "height": 900})
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        for name in ("ml-compare.png", "ml-classify.png"):
            shutil.copy(tmp / name, Path(shots) / name)


def test_a_users_letters_from_upload_to_verdict_in_a_real_browser(server, default_ds, tiny_encoder):
    """Issue 30's path, lean (a tiny encoder, 40 letters, svc without the grid, one hold-out split): upload a user's CSV (an id column of
    numbers, which is never guessed as the text) → its duplicate named by rows counted from 1 → save → the Runs form
    starts on it and names the tf-idf reference → the finished run's link → Compare filtered on that run → Classify.
    The two steps run in a worker's processes, so most of its time is theirs."""
    from collections import Counter

    from playwright.sync_api import expect

    from tests.conftest import write_csv

    base, tmp = server
    per, rows = Counter(), []
    for t, lab in zip(default_ds.texts, default_ds.labels):
        if per[lab] < 8:
            per[lab] += 1
            rows.append({"id": str(1000 + len(rows)), "note": t, "specialty": lab})
    rows[6]["note"] = rows[2]["note"]  # data rows 3 and 7 hold the same letter (both labelled alike)
    rows[6]["specialty"] = rows[2]["specialty"]
    csv = write_csv(tmp / "clinic.csv", rows)
    shots = os.environ.get("CLINBENCH_SCREENSHOTS")  # a folder: receives the finished run and its Compare view
    with _app_page(base) as page:
        page.goto(base)
        page.get_by_role("link", name="Compare models on my letters").click()
        expect(page.get_by_text("Letters file")).to_be_visible(timeout=60_000)
        page.locator("input[type=file]").set_input_files(str(csv))
        expect(page.get_by_text("40 rows, 5 labels: ready to use")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("rows 3, 7").first).to_be_visible()  # the data rows as a spreadsheet counts them, from 1
        page.get_by_label("Dataset name").fill("my clinic")
        page.get_by_role("button", name="Save dataset").click()
        expect(page.get_by_text("Saved 'my clinic' (40 letters)")).to_be_visible(timeout=60_000)
        page.get_by_role("link", name="Compare models on these letters").click()

        expect(page.get_by_role("heading", name="New run")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("combobox", name="Dataset")).to_have_value("my clinic (40 letters)")  # just saved, chosen
        expect(page.get_by_text("one more row in the results", exact=False)).to_be_visible()  # said before Start
        page.get_by_role("button", name="Remove minilm").first.click()  # the tiny encoder only
        page.get_by_label("More models: hub ids or local folders, comma-separated").fill(str(tiny_encoder))
        page.get_by_label("max_length", exact=True).fill("64")
        page.get_by_label("n_boot", exact=True).fill("100")
        page.get_by_role("combobox", name="protocol").click()
        page.get_by_role("option", name="holdout", exact=True).click()  # one fit per step: the quickest protocol
        page.get_by_text("grid", exact=True).click()  # off: no inner search
        page.get_by_role("button", name="Start run").click()
        expect(page.get_by_text("queued with 2 step(s), the tf-idf reference last")).to_be_visible(timeout=60_000)
        link = page.get_by_role("link", name="Compare the results of run 1")
        expect(link).to_be_visible(timeout=180_000)
        if shots:
            link.scroll_into_view_if_needed()
            page.screenshot(path=f"{shots}/e2e-runs-finished.png")

        link.click()
        expect(page.locator(".js-plotly-plot .gtitle", has_text="Macro-F1 per model and method")).to_be_visible(timeout=60_000)
        assert "run=1" in page.url and "dataset=" in page.url
        expect(page.get_by_text("my clinic: 40 letters, 2 evaluation(s)")).to_be_visible()
        _settle(page)
        if shots:
            page.screenshot(path=f"{shots}/e2e-compare-run-1.png")

        page.goto(f"{base}/Classify")
        box = page.get_by_label("Letter", exact=True)
        expect(box).to_be_visible(timeout=60_000)
        box.fill(rows[0]["note"])
        box.press("Control+Enter")
        _settle(page)
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text("Majority label")).to_be_visible(timeout=60_000)
        _settle(page)

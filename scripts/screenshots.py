"""Screenshots of every dashboard page at 1280 px, for docs/ (and for looking at the UI as a person would).

    .venv/bin/python scripts/screenshots.py [--cache DIR] [--out docs] [--pages Compare Embeddings]
    .venv/bin/python scripts/screenshots.py --cache DIR --submit lora.yaml --pages Runs --until "Training curves"

Starts `streamlit run app.py` on a free 127.0.0.1 port with CLINBENCH_CACHE=DIR (the results the
pages show), drives Debian's chromium headless with Playwright, and writes <out>/<page>.png.
`--submit` queues a spec first (its worker runs in the background), and `--until TEXT` waits until
the last page shows TEXT before shooting it, e.g. a training step's live curves.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["Home", "Data", "Models", "Runs", "Embeddings", "Compare", "Classify", "Export"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="cache folder whose results the pages show (default: the repo's cache/)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    ap.add_argument("--pages", nargs="*", default=PAGES, help=f"pages to shoot (default: all: {' '.join(PAGES)})")
    ap.add_argument("--wait", type=float, default=6.0, help="seconds to let a page render (default: 6)")
    ap.add_argument(
        "--height",
        type=int,
        default=1000,
        help="viewport height in px (default: 1000; Streamlit scrolls inside the page, so a taller viewport shows more)",
    )
    ap.add_argument("--submit", type=Path, help="queue this spec (YAML/JSON) before shooting")
    ap.add_argument("--until", help="wait (up to --timeout s) until the last page shows this text, then shoot it")
    ap.add_argument("--timeout", type=float, default=600.0, help="how long --until may wait (default: 600)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    if args.cache:
        env["CLINBENCH_CACHE"] = str(args.cache.resolve())
    if args.submit:
        subprocess.run([sys.executable, "-m", "engine", "submit", str(args.submit)], cwd=ROOT, env=env, check=True)
    port = free_port()
    server = subprocess.Popen(
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": args.height})
            for name in args.pages:
                page.goto(base + ("/" if name == "Home" else f"/{name}"))
                page.wait_for_selector("[data-testid='stApp']")
                if args.until and name == args.pages[-1]:
                    page.get_by_text(args.until).first.wait_for(timeout=args.timeout * 1000)
                time.sleep(args.wait)
                path = args.out / f"{name.lower()}.png"
                page.screenshot(path=str(path), full_page=True)
                print(path)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

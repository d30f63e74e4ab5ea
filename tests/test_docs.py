"""The documentation stays true where a machine can tell: the README is an entry page (short, its links resolve), the
docs' links and images resolve, every `--flag` docs/cli.md names is a flag of the CLI's parser, and no doc names a
folder of the machine it was written on."""

from __future__ import annotations

import argparse
import re

from engine.cli.parser import build_parser
from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages():
    return [README, *sorted(DOCS.glob("*.md"))]


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and of its sub-commands, recursively."""
    flags = set()
    for action in parser._actions:
        flags |= {s for s in action.option_strings if s.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
    return flags


def test_readme_is_an_entry_page():
    lines = README.read_text().splitlines()
    assert len(lines) < MAX_README_LINES, f"README.md has {len(lines)} lines; reference belongs in docs/"
    assert lines[3:5] == [
        "bash scripts/start.sh     # fresh machine: set up .venv/ and serve the dashboard on http://127.0.0.1:8501",
        "bash scripts/test.sh      # fresh machine: set up .venv/ (with test tools) and run the test suite",
    ], "the README must open with the two fresh-machine commands"
    for script in ("scripts/start.sh", "scripts/test.sh"):
        assert (ROOT / script).exists()


def test_every_relative_link_and_image_resolves():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_readme_links_every_docs_page():
    linked = set(LINK.findall(README.read_text()))
    missing = [f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_every_flag_in_cli_doc_exists():
    known = _parser_flags(build_parser())
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", (DOCS / "cli.md").read_text()))
    unknown = sorted(named - known)
    assert not unknown, f"docs/cli.md names flags the CLI does not have: {unknown}"


def test_the_flag_check_can_fail():
    known = _parser_flags(build_parser())
    assert "--threshold-rule" in known and "--convert-pickles" in known and "--allowed-host" in known
    assert "--no-such-flag" not in known


def test_no_machine_paths_in_docs():
    bad = [p.name for p in _pages() if re.search(r"(?<![\w.])/(work|home|root|tmp)/", p.read_text())]
    assert not bad, f"machine paths in {bad}"


def test_every_repository_path_named_exists():
    path = re.compile(r"`((?:engine|bench|tests|scripts|examples|ui|pages|\.ci)/[\w./-]*)")
    missing = sorted({f"{p.name}: {m}" for p in _pages() for m in path.findall(p.read_text()) if not (ROOT / m).exists()})
    assert not missing, f"paths the docs name that the repository lacks: {missing}"

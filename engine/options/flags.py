"""The command-line flags of the run options (engine.options): one flag per option, grouped by concern.

`add_arguments` declares them on an argparse parser (`--max-length`, `--smote/--no-smote`, ...) with each option's
help, choices and default; `from_args` reads them back into checked Options.
"""

from __future__ import annotations

import argparse

from engine.options.fieldspec import FieldSpec
from engine.options.groups import GROUPS, Options, fields, group_doc, group_title

# Every concern but where steps run: what a command that runs a method here and now (`evaluate`) takes
IN_PROCESS = tuple(g for g in GROUPS if g != "execution")


def newlines(text: str) -> str:
    """A free-text option as a shell argument: a typed \\n is a line break (prompt templates, answer prompts)."""
    return text.replace("\\n", "\n")


def _split_names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser, groups: tuple[str, ...] | None = None) -> None:
    """One flag per option (`--max-length`, `--smote/--no-smote`, ...), in an argument group per concern. Defaults are
    left unset (None), so `from_args` can tell a given flag from an absent one."""
    for group in groups or tuple(GROUPS):
        add_fields(parser, fields(group), f"{group_title(group).lower()} options", group_doc(group))


def add_fields(parser: argparse.ArgumentParser, specs: list[FieldSpec], title: str, doc: str = "") -> None:
    """One flag per field spec (run options, or another command's own, e.g. engine.options.serving), in one argument group."""
    g = parser.add_argument_group(title, doc)
    for s in specs:
        text = f"{s.help} (default: {s.describe_default()})".replace("%", "%%")
        if s.kind == "bool":
            g.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif s.kind == "list":
            g.add_argument(s.flag, dest=s.name, type=_split_names, default=None, metavar="A,B", help=text + "; comma-separated")
        elif s.kind == "sizes":
            g.add_argument(s.flag, dest=s.name, default=None, metavar="N,N,...", help=text + "; comma-separated")
        elif s.kind == "map":
            g.add_argument(s.flag, dest=s.name, default=None, metavar="NAME=TEXT,...", help=text + "; or a JSON object")
        elif s.choices is not None:
            g.add_argument(s.flag, dest=s.name, choices=[c for c in s.choices if c is not None], default=None, help=text)
        else:
            py = {"int": int, "float": float, "str": newlines}[s.kind]
            g.add_argument(s.flag, dest=s.name, type=py, default=None, metavar=s.kind.upper(), help=text)


def given(args: argparse.Namespace) -> dict:
    """The options whose flags were given (flat, as in a spec's `options:`)."""
    return {s.name: getattr(args, s.name) for s in fields() if getattr(args, s.name, None) is not None}


def from_args(args: argparse.Namespace, base: Options | None = None) -> Options:
    """The Options of parsed flags over `base` (absent flags keep its values, or the defaults), checked like a spec's."""
    flat = {**(base.to_dict() if base else {}), **given(args)}
    return Options.parse(flat, where="command line", label=lambda s: s.flag)

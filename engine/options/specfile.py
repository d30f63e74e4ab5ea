"""Spec files: a YAML or JSON file read into the object a spec is checked from (engine.runs.experiment.parse_spec).

At most 1 MB, UTF-8, and YAML without aliases (a "billion laughs" file fails at once). Light to import: the CLI reads a
spec's model names with it before anything heavy is loaded, to refuse an unreachable model at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import SpecError

MAX_SPEC_BYTES = 1_000_000  # a spec is a few lines; anything near this size is not one


def _yaml(text: str, name: str) -> Any:
    """YAML parsed safely: aliases (`*name`) are refused before anything is built, so a "billion laughs" file fails at once."""
    import yaml

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise SpecError(f"{name} uses a YAML alias (*{event.anchor}), which spec files do not support. Write the value out in full.")
    return yaml.safe_load(text)


def read(path: str | Path) -> Any:
    """The object a spec file (YAML or JSON, UTF-8, at most 1 MB) holds, unchecked; SpecError naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"Spec file not found: {path}.")
    if not path.is_file():
        raise SpecError(f"{path} is a folder, not a spec file. Give the path of a YAML or JSON file, e.g. {path / 'spec.yaml'}.")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{path.name} is {size / 1e6:.1f} MB; a spec file must be under 1 MB. Check that this is the right file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path.name} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 and try again.") from None
    except OSError as exc:
        raise SpecError(f"{path.name} cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        obj = json.loads(text) if kind == "JSON" else _yaml(text, path.name)
    except SpecError:
        raise
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError (a ValueError), RecursionError of a deeply nested file
        raise SpecError(f"{path.name} is not valid {kind}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return obj

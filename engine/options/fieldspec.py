"""How one option is declared and checked: `option()` (a dataclass field with help, bounds, choices, cache-key flag
and per-method defaults), `FieldSpec` (what the CLI, the spec check and the form know of it), `field_specs` (the specs of
a set of option dataclasses) and `coerce` (one value checked against its spec). The options themselves are engine.options.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SpecError


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple | None = None,
    key: bool = True,
    per_method: dict[str, Any] | None = None,
    step: float | None = None,
    multiline: bool = False,
) -> Any:
    """A dataclass field with ClinBench's metadata: help, bounds, choices, cache-key flag, per-method defaults, the
    step of a number widget where the default one (0.05 within [0, 1]) would not do, and whether a text is multi-line."""
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": choices,
        "key": key,
        "per_method": per_method or {},
        "step": step,
        "multiline": multiline,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """What the CLI, the spec check and the form need to know of one option."""

    name: str
    group: str  # the concern's key in Options (protocol, embedding, ...)
    kind: str  # bool | int | float | str | list (names) | sizes (whole numbers) | map (str -> str, e.g. label -> verbalizer)
    optional: bool  # None is allowed (meaning: the method's default, or off)
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple | None
    key: bool
    per_method: dict
    step: float | None
    multiline: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_default(self) -> str:
        if self.default is None and self.per_method:
            return "by method: " + ", ".join(f"{v:g} {m}" if isinstance(v, float) else f"{v} {m}" for m, v in self.per_method.items())
        return "none" if self.default is None else str(self.default)


class PerMethod:
    """`resolved(method)`: a copy with the method's defaults (field metadata `per_method`) filled in where a field is None."""

    def resolved(self, method: str):
        fill = {}
        for f in dataclasses.fields(self):
            table = f.metadata.get("per_method") or {}
            if getattr(self, f.name) is None and method in table:
                fill[f.name] = table[method]
        return dataclasses.replace(self, **fill)


def _kind(annotation: Any) -> tuple[str, bool]:
    """('bool'|'int'|'float'|'str'|'list'|'sizes'|'map', optional) of a field's type annotation."""
    hint = annotation
    args = typing.get_args(hint)
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        return ("sizes" if typing.get_args(hint) == (int,) else "list"), optional
    if typing.get_origin(hint) is dict:
        return "map", optional
    return {bool: "bool", int: "int", float: "float", str: "str"}[hint], optional


def field_specs(groups: dict[str, type]) -> list[FieldSpec]:
    """One FieldSpec per field of each concern's dataclass, in declaration order; names must be unique across concerns."""
    out = []
    for group, cls in groups.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind, optional = _kind(hints[f.name])
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            m = f.metadata
            out.append(
                FieldSpec(
                    f.name,
                    group,
                    kind,
                    optional,
                    default,
                    m["help"],
                    m["min"],
                    m["max"],
                    m["choices"],
                    m["key"],
                    m["per_method"],
                    m["step"],
                    m.get("multiline", False),
                )
            )
    names = [s.name for s in out]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:  # spec files are flat: a name must be unique across concerns
        raise RuntimeError(f"option names must be unique across concerns: {sorted(dupes)}")
    return out


def coerce(spec: FieldSpec, value: Any, where: str, label: str | None = None) -> Any:
    """`value` checked against `spec` (type, range, choices). Ints pass as floats, and '1e-3' (a string in YAML 1.1) as a number."""
    label = label or f"option {spec.name}"
    if value is None:
        if spec.optional:
            return None
        raise SpecError(f"{where}: {label} cannot be null; expected {_expected(spec)}.")
    if spec.kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.kind == "map" and isinstance(value, str):
        value = parse_map(value, where, label)
    if spec.kind == "sizes" and isinstance(value, str):
        value = parse_sizes(value)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, float),
        "str": isinstance(value, str),
        "list": isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value),
        "sizes": isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        and len(set(value)) == len(value),
        "map": isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()),
    }[spec.kind]
    if not ok:
        raise SpecError(f"{where}: {label} has the wrong type ({value!r}); expected {_expected(spec)}.")
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join("null" if c is None else repr(c) for c in spec.choices)
        raise SpecError(f"{where}: {label} must be one of {allowed}; got {value!r}.")
    if spec.kind in ("int", "float"):
        lo, hi = spec.min, spec.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"at least {lo:g}" if hi is None else f"between {lo:g} and {hi:g}"
            raise SpecError(f"{where}: {label} = {value} is out of range; use a value {bounds}.")
    return value


def _expected(spec: FieldSpec) -> str:
    base = {
        "bool": "true or false",
        "int": "int",
        "float": "float",
        "str": "str",
        "list": "list of names",
        "sizes": "a list of distinct whole numbers of at least 1, e.g. [8, 16, 32]",
        "map": "a mapping of names to texts, e.g. {cardiology: heart, urology: kidney}",
    }[spec.kind]
    return f"{base} or null" if spec.optional else base


def parse_sizes(text: str) -> list | str:
    """Sizes as the command line and the form write them, `8,16,32` (or `8 16 32`); the text itself when it is not that,
    so the type check names it."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        return text


def parse_map(text: str, where: str, label: str) -> dict[str, str]:
    """A mapping as the command line and the form write it: a JSON object, or `name=text` pairs separated by commas or
    new lines (`cardiology=heart, urology=kidney`)."""
    import json

    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"{where}: {label} is not valid JSON ({exc.msg}); write a JSON object or name=text pairs.") from None
        return value if isinstance(value, dict) else {}
    out = {}
    for part in (p.strip() for p in text.replace("\n", ",").split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise SpecError(f"{where}: {label}: {part!r} is not name=text; write pairs like cardiology=heart, urology=kidney.")
        out[name.strip()] = value.strip()
    return out

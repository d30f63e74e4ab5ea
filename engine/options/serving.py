"""The options of the serving process (`python -m engine serve`): how it uses this machine's cores. They are not run
options (they change no result and enter no manifest or cache key); the `serve` command's flags derive from them
(engine.options.flags.add_fields), as the run options' do from engine.options.groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engine.options.fieldspec import FieldSpec, coerce, field_specs, option


@dataclass(frozen=True)
class ServeOptions:
    """How the server uses the CPU: on a machine shared with other work, fewer threads than cores keep a letter's
    forward pass from fighting other processes for them."""

    TITLE: ClassVar[str] = "Process"
    threads: int | None = option(
        None,
        "torch's intra-op threads and the BLAS libraries' threads of the server process; none: torch's default (one per "
        "core). On a machine shared with other work, 1 is often faster than every core",
        min=1,
        max=256,
        key=False,
    )


FIELDS: list[FieldSpec] = field_specs({"serve": ServeOptions})


def from_args(args) -> ServeOptions:
    """The ServeOptions of parsed `serve` flags, each checked against its field (ClinBenchError naming the flag)."""
    return ServeOptions(**{s.name: coerce(s, getattr(args, s.name, None), "command line", s.flag) for s in FIELDS})

"""Sealed chunks of an array being written: what lets a cancelled, killed or crashed extraction resume.

Beside the array's final file `<name>.npy`, the folder `<name>.parts/` holds

    manifest.json                  the writer's plan (a hash of everything the chunks' numbers depend on) and chunk count;
                                   created with the folder, atomically
    chunk-<i:06d>-<sha16>.npy      chunk i's rows (float32), written to a temporary name and renamed: its name carries the
                                   first 16 hex digits of the sha256 of its bytes, so a file is trusted only if they match

A writer with another plan (other letters, model, options, batches) replaces the folder instead of reusing it. Chunks are
read with numpy's allow_pickle=False: nothing read from the cache can execute code. The folder is removed once the final
array is sealed; the sweep of orphans (engine.cache.storage) removes stale or damaged ones and keeps resumable ones.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from engine.cache.storage import (
    CHUNK_NAME,
    PARTS_MANIFEST,
    PARTS_SUFFIX,
    atomic_dir,
    atomic_write_bytes,
    chunk_is_sealed,
    sha256_bytes,
)


def parts_dir(final: Path) -> Path:
    """The chunks folder of the array whose final file is `final`."""
    return Path(final).with_suffix(PARTS_SUFFIX)


class Parts:
    """The chunks folder of one array for one plan: which chunks are sealed, sealing one, reading one, removing all."""

    def __init__(self, folder: Path, plan: str, n_chunks: int):
        self.folder, self.plan, self.n_chunks = Path(folder), plan, n_chunks

    @classmethod
    def open(cls, final: Path, plan: str, n_chunks: int) -> Parts:
        """The chunks folder of `final` for `plan`: the existing one if its manifest says the same plan, else a new empty one."""
        folder = parts_dir(final)
        manifest = {"version": 1, "plan": plan, "n_chunks": n_chunks}
        try:
            same = json.loads((folder / PARTS_MANIFEST).read_text()) == manifest
        except (OSError, ValueError):
            same = False
        if not same:
            with atomic_dir(folder) as tmp:
                (tmp / PARTS_MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        return cls(folder, plan, n_chunks)

    def sealed(self) -> dict[int, Path]:
        """Chunk index -> its file, for every chunk whose bytes match its name (a damaged one is removed)."""
        out: dict[int, Path] = {}
        for p in sorted(self.folder.glob("chunk-*.npy")) if self.folder.is_dir() else []:
            m = CHUNK_NAME.match(p.name)
            if m and int(m.group(1)) < self.n_chunks and chunk_is_sealed(p):
                out[int(m.group(1))] = p
            elif m:
                p.unlink(missing_ok=True)
        return out

    def listed(self) -> set[int]:
        """The indices of the chunk files present, unchecked (cheap: for progress; `sealed` is what a reader trusts)."""
        found = (CHUNK_NAME.match(p.name) for p in self.folder.glob("chunk-*.npy")) if self.folder.is_dir() else ()
        return {int(m.group(1)) for m in found if m and int(m.group(1)) < self.n_chunks}

    def seal(self, i: int, rows: np.ndarray) -> Path:
        """Write chunk `i` (atomically, named by its hash)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        path = self.folder / f"chunk-{i:06d}-{sha256_bytes(data)[:16]}.npy"
        atomic_write_bytes(path, data)
        return path

    def read(self, path: Path) -> np.ndarray:
        return np.load(path, allow_pickle=False)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

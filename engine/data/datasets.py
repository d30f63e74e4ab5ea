"""Saved datasets: letters files the user uploaded in the dashboard, kept in the cache with their columns.

Layout (in the cache folder):

    datasets/files/<sha16>-<name>     the uploaded bytes, content-addressed (the same upload is stored once)
    datasets/<id>.json                one saved dataset: name, file, text/label columns, label separator, data
                                      options (text template, split column, answer column, label columns, sheet), data
                                      hash, letters and classes when saved

A saved dataset is a file plus the columns to read; a run's spec points at the stored file,
so a run keeps working when the browser's copy is gone. Deleting a saved dataset removes its
description only: the file stays, because finished runs and evaluations may refer to it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.cache.storage import atomic_write_bytes, atomic_write_json, datasets_dir, sha256_bytes, sha256_json
from engine.data import dataset, tables
from engine.errors import DataError


@dataclass
class SavedDataset:
    id: str
    name: str
    file: str
    text_column: str
    label_column: str
    label_sep: str | None
    data_hash: str
    n_letters: int
    classes: list[str]
    created: str
    options: dict | None = None  # engine.data's data options it was read with (text_template, split_column, label_columns, ...)
    multi_label: bool | None = None  # several labels per letter (None: saved before this was recorded)

    def spec_data(self) -> dict:
        """The `data` entry of an experiment spec that reads this dataset."""
        base = {"path": self.file, "text_column": self.text_column, "label_column": self.label_column, "label_sep": self.label_sep}
        return {**base, **(self.options or {})}


def _safe_name(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "letters"
    return stem[-80:]


def store_upload(filename: str, content: bytes) -> Path:
    """Keep an uploaded file in the cache (content-addressed) and return its path. The suffix decides the format; a file over
    the size limit (CLINBENCH_MAX_DATA_MB) is refused before it is written."""
    suffix = Path(filename).suffix.lower()
    if suffix not in dataset.SUFFIXES:
        raise DataError(f"{filename}: unsupported file type {suffix or '(none)'!r}. Upload a {tables.FORMATS} file.")
    tables.check_size(Path(filename).name, len(content))  # before anything is written
    path = datasets_dir() / "files" / f"{sha256_bytes(content)[:16]}-{_safe_name(filename)}"
    if not path.exists():
        atomic_write_bytes(path, content)
    return path


def save(path: str | Path, name: str, text_column: str, label_column: str, label_sep: str | None = None, **options) -> SavedDataset:
    """Validate the file with these columns (and data options, engine.data.dataset.DATA_OPTIONS, as keywords) and save its
    description; DataError lists every blocking problem."""
    name = name.strip()
    if not name:
        raise DataError("Give the dataset a name (e.g. 'discharge letters 2024').")
    ds = dataset.load_dataset(path, text_column, label_column, label_sep=label_sep or None, **options)
    ident = (sha256_json([ds.data_hash, ds.options]) if ds.options else ds.data_hash)[:16]  # the same letters read two ways: two
    saved = SavedDataset(
        ident,
        name,
        str(Path(path).resolve()),
        text_column,
        ds.label_column,  # (with label_columns: their names, 'a, b, c'; the label column is ignored)
        label_sep or None,
        ds.data_hash,
        len(ds),
        ds.classes,
        time.strftime("%Y-%m-%d %H:%M"),
        ds.options,
        ds.multi_label,
    )
    atomic_write_json(datasets_dir() / f"{ident}.json", asdict(saved))
    return saved


def list_saved() -> tuple[list[SavedDataset], list[tuple[str, str]]]:
    """(saved datasets newest first, [(file, why it was skipped)] for damaged descriptions or missing files)."""
    out, skipped = [], []
    for p in sorted(datasets_dir().glob("*.json")):
        try:
            saved = SavedDataset(**json.loads(p.read_text()))
        except (ValueError, TypeError) as exc:
            skipped.append((p.name, f"unreadable description ({exc}); delete it and save the dataset again"))
            continue
        if not Path(saved.file).exists():
            skipped.append((p.name, f"its file {saved.file} is gone; upload it again"))
            continue
        out.append(saved)
    out.sort(key=lambda s: s.created, reverse=True)
    return out, skipped


def _no_such(ident) -> DataError:
    return DataError(f"There is no saved dataset {ident!r}. The Data page lists the saved datasets.")


def get(ident: str) -> SavedDataset:
    for s in list_saved()[0]:
        if s.id == ident:
            return s
    raise _no_such(ident)


def delete(ident: str) -> None:
    """Forget a saved dataset's description (its file stays: runs may refer to it). An id is 16 hex digits (the start of
    the data hash): anything else, such as '../runs/x', is refused, so no file outside datasets/ can be removed."""
    if not isinstance(ident, str) or not re.fullmatch(r"[0-9a-f]{16}", ident):
        raise _no_such(ident)
    (datasets_dir() / f"{ident}.json").unlink(missing_ok=True)

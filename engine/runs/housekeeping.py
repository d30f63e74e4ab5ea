"""What the cache holds, per folder, dataset, model and run, and `cache prune`, which never removes what a run shows.

The cache is read as items: an evaluation or adapted-model folder, an embeddings or projection file pair
(<key>.npy + <key>.json), a checkpoint, a run's log, a leftover (a temporary whose writer is gone, a
`.corrupt-*` folder moved aside, an `.old-*` folder of an interrupted replace), and the files that are never
pruned (the run store, saved datasets, converted models, anything else). Items refer to one another through
their manifests (an evaluation names its embeddings; a projection its embeddings). A run refers to the
artifacts its steps stored, the adapted models its spec names, the letters file it was submitted with
when that file is in the cache, and its log: that closure (plus projections of its embeddings) is what the
run shows, and is kept while the run is in the store, whatever its state.

Prune selectors (at least one; they add up):
    orphans      leftovers; checkpoints (only while no step is queued or running); logs of runs no longer in
                 the store; embeddings and projections that no stored evaluation or run uses. Evaluation and
                 adapted-model folders no run references are kept: `evaluate` stores results outside runs.
    older_than   evaluations, adapted models, embeddings, projections, checkpoints and leftovers unused
                 (manifest or metadata modified or read) for that many days, that no run references.
    runs         delete those finished runs (engine.runs.jobs.delete) and the artifacts only they referenced.
Whatever a remaining evaluation or run still refers to is kept, even if a selector picked it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.cache.storage import _TMP_NAME
from engine.errors import ClinBenchError
from engine.options.config import cache_dir
from engine.runs import jobs

FOLDERS = ("models", "embeddings", "evaluations", "checkpoints", "projections", "datasets", "runs")
GROUPINGS = ("folder", "dataset", "model", "run")
_OLD_NAME = re.compile(r"^\..+\.old-(\d+)$")
_LOG_NAME = re.compile(r"^run-(\d+)\.log$")
NONE = "(none)"


@dataclass
class Item:
    kind: str  # evaluation adapted model embeddings projection checkpoint log leftover writing store dataset other
    name: str
    paths: list[Path]
    folder: str
    manifest: dict = field(default_factory=dict)
    refs: set[str] = field(default_factory=set)
    dataset: str = NONE
    model: str = NONE

    @property
    def size(self) -> int:
        return sum(_bytes(p) for p in self.paths)

    @property
    def used(self) -> float:
        """Last use: newest mtime/atime of its manifest (or metadata), else of its files."""
        marks = [p / "manifest.json" if p.is_dir() else p for p in self.paths]
        stats = [os.stat(p) for p in marks if p.exists()] or [os.stat(p) for p in self.paths if p.exists()]
        return max((max(s.st_mtime, s.st_atime) for s in stats), default=0.0)


def _bytes(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink()) if path.is_dir() else 0


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def _strings(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_strings(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_strings(v) for v in obj)) if obj else set()
    return {obj, Path(obj).name} if isinstance(obj, str) and len(obj) < 4096 else set()


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def _dotted(p: Path, folder: str) -> Item:
    """A dot-named entry: a leftover, or a temporary whose writer is still at work."""
    m = _TMP_NAME.match(p.name) or _OLD_NAME.match(p.name)
    writing = m is not None and _pid_alive(int(m.group(1)))
    kind = "writing" if writing else "leftover" if m or p.name.startswith(".corrupt-") else "other"
    return Item(kind, f"{folder}/{p.name}", [p], folder)


def inventory(root: Path | None = None) -> dict[str, Item]:
    """Every item in the cache by name (evaluations and adapted models by folder name, embeddings by key)."""
    root = Path(root or cache_dir())
    items: dict[str, Item] = {}

    def add(item: Item) -> None:
        items[item.name] = item

    for top in sorted(root.iterdir()) if root.exists() else []:
        if top.name not in FOLDERS or not top.is_dir():
            add(_dotted(top, "(other)") if top.name.startswith(".") else Item("other", top.name, [top], "(other)"))
            continue
        pairs: dict[str, list[Path]] = {}
        entries = sorted(top.iterdir())
        if top.name == "datasets" and (top / "files").is_dir():  # uploaded letters files, one item each
            entries = [p for p in entries if p.name != "files"] + sorted((top / "files").iterdir())
        for p in entries:
            if p.name.startswith("."):
                add(_dotted(p, top.name))
            elif top.name in ("evaluations", "models") and p.is_dir():
                man = _read_json(p / "manifest.json")
                kind = "evaluation" if top.name == "evaluations" else "adapted" if p.name.startswith("adapted-") else "model"
                add(Item(kind, p.name, [p], top.name, man, model=(man.get("model") or {}).get("name") or p.name))
            elif top.name in ("embeddings", "projections") and p.suffix in (".npy", ".json"):
                pairs.setdefault(p.stem, []).append(p)
            elif top.name == "checkpoints":
                add(Item("checkpoint", f"checkpoints/{p.name}", [p], top.name))
            elif top.name == "runs" and _LOG_NAME.match(p.name):
                add(Item("log", f"run-{_LOG_NAME.match(p.name).group(1)}", [p], top.name))
            else:
                add(Item({"runs": "store", "datasets": "dataset"}.get(top.name, "other"), f"{top.name}/{p.name}", [p], top.name))
        for key, paths in pairs.items():
            meta = _read_json(top / f"{key}.json")
            kind = "embeddings" if top.name == "embeddings" else "projection"
            item = Item(kind, key if kind == "embeddings" else f"projections/{key}", paths, top.name, meta)
            item.model = (meta.get("model") or {}).get("name") or NONE
            item.refs = {meta["embeddings_key"]} if isinstance(meta.get("embeddings_key"), str) else set()
            add(item)
    names = {it.manifest.get("name"): n for n, it in items.items() if it.kind == "adapted" and it.manifest.get("name")}
    for it in items.values():
        if it.kind in ("evaluation", "adapted"):
            it.refs = ({names.get(s, s) for s in _strings(it.manifest)} & set(items)) - {it.name}
            data = it.manifest.get("data") or {}
            if data.get("data_hash"):
                it.dataset = f"{Path(str(data.get('source'))).name} ({str(data['data_hash'])[:8]})"
    for it in items.values():  # embeddings and their maps: the dataset and model of an evaluation that uses them
        for user in (u for u in items.values() if u.kind in ("evaluation", "adapted") and it.name in u.refs):
            it.dataset, it.model = user.dataset, user.model if it.model == NONE else it.model
            break
    for it in items.values():
        if it.kind == "projection" and it.refs and (src := items.get(next(iter(it.refs)))):
            it.dataset, it.model = src.dataset, src.model
    return items


def closure(roots: set[str], items: dict[str, Item]) -> set[str]:
    """`roots` and everything they refer to, plus the projections of any embeddings among them."""
    seen, todo = set(), [r for r in roots if r in items]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(r for r in items[name].refs if r in items and r not in seen)
    return seen | {n for n, it in items.items() if it.kind == "projection" and it.refs & seen}


def run_roots(run, items: dict[str, Item]) -> set[str]:
    """The items a run refers to directly: its steps' artifacts, adapted models it names, its letters file, its log."""
    roots = {Path(s.result["artifact"]).name for s in run.steps if s.result and s.result.get("artifact")}
    roots |= {f"run-{run.id}"} | {m for m in (run.spec.get("models") or []) if isinstance(m, str)}
    data = str((run.spec.get("data") or {}).get("path") or "")
    for it in items.values():
        if (it.kind == "dataset" and data in map(str, it.paths)) or (it.kind == "adapted" and it.manifest.get("name") in roots):
            roots.add(it.name)
    return {r for r in roots if r in items}


def usage() -> dict:
    """Bytes in the cache: total, per folder, per dataset, per model (each a partition of the total) and per run
    (what each run refers to; runs may share items), plus the bytes no run refers to."""
    runs = jobs.list_runs()  # (first: reading creates the store)
    items = inventory()
    sizes = {n: it.size for n, it in items.items()}
    by: dict[str, dict[str, dict]] = {g: {} for g in GROUPINGS}
    for n, it in items.items():
        for g, label in (("folder", it.folder), ("dataset", it.dataset), ("model", it.model)):
            row = by[g].setdefault(label, {"group": label, "bytes": 0, "items": 0})
            row["bytes"] += sizes[n]
            row["items"] += 1
    referenced: set[str] = set()
    for run in runs:
        mine = closure(run_roots(run, items), items)
        referenced |= mine
        label = f"{run.id} {run.name}"
        by["run"][label] = {
            "group": label,
            "run_id": run.id,
            "status": str(run.status),
            "bytes": sum(sizes[n] for n in mine),
            "items": len(mine),
        }
    unref = [n for n, it in items.items() if n not in referenced and it.kind not in ("store", "dataset", "model", "other")]
    total = sum(sizes.values())
    return {
        "cache": str(cache_dir()),
        "total_bytes": total,
        "unreferenced_bytes": sum(sizes[n] for n in unref),
        "by": {g: sorted(rows.values(), key=lambda r: (-r["bytes"], str(r["group"]))) for g, rows in by.items()},
    }


def prune(*, older_than_days: float | None = None, runs=(), orphans: bool = False, dry_run: bool = False) -> dict:
    """Remove what the selectors pick (see the module's docstring) and nothing any remaining run or evaluation refers to.
    Returns {dry_run, removed: [{kind, name, path, bytes, why}], runs_deleted, freed_bytes}."""
    if older_than_days is None and not runs and not orphans:
        raise ClinBenchError("cache prune needs a selector: --orphans, --older-than DAYS, or --run ID (add --dry-run to only list).")
    if older_than_days is not None and older_than_days < 0:
        raise ClinBenchError(f"--older-than {older_than_days}: give a number of days, 0 or more.")
    runs = sorted({int(r) for r in runs})
    for rid in runs:
        run = jobs.get_run(rid)  # unknown id: a clear error before anything is removed
        if not run.status.final:
            raise ClinBenchError(f"Run {rid} is {run.status}; cancel it first (`python -m engine runs cancel {rid}`), then prune it.")
    stored = jobs.list_runs()
    items = inventory()
    busy = any(s.status in ("queued", "running") for r in stored for s in r.steps)
    keep = set().union(*(closure(run_roots(r, items), items) for r in stored if r.id not in runs))
    picked: dict[str, str] = {}
    for rid in runs:
        for n in closure(run_roots(next(r for r in stored if r.id == rid), items), items):
            picked.setdefault(n, f"only run {rid} used it")
    if orphans:
        users = set().union(*(it.refs for it in items.values() if it.kind in ("evaluation", "adapted")))
        ids = {f"run-{r.id}" for r in stored}
        for n, it in items.items():
            why = {
                "leftover": "leftover of an interrupted write or a damaged folder moved aside",
                "checkpoint": None if busy else "checkpoint of a step no longer running",
                "log": None if n in ids else "log of a run no longer in the store",
                "embeddings": None if n in users else "embeddings no stored evaluation uses",
                "projection": None if it.refs & users else "map of embeddings no stored evaluation uses",
            }.get(it.kind)
            if why:
                picked.setdefault(n, why)
    if older_than_days is not None:
        limit = time.time() - older_than_days * 86400
        aging = {"evaluation", "adapted", "embeddings", "projection", "leftover", *(() if busy else ("checkpoint",))}
        for n, it in items.items():
            if it.kind in aging and it.used < limit:
                picked.setdefault(n, f"unused for more than {older_than_days:g} days")
    survivors = {n for n, it in items.items() if n not in picked and it.kind in ("evaluation", "adapted", "projection")}
    keep |= closure(survivors, items)
    picked = {
        n: why for n, why in picked.items() if n not in keep and items[n].kind not in ("store", "dataset", "model", "other", "writing")
    }
    removed = [
        {"kind": items[n].kind, "name": n, "path": str(p), "bytes": _bytes(p), "why": why}
        for n, why in sorted(picked.items())
        for p in items[n].paths
    ]
    if not dry_run:
        for rid in runs:
            jobs.delete(rid)
        for row in removed:
            p = Path(row["path"])
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return {"dry_run": dry_run, "removed": removed, "runs_deleted": runs, "freed_bytes": sum(r["bytes"] for r in removed)}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def report(res: dict, by: str = "folder") -> str:
    """The text `cache usage` or `cache prune` prints."""
    if "removed" in res:
        verb = "would remove" if res["dry_run"] else "removed"
        lines = [f"{verb} {human(r['bytes']):>9s}  {r['path']}  ({r['why']})" for r in res["removed"]]
        deleted = (
            f"; run(s) {', '.join(map(str, res['runs_deleted']))} {'would be ' if res['dry_run'] else ''}deleted"
            if res["runs_deleted"]
            else ""
        )
        return "\n".join(
            [*lines, f"{'would free' if res['dry_run'] else 'freed'} {human(res['freed_bytes'])} ({len(lines)} path(s)){deleted}"]
        )
    rows = res["by"][by]
    width = max([len(str(r["group"])) for r in rows] + [len(by)])
    lines = [f"{by:{width}s}  {'size':>9s}  items" + ("  status" if by == "run" else "")]
    lines += [
        f"{r['group']!s:{width}s}  {human(r['bytes']):>9s}  {r['items']:5d}" + (f"  {r['status']}" if by == "run" else "") for r in rows
    ]
    return "\n".join(
        [*lines, f"\ntotal {human(res['total_bytes'])} in {res['cache']}; no run refers to {human(res['unreferenced_bytes'])}"]
    )

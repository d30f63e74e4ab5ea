"""The cache folder's layout, content hashes and atomic writes.

Layout of the cache folder (`cache/`, or $CLINBENCH_CACHE):

    models/<name>-<hash>/        bundled models converted for fast reload (SmolLM2 GGUF -> safetensors)
    embeddings/<key>.npy         one row per letter, float32, in the dataset's order
    embeddings/<key>.json        what produced it: model identity, pooling, max_length, dtype, text hash, stats
    embeddings/<key>.parts/      an extraction in progress: its sealed chunks (engine.cache.chunks), removed once <key>.npy is
    evaluations/<key>/           one evaluation: manifest.json, classifier.skops, predictions.json
                                 (fine-tuning: adapter/ or head.safetensors instead of classifier.skops)
    checkpoints/<key>.pt         the last finished epoch of a training in progress
    models/adapted-<m>-<key>/    a domain-adapted model (merged weights, adapter/, manifest)
    runs/runs.sqlite             the run store (SQLite, WAL): runs, their steps, live workers (engine.jobs)
    runs/run-<id>.log            what happened in one run: step starts and ends, warnings, tracebacks
    runs/worker.log              what the background workers printed
    datasets/files/<sha16>-<name> letters files uploaded in the dashboard (engine.datasets)
    datasets/<id>.json           a saved dataset: its file and the text/label columns to read
    projections/<key>.npy        2-D UMAP coordinates of one embeddings file (+ <key>.json: parameters, source hash)
    locks/<name>.lock            file locks: one writer at a time for a file that two steps may compute at once (`sole_writer`)
    hashes.json                  memo of weight-file hashes keyed by (path, size, mtime)

Every file is written to a temporary name beside its destination and renamed when
complete, so a crash or a cancel never leaves a half-written file under a real name; a full disk
(ENOSPC, or a library error quoting it) is reported as engine.errors.DiskFull after the temporary is removed.
Artifact folders (a manifest with the sha256 of every file) are engine.artifacts'.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.options.config import cache_dir
from engine.errors import DiskFull


def models_dir() -> Path:
    return _sub("models")


def embeddings_dir() -> Path:
    return _sub("embeddings")


def evaluations_dir() -> Path:
    return _sub("evaluations")


def runs_dir() -> Path:
    return _sub("runs")


def datasets_dir() -> Path:
    return _sub("datasets")


def projections_dir() -> Path:
    return _sub("projections")


def checkpoints_dir() -> Path:
    return _sub("checkpoints")


def locks_dir() -> Path:
    return _sub("locks")


def _sub(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- hashing -----------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


def sha256_texts(texts: list[str]) -> str:
    """Order-sensitive hash of a list of strings (length-prefixed, so no two lists collide by joining)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def memo_file_hash(path: Path) -> str:
    """sha256 of a (large) file, memoised in cache/hashes.json by path, size and mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_file(path)
        atomic_write_json(memo_path, memo)
    return memo[key]


# --- atomic writes -----------------------------------------------------------

_TMP_NAME = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _tmp_prefix(path: Path) -> str:
    """Temporary names carry the writer's pid (.NAME.PID.RANDOM.tmp), so leftovers of a killed writer can be swept."""
    return f".{path.name}.{os.getpid()}."


PARTS_SUFFIX = ".parts"  # the folder of sealed chunks beside an array being written in chunks (engine.cache.chunks)
PARTS_MANIFEST = "manifest.json"
CHUNK_NAME = re.compile(r"^chunk-(\d{6})-([0-9a-f]{16})\.npy$")  # chunk index, first 16 hex digits of the sha256 of its bytes
PARTS_STALE_S = 7 * 86400  # a chunks folder untouched this long belongs to an extraction nobody resumed


def chunk_is_sealed(path: Path) -> bool:
    """Whether a chunk file's bytes match the hash its name carries (a damaged or foreign file does not)."""
    m = CHUNK_NAME.match(path.name)
    try:
        return bool(m) and sha256_file(path)[:16] == m.group(2)
    except OSError:
        return False


def _sweep_parts(folder: Path) -> list[Path]:
    """A chunks folder: all of it when stale (no readable manifest, or untouched for PARTS_STALE_S), else its damaged chunks.
    A resumable one is kept: an extraction that resumes starts from its sealed chunks."""
    try:
        manifest = json.loads((folder / PARTS_MANIFEST).read_text())
        newest = max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
    except (OSError, ValueError):
        manifest, newest = None, 0.0
    if not isinstance(manifest, dict) or time.time() - newest > PARTS_STALE_S:
        shutil.rmtree(folder, ignore_errors=True)
        return [folder]
    damaged = [p for p in folder.glob("chunk-*.npy") if not chunk_is_sealed(p)]
    for p in damaged:
        with contextlib.suppress(OSError):
            p.unlink()
    return damaged


def sweep_orphans(root: Path | None = None) -> list[Path]:
    """Delete temporary files and folders under `root` (default: the cache) whose writer process is gone, and stale or
    damaged chunks of extractions in progress (`_sweep_parts`; the sealed chunks of a resumable one are kept).

    A process killed in the middle of a write (kill -9, out of memory, a forced cancel) cannot
    clean up after itself; workers call this when they start and after terminating a step.
    """
    import psutil

    removed = []
    for folder in Path(root or cache_dir()).rglob(f"*{PARTS_SUFFIX}"):
        if folder.is_dir() and not folder.name.startswith("."):
            removed += _sweep_parts(folder)
    for p in Path(root or cache_dir()).rglob(".*.tmp"):
        m = _TMP_NAME.match(p.name)
        if not m or psutil.pid_exists(int(m.group(1))):
            continue  # not ours, or its writer is still at work
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError ENOSPC/EDQUOT, or a library's error (safetensors, torch) that wraps or quotes one."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in _NO_SPACE):
            return True
        if any(t in str(exc).lower() for t in _NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def disk_full(path: Path, needed: int, *, at_least: bool = True, exc: BaseException | None = None) -> DiskFull:
    """The DiskFull error for writing `needed` bytes (a lower bound when `at_least`) to `path`."""
    if isinstance(exc, DiskFull):  # an inner writer's report: add what this one had written
        needed += getattr(exc, "needed", 0)
    where = Path(path)
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    err = DiskFull(
        f"disk full: {'at least ' if at_least else ''}{needed / 1e6:.1f} MB needed, {free} at {where.parent} — nothing was "
        f"written to {where.name}. Free space (e.g. `python -m engine cache prune --orphans`) or set CLINBENCH_CACHE to a "
        "folder on a bigger disk."
    )
    err.needed, err.path = needed, where
    return err


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full(path, len(data), at_least=False, exc=None) from exc
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@contextlib.contextmanager
def sole_writer(path: Path, waiting: Callable[[], None]) -> Iterator[bool]:
    """One writer at a time for `path` across processes: an exclusive file lock (locks/<name>.lock; the kernel releases
    it if its holder dies). A second writer calls `waiting()` every 0.2 s while it waits (to report, or to raise on a
    cancel) and gets True: the first may have written `path` meanwhile, so it looks again before computing it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: two writers both compute, as before
        yield False
        return
    waited = False
    with open(locks_dir() / f"{Path(path).name}.lock", "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiting()
                waited = True
                time.sleep(0.2)
        try:
            yield waited
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise (disk_full(path, 0, exc=exc) if is_disk_full(exc) else exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if not is_disk_full(exc):
            raise
        written = _tree_bytes(Path(tmp))
        raise disk_full(path, written, exc=exc) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    except OSError as exc:
        raise (disk_full(path, 0, exc=exc) if is_disk_full(exc) else exc) from exc
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(path, _tree_bytes(tmp), exc=exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

"""The run store when its files are deleted or replaced underneath it (issue 16): committed runs survive the loss of
runs.sqlite-wal/-shm, run ids are never given twice, a worker whose store changed leaves without writing, and a file
that is not a ClinBench database is refused in one line and left as it is."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine import api
from engine.errors import ClinBenchError
from engine.runs import experiment, jobs
from engine.runs.states import Status
from engine.runs.store import database as store
from tests.conftest import cli, stop_workers


@pytest.fixture
def runs_cache(cache):
    cache.mkdir(parents=True, exist_ok=True)
    yield cache
    stop_workers(cache)


def tfidf_spec(csv: Path) -> dict:
    """The cheapest run: the tf-idf reference model alone (seconds, no neural model)."""
    return {
        "name": "ref",
        "data": {"path": str(csv), "text_column": "letter", "label_column": "specialty"},
        "models": ["tfidf"],
        "methods": ["tfidf"],
    }


def submit(csv: Path) -> int:
    return jobs.submit(experiment.parse_spec(tfidf_spec(csv)), start_worker=False)


def wait_until(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("timed out")


def without_wal(cache: Path) -> sqlite3.Connection:
    """What a reader sees of runs.sqlite alone, as if runs.sqlite-wal and -shm had been deleted."""
    copy = cache / "copy.sqlite"
    for suffix in ("-wal", "-shm", ""):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(store.db_path(), copy)
    return sqlite3.connect(copy)


def test_commits_that_matter_are_in_the_database_file_not_only_in_the_wal(runs_cache, small_csv):
    with store.connect():  # an open connection: no checkpoint happens when the others close
        run_id = submit(small_csv)
        assert without_wal(runs_cache).execute("SELECT id FROM runs").fetchall() == [(run_id,)]
        jobs.cancel(run_id)
        assert without_wal(runs_cache).execute("SELECT DISTINCT status FROM steps").fetchall() == [("cancelled",)]
        jobs.resume(run_id, start_worker=False)
        assert without_wal(runs_cache).execute("SELECT DISTINCT status FROM steps").fetchall() == [("queued",)]
        jobs.cancel(run_id)
        jobs.delete(run_id)
        assert without_wal(runs_cache).execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_run_ids_are_never_given_twice_even_when_the_database_loses_rows(runs_cache, small_csv):
    first = [submit(small_csv), submit(small_csv)]
    backup = runs_cache / "backup.sqlite"
    with store.connect() as conn:
        conn.execute("VACUUM INTO ?", (str(backup),))  # a backup taken now
    third = submit(small_csv)
    shutil.copyfile(backup, store.db_path())  # ... restored later: run 3 is gone from the database
    assert [r.id for r in jobs.list_runs()] == first[::-1]
    assert submit(small_csv) == third + 1

    def wipe():  # every row and the AUTOINCREMENT counter lost
        with sqlite3.connect(store.db_path()) as conn:
            conn.execute("DELETE FROM steps")
            conn.execute("DELETE FROM runs")
            conn.execute("DELETE FROM sqlite_sequence")

    wipe()
    assert submit(small_csv) == third + 2  # from runs/last-run-id
    wipe()
    (runs_cache / "runs" / "last-run-id").unlink()
    assert submit(small_csv) == third + 3  # from the run logs' names
    jobs.cancel(third + 3)
    jobs.delete(third + 3)  # its log goes too; last-run-id still remembers it
    wipe()
    assert submit(small_csv) == third + 4


def test_normal_use_of_the_wal_by_other_processes_does_not_count_as_a_change(runs_cache):
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('INSERT INTO workers (pid, create_time, host, started, heartbeat) VALUES (?, 1, \"h\", 1, 1)', (int(sys.argv[2]),))\n"
        "c.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
        "c.close()\n"
    )
    with store.connect() as conn:
        for pid in (101, 102):
            subprocess.run([sys.executable, "-c", script, str(store.db_path()), str(pid)], check=True)
        assert store.changed(conn) is None
        with store.transaction(conn, durable=True):
            conn.execute("DELETE FROM workers")
    with store.connect() as conn:  # the last connection closed: SQLite removed the -wal; a new one is made
        assert store.changed(conn) is None
        copy = runs_cache / "other.sqlite"
        shutil.copyfile(store.db_path(), copy)
        os.replace(copy, store.db_path())  # the database file replaced
        assert "runs.sqlite was replaced" in store.changed(conn)
        with pytest.raises(store.StoreChanged, match="changed under this process"), store.transaction(conn):
            conn.execute("DELETE FROM workers")


def test_deleting_the_wal_under_an_idle_worker_loses_no_run_and_the_worker_leaves(runs_cache, small_csv, tmp_path):
    spec = tmp_path / "ref.json"
    spec.write_text(json.dumps(tfidf_spec(small_csv)))
    out = cli("submit", str(spec), timeout=120)
    assert out.returncode == 0, out.stderr
    old = int(out.stdout.strip().splitlines()[-1])
    done = wait_until(lambda: (r := jobs.get_run(old)).status.final and r)
    assert done.status == Status.DONE and done.steps[0].result["macro_f1"] > 0
    (worker,) = jobs.workers()
    time.sleep(1.0)  # the worker is idle, polling the queue
    db = store.db_path()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()

    gone, alive = psutil.wait_procs([psutil.Process(worker["pid"])], timeout=15)
    assert gone and not alive, "the worker whose store changed under it must leave"
    log = (runs_cache / "runs" / "worker.log").read_text()
    assert f"worker {worker['pid']}: the run store {db} changed under this process" in log and "without writing" in log

    (run,) = jobs.list_runs()  # (a) the finished run and its results are still there
    assert run.id == old and run.status == Status.DONE and run.steps[0].result == done.steps[0].result
    new = submit(small_csv)  # (b) a new id
    assert new > old
    time.sleep(1.0)  # (c) nothing of the old worker's comes back: the new run is still queued, the store sound
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT id FROM runs ORDER BY id").fetchall() == [(old,), (new,)]
        assert conn.execute("SELECT status FROM steps WHERE run_id = ?", (new,)).fetchall() == [("queued",)]


GARBAGE = {
    "random bytes": os.urandom(3000),
    "a text file": b"these are my notes, not a database\n" * 10,
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_store_file_that_is_not_a_database_is_refused_in_one_line_and_left_as_it_is(cache, small_csv, tmp_path, content):
    db = cache / "runs" / "runs.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(content)
    spec = tmp_path / "ref.json"
    spec.write_text(json.dumps(tfidf_spec(small_csv)))
    for args in (["runs"], ["submit", str(spec)]):
        out = cli(*args, timeout=120)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"error: the run store at {db} is not a ClinBench database (") and "move it aside" in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    with pytest.raises(ClinBenchError, match="is not a ClinBench database"):
        api.list_runs()
    assert db.read_bytes() == content


def test_an_sqlite_database_of_another_program_is_not_taken_over(cache):
    db = cache / "runs" / "runs.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = db.read_bytes()
    with pytest.raises(ClinBenchError, match=r"not a ClinBench database \(an SQLite database with other tables\)"):
        jobs.list_runs()
    assert db.read_bytes() == before


def test_a_worker_whose_store_is_deleted_mid_step_leaves_with_its_step_and_writes_nothing(runs_cache, small_csv, tiny_encoder, tmp_path):
    spec = dict(tfidf_spec(small_csv), models=[str(tiny_encoder)], methods=["svc"], reference=False)
    spec["options"] = {"max_length": 64, "grid": False, "n_boot": 100}
    (tmp_path / "slow.json").write_text(json.dumps(spec))
    out = cli("submit", str(tmp_path / "slow.json"), timeout=120, env_extra={"CLINBENCH_BATCH_DELAY_S": "0.3"})
    assert out.returncode == 0, out.stderr
    run_id = int(out.stdout.strip().splitlines()[-1])
    step = wait_until(lambda: (s := jobs.get_run(run_id).steps[0]).step_pid and s.progress.get("done") and s)
    procs = [psutil.Process(step.worker_pid), psutil.Process(step.step_pid)]
    db = store.db_path()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()  # the whole store gone

    _gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, "the worker and its step's process must both stop"
    assert "runs.sqlite was deleted" in (runs_cache / "runs" / "worker.log").read_text()
    assert not db.exists(), "nothing recreated the store"
    assert jobs.list_runs() == [] and submit(small_csv) > run_id  # a fresh store; the id still not reused

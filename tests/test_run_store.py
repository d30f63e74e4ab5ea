"""The run store is one object: no SQL outside engine/runs/store/, and `RunStore.move` is the one place a step changes
state (legal moves only, a lost race writes nothing, the run's state follows from its steps')."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engine.runs import experiment, jobs
from engine.runs.states import IllegalTransition, Status
from engine.runs.store.runstore import open_store
from tests.conftest import ROOT

# SQL as ClinBench writes it: keywords in capitals (prose in docstrings and messages does not match)
SQL = re.compile(
    r"\b(SELECT\b[\s\S]+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|(CREATE|ALTER|DROP)\s+(TABLE|INDEX)"
    r"|PRAGMA\s+\w+|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED)|ROLLBACK|COMMIT)\b"
)
EXECUTE = {"execute", "executemany", "executescript"}


def sql_outside_the_store(root: Path) -> list[str]:
    """file:line of every SQL string, every execute/executemany/executescript given statement text, and every sqlite3.connect,
    in the engine's modules outside engine/runs/store/."""
    found, store = [], root / "engine" / "runs" / "store"
    for path in sorted((root / "engine").rglob("*.py")):
        if store in path.parents:
            continue
        where = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{where}:{node.lineno}: SQL text {node.value[:60]!r}")
            elif isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                if SQL.search(text):
                    found.append(f"{where}:{node.lineno}: SQL f-string {text[:60]!r}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                args_are_text = node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr | ast.BinOp)
                if node.func.attr in EXECUTE and args_are_text:
                    found.append(f"{where}:{node.lineno}: .{node.func.attr}(...) with statement text")
                if node.func.attr == "connect" and isinstance(node.func.value, ast.Name) and node.func.value.id == "sqlite3":
                    found.append(f"{where}:{node.lineno}: sqlite3.connect")
    return found


def test_no_sql_outside_the_run_store():
    found = sql_outside_the_store(ROOT)
    assert not found, "SQL belongs in engine/runs/store/ (RunStore); found elsewhere:\n" + "\n".join(found)


def test_the_check_finds_sql_where_it_should_not_be(tmp_path):
    """The check is not blind: SQL written in a module outside the store, in each form, is found."""
    (tmp_path / "engine" / "runs" / "store").mkdir(parents=True)
    (tmp_path / "engine" / "runs" / "store" / "ok.py").write_text('Q = "SELECT * FROM runs"\n')
    (tmp_path / "engine" / "runs" / "worker.py").write_text(
        "import sqlite3\n"
        "def claim(conn, table):\n"
        '    conn.execute("UPDATE steps SET status = ? WHERE idx = ?", ("running", 1))\n'
        '    conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (1,))\n'
        "    conn.executemany(Q + ' x', [])\n"
        '    return sqlite3.connect("x.sqlite")\n'
        'Q = """INSERT INTO runs (id) VALUES (?)"""\n'
    )
    (tmp_path / "engine" / "runs" / "prose.py").write_text('"""Select the runs from the store; update the steps."""\n')
    found = sql_outside_the_store(tmp_path)
    assert all(f.startswith("engine/runs/worker.py:") for f in found), found
    assert {int(f.split(":")[1]) for f in found} == {3, 4, 5, 6, 7}, found


def _queued_run(small_csv) -> int:
    spec = experiment.parse_spec(
        {
            "data": {"path": str(small_csv), "text_column": "letter", "label_column": "specialty"},
            "models": ["tfidf"],
            "methods": ["tfidf"],
        }
    )
    return jobs.submit(spec, start_worker=False)


def test_move_claims_finishes_and_derives_the_run(cache, small_csv):
    run_id = _queued_run(small_csv)
    with open_store() as rs:
        assert rs.move(run_id, 0, Status.RUNNING, expect=Status.QUEUED, worker=4242, node="here") == Status.RUNNING
        rs.write_progress(run_id, 0, 3, 10, "embedding", 1.5, 4.7)
        rs.write_metric(run_id, 0, "train_loss", 0.5, 1)
        step = rs.run(run_id).steps[0]
        assert (step.status, step.worker_pid, step.node, step.attempts, step.progress["done"]) == ("running", 4242, "here", 1, 3)
        assert step.metrics == {"train_loss": [[1, 0.5]]}
        assert rs.move(run_id, 0, Status.DONE, expect=Status.RUNNING, worker=1, result={"macro_f1": 0.5}) is None  # not its worker
        assert rs.move(run_id, 0, Status.DONE, expect=Status.RUNNING, worker=4242, result={"macro_f1": 0.5}) == Status.DONE
        step = rs.run(run_id).steps[0]
        assert step.status == Status.DONE and step.result == {"macro_f1": 0.5} and step.progress["done"] == 10 and step.finished


def test_a_lost_race_writes_nothing_and_an_illegal_move_is_refused(cache, small_csv):
    run_id = _queued_run(small_csv)
    jobs.cancel(run_id)  # the cancel came first: the step is no longer queued
    with open_store() as rs:
        assert rs.move(run_id, 0, Status.RUNNING, expect=Status.QUEUED, worker=4242) is None
        assert rs.run(run_id).steps[0].status == Status.CANCELLED
        with pytest.raises(IllegalTransition, match=rf"step 1 of run {run_id} cannot go from cancelled to done"):
            rs.move(run_id, 0, Status.DONE, expect=Status.CANCELLED)
        assert rs.run(run_id).steps[0].status == Status.CANCELLED  # nothing was written
    jobs.resume(run_id, start_worker=False)
    with open_store() as rs:
        assert rs.move(run_id, 0, Status.RUNNING, expect=Status.QUEUED, worker=4242) == Status.RUNNING
        with pytest.raises(IllegalTransition, match="from running to queued"):
            rs.move(run_id, 0, Status.QUEUED, expect=Status.RUNNING)
        assert rs.move(run_id, 0, Status.FAILED, expect=Status.RUNNING, error="boom") == Status.FAILED
        with pytest.raises(IllegalTransition):
            rs.move(run_id, 0, Status.RUNNING, expect=Status.FAILED, worker=4242)  # a failed step is resumed, not run again

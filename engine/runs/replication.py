"""A stored evaluation checked beyond its own test split: naming it (`find_evaluations`, by key, key prefix or artifact
folder, as `predict --evaluation`, `score` and `rerun` accept), scoring its classifier on another labelled file
(`score_external`: external validation, nothing retrained) and running it again from its manifest in a fresh cache
(`rerun`: does the stored result replicate, and if not, what changed in the packages or the machine).

A rerun executes exactly the recorded step (letters, model, method and options, checked by engine.runs.experiment.parse_spec)
in a child Python process whose cache ($CLINBENCH_CACHE) is a new temporary folder, so no embedding, classifier or tuned
model is reused (a domain-adapted model, an input, is lent to it); the child's predictions.json is compared with the
stored one and the temporary cache is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from engine.errors import ClinBenchError, DataError
from engine.options import config, groups

SCORE_TOLERANCE = 1e-6  # predictions.json stores scores rounded to 6 decimals
F1_TOLERANCE = 1e-9


def find_evaluations(refs: list[str]) -> list:
    """Evaluations (engine.evaluation.results.Evaluation) named by key, key prefix (6+ characters) or artifact folder;
    ClinBenchError when one matches none or several."""
    from engine.evaluation import results

    evals, _ = results.list_evaluations()
    out = []
    for ref in refs:
        key = Path(ref).name
        hits = [e for e in evals if e.key == key or (len(key) >= 6 and e.key.startswith(key))]
        if len(hits) != 1:
            raise ClinBenchError(
                f"{'No' if not hits else 'More than one'} stored evaluation matches {ref!r}. Give its key as `python -m engine runs show ID` "
                "prints it (the artifact folder's name), or at least its first 6 characters."
            )
        out.append(hits[0])
    return out


# --- external validation ----------------------------------------------------------------


def _refuse_unknown_labels(labels: list[str], classes: list[str], ev, path) -> None:
    unknown = Counter(lab for lab in labels if lab not in set(classes))
    if unknown:
        listed = ", ".join(f"{lab!r} ({n})" for lab, n in unknown.most_common())
        several = " If a cell holds several labels, give their separator (--label-sep)." if ev.multi_label else ""
        raise DataError(
            f"{Path(path).name}: {sum(unknown.values())} letter(s) carry label(s) the classifier {ev.label} [{ev.key[:10]}] was never "
            f"trained on: {listed}. Its classes: {', '.join(classes)}. Rename those labels to one of its classes or remove "
            f"those rows, then score again.{several}"
        )


def _training_majority(ev) -> str | None:
    """The most frequent label of the letters the stored classifier was fitted on: recorded under holdout; under cv
    (refitted on every letter, each scored once per repeat) the most frequent truth of its predictions.json."""
    import numpy as np

    from engine.evaluation import results

    label = (ev.metrics.get("baseline") or {}).get("label")
    if label in ev.manifest["data"].get("classes", []) or ev.metrics.get("protocol") != "cv":
        return label
    try:
        values, counts = np.unique(np.asarray(results.predictions(ev)["y_true"], dtype=str), return_counts=True)
    except (ClinBenchError, KeyError, ValueError):
        return None
    return str(values[np.argmax(counts)]) if len(values) else None


def _overlap_error(ev, path, shared_rows: list[int], n_letters: int) -> DataError:
    shown = ", ".join(str(r + 1) for r in shared_rows[:10])
    more = f" and {len(shared_rows) - 10} more" if len(shared_rows) > 10 else ""
    return DataError(
        f"{Path(path).name}: {len(shared_rows)} of its {n_letters} letters were among the letters the classifier {ev.label} "
        f"[{ev.key[:10]}] was trained on (rows {shown}{more}; same text after normalising case, whitespace and punctuation), "
        "so its figures on them would be near-training figures, not an external validation. Score a file of other letters, "
        "or give --allow-overlap (allow_overlap) to score every letter and also report the figures on the unseen ones alone."
    )


def score_external(
    ref: str,
    path: str | Path,
    text_column: str,
    label_column: str,
    label_sep: str | None = None,
    allow_overlap: bool = False,
    sheet: str | None = None,
) -> dict:
    """The classifier of a stored evaluation (`ref`: key, key prefix or artifact folder) on every letter of another
    labelled file: macro-F1 over all its classes with a bootstrap 95% CI (the evaluation's n_boot and seed), accuracy,
    per-class scores, confusion matrix, and the baseline of always answering its training letters' majority label. The
    file is checked like a dataset (engine.data); labels the classifier never saw are refused. The classifier answers as
    it does on the Classify page: a two-label classifier at its operating threshold. A multi-label classifier's file may
    hold several labels per letter (a JSON list, or --label-sep) or none, and gets the multi-label figures (micro-F1 ...,
    engine.evaluation.metrics.multilabel_metrics); a single-label classifier refuses a multi-label file.

    A file sharing letters with those the classifier was trained on (engine.evaluation.overlap) is refused, naming how
    many and which rows, unless `allow_overlap`: then every letter is scored and `unseen` holds the same figures on the
    letters it never read (None when it read them all). `n_overlap` and `overlap_rows` (0-based data rows of the file)
    say which; `overlap_checked` is False for a classifier stored before its training letters were recorded."""
    from engine.data import dataset
    from engine.evaluation import overlap, scoring
    from engine.methods import classifiers

    (ev,) = find_evaluations([ref])
    ds = dataset.load_dataset(path, text_column, label_column, label_sep=label_sep, sheet=sheet)  # (sheet: of an .xlsx workbook)
    if ds.multi_label and not ev.multi_label:
        raise DataError(
            f"{Path(path).name} is multi-label (several labels per letter in column {label_column!r}); the classifier "
            f"{ev.label} predicts one label per letter. Choose a column with one label per letter, or drop --label-sep."
        )
    sets = [tuple(map(str, labs)) for labs in ds.labels] if ds.multi_label else [(str(lab),) for lab in ds.labels]
    labels = [lab for labs in sets for lab in labs] if ev.multi_label else [str(lab) for lab in ds.labels]
    if ev.manifest["data"].get("classes"):  # refuse early, before a model is loaded
        _refuse_unknown_labels(labels, [str(c) for c in ev.manifest["data"]["classes"]], ev, path)
    seen = overlap.trained_on(ev.folder)
    shared = overlap.shared(ds.texts, seen) if seen is not None else []
    shared_rows = scoring.input_rows(ds, shared)
    if shared and not allow_overlap:
        raise _overlap_error(ev, path, shared_rows, len(ds))
    clf = classifiers.load(ev.folder)
    classes = [str(c) for c in clf.classes_]
    _refuse_unknown_labels(labels, classes, ev, path)
    answers = clf.decide(clf.predict_proba(ds.texts))
    cfg = ev.manifest.get("config", {})
    n_boot, seed = int(cfg.get("n_boot", 1000)), int(cfg.get("seed", 0))
    out = {"result": ev.key, "evaluation": ev.label, "model": ev.model, "method": ev.method, "data": str(path), "classes": classes}
    out |= {
        "overlap_checked": seen is not None,
        "n_overlap": len(shared),
        "overlap_rows": shared_rows,
        "n_training_letters": None if seen is None else len(seen),
    }
    every = list(range(len(ds)))
    figures = _external_figures(ev, ds, sets, answers, classes, every, n_boot, seed)
    unseen = None
    if shared:
        rest = sorted(set(every) - set(shared))
        unseen = _external_figures(ev, ds, sets, answers, classes, rest, n_boot, seed) if rest else None
    return {**out, **figures, "unseen": unseen, "protocol": "external", "n_letters": len(ds)}


def _external_figures(ev, ds, sets, answers, classes: list[str], rows: list[int], n_boot: int, seed: int) -> dict:
    """The figures of the letters `rows` of the external file `ds` (`answers`: the classifier's, for every letter)."""
    from sklearn.metrics import f1_score

    from engine.data.labels import indicator
    from engine.evaluation import metrics

    if ev.multi_label:
        chosen = [sets[i] for i in rows]
        T, P = indicator(chosen, classes), indicator([answers[i] for i in rows], classes)
        m = metrics.multilabel_metrics(T, P, classes, n_boot=n_boot, seed=seed)
        present = sorted({lab for labs in chosen for lab in labs})
        return {
            "task": "multi-label",
            "classes_in_file": present,
            "stored_micro_f1": ev.metrics.get("micro_f1"),
            "stored_macro_f1": ev.metrics.get("macro_f1"),
            **m,
            "n_letters": len(rows),
        }
    labels = [str(ds.labels[i]) for i in rows]
    y_pred = [str(answers[i]) for i in rows]
    m = metrics.metrics(labels, y_pred, labels=classes, n_boot=n_boot, seed=seed)  # every class counts, present in the file or not
    if (majority := _training_majority(ev)) in classes:
        base = [majority] * len(labels)
        f1 = f1_score(labels, base, labels=classes, average="macro", zero_division=0)
        m["baseline"] = {"label": majority, "macro_f1": float(f1), "accuracy": sum(t == majority for t in labels) / len(labels)}
    return {"classes_in_file": sorted(set(labels)), "stored_macro_f1": ev.metrics.get("macro_f1"), **m, "n_letters": len(rows)}


# --- rerun ------------------------------------------------------------------------------


def _data_problem(ev) -> str | None:
    """Why the recorded letters cannot be read again as they were (gone, unreadable, changed), or None."""
    from engine.data import dataset
    from engine.protocols import plans

    d = ev.manifest["data"]
    source = d.get("source", "?")
    if source != dataset.DEFAULT_NAME and not Path(source).exists():
        return (
            f"The letters file {source} that {ev.label} [{ev.key[:10]}] was evaluated on is gone (looked for it at "
            f"{Path(source).resolve()}). Restore it there (a relative path is read from the current folder), then rerun."
        )
    try:
        opts = {k: d[k] for k in dataset.DATA_OPTIONS if d.get(k)}
        ds = dataset.load_dataset(
            source, d.get("text_column", "text"), d.get("label_column", "label"), label_sep=d.get("label_sep"), **opts
        )
        conflicts = ev.manifest.get("config", {}).get("label_conflicts", "group")
        ds = plans.prepare(ds, groups.ProtocolOptions(label_conflicts=conflicts))  # the letters it scored
    except ClinBenchError as exc:
        return f"The letters file {source} can no longer be read as it was: {exc}"
    if ds.data_hash != d["data_hash"]:
        return (
            f"The letters file {source} changed since {ev.label} [{ev.key[:10]}] was evaluated (its content hash is "
            f"{ds.data_hash[:12]}, the manifest records {d['data_hash'][:12]}), so a rerun could not reproduce it. Restore the "
            "original file, or run a new evaluation on the changed one."
        )
    return None


def _recorded(manifest: dict) -> dict:
    return {**manifest.get("versions", {}), **manifest.get("environment", {})}


# The child process: executes exactly the recorded step (spec, model, method as JSON arguments), prints its artifact.
_CHILD = """
import json, sys
try:  # quiet, as `python -m engine` is: no loading reports or download bars from transformers
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
except ImportError:
    pass
from engine import api
spec, model, method, echo = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
try:
    spec = api.parse_spec(spec, where="manifest")
    step = next(s for s in spec.steps() if s["model"] == model and s["method"] == method)
    ctx = None
    if echo:
        from engine.cli.terminal import progress_bars
        ctx = progress_bars()
    res = api.run_in_process(spec, step, ctx=ctx)
except api.ClinBenchError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"artifact": res.artifact, "macro_f1": res.metrics.get("macro_f1")}))
"""


def _run_child(spec: dict, model: str, method: str, cache: Path, echo: bool) -> subprocess.CompletedProcess:
    """The step run by a fresh Python whose cache is `cache` (the repository first on its path, whatever the current folder)."""
    path = os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, config.CACHE_ENV: str(cache), "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec), model, method, "1" if echo else "0"],
        cwd=config.REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=None if echo else subprocess.PIPE,
        text=True,
    )


def rerun(ref: str, *, echo: bool = False) -> dict:
    """Run a stored evaluation (`ref`: key, key prefix or artifact folder) again, same letters, model, method and
    options, in a fresh temporary cache, and compare macro-F1 and predictions.json (labels; scores to 1e-6). `identical`
    says whether it replicated, `differences` what did not; `environment` holds the recorded and the current packages
    and machine, `changed` those that differ. When the letters are gone or changed, `problem` says so and nothing runs.
    `echo`: the child's progress bars and errors go to stderr."""
    from engine.data import dataset as data_mod
    from engine.evaluation import results
    from engine.runs import experiment

    (ev,) = find_evaluations([ref])
    m = ev.manifest
    out = {
        "result": ev.key,
        "evaluation": ev.label,
        "model": ev.model,
        "method": ev.method,
        "identical": False,
        "problem": _data_problem(ev),
        "differences": [],
        "macro_f1": {"stored": ev.metrics.get("macro_f1"), "rerun": None},
        "n_predictions_differing": None,
        "environment": {"stored": _recorded(m), "now": {**config.package_versions(), **config.environment()}, "changed": {}},
    }
    if out["problem"]:
        return out
    d = m["data"]
    source = d["source"] if d["source"] == data_mod.DEFAULT_NAME else str(Path(d["source"]).resolve())
    data = {"path": source, "text_column": d.get("text_column", "text"), "label_column": d.get("label_column", "label")}
    for k in ("label_sep", *data_mod.DATA_OPTIONS):  # everything the letters were read with
        if d.get(k):
            data[k] = d[k]
    names = {s.name for s in groups.fields()}
    opts = {k: v for k, v in m.get("config", {}).items() if k in names}  # drops "classifier", "train", ...
    spec = {"name": f"rerun {ev.key[:10]}", "data": data, "models": [ev.model], "methods": [ev.method], "options": opts}
    experiment.parse_spec(spec, where=f"the manifest of {ev.key[:10]}")  # refuse here, before a process starts
    stored_pred = results.predictions(ev)
    with tempfile.TemporaryDirectory(prefix="clinbench-rerun-") as tmp:
        cache = Path(tmp) / "cache"
        (cache / "models").mkdir(parents=True)
        if "-adapted-" in ev.model:  # a domain-adapted model is an input, kept in the cache: lend it to the fresh one
            from engine.cache.storage import models_dir

            for folder in models_dir().glob("adapted-*"):
                (cache / "models" / folder.name).symlink_to(folder, target_is_directory=True)
        done = _run_child(spec, ev.model, ev.method, cache, echo)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            why = "its error is printed above" if echo else (lines[-1] if lines else "no message")
            raise ClinBenchError(
                f"The rerun of {ev.label} [{ev.key[:10]}] failed (exit status {done.returncode}): {why}. Nothing stored was changed."
            )
        new = json.loads(done.stdout.strip().splitlines()[-1])
        folder = Path(new["artifact"])
        new_pred = json.loads((folder / "predictions.json").read_text())
        new_manifest = json.loads((folder / "manifest.json").read_text())
    out["macro_f1"]["rerun"] = new["macro_f1"]
    out["environment"]["now"].update(_recorded(new_manifest))
    _compare(out, stored_pred, new_pred)
    env = out["environment"]
    env["changed"] = {k: [v, env["now"][k]] for k, v in env["stored"].items() if k in env["now"] and env["now"][k] != v}
    out["identical"] = not out["differences"]
    return out


def _compare(out: dict, old: dict, new: dict) -> None:
    """Fill `differences` and `n_predictions_differing` from the stored and the new predictions.json."""
    import numpy as np

    diffs = out["differences"]
    f1 = out["macro_f1"]
    if abs(f1["stored"] - f1["rerun"]) > F1_TOLERANCE:
        diffs.append(f"macro-F1 {f1['stored']:.6f} stored, {f1['rerun']:.6f} now")
    keys = ["test_index", "y_true", *(k for k in ("repeat", "fold") if k in old and k in new)]  # older files lack repeat, fold
    if any(old.get(k) != new.get(k) for k in keys):
        diffs.append(f"the test letters differ ({len(old['test_index'])} stored, {len(new['test_index'])} now)")
        out["n_predictions_differing"] = None
        return
    differing = sum(a != b for a, b in zip(old["y_pred"], new["y_pred"]))
    out["n_predictions_differing"] = differing
    if differing:
        diffs.append(f"{differing} of {len(old['y_pred'])} predicted labels differ")
    if old.get("classes") != new.get("classes"):
        diffs.append(f"the classes differ ({old.get('classes')} stored, {new.get('classes')} now)")
        return
    a, b = np.asarray(old["scores"], dtype=float), np.asarray(new["scores"], dtype=float)
    gap = float(np.max(np.abs(a - b))) if a.shape == b.shape and a.size else (0.0 if a.shape == b.shape else float("inf"))
    out["max_score_difference"] = gap
    if gap > SCORE_TOLERANCE + 1e-12:
        diffs.append(f"scores ({old.get('score_kind', 'probability')}) differ by up to {gap:.2g}")

"""Stored evaluations as the dashboard reads them: listing (damaged ones skipped with a reason),
filtering by dataset and by artifact keys (a run's), predictions, comparison tables, significance
between models (on the letters and folds they share), and the letters behind the figures: those one
evaluation got wrong, and those on which several disagree.

Every evaluation is a folder cache/evaluations/<key>/ sealed by the step that made it; this
module only reads. Whatever methods exist (frozen-embedding classifiers today, fine-tuned stages later)
appear as they are stored: nothing here lists methods.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.cache.artifacts import read_manifest, verified_file
from engine.cache.storage import evaluations_dir
from engine.data import dataset
from engine.errors import ClinBenchError


@dataclass
class Evaluation:
    key: str
    folder: Path
    manifest: dict
    label: str = ""  # unique within a listing: "model · method" (+ stage, + key when ambiguous)

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def stage(self) -> str:
        return self.manifest.get("stage", "frozen")

    @property
    def data_hash(self) -> str:
        return self.manifest["data"]["data_hash"]

    @property
    def split_hash(self) -> str | None:
        """The hash of the letters it was scored on: the plan's (cv or holdout), or an older artifact's split."""
        return (self.manifest.get("protocol") or {}).get("hash") or (self.manifest.get("split") or {}).get("hash")

    @property
    def protocol(self) -> str:
        """'cv' or 'holdout' (older artifacts, made before the protocol was recorded, are holdouts)."""
        p = self.manifest.get("protocol")
        return (p.get("name") if isinstance(p, dict) else p) or "holdout"

    @property
    def metrics(self) -> dict:
        return self.manifest["metrics"]

    @property
    def multi_label(self) -> bool:
        """Whether it scored label sets (metrics task "multi-label"); older evaluations, without a task, are single-label."""
        return self.metrics.get("task") == "multi-label"

    @property
    def labels_per_class(self) -> int | None:
        """The training letters per label it was limited to (a learning curve's size); None: all of them."""
        return (self.manifest.get("protocol") or {}).get("labels_per_class") or self.manifest.get("config", {}).get("labels_per_class")

    @property
    def train_per_label(self) -> float | None:
        """Training letters per label, the mean over folds and labels (older artifacts: from the folds' sizes)."""
        p = self.manifest.get("protocol") or {}
        if p.get("train_per_label") is not None:
            return p["train_per_label"]
        sizes = [f.get("n_train") for f in p.get("folds") or [] if f.get("n_train")]
        n_classes = len(self.manifest["data"].get("classes") or [])
        return round(sum(sizes) / len(sizes) / n_classes, 2) if sizes and n_classes else None

    @property
    def fold_train_sizes(self) -> dict[tuple[int, int], int]:
        """{(repeat, fold): training letters} of its plan (cut to labels_per_class where it was); {} for older artifacts."""
        folds = (self.manifest.get("protocol") or {}).get("folds") or []
        return {(int(f["repeat"]), int(f["fold"])): int(f["n_train"]) for f in folds if f.get("n_train")}

    @property
    def repeats(self) -> int:
        """How many times each letter was scored: cv_repeats under cv (pooled figures count a letter once per repeat), 1
        under holdout."""
        p = self.manifest.get("protocol") or {}
        return int(p.get("n_repeats") or 1) if self.protocol == "cv" else 1

    @property
    def embeddings_key(self) -> str | None:
        return (self.manifest.get("embeddings") or {}).get("key")


@dataclass
class Skipped:
    folder: str
    reason: str


_REQUIRED = (("model", "name"), ("method",), ("data", "data_hash"), ("metrics", "macro_f1"))


def _check(manifest: dict) -> None:
    for path in _REQUIRED:
        node = manifest
        for k in path:
            if not isinstance(node, dict) or k not in node:
                raise ClinBenchError(f"its manifest has no {'.'.join(path)}")
            node = node[k]


def list_evaluations(data_hash: str | None = None, keys: set[str] | None = None) -> tuple[list[Evaluation], list[Skipped]]:
    """Stored evaluations (newest first), optionally of one dataset (data hash) or only those whose keys are given
    (e.g. a run's artifacts); damaged ones are skipped with a reason."""
    keep = keys
    out, skipped = [], []
    for folder in sorted(p for p in evaluations_dir().iterdir() if p.is_dir() and not p.name.startswith(".")):
        if keep is not None and folder.name not in keep:
            continue
        try:
            manifest = read_manifest(folder)
            _check(manifest)
        except ClinBenchError as exc:
            skipped.append(Skipped(folder.name, str(exc)))
            continue
        if data_hash and manifest["data"]["data_hash"] != data_hash:
            continue
        out.append(Evaluation(folder.name, folder, manifest))
    out.sort(key=lambda e: (e.manifest.get("created", ""), e.key), reverse=True)
    _label(out)
    return out, skipped


def _design(e: Evaluation) -> str:
    """'cv 5x2', 'holdout 0.2', plus the seed when not 0 and the training size when limited ('16 per label'): what tells
    two evaluations of one model and method apart."""
    p, cfg = e.manifest.get("protocol") or {}, e.manifest.get("config", {})
    text = f"cv {p.get('n_splits')}x{p.get('n_repeats')}" if e.protocol == "cv" else f"holdout {cfg.get('test_size', 0.2):g}"
    return text + (f", seed {cfg['seed']}" if cfg.get("seed") else "") + (f", {n} per label" if (n := e.labels_per_class) else "")


def _label(evals: list[Evaluation]) -> None:
    """Each evaluation's label: model · method, with its protocol (and seed) when that tells it from another, else its key."""
    base = {e.key: f"{e.model} · {e.method}" + ("" if e.stage == "frozen" else f" ({e.stage})") for e in evals}
    counts = Counter(base.values())
    named = {e.key: base[e.key] if counts[base[e.key]] == 1 else f"{base[e.key]} [{_design(e)}]" for e in evals}
    again = Counter(named.values())
    for e in evals:
        e.label = named[e.key] if again[named[e.key]] == 1 else f"{named[e.key][:-1]}, {e.key[:6]}]"


def datasets(evals: list[Evaluation]) -> list[dict]:
    """The datasets the evaluations were made on: data hash, source, letters, classes, number of evaluations."""
    seen: dict[str, dict] = {}
    for e in evals:
        d = e.manifest["data"]
        row = seen.setdefault(
            e.data_hash,
            {
                "data_hash": e.data_hash,
                "source": d.get("source", "?"),
                "n_letters": d.get("n_letters"),
                "classes": d.get("classes", []),
                "n_evaluations": 0,
            },
        )
        row["n_evaluations"] += 1
    return sorted(seen.values(), key=lambda r: -r["n_evaluations"])


def predictions(ev: Evaluation) -> dict:
    """predictions.json of an evaluation (checked against its manifest's hash)."""
    return json.loads(verified_file(ev.folder, "predictions.json").read_text())


def letters(ev: Evaluation):
    """The dataset an evaluation was made on (engine.data.dataset.Dataset), checked against the recorded data hash."""
    from engine.options.groups import ProtocolOptions
    from engine.protocols.plans import prepare

    d = ev.manifest["data"]
    opts = {k: d[k] for k in dataset.DATA_OPTIONS if d.get(k)}
    ds = dataset.load_dataset(d["source"], d.get("text_column", "text"), d.get("label_column", "label"), **opts)
    ds = prepare(ds, ProtocolOptions(label_conflicts=ev.manifest.get("config", {}).get("label_conflicts", "group")))
    if ds.data_hash != d["data_hash"]:
        raise ClinBenchError(
            f"The letters file {d['source']} changed since this evaluation was made (its content hash differs), "
            "so its letters cannot be matched to the stored results. Restore the file, or run the evaluation again."
        )
    return ds


def comparison_table(evals: list[Evaluation]) -> pd.DataFrame:
    """One row per evaluation: macro-F1 with its 95% CI, the protocol and letters behind it, the sd over folds, the
    training size (labels_per_class, None: all; train_per_label: the mean training letters per label), macro
    precision/recall, accuracy, baseline, what made it."""
    rows = []
    for e in evals:
        m, cfg = e.metrics, e.manifest.get("config", {})
        lo, hi = (m.get("macro_f1_ci") or [None, None])[:2]
        rows.append(
            {
                "evaluation": e.label,
                "model": e.model,
                "method": e.method,
                "stage": e.stage,
                "macro_f1": m["macro_f1"],
                "ci_low": lo,
                "ci_high": hi,
                "protocol": e.protocol,
                "n_letters": e.manifest["data"].get("n_letters"),
                "n_scored": m.get("n_scored", m.get("n_test")),
                "fold_sd": m.get("fold_macro_f1_sd"),
                "seed": cfg.get("seed"),
                "labels_per_class": e.labels_per_class,  # None: every training letter (a learning curve's sizes differ here)
                "train_per_label": e.train_per_label,
                "macro_precision": m.get("macro_precision"),
                "macro_recall": m.get("macro_recall"),
                "accuracy": m.get("accuracy"),
                "baseline_macro_f1": (m.get("baseline") or {}).get("macro_f1"),
                "n_test": m.get("n_test"),
                **_multilabel_columns(m),
                "pooling": cfg.get("pooling"),
                "max_length": cfg.get("max_length"),
                "windows": cfg.get("windows", 1),  # (stored before the option: cut at max_length)
                "smote": cfg.get("smote"),
                "key": e.key,
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True) if len(df) else df


def subgroup_table(evals: list[Evaluation]) -> pd.DataFrame:
    """One row per evaluation scored with a subgroup column and per subgroup: the column, the subgroup, its letters, the
    headline (macro_f1) with its 95% CI, whether it is too small to say much, and the evaluation's best-worst gap with
    its CI (engine.evaluation.subgroups). Empty when none was."""
    columns = ["evaluation", "column", "subgroup", "n", "macro_f1", "ci_low", "ci_high", "too_few", "gap", "gap_ci_low", "gap_ci_high"]
    rows = []
    for e in evals:
        m = e.metrics
        gap_lo, gap_hi = m.get("subgroup_gap_ci") or (None, None)
        for r in m.get("subgroups") or []:
            lo, hi = r.get("macro_f1_ci") or (None, None)
            rows.append(
                [
                    e.label,
                    m["subgroup_column"],
                    r["name"],
                    r["n"],
                    r["macro_f1"],
                    lo,
                    hi,
                    r["too_few"],
                    m.get("subgroup_gap"),
                    gap_lo,
                    gap_hi,
                ]
            )
    return pd.DataFrame(rows, columns=columns)


MULTILABEL_SCORES = ("micro_f1", "macro_f1", "samples_f1")  # the F1 scores of a multi-label evaluation that carry a CI


def _multilabel_columns(m: dict) -> dict:
    """A comparison row's multi-label figures (task, micro/samples-F1 with CIs, subset accuracy, Hamming loss, baselines);
    a single-label evaluation has task "single-label" and None in the others."""
    multi = m.get("task") == "multi-label"
    out: dict = {"task": "multi-label" if multi else "single-label"}
    for name in ("micro_f1", "samples_f1"):
        lo, hi = (m.get(f"{name}_ci") or [None, None])[:2] if multi else (None, None)
        out |= {name: m.get(name) if multi else None, f"{name}_ci_low": lo, f"{name}_ci_high": hi}
    base = m.get("baseline") or {}
    out |= {k: m.get(k) if multi else None for k in ("subset_accuracy", "hamming_loss")}
    out |= {f"baseline_{k}": base.get(k) if multi else None for k in ("micro_f1", "samples_f1", "subset_accuracy")}
    return out


def per_class_table(evals: list[Evaluation]) -> pd.DataFrame:
    """Long table: evaluation, class, precision, recall, F1, support, and (multi-label) how many letters it was predicted
    for. Letters are counted once: under cv with repeats the stored counts (one per scored record) are divided by the
    repeats (support: the letters with the label; predicted: the mean over the repeats)."""
    rows = []
    for e in evals:
        per_label = e.metrics.get("per_label")
        if per_label:  # multi-label: one row per label, with the letters it was predicted for
            found = [{"evaluation": e.label, "class": r["label"], **{k: v for k, v in r.items() if k != "label"}} for r in per_label]
        else:
            found = [{"evaluation": e.label, "class": cls, **vals} for cls, vals in e.metrics.get("per_class", {}).items()]
        for r in found:
            for k in ("support", "predicted"):
                if r.get(k) is not None and e.repeats > 1:
                    r[k] = r[k] / e.repeats if r[k] % e.repeats else r[k] // e.repeats
        rows += found
    return pd.DataFrame(rows, columns=["evaluation", "class", "precision", "recall", "f1", "support", "predicted"])


def label_text(value) -> str:
    """A prediction or truth as text: a label, or a multi-label letter's labels joined with ' + ' ('(no label)' when none)."""
    if isinstance(value, (list, tuple)):
        return " + ".join(map(str, value)) or "(no label)"
    return str(value)


def _first_repeat(p: dict) -> dict[int, int]:
    """{dataset row: record position} of the records of repeat 0 (each letter once; a holdout's test letters)."""
    repeat = p.get("repeat") or [0] * len(p["test_index"])
    return {int(i): j for j, (i, r) in enumerate(zip(p["test_index"], repeat, strict=True)) if int(r) == 0}


def is_wrong(truth, prediction) -> bool:
    """The one definition of a wrong letter: its prediction is not its label (several labels per letter: not its whole
    label set)."""
    return label_text(truth) != label_text(prediction)


def scored_letters(ev: Evaluation) -> dict[int, dict]:
    """Each letter `ev` scored, once: {dataset position: {truth, prediction, wrong}}. Under cv a letter is scored once per
    repeat; this takes repeat 0 (what the misclassified letters list and the Embeddings map both show); under holdout
    the test letters."""
    p = predictions(ev)
    return {
        i: {"truth": p["y_true"][j], "prediction": p["y_pred"][j], "wrong": is_wrong(p["y_true"][j], p["y_pred"][j])}
        for i, j in sorted(_first_repeat(p).items())
    }


def _with_letters(df: pd.DataFrame, ev: Evaluation, texts, width: int) -> pd.DataFrame:
    """The start of each letter beside its row, and `row` turned from dataset positions into the input file's 0-based
    data rows (they differ when letters were left out, e.g. label conflicts dropped)."""
    rows, note = None, None
    if texts is None:
        try:
            ds = letters(ev)
            texts, rows = ds.texts, ds.rows
        except ClinBenchError as exc:
            note = str(exc)
    shown = [" ".join(str(t).split())[:width] + ("…" if len(str(t)) > width else "") for t in texts] if texts is not None else None
    df["letter"] = [shown[r] if shown is not None and r < len(shown) else "" for r in df["row"]]
    if rows is not None:
        df["row"] = [int(rows[r]) for r in df["row"]]
    if note:
        df.attrs["note"] = f"Letter texts unavailable: {note}"
    return df


def misclassified(ev: Evaluation, texts: list[str] | None = None, width: int = 160) -> pd.DataFrame:
    """The letters `ev` got wrong (`is_wrong`): row (the input file's data row, 0-based), truth, prediction, the predicted
    class's score, the start of the letter. Under cv, repeat 0's predictions (each letter once, as `scored_letters`).
    `texts`: the dataset's letters (default: loaded from the evaluation's data file, with its rows; when it cannot be,
    the letter column is empty and df.attrs['note'] says why)."""
    p = predictions(ev)
    classes, scores = [str(c) for c in p.get("classes") or []], p.get("scores")
    rows = []
    for row, j in sorted(_first_repeat(p).items()):
        truth, pred = label_text(p["y_true"][j]), label_text(p["y_pred"][j])
        if is_wrong(truth, pred):  # multi-label: the label set differs (the score is then left out: each label has its own)
            score = float(scores[j][classes.index(pred)]) if scores and pred in classes else None
            rows.append({"row": row, "truth": truth, "prediction": pred, "score": score})
    df = pd.DataFrame(rows, columns=["row", "truth", "prediction", "score"])
    return _with_letters(df, ev, texts, width)


def disagreements(evals: list[Evaluation], texts: list[str] | None = None, width: int = 160) -> pd.DataFrame:
    """The letters on which the evaluations (of one dataset) predict different labels: row (as misclassified), truth, each
    evaluation's prediction (a column per evaluation label), the start of the letter. Only letters every one of
    them scored; under cv, repeat 0's predictions."""
    if len({e.data_hash for e in evals}) > 1:
        raise ClinBenchError("Disagreements are found between evaluations of the same letters: choose evaluations of one dataset.")
    columns = ["row", "truth", *[e.label for e in evals]]
    if len(evals) < 2:
        return pd.DataFrame(columns=[*columns, "letter"])
    preds = [predictions(e) for e in evals]
    firsts = [_first_repeat(p) for p in preds]
    shared = sorted(set.intersection(*(set(f) for f in firsts)))
    rows = []
    for row in shared:
        said = [label_text(p["y_pred"][f[row]]) for p, f in zip(preds, firsts, strict=True)]
        if len(set(said)) > 1:
            rows.append([row, label_text(preds[0]["y_true"][firsts[0][row]]), *said])
    return _with_letters(pd.DataFrame(rows, columns=columns), evals[0], texts, width)

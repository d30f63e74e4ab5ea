"""Stored evaluations as the dashboard reads them: listing (damaged ones skipped with a reason),
filtering by dataset and by artifact keys (a run's), predictions, comparison tables, and
significance between models.

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

from engine import data, metrics
from engine.artifacts import read_manifest, verified_file
from engine.errors import ClinBenchError
from engine.storage import evaluations_dir


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
    def split_hash(self) -> str:
        return self.manifest["split"]["hash"]

    @property
    def metrics(self) -> dict:
        return self.manifest["metrics"]

    @property
    def embeddings_key(self) -> str | None:
        return (self.manifest.get("embeddings") or {}).get("key")


@dataclass
class Skipped:
    folder: str
    reason: str


_REQUIRED = (("model", "name"), ("method",), ("data", "data_hash"), ("split", "hash"), ("metrics", "macro_f1"))


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


def _label(evals: list[Evaluation]) -> None:
    base = {e.key: f"{e.model} · {e.method}" + ("" if e.stage == "frozen" else f" ({e.stage})") for e in evals}
    counts = Counter(base.values())
    for e in evals:
        e.label = base[e.key] if counts[base[e.key]] == 1 else f"{base[e.key]} [{e.key[:6]}]"


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
    """The dataset an evaluation was made on (engine.data.Dataset), checked against the recorded data hash."""
    d = ev.manifest["data"]
    ds = data.load_dataset(d["source"], d.get("text_column", "text"), d.get("label_column", "label"))
    if ds.data_hash != d["data_hash"]:
        raise ClinBenchError(
            f"The letters file {d['source']} changed since this evaluation was made (its content hash differs), "
            "so its letters cannot be matched to the stored results. Restore the file, or run the evaluation again."
        )
    return ds


def comparison_table(evals: list[Evaluation]) -> pd.DataFrame:
    """One row per evaluation: macro-F1 with its 95% CI, macro precision/recall, accuracy, baseline, what made it."""
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
                "macro_precision": m.get("macro_precision"),
                "macro_recall": m.get("macro_recall"),
                "accuracy": m.get("accuracy"),
                "baseline_macro_f1": (m.get("baseline") or {}).get("macro_f1"),
                "n_test": m.get("n_test"),
                "pooling": cfg.get("pooling"),
                "max_length": cfg.get("max_length"),
                "smote": cfg.get("smote"),
                "key": e.key,
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True) if len(df) else df


def per_class_table(evals: list[Evaluation]) -> pd.DataFrame:
    """Long table: evaluation, class, precision, recall, F1, support."""
    rows = [{"evaluation": e.label, "class": cls, **vals} for e in evals for cls, vals in e.metrics.get("per_class", {}).items()]
    return pd.DataFrame(rows, columns=["evaluation", "class", "precision", "recall", "f1", "support"])


def significance(evals: list[Evaluation], top: int = 4, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The best evaluation against each of the next `top - 1`, paired on the same test letters.

    Only evaluations on the best one's test split (same split hash) are compared; p-values are
    Holm-adjusted over the comparisons made. Rows: best, other, difference with 95% CI, p-values, verdict.
    """
    ranked = sorted(evals, key=lambda e: -e.metrics["macro_f1"])
    if len(ranked) < 2:
        return pd.DataFrame()
    best = ranked[0]
    others = [e for e in ranked[1:] if e.split_hash == best.split_hash][: max(1, top - 1)]
    if not others:
        return pd.DataFrame()
    pb = predictions(best)
    rows = []
    for other in others:
        po = predictions(other)
        if po["test_index"] != pb["test_index"] or po["y_true"] != pb["y_true"]:
            continue  # same split hash but different letters cannot happen for our own artifacts; be safe
        res = metrics.paired_macro_f1_test(pb["y_true"], pb["y_pred"], po["y_pred"], n_boot=n_boot, seed=seed)
        rows.append(
            {
                "best": best.label,
                "other": other.label,
                "best_macro_f1": best.metrics["macro_f1"],
                "other_macro_f1": other.metrics["macro_f1"],
                "difference": res["diff"],
                "diff_ci_low": res["diff_ci"][0],
                "diff_ci_high": res["diff_ci"][1],
                "p_bootstrap": res["p_bootstrap"],
                "p_mcnemar": res["p_mcnemar"],
                "n_test": res["n_test"],
            }
        )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df["p_holm"] = metrics.holm(df["p_bootstrap"].tolist())
    df["significant"] = df["p_holm"] < 0.05
    return df

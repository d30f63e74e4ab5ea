"""Sealed artifacts: the one place where steps write, check and find their results.

An artifact is a folder (an evaluation under cache/evaluations/<key>/, an adapted model under
cache/models/adapted-*/) holding a manifest.json with `producer: clinbench`, what made it, and the
sha256 of every other file in it. It is written under a temporary name and renamed when complete
(`write`), so a crash never leaves a half-written artifact under a real name. `stored` is the
cache lookup every step makes first; `verified_file` refuses a file the manifest does not list or
whose hash differs (a hash proves the file is the one listed, not who wrote it: stored estimators are therefore in a
format that cannot run code, engine.cache.estimator_files). predictions.json, which every classifying step writes, has its one writer here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.options.config import environment, package_versions
from engine.errors import ArtifactError, ClinBenchError
from engine.cache.storage import atomic_dir, atomic_write_json, sha256_file

PRODUCER = "clinbench"
MANIFEST_SCHEMA = 1
MANIFEST = "manifest.json"
MANIFEST_HASH = "manifest.sha256"


@dataclass
class StepResult:
    """What a step returns: its sealed artifact and the metrics recorded in it."""

    model: str
    method: str
    metrics: dict
    artifact: str  # the artifact folder
    cache_hit: bool
    manifest: dict


def seal(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write manifest.json into `directory`, listing the sha256 of every other file in it (subfolders too, by relative path)."""
    root = Path(directory)
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_HASH)
    }
    full = {"producer": PRODUCER, "schema": MANIFEST_SCHEMA, **manifest, "files": files}
    atomic_write_json(root / MANIFEST, full)
    (root / MANIFEST_HASH).write_text(sha256_file(root / MANIFEST))  # the manifest's own hash, checked by read_manifest
    return full


def write(folder: Path, manifest: dict[str, Any], write_files: Callable[[Path], None]) -> dict[str, Any]:
    """Create the artifact `folder`: `write_files(tmp)` fills a temporary folder, which is sealed and renamed. Returns the manifest."""
    with atomic_dir(folder) as tmp:
        write_files(tmp)
        return seal(tmp, manifest)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"No manifest at {path}: this folder was not written by ClinBench, or it was interrupted. Re-run the evaluation."
        ) from None
    except ValueError as exc:
        raise ArtifactError(f"The manifest {path} is not valid JSON ({exc}). Delete the folder and re-run the evaluation.") from None
    if manifest.get("producer") != PRODUCER:
        raise ArtifactError(f"{path} was not written by ClinBench (producer={manifest.get('producer')!r}); refusing to load it.")
    sealed = Path(directory) / MANIFEST_HASH  # (artifacts written before ClinBench 0.3 have none)
    if sealed.exists() and sealed.read_text().strip() != sha256_file(path):
        raise ArtifactError(
            f"{path} changed after it was written (its hash differs); delete {Path(directory).name} and re-run the evaluation."
        )
    return manifest


def stored(folder: Path, model: str, method: str) -> StepResult | None:
    """The finished artifact in `folder` as a cache hit, after checking every file it lists against its hash; None when
    absent, or when damaged: a damaged folder is moved aside (`quarantine`) and the step recomputes it."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        manifest = read_manifest(folder)
        verify_tree(folder, "")
        return StepResult(model, method, manifest["metrics"], str(folder), True, manifest)
    except (ClinBenchError, KeyError):
        quarantine(folder)
        return None


def quarantine(folder: Path) -> Path:
    """Move a damaged artifact folder aside (`.corrupt-<name>-<time>` next to it), so it is never used and can be inspected."""
    folder = Path(folder)
    target = folder.with_name(f".corrupt-{folder.name}-{time.strftime('%Y%m%dT%H%M%S')}")
    with contextlib.suppress(OSError):
        folder.rename(target)
    return target


def verified_file(directory: Path, name: str) -> Path:
    """Path of `name` in an artifact folder after checking it against the manifest's sha256."""
    manifest = read_manifest(directory)
    expected = manifest.get("files", {}).get(name)
    path = Path(directory) / name
    if expected is None:
        raise ArtifactError(f"{name} is not listed in {Path(directory) / MANIFEST}; refusing to load an unlisted file.")
    if not path.exists():
        raise ArtifactError(f"{path} is missing. Re-run the evaluation to recreate it.")
    if sha256_file(path) != expected:
        raise ArtifactError(
            f"{path} does not match the hash in its manifest (changed or corrupted). Delete {directory} and re-run the evaluation."
        )
    return path


def verify_tree(directory: Path, prefix: str) -> None:
    """Check every manifest-listed file under `prefix` (e.g. 'adapter/') of an artifact folder."""
    for name in read_manifest(directory).get("files", {}):
        if name.startswith(prefix):
            verified_file(directory, name)


def write_predictions(
    folder: Path,
    test_index,
    y_true,
    y_pred,
    classes: list[str],
    score_kind: str,
    scores,
    *,
    repeat=None,
    fold=None,
    protocol="holdout",
    group=None,
) -> None:
    """predictions.json, shared by every method: one record per scored (repeat, letter) with its index, truth, prediction
    and per-class scores, the repeat and fold that scored it (holdout: all 0), and its duplicate group (`group`, which
    paired tests resample; absent in files written before it, and where not given)."""
    zeros = [0] * len(test_index)
    (Path(folder) / "predictions.json").write_text(
        json.dumps(
            {
                "protocol": protocol,
                "test_index": [int(i) for i in test_index],
                "repeat": [int(r) for r in repeat] if repeat is not None else zeros,
                "fold": [int(f) for f in fold] if fold is not None else zeros,
                "y_true": [_labels_json(v) for v in y_true],
                "y_pred": [_labels_json(v) for v in y_pred],
                "classes": list(classes),
                "score_kind": score_kind,
                "scores": np.round(np.asarray(scores, dtype=float), 6).tolist(),
                **({"group": [int(g) for g in group]} if group is not None else {}),
            }
        )
    )


def _labels_json(v):
    """A label as a string; a multi-label letter's label set as a list of strings."""
    return [str(x) for x in v] if isinstance(v, (list, tuple, np.ndarray)) else str(v)


def provenance(metrics: dict) -> dict:
    """The end of every manifest: package versions, the machine, the figures, and when it was made."""
    return {
        "versions": package_versions(),
        "environment": environment(),
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def data_manifest(dataset) -> dict:
    """What a manifest records of the letters (an engine.data.dataset.Dataset)."""
    return {
        "source": dataset.source,
        "text_column": dataset.text_column,
        "label_column": dataset.label_column,
        "n_letters": len(dataset),
        "data_hash": dataset.data_hash,
        "text_hash": dataset.text_hash,
        "classes": dataset.classes,
        **(getattr(dataset, "options", None) or {}),  # text_template, split_column, test_ids when given: a rerun reads them back
    }


CONTRACT_KEYS = (
    "task",
    "n_scored",
    "fold_macro_f1",
    "fold_macro_f1_mean",
    "fold_macro_f1_sd",
    "folds",
    "train_rows",
    "test_rows",
    "classes",
    "n_letters",
    # several labels per letter (task "multi-label")
    "micro_f1",
    "micro_f1_ci",
    "samples_f1",
    "samples_f1_ci",
    "subset_accuracy",
    "hamming_loss",
    "per_label",
    "fold_micro_f1",
    # two labels (task "binary")
    "positive_label",
    "threshold",
    *(f"{name}{suffix}" for name in ("sensitivity", "specificity", "roc_auc", "pr_auc") for suffix in ("", "_ci")),
)


def summary(res: StepResult) -> dict:
    """The JSON a run store keeps for a finished step (the full record is the artifact's manifest)."""
    m = res.metrics
    out = {"artifact": res.artifact, "cache_hit": res.cache_hit, "kind": res.manifest.get("kind", "evaluation")}
    if "macro_f1" in m:
        out.update(
            {
                "protocol": m.get("protocol", "holdout"),
                "macro_f1": m["macro_f1"],
                "macro_f1_ci": m["macro_f1_ci"],
                "accuracy": m["accuracy"],
                "baseline_macro_f1": m["baseline"]["macro_f1"],
                "embed_cache_hit": res.manifest.get("timings", {}).get("embed_cache_hit"),
            }
        )
        for key in CONTRACT_KEYS:  # what scripts read, as `evaluate --json` writes it
            if key in m:
                out[key] = m[key]
    for key in ("perplexity_before", "perplexity_after", "adapted_model"):
        if key in m:
            out[key] = m[key]
    if "training" in res.manifest:
        out["best_epoch"] = res.manifest["training"]["best_epoch"]
    return out

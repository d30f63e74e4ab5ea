"""Experiments: a spec (dataset x models x methods + options) expanded into steps, and the
step function that turns one (dataset, model, method) into stored, checked results.

Spec (YAML or JSON):

    name: my-comparison
    data: default            # or {path: letters.csv, text_column: text, label_column: label, label_sep: "|"}
    models: [minilm, smollm2]
    methods: [svc, logreg]
    options: {pooling: mean, max_length: 512, smote: true, class_weight: null, grid: true,
              seed: 0, test_size: 0.2, cv_repeats: 0, batch_tokens: null}

(batch_tokens: tokens per forward pass; null picks 4096 on CPU, 32768 on GPU. It changes
speed and memory, not the numbers, so it is not part of any cache key.)

`evaluate_step` is pure in the sense the run system needs: its inputs are plain data, its
outputs are files in the cache, and repeating it with the same inputs recomputes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import data as data_mod
from engine import evaluation, features, methods
from engine.config import package_versions
from engine.errors import ClinBenchError, SpecError
from engine.storage import atomic_dir, evaluations_dir, read_manifest, seal_artifact, sha256_json

NONE = type(None)
DEFAULT_OPTIONS = {
    "pooling": "mean",
    "max_length": features.DEFAULT_MAX_LENGTH,
    "smote": True,
    "class_weight": None,
    "grid": True,
    "seed": 0,
    "test_size": 0.2,
    "cv_repeats": 0,
    "n_boot": 1000,
    "batch_tokens": None,
    # fine-tuning (linear-probe, lora, lora-svc, domain-adapt); null = the method's default
    "epochs": None,
    "learning_rate": None,
    "warmup_ratio": 0.1,
    "batch_size": 8,
    "grad_accum": 1,
    "weight_decay": 0.0,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "target_modules": None,
    "class_weighted_loss": True,
    "patience": 2,
    "val_size": 0.15,
}
OPTION_TYPES = {
    "pooling": str,
    "max_length": int,
    "smote": bool,
    "class_weight": (str, NONE),
    "grid": bool,
    "seed": int,
    "test_size": float,
    "cv_repeats": int,
    "n_boot": int,
    "batch_tokens": (int, NONE),
    "epochs": (int, NONE),
    "learning_rate": (float, NONE),
    "warmup_ratio": float,
    "batch_size": int,
    "grad_accum": int,
    "weight_decay": float,
    "lora_r": int,
    "lora_alpha": int,
    "lora_dropout": float,
    "target_modules": (list, NONE),
    "class_weighted_loss": bool,
    "patience": int,
    "val_size": float,
}
# (lowest allowed, highest allowed) for numbers; None = unbounded
OPTION_RANGES = {
    "max_length": (8, None),
    "test_size": (0.01, 0.9),
    "n_boot": (0, None),
    "cv_repeats": (0, None),
    "batch_tokens": (16, None),
    "epochs": (1, None),
    "learning_rate": (1e-8, 1.0),
    "warmup_ratio": (0.0, 0.9),
    "batch_size": (1, None),
    "grad_accum": (1, None),
    "weight_decay": (0.0, 1.0),
    "lora_r": (1, None),
    "lora_alpha": (1, None),
    "lora_dropout": (0.0, 0.9),
    "patience": (1, None),
    "val_size": (0.05, 0.5),
}
METHOD_TITLES = {
    "svc": "frozen embeddings → SVC",
    "logreg": "frozen embeddings → logistic regression",
    "linear-probe": "linear head (before fine-tuning)",
    "lora": "LoRA fine-tuning",
    "lora-svc": "LoRA-tuned embeddings → SVC",
    "domain-adapt": "domain adaptation (LM objective)",
}


@dataclass
class DataSpec:
    path: str = data_mod.DEFAULT_NAME
    text_column: str = data_mod.DEFAULT_COLUMNS[0]
    label_column: str = data_mod.DEFAULT_COLUMNS[1]
    label_sep: str | None = None

    def load(self) -> data_mod.Dataset:
        return data_mod.load_dataset(self.path, self.text_column, self.label_column, label_sep=self.label_sep)


@dataclass
class Spec:
    name: str
    data: DataSpec
    models: list[str]
    methods: list[str]
    options: dict = field(default_factory=lambda: dict(DEFAULT_OPTIONS))

    def to_dict(self) -> dict:
        return {"name": self.name, "data": asdict(self.data), "models": self.models, "methods": self.methods, "options": self.options}

    def steps(self) -> list[dict]:
        """One step per model x method, in a stable order."""
        return [{"model": m, "method": meth, "title": f"{m} · {METHOD_TITLES[meth]}"} for m in self.models for meth in self.methods]


def parse_spec(obj: Any, where: str = "spec") -> Spec:
    """Validate a spec object (already parsed from YAML/JSON); every problem is named with its key."""
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected a mapping with keys name, data, models, methods; got {type(obj).__name__}.")
    unknown = set(obj) - {"name", "data", "models", "methods", "options"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}. Allowed: name, data, models, methods, options.")
    name = obj.get("name") or "experiment"
    raw = obj.get("data", "default")
    if raw == data_mod.DEFAULT_NAME or raw is None:
        ds = DataSpec()
    elif isinstance(raw, dict):
        missing = [k for k in ("path", "text_column", "label_column") if not raw.get(k)]
        if missing:
            raise SpecError(f"{where}: data needs {', '.join(missing)} (or write data: default for the bundled dataset).")
        extra = set(raw) - {"path", "text_column", "label_column", "label_sep"}
        if extra:
            raise SpecError(f"{where}: unknown data key(s) {', '.join(sorted(extra))}.")
        ds = DataSpec(str(raw["path"]), str(raw["text_column"]), str(raw["label_column"]), raw.get("label_sep"))
    else:
        raise SpecError(f"{where}: data must be 'default' or a mapping with path, text_column, label_column.")
    models_ = obj.get("models")
    if not models_ or not isinstance(models_, list) or not all(isinstance(m, str) and m.strip() for m in models_):
        raise SpecError(f"{where}: models must be a non-empty list of model names, e.g. [minilm, smollm2].")
    methods_ = obj.get("methods") or ["svc"]
    if not isinstance(methods_, list):
        raise SpecError(f"{where}: methods must be a list, e.g. [svc, logreg].")
    for m in methods_:
        if m not in methods.ALL_METHODS:
            raise SpecError(f"{where}: unknown method {m!r}. Methods: {', '.join(methods.ALL_METHODS)}.")
        if m not in runnable_methods():
            raise SpecError(
                f"{where}: method {m!r} (fine-tuning stage) is not available in this version yet; "
                f"available now: {', '.join(runnable_methods())}."
            )
    options = dict(DEFAULT_OPTIONS)
    raw_options = obj.get("options") or {}
    if not isinstance(raw_options, dict):
        raise SpecError(f"{where}: options must be a mapping, e.g. {{max_length: 256, epochs: 3}}.")
    for key, value in raw_options.items():
        if key not in OPTION_TYPES:
            raise SpecError(f"{where}: unknown option {key!r}. Options: {', '.join(OPTION_TYPES)}.")
        options[key] = _coerce_option(where, key, value)
    if options["class_weight"] not in (None, "balanced"):
        raise SpecError(f"{where}: option class_weight must be null or 'balanced'.")
    if options["pooling"] not in features.POOLINGS:
        raise SpecError(f"{where}: option pooling must be one of {', '.join(features.POOLINGS)}.")
    return Spec(str(name), ds, [m.strip() for m in models_], list(dict.fromkeys(methods_)), options)


def _coerce_option(where: str, key: str, value):
    """Check one option's type and range; ints pass as floats, and '1e-3' (a string in YAML 1.1) as a number."""
    allowed = OPTION_TYPES[key] if isinstance(OPTION_TYPES[key], tuple) else (OPTION_TYPES[key],)
    if float in allowed and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = (value is None and NONE in allowed) or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed))
    if ok and isinstance(value, list):
        ok = all(isinstance(v, str) and v for v in value) and bool(value)
    if not ok:
        expected = " or ".join("null" if t is NONE else "list of names" if t is list else t.__name__ for t in allowed)
        raise SpecError(f"{where}: option {key} has the wrong type ({value!r}); expected {expected}.")
    lo, hi = OPTION_RANGES.get(key, (None, None))
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and ((lo is not None and value < lo) or (hi is not None and value > hi))
    ):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise SpecError(f"{where}: option {key} = {value} is out of range; use a value {bounds}.")
    return value


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"Spec file not found: {path}.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            obj = json.loads(text)
        else:
            import yaml

            obj = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError or json.JSONDecodeError (a ValueError)
        raise SpecError(
            f"{path.name} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {str(exc).splitlines()[0]}"
        ) from None
    return parse_spec(obj, where=path.name)


# --- the step function -------------------------------------------------------


@dataclass
class StepResult:
    model: str
    method: str
    metrics: dict
    artifact: str  # folder with manifest.json, classifier.joblib, predictions.json
    cache_hit: bool
    manifest: dict


def evaluate_step(
    dataset: data_mod.Dataset,
    model: str,
    method: str,
    options: dict | None = None,
    *,
    progress: features.Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StepResult:
    """Embed the letters, fit on the training split, score the test split once, store everything."""
    from engine import models as models_mod
    from engine.devices import choose

    opts = {**DEFAULT_OPTIONS, **(options or {})}
    if method not in methods.EMBEDDING_METHODS:
        raise ClinBenchError(f"Method {method!r} is not a classifier on embeddings; use one of {', '.join(methods.EMBEDDING_METHODS)}.")
    check_single_label(dataset)
    t_start = time.perf_counter()
    placement = choose()
    entry = models_mod.resolve(model)
    X, estats = features.embed(
        model,
        dataset.texts,
        pooling=opts["pooling"],
        max_length=opts["max_length"],
        placement=placement,
        batch_tokens=opts["batch_tokens"],
        progress=progress,
        should_stop=should_stop,
    )
    return fit_on_embeddings(
        dataset,
        X,
        estats,
        estats_model_identity(entry.name, estats),
        method,
        opts,
        classifier=method,
        stage="frozen",
        placement=placement,
        progress=progress,
        should_stop=should_stop,
        t_start=t_start,
    )


def check_single_label(dataset: data_mod.Dataset) -> None:
    if dataset.multi_label:
        raise ClinBenchError(
            "This dataset is multi-label (several labels per letter); multi-label evaluation is not available in this "
            "version. Choose a label column with one label per letter."
        )


def fit_on_embeddings(
    dataset: data_mod.Dataset,
    X,
    estats: features.EmbedStats,
    model_identity: dict,
    method: str,
    opts: dict,
    *,
    classifier: str,
    stage: str,
    placement,
    progress: features.Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    t_start: float | None = None,
    extra: dict | None = None,
) -> StepResult:
    """Fit `classifier` (svc|logreg) on the training split's vectors, score the test split once, store the artifact.

    Shared by the frozen stage (`svc`, `logreg`) and the tuned one (`lora-svc`); `method` is the name stored.
    """
    t_start = t_start or time.perf_counter()
    split = data_mod.split(dataset, test_size=opts["test_size"], seed=opts["seed"])
    cfg = methods.ClassifierConfig(
        method=classifier, smote=opts["smote"], class_weight=opts["class_weight"], grid=opts["grid"], seed=opts["seed"]
    )
    key = sha256_json(
        {
            "embeddings": estats.key,
            "classifier": cfg.to_dict(),
            "split": split.hash,
            "cv_repeats": opts["cv_repeats"],
            "n_boot": opts["n_boot"],
            **({"method": method} if method != classifier else {}),
        }
    )[:32]
    folder = evaluations_dir() / key
    if (folder / "manifest.json").exists():
        try:
            manifest = read_manifest(folder)
            return StepResult(model_identity["name"], method, manifest["metrics"], str(folder), True, manifest)
        except (ClinBenchError, KeyError):
            pass  # foreign or damaged: recompute and replace it
    if should_stop and should_stop():
        from engine.errors import Cancelled

        raise Cancelled("Cancelled before fitting the classifier.")
    if progress:
        progress(0, 1, f"fitting {classifier}")
    y = np.asarray(dataset.labels, dtype=str)
    X = np.asarray(X)
    fitted = methods.fit(X[split.train], y[split.train], cfg)
    t_pred = time.perf_counter()
    y_pred = fitted.estimator.predict(X[split.test])
    predict_s = time.perf_counter() - t_pred
    m = evaluation.metrics(y[split.test], y_pred, n_boot=opts["n_boot"], seed=opts["seed"])
    m["baseline"] = evaluation.majority_baseline(y[split.train], y[split.test])
    if opts["cv_repeats"] > 0:
        m["repeated_cv"] = evaluation.repeated_cv(X, y, cfg, n_repeats=opts["cv_repeats"])
    classes, score_matrix, score_kind = methods.scores(fitted.estimator, X[split.test])
    manifest = {
        "kind": "evaluation",
        "key": key,
        "model": model_identity,
        "method": method,
        "method_title": METHOD_TITLES[method],
        "stage": stage,
        "config": {**opts, "classifier": cfg.to_dict()},
        "data": data_manifest(dataset),
        "split": split_manifest(split),
        "embeddings": dict(asdict(estats).items()),
        "placement": {"device": placement.device, "dtype": placement.dtype},
        "classifier": {
            "best_params": fitted.best_params,
            "inner_cv_macro_f1": fitted.inner_cv_macro_f1,
            "inner_folds": fitted.inner_folds,
            "smote": fitted.smote,
        },
        "timings": {
            "embed_s": estats.seconds,
            "embed_cache_hit": estats.cache_hit,
            "fit_s": fitted.seconds,
            "predict_s": predict_s,
            "total_s": time.perf_counter() - t_start,
        },
        "versions": package_versions(),
        "metrics": m,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    import joblib

    with atomic_dir(folder) as tmp:
        joblib.dump(fitted.estimator, tmp / "classifier.joblib")
        write_predictions(tmp, split.test, y[split.test], y_pred, classes, score_kind, score_matrix)
        manifest = seal_artifact(tmp, manifest)
    if progress:
        progress(1, 1, "done")
    return StepResult(model_identity["name"], method, m, str(folder), False, manifest)


def data_manifest(dataset: data_mod.Dataset) -> dict:
    return {
        "source": dataset.source,
        "text_column": dataset.text_column,
        "label_column": dataset.label_column,
        "n_letters": len(dataset),
        "data_hash": dataset.data_hash,
        "text_hash": dataset.text_hash,
        "classes": dataset.classes,
    }


def split_manifest(split: data_mod.Split) -> dict:
    return {
        "seed": split.seed,
        "test_size": split.test_size,
        "n_train": int(len(split.train)),
        "n_test": int(len(split.test)),
        "hash": split.hash,
    }


def write_predictions(folder: Path, test_index, y_true, y_pred, classes: list[str], score_kind: str, scores) -> None:
    """predictions.json: the test letters' indices, truth, prediction and per-class scores (shared by every method)."""
    (Path(folder) / "predictions.json").write_text(
        json.dumps(
            {
                "test_index": [int(i) for i in test_index],
                "y_true": [str(v) for v in y_true],
                "y_pred": [str(v) for v in y_pred],
                "classes": list(classes),
                "score_kind": score_kind,
                "scores": np.round(np.asarray(scores, dtype=float), 6).tolist(),
            }
        )
    )


def estats_model_identity(name: str, estats: features.EmbedStats) -> dict:
    """The model identity as recorded with its embeddings (one source of truth for cache keys)."""
    from engine.storage import embeddings_dir

    meta = json.loads((embeddings_dir() / f"{estats.key}.json").read_text())
    return {"name": name, **meta["model"]}


def result_summary(res: StepResult) -> dict:
    """The JSON a run store keeps for a finished step (the full record is the artifact's manifest)."""
    m = res.metrics
    out = {"artifact": res.artifact, "cache_hit": res.cache_hit, "kind": res.manifest.get("kind", "evaluation")}
    if "macro_f1" in m:
        out.update(
            {
                "macro_f1": m["macro_f1"],
                "macro_f1_ci": m["macro_f1_ci"],
                "accuracy": m["accuracy"],
                "baseline_macro_f1": m["baseline"]["macro_f1"],
                "embed_cache_hit": res.manifest.get("timings", {}).get("embed_cache_hit"),
            }
        )
    for key in ("perplexity_before", "perplexity_after", "adapted_model"):
        if key in m:
            out[key] = m[key]
    if "training" in res.manifest:
        out["best_epoch"] = res.manifest["training"]["best_epoch"]
    return out


def _finetune(name: str) -> Callable[..., StepResult]:
    def step(*args, **kwargs):
        from engine import finetune

        return getattr(finetune, name)(*args, **kwargs)

    return step


# The step function of each method: (dataset, model, method, options, progress=, should_stop=) -> StepResult.
STEP_FUNCTIONS: dict[str, Callable[..., StepResult]] = {
    **dict.fromkeys(methods.EMBEDDING_METHODS, evaluate_step),
    "linear-probe": _finetune("classifier_step"),
    "lora": _finetune("classifier_step"),
    "lora-svc": _finetune("lora_svc_step"),
    "domain-adapt": _finetune("domain_adapt_step"),
}


def runnable_methods() -> list[str]:
    """The methods a spec may name in this version (what the dashboard offers), in display order."""
    return list(STEP_FUNCTIONS)


def execute(
    spec: Spec,
    step: dict,
    *,
    dataset: data_mod.Dataset | None = None,
    progress: features.Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StepResult:
    """Run one step of a spec (plain data in, artifacts out). Any executor can call this: the in-process
    `run` below, a background worker process (engine.worker), or a distributed one later."""
    fn = STEP_FUNCTIONS.get(step["method"])
    if fn is None:
        raise ClinBenchError(f"Method {step['method']!r} cannot run in this version; available: {', '.join(STEP_FUNCTIONS)}.")
    return fn(dataset or spec.data.load(), step["model"], step["method"], spec.options, progress=progress, should_stop=should_stop)


def run(spec: Spec, *, progress_for: Callable[[dict], features.Progress | None] | None = None) -> list[StepResult | dict]:
    """Run every step in this process, one after another (for notebooks and scripts; the CLI and the
    dashboard queue runs for background workers instead). A failing step is recorded and the next one runs."""
    dataset = spec.data.load()
    results: list[StepResult | dict] = []
    for step in spec.steps():
        try:
            results.append(execute(spec, step, dataset=dataset, progress=progress_for(step) if progress_for else None))
        except ClinBenchError as exc:
            results.append({**step, "error": str(exc)})
    return results

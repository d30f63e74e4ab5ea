"""A scikit-learn estimator on letter vectors, as a method: what svc, logreg, lora-svc and adapt-svc share.

`VectorMethod.fit` fits the estimator (engine.methods.estimators: scaler, SMOTE, the search and the SVC's probability
calibration, all inside the training letters, on the harness's grouped inner splits) on the training letters' vectors.
Where those vectors come from is the subclass's: `vectors(job, tag)` gives every letter's vectors for the fitting `tag`
(the frozen model's, the same for every fold, for svc and logreg; a model tuned on that fold's training letters for
lora-svc and adapt-svc). Label sets get one classifier per label (OneVsRest). The probabilities the harness chooses a
threshold on are the training letters' out-of-fold ones, from the same inner splits. The stored classifier is an
`embedding-classifier`: the letters embedded as the training letters were, then the estimator.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np

from engine.cache.estimator_files import save_estimator
from engine.cache.storage import sha256_json
from engine.evaluation import scoring
from engine.features import extract
from engine.methods import estimators
from engine.methods.base import Job, Method
from engine.models import catalog
from engine.options.groups import Options, key_dict, names

READS = names("protocol", "embedding", "classifier", "decision")
EVAL_VERSION = 2  # 2: cross-validation plans, duplicate groups, every class counted


def evaluation_key(estats_key: str, estimator: str, method: str, opts: Options, plan_hash: str, two_labels: bool = False) -> str:
    """The cache key of an evaluation on embeddings: the vectors, the estimator and its options, the folds, the protocol
    (and for a two-label task the decision options: its threshold)."""
    p = opts.protocol
    return sha256_json(
        {
            "v": EVAL_VERSION,
            "embeddings": estats_key,
            "classifier": estimators.config_key(estimator, opts.classifier, p.seed),
            "plan": plan_hash,
            "n_boot": p.n_boot,
            **({"method": method} if method != estimator else {}),
            **({"decision": key_dict(opts.decision), "binary": 1} if two_labels else {}),
        }
    )[:32]


class OnVectors:
    """An estimator fitted on the training letters' vectors; `X` holds every letter's vectors for this fitting."""

    def __init__(self, job: Job, X: np.ndarray, train: np.ndarray, result: estimators.FitResult):
        self.job, self.X, self.train, self.result = job, X, train, result

    @property
    def estimator(self):
        return self.result.estimator

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        proba = self.estimator.predict_proba(self.X[rows])
        return proba if self.job.multi else scoring.aligned(proba, self.estimator.classes_, self.job.classes)

    def decision_letters(self) -> tuple[np.ndarray, np.ndarray] | None:
        tp = self.result.train_proba
        if tp is None:
            return None
        return self.train, tp if self.job.multi else scoring.aligned(tp, self.estimator.classes_, self.job.classes)


class VectorMethod(Method):
    """svc, logreg, lora-svc, adapt-svc: an estimator (`estimator`: svc or logreg) on the vectors `vectors` gives."""

    estimator: ClassVar[str]
    predictor = "embedding-classifier"
    label_sets = True
    inner_splits = True
    keyed_decision = True

    def vectors(self, job: Job, tag: str) -> np.ndarray:
        """Every letter's vectors for the fitting `tag` ('r0f3' for a fold, 'all' for the refit on every letter)."""
        raise NotImplementedError

    def fit(self, job: Job, train: np.ndarray, tag: str, label: str) -> OnVectors:
        X = np.asarray(self.vectors(job, tag))
        p, c, groups = job.opts.protocol, job.opts.classifier, job.plan.groups[train]
        if job.multi:  # one classifier and one threshold per label
            result = estimators.fit_multilabel(X[train], job.y[train], job.classes, self.estimator, c, p.seed, groups)
        else:
            result = estimators.fit(X[train], job.y[train], self.estimator, c, p.seed, groups, oof=job.needs_decision)
        return OnVectors(job, X, train, result)

    def save(self, job: Job, final: OnVectors, folder: Path) -> None:
        save_estimator(folder, final.estimator)

    def record(self, job: Job, final: OnVectors, fits: list[OnVectors]) -> dict:
        """The embedder, the vectors, the estimator's search, SMOTE and calibration (the stored one's and each fold's)."""
        e, r = job.opts.embedding, final.result
        estats = job.state["estats"]  # the stored classifier's vectors (EmbedStats)
        return {
            "embedder": {"pooling": e.pooling, "max_length": e.max_length, "windows": e.windows},
            "config": {
                **job.opts.to_dict(),
                "classifier": estimators.config_key(self.estimator, job.opts.classifier, job.opts.protocol.seed),
            },
            "embeddings": dict(asdict(estats).items()),
            "placement": {"device": job.placement.device, "dtype": job.placement.dtype},
            "classifier": {
                "best_params": r.best_params,
                f"inner_cv_{r.inner_cv_metric}": r.inner_cv_macro_f1,
                "inner_folds": r.inner_folds,
                "smote": r.smote,
                "calibration": r.calibration,
                "fold_best_params": [f.result.best_params for f in fits],
            },
            "timings": {"embed_s": estats.seconds, "embed_cache_hit": estats.cache_hit, "fit_s": r.seconds},
        }


class FrozenVectors(VectorMethod):
    """svc and logreg: the pretrained model's vectors of every letter (embedded once, cached by content)."""

    stage = "frozen"
    reads = READS

    def setup(self, job: Job) -> None:
        e = job.opts.embedding
        X, estats = extract.embed(
            job.model,
            job.dataset.texts,
            pooling=e.pooling,
            max_length=e.max_length,
            placement=job.placement,
            batch_tokens=e.batch_tokens,
            windows=e.windows,
            ctx=job.ctx,
        )
        job.state.update(X=X, estats=estats)
        job.identity = {"name": catalog.resolve(job.model).name, **extract.read_meta(estats.key)["model"]}

    def key(self, job: Job) -> str:
        return evaluation_key(job.state["estats"].key, self.estimator, self.name, job.opts, job.plan.hash, job.two_labels)

    def vectors(self, job: Job, tag: str) -> np.ndarray:
        return job.state["X"]

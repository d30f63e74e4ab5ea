"""The `logreg` method: the pretrained model's frozen letter vectors -> logistic regression (C searched, SMOTE), fitted
inside each fold's training letters. It reads the vectors svc embedded (the same cache entry), so it runs after svc."""

from __future__ import annotations

from engine.methods.vectors import FrozenVectors


class Logreg(FrozenVectors):
    name = "logreg"
    title = "frozen embeddings → logistic regression"
    estimator = "logreg"
    after = ("svc",)


METHOD = Logreg()

"""The `svc` method: the pretrained model's frozen letter vectors -> an SVC (kernel and C searched, SMOTE, calibrated
probabilities: Platt's sigmoid for two labels, temperature scaling for more), all fitted inside each fold's training
letters (engine.methods.vectors, engine.methods.estimators)."""

from __future__ import annotations

from engine.methods.vectors import FrozenVectors


class Svc(FrozenVectors):
    name = "svc"
    title = "frozen embeddings → SVC"
    estimator = "svc"


METHOD = Svc()

"""Classify one letter with stored classifiers: embed it the way each classifier's training
letters were embedded (same model, pooling, max_length), then predict, with latency.

The letter's vector is computed in memory (a temporary file, removed at once) and never
enters the embeddings cache: a pasted letter is patient data. Loaded models are kept in a
small in-process cache so the second letter does not pay for loading again.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from engine import features, methods, models
from engine.devices import choose
from engine.errors import ClinBenchError
from engine.results import Evaluation
from engine.storage import load_joblib_artifact

MAX_LOADED = 2  # models kept in memory between letters
_LOADED: OrderedDict[str, models.LoadedModel] = OrderedDict()
_LOCK = threading.Lock()


def _model(name: str, load=None) -> tuple[object, float]:
    """A loaded model from the in-process cache, or loaded now by `load()` (default: the registry model `name`);
    (model, seconds spent loading)."""
    with _LOCK:
        if name in _LOADED:
            _LOADED.move_to_end(name)
            return _LOADED[name], 0.0
    t0 = time.perf_counter()
    loaded = load() if load else models.load(name, choose())
    with _LOCK:
        _LOADED[name] = loaded
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
    return loaded, time.perf_counter() - t0


def _same_model(loaded: models.LoadedModel, recorded: dict) -> bool:
    mine = {k: v for k, v in loaded.identity.items() if k not in ("model_type", "kind")}
    theirs = {k: v for k, v in recorded.items() if k != "name"}
    return all(mine.get(k) == v for k, v in theirs.items())


def embed_letter(loaded: models.LoadedModel, text: str, pooling: str, max_length: int) -> tuple[np.ndarray, int]:
    """(vector, letters truncated: 0 or 1) of one letter, computed without touching the embeddings cache."""
    with tempfile.TemporaryDirectory(prefix="clinbench-letter-") as tmp:
        out = Path(tmp) / "letter.npy"
        stats = features.extract(loaded, [text], out, pooling=pooling, max_length=max_length)
        return np.array(np.load(out)), stats.n_truncated


def classify(text: str, evals: list[Evaluation]) -> list[dict]:
    """One row per evaluation: predicted label, its score (probability or decision value), all scores,
    latency (embedding + classifier), model load time, and an error instead when that classifier cannot answer."""
    text = (text or "").strip()
    if not text:
        raise ClinBenchError("The letter is empty: paste or upload the text of one letter.")
    rows = []
    for ev in evals:
        row = {"evaluation": ev.label, "model": ev.model, "method": ev.method, "stage": ev.stage, "key": ev.key}
        try:
            cfg = ev.manifest.get("config", {})
            pooling = cfg.get("pooling", "mean")
            max_length = int(cfg.get("max_length", features.DEFAULT_MAX_LENGTH))
            if ev.method in ("linear-probe", "lora"):
                row.update(_classify_tuned(ev, text, max_length))
                rows.append(row)
                continue
            if ev.method == "lora-svc":
                from engine import finetune

                lora_artifact = ev.manifest["lora_artifact"]
                loaded, load_s = _model(f"tuned:{lora_artifact}", lambda a=lora_artifact: finetune.load_tuned_extractor(a))
            else:
                loaded, load_s = _model(ev.model)
            if not _same_model(loaded, ev.manifest["model"]):
                raise ClinBenchError(f"the files of model {ev.model} changed since this classifier was trained; re-run its evaluation")
            estimator = load_joblib_artifact(ev.folder)
            t0 = time.perf_counter()
            vec, cut = embed_letter(loaded, text, pooling, max_length)
            t1 = time.perf_counter()
            pred = str(estimator.predict(vec)[0])
            classes, scores, kind = methods.scores(estimator, vec)
            t2 = time.perf_counter()
            row.update(
                predicted=pred,
                score=float(scores[0][classes.index(pred)]),
                score_kind=kind,
                scores={c: float(s) for c, s in zip(classes, scores[0])},
                embed_ms=(t1 - t0) * 1e3,
                classify_ms=(t2 - t1) * 1e3,
                latency_ms=(t2 - t0) * 1e3,
                load_s=load_s,
                truncated=bool(cut),
                error=None,
            )
        except ClinBenchError as exc:
            row.update(predicted=None, error=str(exc))
        rows.append(row)
    return rows


def _classify_tuned(ev: Evaluation, text: str, max_length: int) -> dict:
    """A linear-probe or LoRA classifier: the model itself (head, adapter) gives class probabilities."""
    from engine import finetune

    (net, tokenizer, _manifest), load_s = _model(f"classifier:{ev.folder}", lambda: finetune.load_tuned_classifier(ev.folder))
    t0 = time.perf_counter()
    ids, cut = features.tokenize(tokenizer, [text], max_length)
    proba = finetune.predict_proba(net, ids, [0], tokenizer.pad_token_id, choose())[0]
    t1 = time.perf_counter()
    classes = [net.config.id2label[i] for i in range(len(proba))]
    pred = classes[int(proba.argmax())]
    return dict(
        predicted=pred,
        score=float(proba.max()),
        score_kind="probability",
        scores=dict(zip(classes, map(float, proba))),
        embed_ms=(t1 - t0) * 1e3,
        classify_ms=0.0,
        latency_ms=(t1 - t0) * 1e3,
        load_s=load_s,
        truncated=bool(cut),
        error=None,
    )


def agreement(rows: list[dict]) -> dict:
    """The majority label among the classifiers that answered, and the share that chose it."""
    votes = Counter(r["predicted"] for r in rows if r.get("predicted"))
    if not votes:
        return {"label": None, "share": 0.0, "n": 0, "votes": {}}
    label, n = votes.most_common(1)[0]
    total = sum(votes.values())
    return {"label": label, "share": n / total, "n": total, "votes": dict(votes)}

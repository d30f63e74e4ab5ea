"""One interface for every trained classifier, whatever trained it.

`load(artifact)` returns a `Classifier`: `classes_`, `predict_proba(texts)` (probabilities, always: one
row per letter, one column per class, rows summing to 1; multi-label: each label's own probability), `thresholds`
(None; multi-label: each label's decision threshold, tuned on training letters), `threshold` and `positive_label` (a
two-label task's operating threshold, where its step chose one), `predict(texts)` (the most probable label; two labels:
the positive one at or above the threshold; multi-label: the tuple of labels at or above their thresholds, possibly empty),
`truncated(texts)` (which letters are longer than the classifier reads), and `metadata` (model, method,
stage, key, options, the evaluation's figures). The Classify page, `python -m engine predict` and the
HTTP endpoint use it without knowing the method.

How a stored artifact becomes a Classifier is the artifact's `predictor` (written by the step that
made it): an `embedding-classifier` embeds the letters the way its training letters were embedded
(same model or LoRA-tuned model, pooling, max_length) and applies its scikit-learn estimator; a
`sequence-classifier` (linear probe, LoRA) runs the model with its head; a `prompted-lm` (zero-shot, few-shot) or
`tuned-lm` (instruct-lora: the LoRA adapter merged first) scores each label's words after the stored prompt. Letters are embedded in
memory and never enter the embeddings cache: a pasted letter is patient data. Loaded models are
shared between classifiers in a small in-process cache, so a second letter pays no loading time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.cache import artifacts
from engine.cache.artifacts import verify_tree
from engine.cache.estimator_files import load_estimator
from engine.errors import ArtifactError
from engine.features import extract, windows
from engine.finetune.heads import sequence_proba
from engine.finetune.loading import load_adapted_extractor, load_tuned_classifier, load_tuned_extractor
from engine.methods import incontext, instruct_lora, prompting
from engine.methods.base import MULTI_LABEL_RULE, Decision, StoredClassifier
from engine.methods.setfit import load_tuned_encoder
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import DEFAULT_MAX_LENGTH, MOST_PROBABLE

MAX_LOADED = 2  # models kept in memory between letters
_LOADED: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()


Classifier = StoredClassifier  # the one interface every stored classifier answers (engine.methods.base)


def shared_model(key: str, load: Callable[[], Any]) -> Any:
    """A loaded model from the in-process cache (least recently used first out), or loaded now by `load()`."""
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    loaded = load()
    with _LOCK:
        _LOADED[key] = loaded
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
    return loaded


class _Base(StoredClassifier):
    """What the model-reading classifiers add: the truncation check by their tokenizer."""

    def truncated(self, texts: list[str]) -> list[bool]:
        return [len(ids) > self.max_length for ids in extract.tokenize(self.tokenizer, texts, 10**9)[0]]


def legacy_decision(estimator, classes: list[str]) -> Decision:
    """The decision a fitted estimator carried before manifests recorded one (ClinBench 0.2): its per-label thresholds_
    (label sets) or its operating threshold_ (two labels); else the most probable label."""
    thresholds = getattr(estimator, "thresholds_", None)
    if thresholds is not None:
        return Decision(MULTI_LABEL_RULE, thresholds=np.asarray(thresholds, dtype=float))
    if getattr(estimator, "threshold_", None) is not None:
        return Decision("best-f1", threshold=float(estimator.threshold_), positive=estimator.positive_label_)
    return Decision(MOST_PROBABLE)


class EmbeddingClassifier(_Base):
    """A scikit-learn estimator on a model's letter vectors (svc, logreg, lora-svc, adapt-svc)."""

    def __init__(self, loaded: catalog.LoadedModel, estimator, pooling: str, max_length: int, metadata: dict, n_windows: int = 1):
        self.loaded, self.estimator, self.pooling, self.max_length, self.metadata = loaded, estimator, pooling, max_length, metadata
        self.windows, self.tokenizer = n_windows, loaded.tokenizer
        self.classes_ = [str(c) for c in estimator.classes_]
        self.decision = legacy_decision(estimator, self.classes_)

    def embed(self, texts: list[str]) -> np.ndarray:
        """The letters' vectors, made as its training letters' were (model, pooling, max_length, windows), in memory."""
        return extract.vectors(self.loaded, list(texts), pooling=self.pooling, max_length=self.max_length, windows=self.windows)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Whether each letter is cut: longer than max_length, or under windows longer than the windows reach."""
        if self.windows == 1:
            return super().truncated(texts)
        prefix, suffix = windows.special_tokens(self.tokenizer)
        most = windows.reach(self.max_length, self.windows, len(prefix) + len(suffix))
        return [len(ids) > most for ids in extract.tokenize(self.tokenizer, texts, 10**9)[0]]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self.embed(texts)), dtype=float)


class SequenceClassifier(_Base):
    """The model itself with its classification head (linear-probe, lora). A multi-label head (its config's problem_type)
    gives each label's sigmoid probability, and `thresholds` (label -> threshold, as the manifest stores them; 0.5 for a
    label without one) become one per label in `classes_` order."""

    def __init__(self, net, tokenizer, max_length: int, placement, metadata: dict, thresholds: dict | None = None):
        self.net, self.tokenizer, self.max_length, self.placement, self.metadata = net, tokenizer, max_length, placement, metadata
        self.classes_ = [net.config.id2label[i] for i in range(net.config.num_labels)]
        from engine.finetune.loading import is_multi_label

        if is_multi_label(net.config):
            self.decision = Decision.from_manifest({"rule": MULTI_LABEL_RULE, "thresholds": thresholds or {}}, self.classes_)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        ids, _ = extract.tokenize(self.tokenizer, list(texts), self.max_length)
        return np.asarray(sequence_proba(self.net, ids, list(range(len(ids))), self.tokenizer.pad_token_id, self.placement), dtype=float)


class TextPipeline(_Base):
    """A scikit-learn pipeline that reads the texts themselves (the tf-idf reference)."""

    max_length = 10**9

    def __init__(self, pipeline, metadata: dict):
        self.pipeline, self.metadata = pipeline, metadata
        self.classes_ = [str(c) for c in pipeline.classes_]
        self.decision = legacy_decision(pipeline, self.classes_)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.pipeline.predict_proba(list(texts)), dtype=float)

    def truncated(self, texts: list[str]) -> list[bool]:
        return [False] * len(texts)  # every word is read


def _metadata(folder: Path, manifest: dict) -> dict:
    return {
        "key": folder.name,
        "artifact": str(folder),
        "model": manifest["model"]["name"],
        "method": manifest["method"],
        "method_title": manifest.get("method_title", manifest["method"]),
        "stage": manifest.get("stage", "frozen"),
        "options": manifest.get("config", {}),
        "task": manifest.get("metrics", {}).get("task", "single-label"),
        "macro_f1": manifest.get("metrics", {}).get("macro_f1"),
        "macro_f1_ci": manifest.get("metrics", {}).get("macro_f1_ci"),
        "micro_f1": manifest.get("metrics", {}).get("micro_f1"),
        "data_hash": manifest.get("data", {}).get("data_hash"),
    }


def _same_model(loaded: catalog.LoadedModel, recorded: dict) -> bool:
    mine = {k: v for k, v in loaded.identity.items() if k not in ("model_type", "kind")}
    theirs = {k: v for k, v in recorded.items() if k != "name"}
    return all(mine.get(k) == v for k, v in theirs.items())


def _load_embedding_classifier(folder: Path, manifest: dict, placement) -> EmbeddingClassifier:
    cfg = manifest.get("config", {})
    pooling = manifest.get("embedder", {}).get("pooling", cfg.get("pooling", "mean"))
    max_length = int(manifest.get("embedder", {}).get("max_length", cfg.get("max_length", DEFAULT_MAX_LENGTH)))
    n_windows = int(manifest.get("embedder", {}).get("windows", 1))  # (stored before the option: cut at max_length)
    estimator = load_estimator(folder)
    if not hasattr(estimator, "predict_proba"):  # a pipeline ending in SVC(probability=False)
        raise ArtifactError(
            f"{manifest['model']['name']} · {manifest['method']} was stored by an earlier ClinBench as an uncalibrated SVC, which gives "
            "decision values, not probabilities. Its scores stay on Compare; re-run its step to classify letters with it."
        )
    if "adapter_key" in manifest:  # adapt-svc: the base model with the adapter trained on its language-model objective
        verify_tree(folder, "adapter/")
        loaded = shared_model(
            f"adapted:{folder}", lambda: load_adapted_extractor(manifest["model"]["name"], folder / "adapter", placement, manifest["model"])
        )
    elif "lora_artifact" in manifest:
        lora = manifest["lora_artifact"]
        loaded = shared_model(f"tuned:{lora}", lambda: load_tuned_extractor(lora, placement))
    else:
        loaded = shared_model(f"base:{manifest['model']['name']}", lambda: catalog.load(manifest["model"]["name"], placement))
        if not _same_model(loaded, manifest["model"]):
            raise ArtifactError(
                f"The files of model {manifest['model']['name']} changed since this classifier was trained; re-run its evaluation."
            )
    return EmbeddingClassifier(loaded, estimator, pooling, max_length, _metadata(folder, manifest), n_windows)


def _load_sequence_classifier(folder: Path, manifest: dict, placement) -> SequenceClassifier:
    net, tokenizer, _ = shared_model(f"classifier:{folder}", lambda: load_tuned_classifier(folder, placement))
    max_length = int(manifest.get("config", {}).get("max_length", DEFAULT_MAX_LENGTH))
    thresholds = (manifest.get("classifier") or {}).get("thresholds")  # multi-label: tuned on the validation letters
    return SequenceClassifier(net, tokenizer, max_length, placement, _metadata(folder, manifest), thresholds)


def _load_tuned_encoder(folder: Path, manifest: dict, placement) -> EmbeddingClassifier:
    """setfit: the encoder tuned on pairs, stored in the artifact, and its logistic head."""
    loaded = shared_model(f"setfit:{folder}", lambda: load_tuned_encoder(folder, placement))
    e = manifest["embedder"]
    return EmbeddingClassifier(
        loaded, load_estimator(folder), e["pooling"], int(e["max_length"]), _metadata(folder, manifest), int(e.get("windows", 1))
    )


def _load_prompted_lm(folder: Path, manifest: dict, placement) -> incontext.PromptClassifier:
    """zero-shot, few-shot: the causal LM itself, with the stored prompt, label words and examples."""
    if manifest["model"].get("source") == "remote":  # a server model: the same server, serving the same model the same way
        lm = prompting.load_remote(manifest["model"]["name"], (manifest.get("config") or {}).get("allowed_hosts"))
        if lm.identity != manifest["model"]:
            raise ArtifactError(
                f"The server of {lm.name} now serves another model or scores otherwise than for this evaluation; re-run it."
            )
        return incontext.PromptClassifier(lm, incontext.read_prompt(folder), _metadata(folder, manifest))
    lm = shared_model(f"lm:{manifest['model']['name']}", lambda: prompting.load_lm(manifest["model"]["name"], placement))
    if not _same_model(lm, {k: v for k, v in manifest["model"].items() if k not in ("model_type", "kind")}):
        raise ArtifactError(f"The files of model {manifest['model']['name']} changed since this evaluation; re-run it.")
    return incontext.PromptClassifier(lm, incontext.read_prompt(folder), _metadata(folder, manifest))


def _load_tuned_lm(folder: Path, manifest: dict, placement) -> incontext.PromptClassifier:
    """instruct-lora: the causal LM with the artifact's LoRA adapter merged, the stored prompt and label words."""
    lm, stored = shared_model(f"tuned-lm:{folder}", lambda: instruct_lora.load_classifier(folder, manifest, placement))
    if not instruct_lora.same_base(lm, manifest["model"]):
        raise ArtifactError(f"The files of model {manifest['model']['name']} changed since this evaluation; re-run it.")
    return incontext.PromptClassifier(lm, stored, _metadata(folder, manifest))


def _load_text_pipeline(folder: Path, manifest: dict, placement) -> TextPipeline:
    return TextPipeline(load_estimator(folder), _metadata(folder, manifest))


LOADERS: dict[str, Callable[[Path, dict, Any], Classifier]] = {
    "text-pipeline": _load_text_pipeline,
    "embedding-classifier": _load_embedding_classifier,
    "sequence-classifier": _load_sequence_classifier,
    "prompted-lm": _load_prompted_lm,
    "tuned-lm": _load_tuned_lm,
    "tuned-encoder": _load_tuned_encoder,
}
# Artifacts stored before manifests named their predictor (ClinBench 0.1).
_LEGACY_PREDICTOR = {
    "svc": "embedding-classifier",
    "logreg": "embedding-classifier",
    "lora-svc": "embedding-classifier",
    "linear-probe": "sequence-classifier",
    "lora": "sequence-classifier",
}


def load(artifact: str | Path, placement=None) -> Classifier:
    """The classifier stored in an evaluation folder, checked against its manifest's hashes."""
    folder = Path(artifact)
    manifest = artifacts.read_manifest(folder)
    predictor = manifest.get("predictor") or _LEGACY_PREDICTOR.get(manifest.get("method", ""))
    loader = LOADERS.get(predictor or "")
    if loader is None:
        raise ArtifactError(
            f"{folder.name} holds no classifier ({manifest.get('kind', 'unknown kind')}, method {manifest.get('method')!r})."
        )
    classifier = loader(folder, manifest, placement or choose())
    if "decision" in manifest:  # chosen by the harness on training letters (ClinBench 0.3); before: the estimator's own
        classifier.decision = Decision.from_manifest(manifest["decision"], classifier.classes_)
    return classifier

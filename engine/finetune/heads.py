"""What every trained classification head shares: its loss weights, its validation figures, and its probabilities.

* `class_weights` / `pos_weights`: the cross-entropy's weight per label (inverse frequency), and for label sets BCE's
  weight of each label's positives (negatives/positives of the fitting letters, capped at POS_WEIGHT_CAP both ways);
* `validation`: an epoch's figures on the validation carve (macro-F1 and loss; label sets: micro-F1 at thresholds tuned
  on those letters, and BCE), from which the training loop keeps the best epoch;
* `sequence_proba`: probabilities of a sequence classifier (softmax; a multi-label head's: each label's sigmoid).
lora, linear-probe and instruct-lora train heads with them (engine.methods), and a stored sequence classifier answers
with `sequence_proba` (engine.methods.classifiers).
"""

from __future__ import annotations

import numpy as np

from engine.evaluation.binary import best_threshold
from engine.finetune import loop
from engine.finetune.loading import is_multi_label

# Multi-label: a label's positives weigh negatives/positives in the BCE, at most this much (a rare label's few positives
# would otherwise dominate the gradient) and at least its inverse.
POS_WEIGHT_CAP = 10.0


def class_weights(y: np.ndarray, n_classes: int, enabled: bool):
    """The cross-entropy's weight per label (`y`: the fitting letters' label indices): inverse frequency; None when off."""
    import torch

    if not enabled:
        return None
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def pos_weights(Y: np.ndarray, enabled: bool):
    """BCE's weight of each label's positives (`Y`: the fitting letters' 0/1 matrix): negatives/positives, within
    [1/POS_WEIGHT_CAP, POS_WEIGHT_CAP]; None when class weighting is off."""
    import torch

    if not enabled:
        return None
    pos = Y.sum(0).astype(float)
    w = np.clip((len(Y) - pos) / np.maximum(pos, 1), 1 / POS_WEIGHT_CAP, POS_WEIGHT_CAP)
    return torch.tensor(w, dtype=torch.float32)


def multilabel_validation(proba: np.ndarray, Y: np.ndarray) -> dict:
    """The validation figures of a multi-label epoch: micro-F1 at thresholds tuned on these letters (what the epoch's
    model would predict once its thresholds are tuned) and the mean (unweighted) BCE."""
    from sklearn.metrics import f1_score

    thresholds = np.array([best_threshold(proba[:, j], Y[:, j]) for j in range(Y.shape[1])], dtype=float)
    P = (proba >= thresholds).astype(np.int8)
    f1 = float(f1_score(Y, P, average="micro", zero_division=0))
    p = np.clip(proba.astype(np.float64), 1e-12, 1 - 1e-12)  # (float32 would round 1 - 1e-12 to 1: log(0))
    loss = float(-np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
    return {"val_micro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}


def validation(proba: np.ndarray, y: np.ndarray, n_classes: int, multi: bool) -> dict:
    """An epoch's figures on the validation letters (`y`: their label indices, or their 0/1 matrix for label sets):
    macro-F1 and loss; `score` is what the loop keeps the best epoch by."""
    from sklearn.metrics import f1_score

    if multi:
        return multilabel_validation(proba, y)
    loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
    f1 = float(f1_score(y, proba.argmax(1), average="macro", labels=list(range(n_classes)), zero_division=0))
    return {"val_macro_f1": f1, "val_loss": loss, "score": f1 - 1e-6 * loss}


def sequence_proba(net, ids: list[np.ndarray], idx, pad_id: int, placement, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities for the letters `idx`, in that order; a multi-label head's: each label's sigmoid."""
    import torch

    squash = torch.sigmoid if is_multi_label(net.config) else (lambda logits: torch.softmax(logits, -1))
    lengths = [len(x) for x in ids]
    out = np.zeros((len(idx), net.config.num_labels), dtype=np.float32)
    pos = {int(i): r for r, i in enumerate(idx)}
    with torch.inference_mode(), loop.autocast(placement):
        for batch in loop.length_grouped_batches(lengths, np.asarray(idx), batch_size, None):
            input_ids, mask = loop.collate(ids, batch, pad_id, placement.device)
            logits = net(input_ids=input_ids, attention_mask=mask).logits.float()
            out[[pos[int(i)] for i in batch]] = squash(logits).cpu().numpy()
    return out

"""Which letters a stored classifier has read, and whether a file to score shares any of them.

A classifier scored on letters it was trained on reports near-training figures, not an external validation. Every
stored classifier records the hashes of the letters it read (`TRAINING_FILE`, a sealed file of its artifact; the
manifest's `training_letters` says how many): the hash is engine.evaluation.scoring.letter_hash, a short sha256 of the
text normalised as the duplicate key is (engine.data.duplicates.normalize: case, whitespace and punctuation), so a copy
that differs only in those is the same letter. Under cv that is every letter the refit read, under holdout and fixed the
training split (a fine-tuned method's validation carve included: it chose the epoch on those letters); few-shot: its
examples and calibration letters; zero-shot: its calibration letters (often none); both also the training letters a
two-label threshold was chosen on, when one was (Method.letters_read).

`trained_on(folder)` reads them back (None for a classifier stored before they were recorded: the overlap cannot be
checked), `shared(texts, seen)` gives the positions of the letters of a file that the classifier read.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.cache import artifacts
from engine.evaluation.scoring import letter_hash

TRAINING_FILE = "training_letters.json"


def hashes(texts) -> list[str]:
    """The sorted distinct hashes of these letters (what `write` stores)."""
    return sorted({letter_hash(t) for t in texts})


def manifest_part(trained: list[str]) -> dict:
    """What a manifest says of the letters its classifier read (the hashes themselves are in TRAINING_FILE)."""
    return {"training_letters": {"file": TRAINING_FILE, "n": len(trained), "hash": "sha256 of the normalised text, 16 hex digits"}}


def write(folder: Path, trained: list[str]) -> None:
    """TRAINING_FILE in an artifact's temporary folder (sealed with the rest)."""
    (Path(folder) / TRAINING_FILE).write_text(json.dumps({"letters": trained}))


def trained_on(folder: Path) -> set[str] | None:
    """The hashes of the letters the stored classifier in `folder` read; None when it recorded none (stored before
    ClinBench recorded them). A listed file whose hash differs is refused (engine.cache.artifacts.verified_file)."""
    if TRAINING_FILE not in artifacts.read_manifest(folder).get("files", {}):
        return None
    return set(json.loads(artifacts.verified_file(folder, TRAINING_FILE).read_text())["letters"])


def shared(texts, seen: set[str]) -> list[int]:
    """Positions of the letters among `texts` whose normalised text the classifier read."""
    return [i for i, t in enumerate(texts) if letter_hash(t) in seen]

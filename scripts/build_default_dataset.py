"""Derive ClinBench's bundled default dataset from MTSamples.

    python scripts/build_default_dataset.py [--source ../shared/data/mtsamples.csv]

MTSamples (CC0 1.0; see docs/data-models.md) files many transcriptions under several
categories at once: a document-type category ("Surgery", "Consult", "Discharge
Summary", ...) next to a specialty. We keep five clinically distinct specialties
and only the letters that belong to exactly one of them, so every label is
unambiguous. Only the `transcription` field is used: `description`,
`sample_name` and `keywords` often name the specialty and would leak the label.
The sample is deterministic (fixed seed), capped per class, and written to
engine/resources/default_letters.csv with columns note_id, text, label.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path

SPECIALTIES = {
    "Cardiovascular / Pulmonary": "cardiovascular-pulmonary",
    "Gastroenterology": "gastroenterology",
    "Neurology": "neurology",
    "Obstetrics / Gynecology": "obstetrics-gynecology",
    "Urology": "urology",
}
PER_CLASS = 120
SEED = 20261123
ROOT = Path(__file__).resolve().parents[1]


def build(source: Path, out: Path, per_class: int = PER_CLASS, seed: int = SEED) -> dict[str, int]:
    categories: dict[str, set[str]] = defaultdict(set)
    first_id: dict[str, str] = {}
    with source.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(row["transcription"].split())
            if len(text) < 200:  # empty or stub transcriptions
                continue
            categories[text].add(row["medical_specialty"].strip())
            first_id.setdefault(text, row["note_id"])
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, cats in categories.items():
        chosen = cats & SPECIALTIES.keys()
        if len(chosen) == 1:
            by_label[SPECIALTIES[chosen.pop()]].append(text)
    rng = random.Random(seed)
    rows = []
    for label in sorted(by_label):
        texts = sorted(by_label[label], key=lambda t: int(first_id[t]))
        rng.shuffle(texts)
        rows += [(int(first_id[t]), t, label) for t in texts[:per_class]]
    rows.sort()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["note_id", "text", "label"])
        writer.writerows(rows)
    counts = defaultdict(int)
    for _, _, label in rows:
        counts[label] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "mtsamples.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "engine" / "resources" / "default_letters.csv")
    parser.add_argument("--per-class", type=int, default=PER_CLASS)
    args = parser.parse_args()
    counts = build(args.source, args.out, args.per_class)
    print(f"wrote {sum(counts.values())} letters to {args.out}")
    for label, n in sorted(counts.items()):
        print(f"  {label:28s} {n}")


if __name__ == "__main__":
    main()

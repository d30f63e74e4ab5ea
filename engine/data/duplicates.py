"""Duplicate letters: exact copies (after normalising case, whitespace and punctuation; digits kept, as
they carry clinical meaning) and near-copies. A group of copies is never split between training and
test letters (engine.protocols uses `exact_groups`).

* `exact_groups`: one id per distinct normalised text;
* `near_groups`: exact groups merged with their near-copies (MinHash LSH over word shingles, datasketch),
  by leader clustering, so templated letters do not chain into one giant group;
* `conflicts`: exact copies that carry different labels; `merge_conflicts`: each set of them made one letter with all
  their labels (label_conflicts: merge);
* `summary`: the JSON-ready report (counts, examples, conflicts, fold-balance warnings) of the Data page.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

from engine.errors import DataError

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower-cased, every run of whitespace and punctuation collapsed to one space; digits and letters kept."""
    return _NON_WORD.sub(" ", str(text).lower()).strip()


def exact_groups(texts: list[str]) -> np.ndarray:
    """Group id per letter (0..G-1, numbered in order of first appearance); exact duplicates share an id."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(normalize(t), len(ids)) for t in texts], dtype=np.int64)


def _ids(keys: list[str]) -> np.ndarray:  # as exact_groups, on texts normalised already
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(k, len(ids)) for k in keys], dtype=np.int64)


def _shingles(norm: str, size: int) -> np.ndarray:
    """Sorted distinct 32-bit hashes (CRC-32: fast, stable across runs) of the `size`-word shingles of a
    normalised text; a letter shorter than `size` words is one shingle of all its words; empty: no shingle."""
    words = norm.split()
    if not words:
        return np.empty(0, dtype=np.uint32)
    grams = [" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))]
    return np.unique(np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint32, count=len(grams)))


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _lsh_params(threshold: float, num_perm: int, miss: float = 1e-3) -> tuple[int, int]:
    """LSH bands b and rows r (b*r <= num_perm) that miss a pair exactly at `threshold` with probability <= `miss`
    (1 - (1 - J^r)^b), with the fewest candidates. datasketch's own choice balances misses against false
    candidates and misses ~5% of pairs at J = threshold + 0.03; here the exact Jaccard weeds the candidates out."""
    for r in range(num_perm // 2, 1, -1):
        if (1 - threshold**r) ** (num_perm // r) <= miss:
            return num_perm // r, r
    return num_perm, 1


def _check(threshold: float, num_perm: int, shingle: int, max_group: int | None) -> None:
    if not 0 < threshold <= 1:
        raise DataError(f"The near-duplicate threshold must be a Jaccard similarity in (0, 1], got {threshold}. Use e.g. 0.8.")
    if shingle < 1 or num_perm < 2:
        raise DataError(f"Near-duplicates need shingle >= 1 word and num_perm >= 2, got shingle={shingle}, num_perm={num_perm}.")
    if max_group is not None and max_group < 1:
        raise DataError(f"max_group must be at least 1 letter (or None for no cap), got {max_group}.")


def near_groups(
    texts: list[str],
    threshold: float,
    *,
    num_perm: int = 128,
    shingle: int = 5,
    max_group: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Group id per letter (0..G-1, numbered by first appearance): exact duplicates always share an id, and
    near-duplicates (Jaccard similarity of the sets of `shingle`-word shingles of the normalised texts >= threshold)
    are merged by leader clustering, without transitive chaining.

    The exact groups are walked in order; an unassigned one becomes a leader, and the unassigned exact groups
    that MinHash LSH proposes as its candidates join it when their Jaccard with the *leader* (computed on the
    CRC-32-hashed shingle sets, so without MinHash's estimation error) reaches `threshold`, in order, while the group holds at most
    `max_group` letters (an exact group larger than that is still kept whole). Every member is thus within
    threshold of its leader, however templated the letters. Deterministic for a given `seed`.
    """
    _check(threshold, num_perm, shingle, max_group)
    return _near([normalize(t) for t in texts], threshold, num_perm, shingle, max_group, seed)


def _near(norm: list[str], threshold: float, num_perm: int, shingle: int, max_group: int | None, seed: int) -> np.ndarray:
    from datasketch import MinHash, MinHashLSH

    exact = _ids(norm)
    n_exact = int(exact.max()) + 1 if len(exact) else 0
    first = np.unique(exact, return_index=True)[1]  # the first letter of each exact group, in id order
    size = np.bincount(exact, minlength=n_exact)
    sets = [_shingles(norm[i], shingle) for i in first]
    lsh = MinHashLSH(num_perm=num_perm, params=_lsh_params(threshold, num_perm))
    proto = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)  # the shingles are hashed already
    hashes = []
    for g, s in enumerate(sets):
        m = proto.copy()
        m.update_batch(s.tolist())
        hashes.append(m)
        if len(s):
            lsh.insert(g, m, check_duplication=False)

    near = np.full(n_exact, -1, dtype=np.int64)
    n_near = 0
    for g in range(n_exact):
        if near[g] >= 0:
            continue
        near[g], members = n_near, int(size[g])
        if len(sets[g]):
            for c in sorted(lsh.query(hashes[g])):
                if near[c] >= 0 or (max_group is not None and members + size[c] > max_group):
                    continue
                if _jaccard(sets[g], sets[c]) >= threshold:
                    near[c], members = n_near, members + int(size[c])
        n_near += 1
    return near[exact]


def _key(label):
    return tuple(label) if isinstance(label, (list, tuple)) else label


def _members(ids: np.ndarray) -> list[list[int]]:
    """Positions of each group with at least two letters, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for i, g in enumerate(ids.tolist()):
        out.setdefault(g, []).append(i)
    return [rows for rows in out.values() if len(rows) > 1]


def _conflicts(exact: np.ndarray, labels: list) -> list[list[int]]:
    return [rows for rows in _members(exact) if len({_key(labels[i]) for i in rows}) > 1]


def conflicts(texts: list[str], labels: list) -> list[list[int]]:
    """The exact-duplicate groups (0-based positions) whose letters carry more than one distinct label."""
    return _conflicts(exact_groups(texts), labels)


def _jsonable(label):
    return list(label) if isinstance(label, (list, tuple)) else label


def _group(rows: list[int], texts, labels, numbers, preview: bool = True) -> dict:
    out = {"rows": rows, "row_numbers": [numbers[i] for i in rows], "labels": [_jsonable(labels[i]) for i in rows]}
    if preview:
        out["preview"] = [texts[i][:160] for i in rows]
    return out


def _describe(groups: list[list[int]], shown: list[list[int]], texts, labels, numbers, examples: int) -> dict:
    """Counts of the groups (of two letters or more) and the largest of `shown` as examples."""
    return {
        "n_groups": len(groups),
        "n_letters_in_groups": sum(len(rows) for rows in groups),
        "largest": max((len(rows) for rows in groups), default=1 if texts else 0),
        "examples": [_group(rows, texts, labels, numbers) for rows in sorted(shown, key=len, reverse=True)[:examples]],
    }


def _compare(group: dict, norm: list[str]) -> None:
    """Adds each letter's Jaccard similarity with the group's first letter, and its words around the first one
    that differs from it (None for the first letter and its exact copies)."""
    base, base_words = _shingles(norm[0], 5), norm[0].split()
    group["similarity"], group["first_difference"] = [], []
    for text in norm:
        group["similarity"].append(round(_jaccard(base, _shingles(text, 5)), 3) if len(base) else 1.0)
        words = text.split()
        k = next((k for k, (a, b) in enumerate(zip(base_words, words)) if a != b), min(len(words), len(base_words)))
        same = words == base_words
        group["first_difference"].append(None if same else ("… " if k > 6 else "") + " ".join(words[max(0, k - 6) : k + 10]) + " …")


def _rows_text(numbers: list, limit: int = 6) -> str:
    shown = ", ".join(str(r) for r in numbers[:limit])
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _too_large(what: str, groups: list[list[int]], numbers: list, n: int, folds: int) -> str | None:
    """A warning when the largest group exceeds n/(2K) letters: kept whole in one fold, it unbalances them."""
    limit = n / (2 * folds)
    rows = max(groups, key=len, default=[])
    if len(rows) <= max(limit, 1):
        return None
    return (
        f"{what}: the group at rows {_rows_text([numbers[i] for i in rows])} holds {len(rows)} letters, more than "
        f"n/(2K) = {n}/(2x{folds}) = {limit:.1f}. A group is kept whole in one fold, so it will unbalance the {folds} "
        "cross-validation folds (and the train/test split): delete surplus copies, or use fewer folds."
    )


def summary(
    texts: list[str],
    labels: list,
    *,
    near_threshold: float | None = 0.8,
    folds: int = 5,
    examples: int = 5,
    row_numbers: list | None = None,
) -> dict:
    """JSON-ready report of duplicate letters: exact groups, near-duplicate groups at `near_threshold` (None: not
    looked for), label conflicts (first 20 groups), and warnings. `rows` are 0-based positions in `texts`;
    `row_numbers` are the numbers a user knows the letters by (default: 1-based positions), which the warnings cite."""
    if near_threshold is not None:
        _check(near_threshold, 128, 5, None)
    if folds < 2:
        raise DataError(f"Cross-validation needs at least 2 folds, got folds={folds}.")
    numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(texts) + 1))
    if len(numbers) != len(texts) or len(labels) != len(texts):
        raise DataError(f"summary: {len(texts)} texts, {len(labels)} labels and {len(numbers)} row numbers; give one of each per letter.")
    n, norm = len(texts), [normalize(t) for t in texts]
    exact_ids = _ids(norm)
    exact_rows = _members(exact_ids)
    exact = _describe(exact_rows, exact_rows, texts, labels, numbers, examples)
    warnings = [_too_large("Exact duplicates", exact_rows, numbers, n, folds)]
    near = None
    if near_threshold is not None:
        near_rows = _members(_near(norm, near_threshold, 128, 5, None, 0))
        # Examples: the groups that hold more than one distinct text (the exact copies are shown above).
        mixed = [rows for rows in near_rows if len({norm[i] for i in rows}) > 1]
        near = {"threshold": near_threshold, **_describe(near_rows, mixed, texts, labels, numbers, examples)}
        near["n_groups_beyond_exact"] = len(mixed)
        for group in near["examples"]:
            _compare(group, [norm[i] for i in group["rows"]])
        if near["largest"] > exact["largest"]:
            warnings.append(_too_large(f"Near-duplicates (Jaccard >= {near_threshold}), if grouped", near_rows, numbers, n, folds))
    clash = _conflicts(exact_ids, labels)
    found = {
        "n_groups": len(clash),
        "n_letters": sum(len(rows) for rows in clash),
        "groups": [_group(rows, texts, labels, numbers, preview=False) for rows in clash[:20]],
    }
    return {"n_letters": n, "exact": exact, "near": near, "conflicts": found, "warnings": [w for w in warnings if w]}


def merge_conflicts(ds):
    """`ds` with each set of exact copies filed under different labels kept once (its first row), carrying the union of
    their labels: a multi-label dataset (each other letter keeps its own label, as a set of one, or none)."""
    groups = conflicts(ds.texts, ds.labels)
    if not groups:
        return ds
    sets = [tuple(labs) if ds.multi_label else (labs,) for labs in ds.labels]
    for group in groups:
        sets[group[0]] = tuple(sorted({lab for i in group for lab in sets[i]}))
    merged = dataclasses.replace(ds, labels=sets, multi_label=True)
    return merged.without([i for group in groups for i in group[1:]])

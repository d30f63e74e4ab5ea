"""Embedding extraction: one vector per letter from a model's hidden states.

* Pooling: `mean` (mask-aware mean over real tokens), `last` (the last real token,
  correct under left or right padding), `cls` (first token; encoders only).
* Letters are tokenised once, truncated to `max_length` tokens (the number truncated is
  reported) or, with `windows` > 1, a long letter read in overlapping windows whose vectors
  are pooled into one (engine.windows); the rows (letters or windows) are sorted by length
  and cut into batches under a token budget, so little compute goes to padding. Forward passes run under `torch.inference_mode` in the
  placement's dtype (bf16 on CPUs with native bf16, see engine.devices).
* Vectors are written batch by batch into a memory-mapped .npy beside its final name and
  renamed when complete: memory does not grow with the number of letters, and a
  cancelled or crashed extraction leaves no file under a real name.
* `CLINBENCH_BATCH_DELAY_S` (testing knob): sleep this long after each batch, so tests
  and demos can cancel or kill a run in the middle of an extraction on a tiny model.
* Content-addressed cache: the key covers model identity (id + weights hash or revision),
  pooling, max_length, windows (when more than 1, with their overlap), dtype and the hash of the letters. A repeated request loads the
  stored vectors and runs no forward pass.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.cache.context import StepContext, ensure
from engine.cache.storage import atomic_path, atomic_write_json, embeddings_dir, sha256_file, sha256_json, sha256_texts
from engine.errors import ClinBenchError
from engine.features import windows as windowing
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import DEFAULT_MAX_LENGTH, POOLINGS, Options

FEATURES_VERSION = 1  # bump when extraction changes its numbers, to invalidate cached vectors

# Counts forward passes in this process; tests use it to prove a cache hit computed nothing.
FORWARD_PASSES = 0


@dataclass
class EmbedStats:
    key: str
    n_letters: int
    dim: int
    n_tokens: int  # real (non-padding) tokens fed to the model
    n_truncated: int  # letters longer than max_length (or than `windows` windows reach), cut to it
    pooling: str
    max_length: int
    dtype: str
    device: str
    seconds: float
    cache_hit: bool
    windows: int = 1  # most windows of max_length tokens read per letter (1: cut at max_length)
    n_windows: int | None = None  # rows fed to the model: letters, plus the extra windows of long ones (none: stored before windows)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def default_batch_tokens(device: str) -> int:
    """Token budget per forward pass: moderate on CPU (cache-friendly), large on GPU."""
    return 4096 if device == "cpu" else 32768


_MALLOC_TUNED = False


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed activation buffers instead of handing them back to the OS.

    By default glibc serves big blocks (activations of a batch are MBs) with fresh mmap
    pages and unmaps them on free, so every forward pass pays page faults to zero the
    same memory again. A higher mmap threshold (32 MB, glibc's maximum) and trim threshold
    let the heap reuse them. No-op off glibc.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def embedding_key(identity: dict, pooling: str, max_length: int, dtype: str, text_hash: str, windows: int = 1) -> str:
    """The cache key of vectors; `windows` enters it only above 1, so vectors cut at max_length keep the keys they always had."""
    read = {"windows": windows, "overlap": windowing.OVERLAP} if windows > 1 else {}
    return sha256_json(
        {"v": FEATURES_VERSION, "model": identity, "pooling": pooling, "max_length": max_length, "dtype": dtype, "texts": text_hash, **read}
    )[:32]


def check_pooling(pooling: str, kind: str) -> None:
    if pooling not in POOLINGS:
        raise ClinBenchError(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
    if pooling == "cls" and kind == "decoder":
        raise ClinBenchError("CLS pooling needs an encoder: a decoder's first token sees nothing of the letter. Use 'mean' or 'last'.")


def tokenize(tokenizer, texts: list[str], max_length: int, chunk: int = 512) -> tuple[list[np.ndarray], int]:
    """Token ids per letter (int32 arrays, special tokens included, cut to max_length) and the number cut."""
    ids: list[np.ndarray] = []
    n_truncated = 0
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        full = tokenizer(part, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        long = [i for i, x in enumerate(full) if len(x) > max_length]
        if long:  # let the tokenizer truncate, so closing special tokens stay in place
            cut = tokenizer([part[i] for i in long], add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
            for i, x in zip(long, cut):
                full[i] = x
            n_truncated += len(long)
        ids.extend(np.asarray(x, dtype=np.int32) for x in full)
    return ids, n_truncated


def tokenize_rows(tokenizer, texts: list[str], max_length: int, windows: int = 1, chunk: int = 512):
    """(rows of token ids, the letter of each row, letters cut): one row per letter cut at max_length (`tokenize`), or with
    `windows` > 1 the overlapping windows of each longer letter (engine.windows); cut then means longer than they reach."""
    if windows == 1:
        ids, n_truncated = tokenize(tokenizer, texts, max_length, chunk)
        return ids, np.arange(len(ids)), n_truncated
    prefix, suffix = windowing.special_tokens(tokenizer)
    rows: list[np.ndarray] = []
    owner: list[int] = []
    n_truncated = 0
    for start in range(0, len(texts), chunk):
        full = tokenizer(texts[start : start + chunk], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for i, x in enumerate(full, start):
            parts, cut = windowing.split(x, prefix, suffix, max_length, windows) if len(x) > max_length else ([x], False)
            rows.extend(np.asarray(p, dtype=np.int32) for p in parts)
            owner.extend([i] * len(parts))
            n_truncated += cut
    return rows, np.asarray(owner, dtype=np.int64), n_truncated


def plan_batches(lengths: list[int], batch_tokens: int, max_batch: int = 256, tiebreak: list | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest first, each padded size (count x longest) within the budget.

    `tiebreak` (e.g. each letter's token bytes) orders letters of equal length by content, not
    by position, so the batches - and hence the padding each letter gets, which moves bf16
    results in the last bit - do not depend on the order of the letters.
    """
    order = sorted(range(len(lengths)), key=(lambda i: -lengths[i]) if tiebreak is None else (lambda i: (-lengths[i], tiebreak[i])))
    batches, current, longest = [], [], 0
    for i in order:
        n = lengths[i]
        longest_if = max(longest, n)
        if (current and (len(current) + 1) * longest_if > batch_tokens) or len(current) >= max_batch:
            batches.append(current)
            current, longest_if = [], n
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


def pool(hidden, mask, pooling: str):
    """(batch, tokens, dim) hidden states and (batch, tokens) mask -> (batch, dim) float32."""
    import torch

    if pooling == "mean":
        # zero the padding in the model's dtype (exact), then sum with float32 accumulation: no float copy
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1, dtype=torch.float32) / mask.sum(1, keepdim=True).clamp(min=1).float()
    if pooling == "last":
        # position of the last 1 in each mask row: right padding -> length-1, left padding -> T-1
        last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    if pooling == "cls":
        return hidden[:, 0].float()
    raise ClinBenchError(f"Unknown pooling {pooling!r}")


def extract(
    loaded,
    texts: list[str],
    out_path: Path,
    *,
    pooling: str = "mean",
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_tokens: int | None = None,
    windows: int = 1,
    ctx: StepContext | None = None,
) -> EmbedStats:
    """Embed `texts` with a loaded model into the .npy file `out_path` (written atomically); `windows` > 1 reads a letter
    longer than max_length in up to that many overlapping windows and pools them into its one vector (engine.windows)."""
    t0 = time.perf_counter()
    with atomic_path(out_path) as tmp:
        open_out = lambda n, dim: np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))  # noqa: E731
        out, stats = _embed_into(open_out, loaded, texts, pooling, max_length, batch_tokens, windows, ensure(ctx))
        out.flush()
        del out
    stats.seconds = time.perf_counter() - t0
    return stats


def vectors(loaded, texts: list[str], *, pooling: str = "mean", max_length: int = DEFAULT_MAX_LENGTH, windows: int = 1) -> np.ndarray:
    """The vectors of a few letters, in memory (float32, one row per letter), computed exactly as `extract` computes them:
    for letters being classified (never written to disk, nor to the embeddings cache)."""
    out, _ = _embed_into(lambda n, dim: np.zeros((n, dim), np.float32), loaded, texts, pooling, max_length, None, windows, ensure(None))
    return out


def _embed_into(open_out, loaded, texts, pooling, max_length, batch_tokens, windows, ctx) -> tuple[np.ndarray, EmbedStats]:
    """Tokenise, plan and embed `texts` into the array `open_out(rows, dim)` gives; (that array, the stats)."""
    global FORWARD_PASSES
    import torch

    check_pooling(pooling, loaded.kind)
    tok, model, placement = loaded.tokenizer, loaded.model, loaded.placement
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_length > limit and loaded.kind == "encoder":
        raise ClinBenchError(
            f"max_length {max_length} exceeds what {loaded.entry.name} can read ({limit} tokens). Use --max-length {limit} or less."
        )
    t0 = time.perf_counter()
    ctx.progress(0, len(texts), "tokenising")
    ids, owner, n_truncated = tokenize_rows(tok, texts, max_length, windows)
    lengths = [len(x) for x in ids]
    batches = plan_batches(lengths, batch_tokens or default_batch_tokens(placement.device), tiebreak=[x.tobytes() for x in ids])
    dim = model.config.hidden_size
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Decoders get no attention mask: with right padding, causal attention already keeps every
    # real token from seeing the padding after it (positions are 0..n-1 either way), and the
    # unmasked causal kernel skips the upper triangle. Pooling below still uses the mask.
    use_mask = loaded.kind != "decoder"
    _keep_freed_memory()
    delay = float(os.environ.get("CLINBENCH_BATCH_DELAY_S") or 0)
    rows_done, stage = 0, "embedding" if len(ids) == len(texts) else "embedding windows"
    out = open_out(len(texts), dim)
    pooled = windowing.Accumulator(out, owner, lengths)  # a long letter's windows -> its one vector
    with torch.inference_mode():
        for batch in batches:
            ctx.check_stop("Embedding extraction was cancelled; no vectors were stored.")
            longest = lengths[batch[0]]  # (rounding up to a multiple of 8 or 16 measured no faster)
            input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):  # right padding: positions of real tokens start at 0
                input_ids[row, : lengths[i]] = ids[i]
                mask[row, : lengths[i]] = 1
            input_t = torch.from_numpy(input_ids).to(placement.device)
            mask_t = torch.from_numpy(mask).to(placement.device)
            hidden = model(input_ids=input_t, attention_mask=mask_t if use_mask else None).last_hidden_state
            FORWARD_PASSES += 1
            pooled.add(batch, pool(hidden, mask_t, pooling).cpu().numpy())
            rows_done += len(batch)
            ctx.progress(rows_done, len(ids), stage)  # (rows: a long letter's windows come before its tail)
            if delay:
                time.sleep(delay)
    stats = EmbedStats(
        "",
        len(texts),
        dim,
        int(sum(lengths)),
        n_truncated,
        pooling,
        max_length,
        placement.dtype,
        placement.device,
        time.perf_counter() - t0,
        cache_hit=False,
        windows=windows,
        n_windows=len(ids),
    )
    return out, stats


def read_meta(key: str) -> dict:
    """What produced the stored embeddings `key` (model identity, options, stats), from their .json."""
    return json.loads((embeddings_dir() / f"{key}.json").read_text())


@dataclass
class LazyModel:
    """A model known by its identity, loaded only when its vectors are not cached (e.g. a LoRA-tuned model)."""

    identity: dict
    placement: object
    load: Callable[[], object]


def embed(
    model_name_or_loaded,
    texts: list[str],
    *,
    pooling: str = "mean",
    max_length: int = DEFAULT_MAX_LENGTH,
    placement=None,
    batch_tokens: int | None = None,
    windows: int = 1,
    use_cache: bool = True,
    ctx: StepContext | None = None,
) -> tuple[np.ndarray, EmbedStats]:
    """Vectors for `texts` (a read-only memory map, one row per letter), from the cache when possible.

    `model_name_or_loaded` is a registry name / hub id / folder, an already loaded model, or a LazyModel.
    """
    ctx = ensure(ctx)
    checked = {"pooling": pooling, "max_length": max_length, "batch_tokens": batch_tokens, "windows": windows}
    Options.parse(checked, where="embed")  # checked as options
    if isinstance(model_name_or_loaded, str):
        entry = catalog.resolve(model_name_or_loaded)
        placement = placement or choose()
        _folder, identity = catalog.locate(entry)
        identity = {**identity}
        loaded = None
    elif isinstance(model_name_or_loaded, LazyModel):
        placement = model_name_or_loaded.placement
        identity = dict(model_name_or_loaded.identity)
        loaded = None
    else:
        loaded = model_name_or_loaded
        placement = loaded.placement
        identity = {k: v for k, v in loaded.identity.items() if k not in ("model_type", "kind")}
    key = embedding_key(identity, pooling, max_length, placement.dtype, sha256_texts(texts), windows)
    npy, meta_path = embeddings_dir() / f"{key}.npy", embeddings_dir() / f"{key}.json"
    if use_cache and meta_path.exists() and npy.exists():
        t0 = time.perf_counter()
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError):  # a damaged .json: a cache miss, the vectors are extracted again
            meta = {}
        if isinstance(meta, dict) and isinstance(meta.get("stats"), dict) and meta.get("npy_sha256") == sha256_file(npy):
            vectors = np.load(npy, mmap_mode="r")
            if vectors.shape[0] == len(texts):
                stats = EmbedStats(**{**meta["stats"], "seconds": time.perf_counter() - t0, "cache_hit": True})
                ctx.progress(len(texts), len(texts), "loaded from cache")
                return vectors, stats
    if isinstance(model_name_or_loaded, LazyModel):
        loaded = model_name_or_loaded.load()
    elif loaded is None:
        loaded = catalog.load(model_name_or_loaded, placement)
    stats = extract(loaded, texts, npy, pooling=pooling, max_length=max_length, batch_tokens=batch_tokens, windows=windows, ctx=ctx)
    stats.key = key
    atomic_write_json(meta_path, {"key": key, "model": identity, "stats": asdict(stats), "npy_sha256": sha256_file(npy)})
    return np.load(npy, mmap_mode="r"), stats

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
* Resumable (`embed`, and `extract(resume=True)`): the plan's batches are grouped, in order, into chunks of CHUNK_ROWS
  rows, each sealed into the vectors' chunks folder as it completes (engine.cache.chunks). A cancelled, killed or
  crashed extraction of the same letters, model and options resumes after its sealed chunks, and its vectors are the
  same, bit for bit, as an uninterrupted run's: a chunk never splits a batch, and every chunk is added in the plan's
  order. The chunks can also be computed elsewhere (`spread`, e.g. Ray tasks, engine.runs.ray_shards) and merged here.
* `CLINBENCH_BATCH_DELAY_S` (testing knob): sleep this long after each batch, so tests
  and demos can cancel or kill a run in the middle of an extraction on a tiny model.
* `CLINBENCH_CHUNK_ROWS` (testing knob): rows per chunk instead of 512.
* Content-addressed cache: the key covers model identity (id + weights hash or revision),
  pooling, max_length, windows (when more than 1, with their overlap), dtype and the hash of the letters. A repeated request loads the
  stored vectors and runs no forward pass. One extraction per array at a time (`storage.sole_writer`): a step that
  asks for vectors another step is computing (two seeds of a grid, two runs on the same letters) waits for them and
  loads them, instead of racing it for the same chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.cache.chunks import Parts, parts_dir
from engine.cache.context import StepContext, ensure
from engine.cache.storage import (
    atomic_path,
    atomic_write_json,
    embeddings_dir,
    sha256_bytes,
    sha256_file,
    sha256_json,
    sha256_texts,
    sole_writer,
)
from engine.errors import ClinBenchError
from engine.features import windows as windowing
from engine.models import catalog
from engine.models.devices import choose
from engine.options.groups import DEFAULT_MAX_LENGTH, POOLINGS, Options

FEATURES_VERSION = 1  # bump when extraction changes its numbers, to invalidate cached vectors

# rows (letters, or windows of long letters) per sealed chunk of a resumable extraction; CLINBENCH_CHUNK_ROWS (testing
# knob, read at import) makes them few, so a test can shard or resume the extraction of a few letters in a run's step
CHUNK_ROWS = int(os.environ.get("CLINBENCH_CHUNK_ROWS") or 512)

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


def plan_chunks(batches: list[list[int]], chunk_rows: int) -> list[list[list[int]]]:
    """Consecutive batches of the plan grouped into chunks of at least `chunk_rows` rows (the last may hold fewer).

    A chunk never splits a batch, so every batch - and the padding each row gets - is the same whether the extraction
    runs in one go, resumes after the last sealed chunk, or is spread over shards."""
    chunks, current, rows = [], [], 0
    for batch in batches:
        current.append(batch)
        rows += len(batch)
        if rows >= chunk_rows:
            chunks.append(current)
            current, rows = [], 0
    if current:
        chunks.append(current)
    return chunks


@dataclass
class Plan:
    """What an extraction computes: token rows, the letter of each, batches grouped in chunks, and a hash of all of it with
    the model and options (the chunks folder's manifest: chunks of another plan are never reused). A shard's plan holds
    `ids` and `lengths` of its own rows only, by row index."""

    ids: list[np.ndarray] | dict[int, np.ndarray]
    owner: np.ndarray | None
    lengths: list[int] | dict[int, int]
    chunks: list[list[list[int]]]
    n_truncated: int
    hash: str
    pooling: str = "mean"
    identity: dict | None = None  # the model's, as in the cache key


def make_plan(loaded, texts: list[str], *, pooling: str, max_length: int, batch_tokens: int | None, windows: int, chunk_rows: int) -> Plan:
    """Tokenise `texts` and plan their batches and chunks (deterministic: the same on every run and every node)."""
    ids, owner, n_truncated = tokenize_rows(loaded.tokenizer, texts, max_length, windows)
    lengths = [len(x) for x in ids]
    batches = plan_batches(lengths, batch_tokens or default_batch_tokens(loaded.placement.device), tiebreak=[x.tobytes() for x in ids])
    chunks = plan_chunks(batches, chunk_rows)
    rows = hashlib.sha256()
    for x in ids:
        rows.update(len(x).to_bytes(8, "little"))
        rows.update(x.tobytes())
    identity = {k: v for k, v in loaded.identity.items() if k not in ("model_type", "kind")}
    what = {
        "v": FEATURES_VERSION,
        "model": identity,
        "pooling": pooling,
        "dtype": loaded.placement.dtype,
        "device": loaded.placement.device,
    }
    plan_hash = sha256_json({**what, "rows": rows.hexdigest(), "owner": sha256_bytes(owner.tobytes()), "chunks": chunks})
    return Plan(ids, owner, lengths, chunks, n_truncated, plan_hash, pooling, identity)


def embed_chunk(loaded, plan: Plan, chunk: list[list[int]], pooling: str, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The pooled vectors (float32) of one chunk's rows, batch after batch in the plan's order."""
    global FORWARD_PASSES
    import torch

    tok, model, device = loaded.tokenizer, loaded.model, loaded.placement.device
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Decoders get no attention mask: with right padding, causal attention already keeps every
    # real token from seeing the padding after it (positions are 0..n-1 either way), and the
    # unmasked causal kernel skips the upper triangle. Pooling below still uses the mask.
    use_mask = loaded.kind != "decoder"
    delay = float(os.environ.get("CLINBENCH_BATCH_DELAY_S") or 0)
    out = np.empty((sum(len(b) for b in chunk), model.config.hidden_size), dtype=np.float32)
    at = 0
    with torch.inference_mode():
        for batch in chunk:
            longest = plan.lengths[batch[0]]  # (rounding up to a multiple of 8 or 16 measured no faster)
            input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.int64)
            for row, i in enumerate(batch):  # right padding: positions of real tokens start at 0
                input_ids[row, : plan.lengths[i]] = plan.ids[i]
                mask[row, : plan.lengths[i]] = 1
            input_t = torch.from_numpy(input_ids).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            hidden = model(input_ids=input_t, attention_mask=mask_t if use_mask else None).last_hidden_state
            FORWARD_PASSES += 1
            out[at : at + len(batch)] = pool(hidden, mask_t, pooling).cpu().numpy()
            at += len(batch)
            if on_batch:
                on_batch(len(batch))
            if delay:
                time.sleep(delay)
    return out


# Sends chunks to be embedded elsewhere (e.g. engine.runs.ray_shards: Ray tasks), each sealed into the chunks folder as it
# completes: called with (plan, the indices of the chunks not sealed yet, the chunks folder, the step's context), it returns
# the chunks this process embeds itself and `wait(give_up)`: wait(False) returns once the others are done (a chunk a shard
# failed to seal is then embedded here), wait(True) stops them (a cancel, an error).
Spread = Callable[[Plan, list[int], Parts, StepContext], tuple[list[int], Callable[[bool], None]]]


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
    resume: bool = False,
    chunk_rows: int | None = None,
    spread: Spread | None = None,
) -> EmbedStats:
    """Embed `texts` with a loaded model into the .npy file `out_path` (written atomically); `windows` > 1 reads a letter
    longer than max_length in up to that many overlapping windows and pools them into its one vector (engine.windows).

    With `resume`, each chunk of CHUNK_ROWS rows is sealed into `out_path`'s chunks folder (engine.cache.chunks) as it
    completes, an extraction of the same plan starts after the chunks already sealed, and the folder is removed once
    `out_path` is written; `spread` computes the missing chunks elsewhere (shards), this process then merges them. The
    vectors are the same, bit for bit, however the work was cut."""
    ctx = ensure(ctx)
    _check_readable(loaded, pooling, max_length)
    model, placement = loaded.model, loaded.placement
    t0 = time.perf_counter()
    ctx.progress(0, len(texts), "tokenising")
    plan = make_plan(
        loaded,
        texts,
        pooling=pooling,
        max_length=max_length,
        batch_tokens=batch_tokens,
        windows=windows,
        chunk_rows=chunk_rows or CHUNK_ROWS,
    )
    ids, lengths, n_chunks = plan.ids, plan.lengths, len(plan.chunks)
    parts = Parts.open(out_path, plan.hash, n_chunks) if resume or spread else None
    sealed = parts.sealed() if parts else {}
    _keep_freed_memory()
    stage = "embedding" if len(ids) == len(texts) else "embedding windows"
    done = [sum(len(b) for i in sealed for b in plan.chunks[i])]
    if sealed:
        ctx.progress(done[0], len(ids), f"resumed after {len(sealed)} of {n_chunks} chunks")

    def on_batch(n: int) -> None:
        ctx.check_stop(
            f"Embedding extraction was cancelled; {len(sealed)} of {n_chunks} chunks are sealed and a rerun resumes after them."
            if parts
            else "Embedding extraction was cancelled; no vectors were stored."
        )
        done[0] += n
        ctx.progress(done[0], len(ids), stage)  # (rows: a long letter's windows come before its tail)

    if spread and len(sealed) < n_chunks:  # this process's share first, then the shards', all sealed before the merge
        mine, wait = spread(plan, [i for i in range(n_chunks) if i not in sealed], parts, ctx)
        finished = False
        try:
            for i in mine:
                on_batch(0)
                sealed[i] = parts.seal(i, embed_chunk(loaded, plan, plan.chunks[i], pooling, on_batch))
            wait(False)
            finished = True
        finally:
            if not finished:
                wait(True)
        sealed = parts.sealed()
    with atomic_path(out_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), model.config.hidden_size))
        pooled = windowing.Accumulator(out, plan.owner, lengths)  # a long letter's windows -> its one vector
        for i, chunk in enumerate(plan.chunks):  # in the plan's order, whether computed now or read: the same sums
            if i in sealed:
                vectors = parts.read(sealed[i])
            else:
                on_batch(0)
                vectors = embed_chunk(loaded, plan, chunk, pooling, on_batch)
                if parts:
                    sealed[i] = parts.seal(i, vectors)
            _pool_chunk(pooled, chunk, vectors)
        out.flush()
        del out
    if parts:
        parts.remove()
    seconds = time.perf_counter() - t0
    return EmbedStats(
        "",
        len(texts),
        model.config.hidden_size,
        int(sum(lengths)),
        plan.n_truncated,
        pooling,
        max_length,
        placement.dtype,
        placement.device,
        seconds,
        cache_hit=False,
        windows=windows,
        n_windows=len(ids),
    )


def vectors(loaded, texts: list[str], *, pooling: str = "mean", max_length: int = DEFAULT_MAX_LENGTH, windows: int = 1) -> np.ndarray:
    """The vectors of a few letters, in memory (float32, one row per letter), computed exactly as `extract` computes them
    (the same plan, batches and pooling): for letters being classified, never written to disk nor to the embeddings cache."""
    _check_readable(loaded, pooling, max_length)
    plan = make_plan(loaded, texts, pooling=pooling, max_length=max_length, batch_tokens=None, windows=windows, chunk_rows=CHUNK_ROWS)
    out = np.zeros((len(texts), loaded.model.config.hidden_size), np.float32)
    pooled = windowing.Accumulator(out, plan.owner, plan.lengths)
    for chunk in plan.chunks:
        _pool_chunk(pooled, chunk, embed_chunk(loaded, plan, chunk, pooling))
    return out


def _check_readable(loaded, pooling: str, max_length: int) -> None:
    check_pooling(pooling, loaded.kind)
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if limit and max_length > limit and loaded.kind == "encoder":
        raise ClinBenchError(
            f"max_length {max_length} exceeds what {loaded.entry.name} can read ({limit} tokens). Use --max-length {limit} or less."
        )


def _pool_chunk(pooled, chunk: list[list[int]], vectors: np.ndarray) -> None:
    """A chunk's rows (its batches' rows in order) into the accumulator of the letters' vectors."""
    at = 0
    for batch in chunk:
        pooled.add(batch, vectors[at : at + len(batch)])
        at += len(batch)


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
    if use_cache and (hit := _cached(npy, meta_path, len(texts), ctx)):
        return hit

    def waiting() -> None:  # another step (another run, a seed of this grid) is embedding the same letters
        ctx.check_stop("Embedding extraction was cancelled while another step embedded the same letters; nothing was stored.")
        ctx.progress(0, len(texts), "waiting for another step that embeds the same letters")

    with sole_writer(npy, waiting) as waited:  # one extraction per array: two writers' chunks would race
        if use_cache and waited and (hit := _cached(npy, meta_path, len(texts), ctx)):
            return hit
        if isinstance(model_name_or_loaded, LazyModel):
            loaded = model_name_or_loaded.load()
        elif loaded is None:
            loaded = catalog.load(model_name_or_loaded, placement)
        stats = extract(
            loaded,
            texts,
            npy,
            pooling=pooling,
            max_length=max_length,
            batch_tokens=batch_tokens,
            windows=windows,
            ctx=ctx,
            resume=use_cache,
            spread=ctx.shards(model_name_or_loaded, placement) if ctx.shards and isinstance(model_name_or_loaded, str) else None,
        )
        stats.key = key
        atomic_write_json(meta_path, {"key": key, "model": identity, "stats": asdict(stats), "npy_sha256": sha256_file(npy)})
        return np.load(npy, mmap_mode="r"), stats


def _cached(npy: Path, meta_path: Path, n: int, ctx: StepContext) -> tuple[np.ndarray, EmbedStats] | None:
    """The cached vectors and their stats, if `npy` holds the `n` rows its metadata vouches for."""
    if not (meta_path.exists() and npy.exists()):
        return None
    t0 = time.perf_counter()
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError):  # a damaged .json: a cache miss, the vectors are extracted again
        meta = {}
    if isinstance(meta, dict) and isinstance(meta.get("stats"), dict) and meta.get("npy_sha256") == sha256_file(npy):
        vectors = np.load(npy, mmap_mode="r")
        if vectors.shape[0] == n:
            stats = EmbedStats(**{**meta["stats"], "seconds": time.perf_counter() - t0, "cache_hit": True})
            ctx.progress(n, n, "loaded from cache")
            if parts_dir(npy).exists():  # chunks left by a writer stopped between sealing the vectors and removing them
                Parts(parts_dir(npy), "", 0).remove()
            return vectors, stats
    return None

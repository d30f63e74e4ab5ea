"""Reaching the Hugging Face hub: the local cache first, then the hub within a hard time limit.

A machine without internet (or with HF_HUB_OFFLINE set) gets a clear ModelUnavailable within
seconds, never a hang: the hub is first probed in a daemon thread (a DNS stall ignores socket
timeouts), and gated, missing or unreachable models each get their own message. `check` is what
`submit` asks before queuing a run (cache, then the hub within 1.5 s; it downloads nothing).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from engine.errors import ModelUnavailable

TIMEOUT_S = 4.0
CHECK_TIMEOUT_S = 1.5  # what `submit` waits for the hub before queuing a run (a stalled answer is left to the step)
PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "*.jinja"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the cache cannot even look up (bad characters): not cached
        return False


def _ask(repo_id: str, timeout: float) -> BaseException | None:
    """Ask the hub about a model within `timeout`: None when it answered that the model exists and can be read;
    otherwise the ModelUnavailable to raise (offline, unreachable, gated, missing). A probe still running at the
    limit is a TimeoutError (the caller decides)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if _offline():
        return ModelUnavailable(
            f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            "Connect to the internet once (unset HF_HUB_OFFLINE) to download it, or use a bundled model (minilm, smollm2)."
        )
    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            from huggingface_hub import HfApi

            outcome["info"] = HfApi().model_info(repo_id, timeout=timeout)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)  # a DNS stall ignores socket timeouts; the thread cannot hang us
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return TimeoutError(timeout)
    err = outcome.get("error")
    if isinstance(err, GatedRepoError):
        return ModelUnavailable(
            f"{repo_id} is gated on the Hugging Face hub: accept its licence on its model page and log in "
            "(`huggingface-cli login`), then try again."
        )
    if isinstance(err, RepositoryNotFoundError):
        return ModelUnavailable(f"{repo_id} does not exist on the Hugging Face hub (or is private). Check the spelling of the id.")
    if err is not None:
        return ModelUnavailable(
            f"{repo_id} is not in the local Hugging Face cache and the hub could not be reached "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). Connect to the internet once to "
            "download it, or use a bundled model (minilm, smollm2) or a local folder."
        )
    return None


def check(repo_id: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Refuse, within `timeout`, a hub model that cannot be had: not cached and offline, unreachable, gated or missing.
    Downloads nothing; a hub that is merely slow is not refused (the step downloads with the full time limit)."""
    if is_cached(repo_id):
        return
    err = _ask(repo_id, timeout)
    if isinstance(err, ModelUnavailable):
        raise err


def snapshot(repo_id: str, timeout: float = TIMEOUT_S, pickles: bool = False) -> Path:
    """The local snapshot folder of a hub model: from the HF cache, else downloaded within a time limit to first answer.
    Weights are the safetensors files; `pickles` (the user opted in) adds PyTorch's *.bin files."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [*PATTERNS, "*.bin"] if pickles else PATTERNS
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    err = _ask(repo_id, timeout)
    if isinstance(err, TimeoutError):
        raise ModelUnavailable(
            f"The Hugging Face hub did not answer within {timeout:.0f} s for {repo_id}, and it is not in the local cache. "
            "Check the internet connection (or a proxy), or use a bundled model (minilm, smollm2) or a local folder."
        )
    if err is not None:
        raise err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=timeout))
    except Exception as exc:
        raise ModelUnavailable(f"Downloading {repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

"""Reaching the Hugging Face hub: the local cache first, then the hub within a hard time limit.

A machine without internet (or with HF_HUB_OFFLINE set) gets a clear ModelUnavailable within
seconds, never a hang: the hub is first probed in a daemon thread (a DNS stall ignores socket
timeouts), and gated, missing or unreachable models each get their own message.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from engine.errors import ModelUnavailable

TIMEOUT_S = 4.0


def snapshot(repo_id: str, timeout: float = TIMEOUT_S) -> Path:
    """The local snapshot folder of a hub model: from the HF cache, else downloaded within a time limit to first answer."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "*.jinja"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if offline:
        raise ModelUnavailable(
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
        raise ModelUnavailable(
            f"The Hugging Face hub did not answer within {timeout:.0f} s for {repo_id}, and it is not in the local cache. "
            "Check the internet connection (or a proxy), or use a bundled model (minilm, smollm2) or a local folder."
        )
    err = outcome.get("error")
    if isinstance(err, GatedRepoError):
        raise ModelUnavailable(
            f"{repo_id} is gated on the Hugging Face hub: accept its licence on its model page and log in "
            "(`huggingface-cli login`), then try again."
        )
    if isinstance(err, RepositoryNotFoundError):
        raise ModelUnavailable(f"{repo_id} does not exist on the Hugging Face hub (or is private). Check the spelling of the id.")
    if err is not None:
        raise ModelUnavailable(
            f"{repo_id} is not in the local Hugging Face cache and the hub could not be reached "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). Connect to the internet once to download it, "
            "or use a bundled model (minilm, smollm2) or a local folder."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=timeout))
    except Exception as exc:
        raise ModelUnavailable(f"Downloading {repo_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None

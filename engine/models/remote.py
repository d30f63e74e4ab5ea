"""A generative model reached over HTTP: an OpenAI-compatible server (vLLM, llama.cpp's server, llama-cpp-python,
Ollama, TGI) named `openai-compat:MODEL@URL`, e.g. `openai-compat:llama-3-8b@http://127.0.0.1:8000/v1`.

This module owns everything about such a model: parsing its name, the allow-list, and the HTTP client that asks the
server for label log-likelihoods. Letters are sent to that server, so:

* **Allow-list.** Only loopback (127.0.0.0/8, ::1, `localhost`) and the hosts the user lists (option `allowed_hosts`,
  or the environment variable CLINBENCH_ALLOWED_HOSTS, comma-separated) may be contacted. `check_allowed` runs on the
  URL's text before any socket is opened or any name is resolved; every request goes through it again.
* **Scoring.** `/v1/completions` with `echo` and `logprobs` returns the log-probability of every token of prompt +
  label: a label's log-likelihood is the sum over the tokens at or after the prompt's end (`label_sum`; a token that
  straddles the boundary, the prompt's last characters merged with the label's first, is counted with the label).
  These are exact label likelihoods (vLLM, llama-cpp-python's server, OpenAI's legacy completions). A server that
  does not echo prompt log-probabilities (Ollama, llama.cpp's own server, TGI's chat API) is asked through
  `/v1/chat/completions` with `logprobs`/`top_logprobs`: only the *first token* of the answer is scored (a label's
  score is the best log-probability among the top tokens that start its words; a label none of them starts gets the
  lowest one returned, less log 2). `mode` records which one a server gave.
* **Transport.** Prompts go in batches (several per request where the server takes a list, else one per request,
  several requests at once); a failed request is retried with exponential back-off (0.5, 1, 2 s); a server that does
  not answer fails within seconds (connect time limit CONNECT_TIMEOUT_S) with a ModelUnavailable saying which URL.
Only the standard library's http.client is used (nothing to install; no proxy from the environment is applied).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from engine.errors import ClinBenchError, ModelUnavailable

PREFIX = "openai-compat:"
ALLOWED_HOSTS = "CLINBENCH_ALLOWED_HOSTS"  # hosts besides loopback that letters may be sent to (comma-separated)
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 120.0  # one request of a batch of long prompts on a slow server
BACKOFF_S = (0.5, 1.0, 2.0)  # waits before the 2nd, 3rd and 4th try
BATCH = 8  # prompts per request (or requests at once, for a server that takes one prompt per request)
TOP_LOGPROBS = 20  # chat completions: the most top tokens OpenAI's API returns
ECHO, FIRST_TOKEN = "echo", "first-token"
MODES = {
    ECHO: "exact label likelihoods (completions with echo and logprobs)",
    FIRST_TOKEN: "first token only (chat completions with top_logprobs; the server does not echo prompt log-probabilities)",
}
_NAME = re.compile(r"^openai-compat:(?P<model>.+)@(?P<url>https?://\S+)$")


@dataclass(frozen=True)
class Remote:
    """A model on an OpenAI-compatible server: the server's model name and its API base URL (ending /v1, usually)."""

    model: str
    url: str
    host: str = field(compare=False)
    secure: bool = field(compare=False, default=False)
    port: int = field(compare=False, default=80)
    base_path: str = field(compare=False, default="")

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.model}@{self.url}"


def is_remote(name: str) -> bool:
    return isinstance(name, str) and name.strip().startswith(PREFIX)


def parse(name: str) -> Remote:
    """`openai-compat:MODEL@URL` -> Remote; ClinBenchError naming what is wrong."""
    key = name.strip()
    m = _NAME.match(key)
    if not m:
        raise ModelUnavailable(
            f"{key!r} is not a server model: write openai-compat:MODEL@URL, e.g. openai-compat:llama-3-8b@http://127.0.0.1:8000/v1 "
            "(MODEL: the name the server serves it under; URL: the server's OpenAI API base)."
        )
    model, url = m["model"].strip(), m["url"].rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ModelUnavailable(f"The server URL {url!r} is malformed ({exc}).") from None
    if not parts.hostname:
        raise ModelUnavailable(f"The server URL {url!r} names no host; write it as http://HOST:PORT/v1.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ModelUnavailable(
            f"The server URL {url!r} may hold no user name, password, query or fragment; write it as http://HOST:PORT/v1."
        )
    secure = parts.scheme == "https"
    return Remote(model, url, parts.hostname.lower(), secure, port or (443 if secure else 80), parts.path.rstrip("/"))


def is_loopback(host: str) -> bool:
    """Whether `host` (as written: no name is resolved) is this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(extra: list[str] | None = None) -> list[str]:
    """The hosts besides loopback that may be contacted: the option's list and CLINBENCH_ALLOWED_HOSTS, lower case."""
    listed = [*(extra or []), *os.environ.get(ALLOWED_HOSTS, "").split(",")]
    return sorted({h.strip().lower().rstrip(".") for h in listed if h and h.strip()})


def check_allowed(remote: Remote, extra: list[str] | None = None) -> None:
    """Refuse (ClinBenchError) a server that is neither loopback nor listed, before anything is sent or resolved."""
    if is_loopback(remote.host) or remote.host.rstrip(".") in allowed_hosts(extra):
        return
    raise ClinBenchError(
        f"{remote.url} is not on this machine, and ClinBench sends letters only to loopback servers and the hosts you allow. "
        f"Nothing was sent. If letters may go to {remote.host}, list it in the option allowed_hosts "
        f"(--allowed-hosts {remote.host}) or in the environment variable {ALLOWED_HOSTS}={remote.host}."
    )


# --- HTTP ------------------------------------------------------------------------------------------------------------


class ServerError(ModelUnavailable):
    """The server answered with an HTTP error status (`status`)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _request(remote: Remote, method: str, path: str, body: dict | None, timeout: float) -> dict:
    """One HTTP request; the answer's JSON. OSError when the server cannot be reached, ServerError for an error status."""
    conn_cls = http.client.HTTPSConnection if remote.secure else http.client.HTTPConnection
    conn = conn_cls(remote.host, remote.port, timeout=CONNECT_TIMEOUT_S)
    try:
        conn.connect()
        conn.sock.settimeout(timeout)
        data = None if body is None else json.dumps(body).encode("utf-8")
        conn.request(method, remote.base_path + path, body=data, headers={"Content-Type": "application/json", "Accept": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.status >= 400:
        text = raw.decode("utf-8", "replace").strip().replace("\n", " ")[:300]
        raise ServerError(f"{remote.url}{path} answered HTTP {resp.status}: {text}", resp.status)
    try:
        return json.loads(raw)
    except ValueError:
        raise ModelUnavailable(f"{remote.url}{path} did not answer with JSON; is it an OpenAI-compatible server?") from None


def call(
    remote: Remote,
    method: str,
    path: str,
    body: dict | None = None,
    *,
    allowed: list[str] | None = None,
    retries: int = 3,
    timeout: float = READ_TIMEOUT_S,
) -> dict:
    """A request checked against the allow-list and retried with back-off on a failed connection, a time-out or a 5xx/429
    answer; ModelUnavailable naming the URL when every try failed."""
    check_allowed(remote, allowed)
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
        try:
            return _request(remote, method, path, body, timeout)
        except ServerError as exc:
            if exc.status < 500 and exc.status != 429:
                raise
            last = exc
        except (OSError, http.client.HTTPException) as exc:
            last = exc
    if isinstance(last, ServerError):
        raise ServerError(f"{last} (after {retries + 1} tries).", last.status)
    raise ModelUnavailable(
        f"The server at {remote.url} did not answer ({type(last).__name__}: {last}) after {retries + 1} tries. "
        "Check that it is running and that the URL (host, port, /v1) is right."
    )


def served_models(remote: Remote, allowed: list[str] | None = None, retries: int = 3) -> list[dict]:
    """The server's /models list (each entry as the server gives it: id, owned_by, created, ...)."""
    data = call(remote, "GET", "/models", allowed=allowed, retries=retries, timeout=10.0).get("data")
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


# --- log-likelihoods -------------------------------------------------------------------------------------------------


def _offset_shift(text: str, tokens: list[str], offsets: list[int]) -> int:
    """How far the server's text offsets lag the text sent: 0, or the length of a leading special token's text that the
    echo leaves out (llama-cpp-python drops a BOS it was sent, and counts offsets from after it)."""
    first = next(((t, o) for t, o in zip(tokens, offsets, strict=True) if t), None)
    if first is None or text[first[1] : first[1] + len(first[0])] == first[0]:
        return 0
    found = text.find(first[0])
    return max(0, found - first[1]) if found >= 0 else 0


def label_sum(logprobs: dict, start: int, end: int, text: str | None = None) -> tuple[float, int]:
    """(summed log-probability, tokens) of the echoed tokens that cover text[start:end]: tokens at or after `start`
    (and one that begins before it and ends after it: the prompt's end merged with the label's first characters),
    before `end` (a generated token after the label is not counted). `text`: what was sent (to find the offsets' shift)."""
    tokens, lps, offsets = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], logprobs.get("text_offset") or []
    if not (len(tokens) == len(lps) == len(offsets)) or not tokens:
        raise ModelUnavailable("The server's echoed logprobs lack tokens, token_logprobs or text_offset; it cannot score labels exactly.")
    shift = _offset_shift(text, tokens, offsets) if text is not None else 0
    offsets = [o + shift for o in offsets]
    total, n = 0.0, 0
    for tok, lp, off in zip(tokens, lps, offsets, strict=True):
        if off >= end:
            break
        if off >= start or off + len(tok) > start:
            if lp is None:
                raise ModelUnavailable("The server gave no log-probability for a label token (the label starts the text?).")
            total, n = total + float(lp), n + 1
    if n == 0:
        raise ModelUnavailable("No echoed token covers the label; the server's text_offset does not match the text sent.")
    return total, n


def _first_token_scores(top: list[dict], words: list[str]) -> list[float]:
    """Each label's score from the answer's first token's top log-probabilities (see the module docstring)."""
    pairs = [(str(t.get("token", "")), float(t.get("logprob", -math.inf))) for t in top]
    floor = min((lp for _, lp in pairs), default=-50.0) - math.log(2)
    out = []
    for w in words:
        matches = [lp for tok, lp in pairs if tok.strip() and w.lower().startswith(tok.strip().lower())]
        out.append(max(matches) if matches else floor)
    return out


@dataclass
class Client:
    """Scores label continuations on one server model; `mode` (ECHO or FIRST_TOKEN) is found on the first call."""

    remote: Remote
    allowed: list[str] | None = None
    mode: str | None = None
    lists: bool = True  # the server takes a list of prompts in one request (llama-cpp-python takes one)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _completions(self, texts: list[str]) -> list[dict]:
        """The echoed logprobs of each text (batched)."""
        body = {"model": self.remote.model, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0.0}

        def one(text: str) -> dict:
            choices = call(self.remote, "POST", "/completions", {**body, "prompt": text}, allowed=self.allowed).get("choices") or []
            if not choices or not isinstance(choices[0].get("logprobs"), dict):
                raise ModelUnavailable(
                    f"{self.remote.url}/completions returned no logprobs; the server does not echo prompt log-probabilities."
                )
            return choices[0]["logprobs"]

        if self.lists and len(texts) > 1:
            try:
                ans = call(self.remote, "POST", "/completions", {**body, "prompt": texts}, allowed=self.allowed, retries=0)
                choices = sorted(ans.get("choices") or [], key=lambda c: c.get("index", 0))
                if len(choices) == len(texts) and all(isinstance(c.get("logprobs"), dict) for c in choices):
                    return [c["logprobs"] for c in choices]
            except ServerError:
                pass
            self.lists = False  # one prompt per request from now on, several requests at once
        with ThreadPoolExecutor(max_workers=min(BATCH, len(texts))) as pool:
            return list(pool.map(one, texts))

    def _detect(self) -> str:
        """ECHO when /completions echoes prompt log-probabilities, else FIRST_TOKEN when chat completions give top logprobs."""
        try:
            lp = self._completions(["Hello world"])[0]
            label_sum(lp, len("Hello"), len("Hello world"), "Hello world")
            return ECHO
        except ServerError as exc:
            if exc.status >= 500:
                raise
        except ModelUnavailable as exc:
            if "did not answer" in str(exc):
                raise
        try:
            self._chat(["Hello"], ["world"])
            return FIRST_TOKEN
        except ModelUnavailable as exc:
            raise ModelUnavailable(
                f"{self.remote.url} gives no log-probabilities for {self.remote.model} (neither /completions with echo and logprobs "
                f"nor /chat/completions with top_logprobs): {exc}"
            ) from None

    def _chat(self, prompts: list[str], words: list[str]) -> list[list[float]]:
        body = {"model": self.remote.model, "max_tokens": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS, "temperature": 0.0}

        def one(prompt: str) -> list[float]:
            ans = call(
                self.remote, "POST", "/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}, allowed=self.allowed
            )
            try:
                top = ans["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise ModelUnavailable(f"{self.remote.url}/chat/completions returned no top_logprobs.") from None
            return _first_token_scores(top, words)

        with ThreadPoolExecutor(max_workers=min(BATCH, max(1, len(prompts)))) as pool:
            return list(pool.map(one, prompts))

    def ensure_mode(self) -> str:
        with self._lock:
            if self.mode is None:
                self.mode = self._detect()
        return self.mode

    def label_logprobs(self, prompts: list[str], continuations: list[str], words: list[str]) -> tuple[list[list[float]], list[list[int]]]:
        """(summed log-likelihood of each continuation after each prompt, its token counts), prompts x continuations.
        `words`: each continuation's label words (what the first-token mode matches against)."""
        if self.ensure_mode() == FIRST_TOKEN:
            return self._chat(prompts, words), [[1] * len(continuations) for _ in prompts]
        texts = [p + c for p in prompts for c in continuations]
        echoed: list[dict] = []
        for i in range(0, len(texts), BATCH):
            echoed += self._completions(texts[i : i + BATCH])
        sums, counts = [], []
        for i, p in enumerate(prompts):
            row = [label_sum(echoed[i * len(continuations) + j], len(p), len(p) + len(c), p + c) for j, c in enumerate(continuations)]
            sums.append([s for s, _ in row])
            counts.append([n for _, n in row])
        return sums, counts


def probe(url: str, model: str = "", allowed: list[str] | None = None) -> dict:
    """What the dashboard's "test connection" shows of a server: the models it serves and, for `model` (default: the first
    served), whether and how it returns log-probabilities. ClinBenchError for a host not allowed (nothing sent), a server
    that does not answer, or one that gives no log-probabilities."""
    url = url.strip().rstrip("/")
    r = parse(f"{PREFIX}{model.strip() or 'any'}@{url}")
    check_allowed(r, allowed)
    served = [str(m.get("id")) for m in served_models(r, allowed)]
    chosen = model.strip() or (served[0] if served else "")
    if not chosen:
        raise ModelUnavailable(f"The server at {r.url} lists no model; type the model's name as the server knows it.")
    if served and chosen not in served:
        raise ModelUnavailable(f"The server at {r.url} does not serve {chosen!r}; it serves {', '.join(served)}.")
    r = parse(f"{PREFIX}{chosen}@{url}")
    mode = Client(r, allowed).ensure_mode()
    return {"name": r.name, "url": r.url, "model": chosen, "served": served, "mode": mode, "scoring": MODES[mode]}

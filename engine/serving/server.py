"""`python -m engine serve`: stored classifiers over HTTP (FastAPI app, served by uvicorn).

    GET  /health            liveness (never needs the token)
    GET  /classifiers       every stored evaluation that can classify: id (its key), dataset (file name, hash), model,
                            method, protocol, macro-F1 with its CI, the manifest's sha256, and `usable` (its files match
                            the manifest and it is not a pickle of ClinBench <= 0.2) with the `problem` when not
    POST /classify          {"text", "classifier": id} -> {classifier, label, scores, truncated, latency_ms};
                            {"text", "classifiers": [ids]} -> {answers: [...], label (the majority), agreement}
    POST /classify/batch    {"texts": [...], "classifier": id} -> [answers]
    GET  /openapi.json      the API's description (the Swagger/ReDoc pages are off: they load scripts from a CDN)

Every classifier answers through engine.classifiers' one interface (predict_proba, classes_, truncated); a
classifier is loaded once, under a lock, and shared by every request. Inference takes turns (`Turns`): on a CPU one
letter already uses every core, so requests queue rather than fight for them, in the order they came, and a batch
takes one turn per TURN_LETTERS letters, so a single letter waits for one piece of a batch, not all of it (measured in
bench/serve.py). A request that has waited and worked for `timeout_s` is answered 503, one whose client has gone is
dropped at its next turn, and a batch holds at most `max_batch_chars` characters (413). Every letter passes
engine.serving.predict.check_letter first (422: empty, no words, invalid Unicode).

Letters are classified in memory and never stored or logged: the access log holds the method, the path (without
the query string) and the status only, validation errors never echo the request, and an unexpected failure is logged
by its exception type alone; answers name no folder of this machine. Bodies over `max_bytes` get 413; a Host header
other than loopback's names and `allowed_hosts` gets 400 (a page that rebinds its name to 127.0.0.1 reaches nothing);
with a token, every path but /health needs `Authorization: Bearer TOKEN`, and a host other than loopback is refused
without one.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

import engine
from engine.cache.artifacts import MANIFEST, MANIFEST_HASH, verify_tree
from engine.cache.estimator_files import is_pickled
from engine.cache.storage import evaluations_dir
from engine.errors import ClinBenchError
from engine.evaluation import results
from engine.methods import classifiers
from engine.options import serving as serve_options
from engine.options.config import cache_dir
from engine.serving import predict

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_BYTES = "127.0.0.1", 8000, 1_000_000
DEFAULT_TIMEOUT_S = 60.0  # what one request may wait and work in all before it is answered 503
DEFAULT_MAX_BATCH_CHARS = 200_000  # characters in one batch request (about 80 letters of 2,500 characters)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")  # the Host headers a loopback server answers (with any port)
MAX_BATCH = 256  # letters in one batch request
TURN_LETTERS = 4  # letters classified per turn: what a single request waits for at most, behind a batch
MAX_LOADED = 8  # classifiers kept loaded (their models are shared through engine.methods.classifiers.shared_model)
TOKEN_ENV = "CLINBENCH_SERVE_TOKEN"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_POLL_S = 0.05  # how often a waiting request checks its client and its time limit
log = logging.getLogger("clinbench.serve")
access_log = logging.getLogger("clinbench.serve.access")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse (ClinBenchError, one line) to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ClinBenchError(
            f"--host {host} lets other machines send letters to this server: set ${TOKEN_ENV} or give --token-file FILE (clients "
            "then send 'Authorization: Bearer TOKEN'), or keep the default --host 127.0.0.1."
        )


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The bearer token: --token (visible to every user of the machine in `ps`: warned), --token-file, or $CLINBENCH_SERVE_TOKEN."""
    if token and token_file:
        raise ClinBenchError("Give the token one way: --token or --token-file, not both.")
    if token:
        print(
            f"warning: --token is visible to every user of this machine (ps, /proc); set ${TOKEN_ENV} or use --token-file instead.",
            file=sys.stderr,
        )
        return token
    if token_file:
        try:
            given = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClinBenchError(
                f"--token-file {token_file} cannot be read ({type(exc).__name__}): give a UTF-8 file holding the token."
            ) from None
        if not given:
            raise ClinBenchError(f"--token-file {token_file} is empty: write the token into it (e.g. `openssl rand -hex 16 > FILE`).")
        return given
    return os.environ.get(TOKEN_ENV) or None


def allowed_hosts(host: str, extra: list[str] | None = None) -> list[str]:
    """The Host header names this server answers: loopback's, the address it listens on (unless a wildcard), and --allowed-host."""
    for name in extra or []:
        if name == "*" or "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")) or re.search(r"[/:\s]", name):
            raise ClinBenchError(
                f"--allowed-host {name!r} is not a host name: give a name such as clinbench.lan, or *.lan for every name under "
                "lan (no port, no scheme; '*' alone would answer any name, which is what DNS rebinding needs)."
            )
    names = [*LOOPBACK_NAMES, *(n.lower() for n in extra or [])]
    bound = host.strip().lower()
    if bound not in ("0.0.0.0", "::", ""):
        names.append(f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound)
    return list(dict.fromkeys(names))


_ABSOLUTE = re.compile(r"(?<![\w.~:/-])(?:/[^\s/'\"]+)+/([^\s/'\"]+)")


def public(message: str) -> str:
    """A message as a client may read it: the cache folder's location left out (paths inside it are relative) and any other
    absolute path cut to its last part, so no answer names a folder of this machine."""
    root = str(cache_dir())
    message = message.replace(root + os.sep, "").replace(root, "the cache folder")
    return _ABSOLUTE.sub(lambda m: m.group(1), message)


class ClassifyIn(BaseModel):
    text: str = Field(description="the letter (classified in memory, never stored or logged)")
    classifier: str | None = Field(None, description="one classifier id, as GET /classifiers lists them")
    classifiers: list[str] | None = Field(None, description="several classifier ids: every answer and the majority label")


class BatchIn(BaseModel):
    texts: list[str] = Field(description=f"the letters (1 to {MAX_BATCH}, at most the server's --max-batch-chars characters in all)")
    classifier: str = Field(description="a classifier id, as GET /classifiers lists them")


class Loaded:
    """Classifiers by evaluation key, loaded once (one at a time, so a shared model is never loaded twice)."""

    def __init__(self, max_loaded: int = MAX_LOADED):
        self.max_loaded = max_loaded
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock, self._loading = threading.Lock(), threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def folder(cid: str) -> Path:
        folder = evaluations_dir() / cid
        if not _ID.fullmatch(cid or "") or not (folder / MANIFEST).is_file():
            raise HTTPException(404, f"No stored classifier has id {cid!r}: GET /classifiers lists the ids.")
        return folder

    def get(self, cid: str):
        folder = self.folder(cid)
        with self._lock:
            if cid in self._items:
                self._items.move_to_end(cid)
                return self._items[cid]
        with self._loading:
            with self._lock:
                if cid in self._items:
                    return self._items[cid]
            try:
                clf = classifiers.load(folder)
            except ClinBenchError as exc:
                raise HTTPException(409, f"Classifier {cid} cannot answer: {public(str(exc))}") from None
            with self._lock:
                self._items[cid] = clf
                while len(self._items) > self.max_loaded:
                    self._items.popitem(last=False)
        return clf


class TimedOut(Exception):
    """The request used up its time limit waiting for its turn or working."""


class Gone(Exception):
    """The request's client has disconnected: nobody reads the answer."""


class Turns:
    """Inference one piece at a time, in the order requests asked for it (asyncio.Lock wakes its waiters first come, first
    served). A waiting request checks every _POLL_S whether its client is still there and its time is not up."""

    def __init__(self):
        self._lock, self._loop = None, None

    def _current(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # (one lock per event loop: a test client starts a loop of its own)
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def run(self, fn, *args, request: Request | None, deadline: float):
        """`fn(*args)` in a worker thread once it is this request's turn; TimedOut or Gone instead when the wait ends first."""
        lock = self._current()
        acquire = asyncio.ensure_future(lock.acquire())
        try:
            while not (await asyncio.wait({acquire}, timeout=_POLL_S))[0]:
                if time.monotonic() > deadline:
                    raise TimedOut
                if request is not None and await request.is_disconnected():
                    raise Gone
        except BaseException:
            if acquire.done() and not acquire.cancelled():
                lock.release()
            else:
                acquire.cancel()
            raise
        try:
            if time.monotonic() > deadline:
                raise TimedOut
            if request is not None and await request.is_disconnected():
                raise Gone
            return await run_in_threadpool(fn, *args)
        finally:
            lock.release()


def _classify_piece(clf, texts: list[str]) -> tuple[np.ndarray, list[bool], float]:
    t0 = time.perf_counter()
    proba = np.asarray(clf.predict_proba(texts))
    seconds = time.perf_counter() - t0
    return proba, list(clf.truncated(texts)), seconds


async def _answers(app, cid: str, texts: list[str], request: Request | None, deadline: float) -> list[dict]:
    """One answer per letter from one classifier: label, every class's probability, truncation, latency (ms per letter).
    The letters take one turn per TURN_LETTERS of them; 503 when the time limit passes first, 499 when the client left."""
    loaded, turns = app.state.loaded, app.state.turns
    clf = await run_in_threadpool(loaded.get, cid)
    probas, cut, seconds = [], [], 0.0
    try:
        for i in range(0, len(texts), TURN_LETTERS):
            proba, was_cut, s = await turns.run(_classify_piece, clf, texts[i : i + TURN_LETTERS], request=request, deadline=deadline)
            probas.append(proba)
            cut += was_cut
            seconds += s
    except TimedOut:
        limit = app.state.timeout_s
        raise HTTPException(
            503,
            f"The server was busy: this request used up its {limit:g} s (--timeout) before all its letters were classified. "
            "Retry later, or send fewer letters per batch.",
            headers={"Retry-After": str(max(1, round(limit / 4)))},
        ) from None
    except Gone:
        raise HTTPException(499, "The client closed the connection; the request was dropped.") from None
    ms = seconds * 1e3 / len(texts)
    out = []
    for row, was_cut in zip(np.concatenate(probas), cut):
        best = int(row.argmax())
        scores = {c: float(p) for c, p in zip(clf.classes_, row)}
        out.append({"classifier": cid, "label": clf.classes_[best], "scores": scores, "truncated": bool(was_cut), "latency_ms": ms})
    return out


class Checked:
    """Whether each stored classifier can answer: its files match its manifest and it is not a pickle of ClinBench <= 0.2.
    Its files are hashed again only when one's size or modification time changed."""

    def __init__(self):
        self._memo: dict[str, tuple[tuple, str | None]] = {}
        self._lock = threading.Lock()

    def problem(self, folder: Path) -> str | None:
        stats = tuple(sorted((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()))
        with self._lock:
            seen = self._memo.get(str(folder))
        if seen and seen[0] == stats:
            return seen[1]
        try:
            problem = None
            if is_pickled(folder):
                problem = (
                    "stored as a pickle by ClinBench 0.2 or earlier: convert it once with `python -m engine predict --evaluation "
                    f"{folder.name[:10]} --convert-pickles --text ...`"
                )
            else:
                verify_tree(folder, "")
        except ClinBenchError as exc:
            problem = public(str(exc))
        with self._lock:
            self._memo[str(folder)] = (stats, problem)
        return problem


def _describe(ev, checked: Checked) -> dict:
    sealed = ev.folder / MANIFEST_HASH
    data, metrics = ev.manifest.get("data", {}), ev.metrics
    problem = checked.problem(ev.folder)
    source = data.get("source")
    return {
        "id": ev.key,
        "label": ev.label,
        "dataset": {"source": Path(source).name if source else None, "data_hash": ev.data_hash, "n_letters": data.get("n_letters")},
        "classes": data.get("classes"),
        "model": ev.model,
        "method": ev.method,
        "stage": ev.stage,
        "protocol": ev.protocol,
        "macro_f1": metrics.get("macro_f1"),
        "macro_f1_ci": metrics.get("macro_f1_ci"),
        "created": ev.manifest.get("created"),
        "manifest_sha256": sealed.read_text().strip() if sealed.is_file() else None,
        "usable": problem is None,
        **({"problem": problem} if problem else {}),
    }


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """ASGI middleware: the access log (method, path without the query string, status), bearer token (all but /health), body
    size limit, failures logged without the request."""

    def __init__(self, app, token: str | None, max_bytes: int):
        self.app, self.token, self.max_bytes = app, token, max_bytes

    def _authorized(self, scope) -> bool:
        value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": "-"}

        async def logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, logged)
        finally:
            access_log.info("%s %s %s", scope["method"], scope["path"], status["code"])  # (scope["path"] holds no query string)

    async def _guarded(self, scope, receive, send):
        if self.token and scope["path"] != "/health" and not self._authorized(scope):
            detail = "Missing or wrong token: send 'Authorization: Bearer TOKEN' with the server's token."
            return await _send_json(send, 401, {"detail": detail}, [(b"www-authenticate", b"Bearer")])
        too_big = {"detail": f"The request is larger than this server accepts ({self.max_bytes} bytes, --max-bytes)."}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:  # read the body here (bounded) and hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.max_bytes:
                return await _send_json(send, 413, too_big)
        body, started = b"".join(chunks), False

        async def replay():
            nonlocal body
            if body is None:  # the body was handed on: what comes next is the client leaving (Request.is_disconnected)
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, watch)
        except Exception as exc:  # its message may quote the letter: log the type only
            log.error("%s %s failed with %s (request not logged)", scope["method"], scope["path"], type(exc).__name__)
            if not started:
                await _send_json(send, 500, {"detail": f"Internal error ({type(exc).__name__}); the letter was not stored."})


def create_app(
    token: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hosts: list[str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_batch_chars: int = DEFAULT_MAX_BATCH_CHARS,
) -> FastAPI:
    """The app; `hosts`: the Host header names it answers (default: loopback's, LOOPBACK_NAMES)."""
    app = FastAPI(
        title="ClinBench",
        version=engine.__version__,
        summary="Classify clinical letters with stored ClinBench classifiers. Letters are never stored or logged.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: off (private letters, offline machines)
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts or LOOPBACK_NAMES), www_redirect=False)
    app.add_middleware(Guard, token=token, max_bytes=max_bytes)  # (added last: outermost, so it logs the host check's 400 too)
    loaded, checked = Loaded(), Checked()
    app.state.loaded, app.state.turns, app.state.timeout_s = loaded, Turns(), timeout_s

    def letter(text: str, where: str = "The letter") -> str:
        try:
            return predict.check_letter(text, where)
        except ClinBenchError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # FastAPI's default echoes the input (the letter)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": engine.__version__, "classifiers_loaded": len(loaded)}

    @app.get("/classifiers")
    def list_classifiers() -> list[dict]:
        """Every stored evaluation whose classifier can be asked (newest first); `id` names it in /classify; `usable` false
        (with its `problem`) for one whose files no longer match its manifest or that must be converted first."""
        evals, _skipped = results.list_evaluations()
        return [_describe(ev, checked) for ev in evals]

    @app.post("/classify")
    async def classify(req: ClassifyIn, request: Request) -> dict:
        """One letter through one classifier (`classifier`) or several (`classifiers`: every answer and the majority)."""
        deadline = time.monotonic() + timeout_s
        letter(req.text)
        if (req.classifier is None) == (req.classifiers is None):
            raise HTTPException(422, "Name one classifier ('classifier': id) or several ('classifiers': [ids]), not both or neither.")
        if req.classifier is not None:
            return (await _answers(app, req.classifier, [req.text], request, deadline))[0]
        if not req.classifiers:
            raise HTTPException(422, "'classifiers' is empty: name at least one id (GET /classifiers lists them).")
        for cid in req.classifiers:
            loaded.folder(cid)  # every id known before any work (404)
        answers = []
        for cid in dict.fromkeys(req.classifiers):
            try:
                answers.append((await _answers(app, cid, [req.text], request, deadline))[0])
            except HTTPException as exc:
                if exc.status_code != 409:
                    raise
                answers.append({"classifier": cid, "label": None, "error": exc.detail})
        agreement = predict.agreement([{"predicted": a["label"]} for a in answers])
        return {"answers": answers, "label": agreement["label"], "agreement": agreement}

    @app.post("/classify/batch")
    async def classify_batch(req: BatchIn, request: Request) -> list[dict]:
        """Several letters through one classifier: one answer per letter, in order."""
        deadline = time.monotonic() + timeout_s
        if not 1 <= len(req.texts) <= MAX_BATCH:
            raise HTTPException(422, f"'texts' must hold 1 to {MAX_BATCH} letters, not {len(req.texts)}.")
        chars = sum(len(t) for t in req.texts)
        if chars > max_batch_chars:
            raise HTTPException(
                413,
                f"The batch holds {chars} characters, over this server's {max_batch_chars} (--max-batch-chars): send its letters "
                "in smaller batches.",
            )
        bad = []
        for i, t in enumerate(req.texts):
            try:
                predict.check_letter(t)
            except ClinBenchError as exc:
                bad.append((i, exc))
        if bad:
            first = str(bad[0][1]).replace("The letter", f"Letter {bad[0][0]}", 1)
            raise HTTPException(422, f"Letter(s) {[i for i, _ in bad][:10]} of 'texts' cannot be classified (counting from 0). {first}")
        return await _answers(app, req.classifier, list(req.texts), request, deadline)

    return app


def use_threads(threads: int | None) -> None:
    """This process's torch intra-op threads and its BLAS libraries' threads (threadpoolctl): `threads` (--threads), or
    the defaults (one per core) when None. Inference threads started later use the same count."""
    if threads is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def prefer_passive_waits() -> None:
    """OpenMP threads that sleep between parallel regions instead of spinning ($OMP_WAIT_POLICY PASSIVE, unless set), for
    this process: read once, when torch loads libgomp, so it must come first. On a 2-core machine shared with other work
    (load average 8), bench/serve.py measured SmolLM2 -> logreg at p50 7.9 s per letter with spinning threads and 0.52 s
    with passive ones, in one run (docs/serving.md). Answers do not change, only the waiting."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_serve(args) -> int:
    """The body of `python -m engine serve`."""
    prefer_passive_waits()  # (before anything imports torch)
    import uvicorn

    options = serve_options.from_args(args)
    token = read_token(args.token, args.token_file)
    check_bind(args.host, token)
    if not 0 <= args.port <= 65535:
        raise ClinBenchError(f"--port must be 0 to 65535, not {args.port}.")
    if args.max_bytes < 1:
        raise ClinBenchError(f"--max-bytes must be a positive number of bytes, not {args.max_bytes}.")
    if not args.timeout > 0:
        raise ClinBenchError(f"--timeout must be a positive number of seconds, not {args.timeout}.")
    if args.max_batch_chars < 1:
        raise ClinBenchError(f"--max-batch-chars must be a positive number of characters, not {args.max_batch_chars}.")
    hosts = allowed_hosts(args.host, args.allowed_host)
    use_threads(options.threads)
    app = create_app(token=token, max_bytes=args.max_bytes, hosts=hosts, timeout_s=args.timeout, max_batch_chars=args.max_batch_chars)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    where = "token required" if token else "no token: loopback only"
    if options.threads is not None:
        where += f"; {options.threads} thread(s)"
    print(
        f"ClinBench serving stored classifiers on http://{args.host}:{args.port} ({where}; Host header: {', '.join(hosts)}); "
        "letters are never stored or logged."
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False, server_header=False)
    return 0

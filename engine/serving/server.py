"""`python -m engine serve`: stored classifiers over HTTP (FastAPI app, served by uvicorn).

    GET  /health            liveness (never needs the token)
    GET  /classifiers       every stored evaluation that can classify: id (its key), dataset, model, method,
                            protocol, macro-F1 with its CI, the manifest's sha256
    POST /classify          {"text", "classifier": id} -> {classifier, label, scores, truncated, latency_ms};
                            {"text", "classifiers": [ids]} -> {answers: [...], label (the majority), agreement}
    POST /classify/batch    {"texts": [...], "classifier": id} -> [answers]
    GET  /openapi.json      the API's description (the Swagger/ReDoc pages are off: they load scripts from a CDN)

Every classifier answers through engine.classifiers' one interface (predict_proba, classes_, truncated); a
classifier is loaded once, under a lock, and shared by every request. Inference takes one process-wide lock:
on a CPU one letter already uses every core, so requests queue rather than fight for them (measured in
bench/serve.py). Letters are classified in memory and never stored or logged: access log lines hold the
method, path and status only, validation errors never echo the request, and an unexpected failure is logged
by its exception type alone. Bodies over `max_bytes` get 413; with a token, every path but /health needs
`Authorization: Bearer TOKEN`, and a host other than loopback is refused without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import engine
from engine.cache.artifacts import MANIFEST, MANIFEST_HASH
from engine.cache.storage import evaluations_dir
from engine.errors import ClinBenchError
from engine.evaluation import results
from engine.methods import classifiers
from engine.serving import predict

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_BYTES = "127.0.0.1", 8000, 1_000_000
MAX_BATCH = 256  # letters in one batch request
MAX_LOADED = 8  # classifiers kept loaded (their models are shared through engine.methods.classifiers.shared_model)
TOKEN_ENV = "CLINBENCH_SERVE_TOKEN"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_INFER = threading.Lock()  # one inference at a time in this process (torch already uses every core)
log = logging.getLogger("clinbench.serve")
EMPTY = "The letter is empty: send the text of one letter in 'text'."


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
            f"--host {host} lets other machines send letters to this server: add --token TOKEN (or set ${TOKEN_ENV}; clients "
            "then send 'Authorization: Bearer TOKEN'), or keep the default --host 127.0.0.1."
        )


class ClassifyIn(BaseModel):
    text: str = Field(description="the letter (classified in memory, never stored or logged)")
    classifier: str | None = Field(None, description="one classifier id, as GET /classifiers lists them")
    classifiers: list[str] | None = Field(None, description="several classifier ids: every answer and the majority label")


class BatchIn(BaseModel):
    texts: list[str] = Field(description=f"the letters (1 to {MAX_BATCH})")
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
                raise HTTPException(409, f"Classifier {cid} cannot answer: {exc}") from None
            with self._lock:
                self._items[cid] = clf
                while len(self._items) > self.max_loaded:
                    self._items.popitem(last=False)
        return clf


def _answers(loaded: Loaded, cid: str, texts: list[str]) -> list[dict]:
    """One answer per letter from one classifier: label, every class's probability, truncation, latency (ms per letter)."""
    clf = loaded.get(cid)
    with _INFER:
        t0 = time.perf_counter()
        proba = clf.predict_proba(texts)
        ms = (time.perf_counter() - t0) * 1e3 / len(texts)
        cut = clf.truncated(texts)
    out = []
    for row, was_cut in zip(proba, cut):
        best = int(row.argmax())
        scores = {c: float(p) for c, p in zip(clf.classes_, row)}
        out.append({"classifier": cid, "label": clf.classes_[best], "scores": scores, "truncated": bool(was_cut), "latency_ms": ms})
    return out


def _describe(ev) -> dict:
    sealed = ev.folder / MANIFEST_HASH
    data, metrics = ev.manifest.get("data", {}), ev.metrics
    return {
        "id": ev.key,
        "label": ev.label,
        "dataset": {"source": data.get("source"), "data_hash": ev.data_hash, "n_letters": data.get("n_letters")},
        "classes": data.get("classes"),
        "model": ev.model,
        "method": ev.method,
        "stage": ev.stage,
        "protocol": ev.protocol,
        "macro_f1": metrics.get("macro_f1"),
        "macro_f1_ci": metrics.get("macro_f1_ci"),
        "created": ev.manifest.get("created"),
        "manifest_sha256": sealed.read_text().strip() if sealed.is_file() else None,
    }


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    """ASGI middleware: bearer token (all but /health), body size limit, failures logged without the request."""

    def __init__(self, app, token: str | None, max_bytes: int):
        self.app, self.token, self.max_bytes = app, token, max_bytes

    def _authorized(self, scope) -> bool:
        value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token and scope["path"] != "/health" and not self._authorized(scope):
            detail = "Missing or wrong token: send 'Authorization: Bearer TOKEN' with the server's --token."
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
            message, body = {"type": "http.request", "body": body, "more_body": False}, b""
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


def create_app(token: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> FastAPI:
    app = FastAPI(
        title="ClinBench",
        version=engine.__version__,
        summary="Classify clinical letters with stored ClinBench classifiers. Letters are never stored or logged.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: off (private letters, offline machines)
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.add_middleware(Guard, token=token, max_bytes=max_bytes)
    loaded = Loaded()
    app.state.loaded = loaded

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):  # FastAPI's default echoes the input (the letter)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": engine.__version__, "classifiers_loaded": len(loaded)}

    @app.get("/classifiers")
    def list_classifiers() -> list[dict]:
        """Every stored evaluation whose classifier can be asked (newest first); `id` names it in /classify."""
        evals, _skipped = results.list_evaluations()
        return [_describe(ev) for ev in evals]

    @app.post("/classify")
    def classify(req: ClassifyIn) -> dict:
        """One letter through one classifier (`classifier`) or several (`classifiers`: every answer and the majority)."""
        if not req.text.strip():
            raise HTTPException(422, EMPTY)
        if (req.classifier is None) == (req.classifiers is None):
            raise HTTPException(422, "Name one classifier ('classifier': id) or several ('classifiers': [ids]), not both or neither.")
        if req.classifier is not None:
            return _answers(loaded, req.classifier, [req.text])[0]
        if not req.classifiers:
            raise HTTPException(422, "'classifiers' is empty: name at least one id (GET /classifiers lists them).")
        for cid in req.classifiers:
            loaded.folder(cid)  # every id known before any work (404)
        answers = []
        for cid in dict.fromkeys(req.classifiers):
            try:
                answers.append(_answers(loaded, cid, [req.text])[0])
            except HTTPException as exc:
                answers.append({"classifier": cid, "label": None, "error": exc.detail})
        agreement = predict.agreement([{"predicted": a["label"]} for a in answers])
        return {"answers": answers, "label": agreement["label"], "agreement": agreement}

    @app.post("/classify/batch")
    def classify_batch(req: BatchIn) -> list[dict]:
        """Several letters through one classifier, in one pass: one answer per letter, in order."""
        if not 1 <= len(req.texts) <= MAX_BATCH:
            raise HTTPException(422, f"'texts' must hold 1 to {MAX_BATCH} letters, not {len(req.texts)}.")
        empty = [i for i, t in enumerate(req.texts) if not t.strip()]
        if empty:
            raise HTTPException(422, f"Letter(s) {empty[:10]} of 'texts' are empty (counting from 0): send the text of each letter.")
        return _answers(loaded, req.classifier, list(req.texts))

    return app


def cmd_serve(args) -> int:
    """The body of `python -m engine serve`."""
    import uvicorn

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token)
    if not 0 <= args.port <= 65535:
        raise ClinBenchError(f"--port must be 0 to 65535, not {args.port}.")
    if args.max_bytes < 1:
        raise ClinBenchError(f"--max-bytes must be a positive number of bytes, not {args.max_bytes}.")
    app = create_app(token=token, max_bytes=args.max_bytes)
    where = "token required" if token else "no token: loopback only"
    print(f"ClinBench serving stored classifiers on http://{args.host}:{args.port} ({where}); letters are never stored or logged.")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True, server_header=False)
    return 0

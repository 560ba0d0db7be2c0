"""`hf-spam serve --model DIR`: an HTTP API in the shape of Hugging Face's Inference API, micro-batched.

    hf-spam serve --model outputs/smollm2-135m --port 8000 [--backend onnxruntime --dtype int8]

    from huggingface_hub import InferenceClient
    InferenceClient(base_url="http://127.0.0.1:8000").text_classification("WINNER!! Claim your prize")
    # [TextClassificationOutputElement(label='spam', score=0.99...), TextClassificationOutputElement(label='ham', ...)]

`POST /` and `POST /predict` take `{"inputs": "text" | ["text", ...], "parameters": {"top_k": k}}` and answer
one list per input of `{"label", "score"}`, the decided label first (the argmax, or the model's saved
`spam_threshold`, as `hf-spam predict`), then the others by score. `GET /health`, `GET /info`, and `GET /` a
page to try it. Requests that arrive together (up to `max_batch_texts` texts) are classified in one call of
the same function `hf-spam predict` uses: each distinct text once, in batches of similar length, so every
answer equals predict's. While the server is busy a batch waits up to `batch_wait_ms` for more requests; a
request that finds the model idle waits only for those already being read, so a lone one goes at once.
"""

# No `from __future__ import annotations`: FastAPI reads the `Request` annotation of handlers made inside
# create_app at run time, where a string could not be resolved (fastapi is imported there, as an extra).
import logging
from importlib import resources
from pathlib import Path

from hf_spam.deploy.batching import MicroBatcher
from hf_spam.deploy.guards import Slots, not_json, security_headers, unauthorized
from hf_spam.deploy.observe import ACCESS, ServerMetrics, observing
from hf_spam.deploy.requests import ClientGone, Limits, RequestError, answers, check_tokens, parse_request, read_body
from hf_spam.deploy.spam_classifier import BOOK_EXAMPLES, read_run_summary

logger = logging.getLogger(__name__)

PAGE = resources.files("hf_spam") / "templates" / "serve.html"


def create_app(
    model_dir: str,
    backend: str = "torch",
    dtype: str = "float32",
    batch_size: int = 64,
    batch_wait_ms: float = 5.0,
    max_batch_texts: int = 256,
    max_batch_tokens: int = 2048,
    limits: Limits | None = None,
    predict=None,
    api_key: str | None = None,
    access_log: bool = True,
    allowed_hosts: list[str] | None = None,
    device: str = "cpu",
):
    """The FastAPI application; `predict` (a `SpamClassifier`) is loaded from `model_dir` if not given.

    With `api_key`, `POST /`, `POST /predict` and `GET /info` need `Authorization: Bearer <api_key>` (401
    otherwise); `GET /health` and the page stay open, for load balancers and for a browser to ask for the key.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request

    from hf_spam.deploy.classifier import load_classifier

    limits = limits or Limits()
    if predict is None:
        predict = load_classifier(model_dir, batch_size=batch_size, dtype=dtype, backend=backend, device=device)
    check_servable(model_dir, predict, limits)
    batcher = MicroBatcher(predict, batch_wait_ms, max_batch_texts, max_batch_tokens)
    metrics = ServerMetrics()
    batcher.on_batch = metrics.batch_texts.observe
    metrics.queued.set_function(batcher.pending)
    batching = {
        "batch_wait_ms": batch_wait_ms,
        "max_batch_texts": max_batch_texts,
        "max_batch_tokens": max_batch_tokens,
    }
    info = model_info(model_dir, predict, backend, dtype, batching, limits)
    info["device"] = device
    info["api_key_required"] = api_key is not None
    expected = api_key.encode() if api_key is not None else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    # No /docs, /redoc or /openapi.json: they would be open without the key, and /docs loads its scripts from
    # a CDN (a blank page offline).
    app = FastAPI(
        title="hf_spam", version=info["hf_spam_version"], lifespan=lifespan, docs_url=None, redoc_url=None,
        openapi_url=None,
    )  # fmt: skip
    app.state.batcher = batcher
    if allowed_hosts:  # innermost: its 400s are counted, logged and carry the security headers
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.middleware("http")(security_headers)
    app.middleware("http")(observing(metrics, access_log))
    app.state.metrics = metrics

    slots = Slots(limits.max_concurrent_requests)

    async def classify(request: Request):
        return (
            unauthorized(request, expected)
            or not_json(request)
            or await answer(request, predict, batcher, slots, limits)
        )

    app.post("/")(classify)
    app.post("/predict")(classify)

    add_status_routes(app, batcher, info, metrics, expected)
    return app


def add_status_routes(app, batcher: MicroBatcher, info: dict, metrics: ServerMetrics, expected: bytes | None) -> None:
    """`GET /health` (open, for load balancers), `/info` and `/metrics` (behind the key, if any), and the page."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    @app.get("/health")
    async def health():
        # A server whose batching loop has died would accept requests and answer none: say so to the balancer.
        if batcher.task is None or batcher.task.done():
            return JSONResponse({"status": "error", "error": "the batching loop is not running"}, 503)
        return {"status": "ok"}

    @app.get("/info")
    async def get_info(request: Request):
        return unauthorized(request, expected) or info

    @app.get("/metrics")
    async def get_metrics(request: Request):
        body, media_type = metrics.exposition()
        return unauthorized(request, expected) or Response(body, media_type=media_type)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")


async def answer(request, predict, batcher: MicroBatcher, slots: Slots, limits: Limits):
    """One classification request: read and check it (a 4xx naming the field), classify its texts with the
    others gathered, within a slot, answer in the Inference API's shape."""
    from fastapi.responses import JSONResponse

    try:
        with batcher.arrival():
            body = await read_body(request, limits)
            texts, single, top_k = parse_request(body, limits)
            request.state.texts = len(texts)
            tokens = await check_tokens(predict, texts, single, limits.max_input_tokens)
            request.state.tokens = sum(tokens)
        with slots.taken():
            return await classified(predict, batcher, texts, tokens, top_k)
    except RequestError as err:
        headers = {"Connection": "close"} if err.status == 408 else {"Retry-After": "1"} if err.status == 429 else None
        return JSONResponse({"error": str(err), "field": err.field}, status_code=err.status, headers=headers)
    except ClientGone as gone:
        logger.warning("%s", gone)
        return JSONResponse({"error": str(gone)}, 400)  # nobody reads it: uvicorn drops it


async def classified(predict, batcher: MicroBatcher, texts: list[str], tokens: list[int], top_k):
    from fastapi.responses import JSONResponse

    try:
        probabilities = await batcher.classify(texts, tokens)
    except (TypeError, ValueError, UnicodeError) as err:  # what the tokenizer says of a text it cannot take
        error = f"inputs: cannot be classified: {type(err).__name__}: {err}"
        return JSONResponse({"error": error, "field": "inputs"}, 422)
    except Exception as err:
        return JSONResponse({"error": f"the model failed on this request: {type(err).__name__}: {err}"}, 500)
    return answers(predict, probabilities, top_k)


def header_deadline_protocol(header_timeout_s: float):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's line and headers: a connection that sends
    them slowly (slowloris) or not at all gets 408 and is closed, instead of holding a socket for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:  # a request is starting: its headers get the deadline
                self._arm()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is None:
                self.deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _too_slow(self) -> None:
            self.deadline = None
            if self.transport.is_closing():
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.warning("%s sent no complete request headers in %g s: 408, closed", client, header_timeout_s)
            body = f'{{"error": "no complete request headers in {header_timeout_s:g} s"}}'.encode()
            head = "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            self.transport.write(f"{head}content-length: {len(body)}\r\n\r\n".encode() + body)
            self.transport.close()

    return HeaderDeadlineProtocol


DEFAULT_MAX_INPUT_TOKENS = 512


def check_servable(model_dir, predict, limits) -> None:
    """Refuse to start what could only fail or lie: a token limit above the model's context (longer texts would
    be truncated, not refused), and a model that cannot classify one text (a missing tokenizer file, a bad
    config value): `/health` must not say ok for a server whose every request would fail."""
    from hf_spam.models.loading import model_context

    context = model_context(predict.config)
    if limits.max_input_tokens is None:  # not set: the usual 512, within what the model reads
        limits.max_input_tokens = min(DEFAULT_MAX_INPUT_TOKENS, context)
    if limits.max_input_tokens > context:
        raise ValueError(
            f"--max_input_tokens {limits.max_input_tokens:,} is above the model's context of {context:,} tokens, "
            f"where longer texts would be truncated instead of refused; give at most {context:,}"
        )
    probe = "Is this model able to classify one message?"
    if predict.tokenizer is not None and not predict.token_counts([probe])[0]:
        raise ValueError(f"{model_dir}: its tokenizer turns text into no tokens (is tokenizer.json missing?)")
    try:
        probabilities = predict.predict_proba([probe])
    except Exception as err:
        raise ValueError(
            f"{model_dir}: the model fails its self-test on one text: {type(err).__name__}: {err}"
        ) from err
    if probabilities.shape != (1, len(predict.config.id2label)):
        raise ValueError(f"{model_dir}: the model's self-test gave probabilities of shape {probabilities.shape}")


def model_info(model_dir, predict, backend, dtype, batching: dict, limits) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        hf_spam_version = version("hf_spam")
    except PackageNotFoundError:
        hf_spam_version = "unknown"
    summary = read_run_summary(model_dir)
    config = predict.config
    return {
        "model": Path(model_dir).name,  # never the local path: /info may be read from elsewhere
        "base_model": summary.get("base_model", {}).get("name"),
        "architecture": (config.architectures or [None])[0],
        "labels": [config.id2label[i] for i in sorted(config.id2label)],
        "threshold": predict.threshold,
        # Messages the page offers to click: the run's own, or the book's for a ham/spam model.
        "examples": summary.get("examples") or (BOOK_EXAMPLES if set(config.label2id) == {"ham", "spam"} else []),
        "backend": backend,
        "dtype": dtype,
        "micro_batching": batching,
        "limits": limits.__dict__,
        "hf_spam_version": hf_spam_version,
    }


def serve(args) -> int:
    """`hf-spam serve`: uvicorn on `args.host:args.port`; SIGTERM or Ctrl-C finish the requests in flight."""
    import uvicorn

    limits = Limits(
        args.max_body_bytes,
        args.max_texts,
        args.max_text_chars,
        args.max_input_tokens,
        args.max_concurrent_requests,
        args.header_timeout_s,
        args.body_timeout_s,
    )
    api_key = args.api_key  # the flag or HF_SPAM_API_KEY, as serve_command resolved and checked it
    app = create_app(
        args.model,
        backend=args.backend,
        dtype=args.dtype,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_texts=args.max_batch_texts,
        max_batch_tokens=args.max_batch_tokens,
        limits=limits,
        api_key=api_key,
        access_log=args.access_log,
        allowed_hosts=args.allowed_hosts,
        device=args.device,
    )
    if args.access_log:  # uvicorn's own access log is off (log_level warning): ours names texts and tokens, no text
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS.addHandler(handler)
        ACCESS.setLevel(logging.INFO)
    logger.info(
        "Serving %s on http://%s:%d (backend %s, %s, on %s)",
        args.model, args.host, args.port, args.backend, args.dtype, args.device,
    )  # fmt: skip
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("Serving on %s without an API key: anyone who reaches it may use it (--api_key)", args.host)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        # Kubernetes sends SIGKILL 30 s after SIGTERM by default: finish (or drop) what is in flight before it.
        timeout_graceful_shutdown=args.shutdown_grace_s,
        http=header_deadline_protocol(limits.header_timeout_s),
    )
    uvicorn.Server(config).run()
    return 0

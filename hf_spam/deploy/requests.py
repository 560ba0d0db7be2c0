"""What `hf-spam serve` accepts: the limits of a request, its parsing into texts (each bad field a 4xx that names
it), the body read within its size and deadline, the token count, and the answers in the Inference API's shape."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Limits:
    """What one request and the server may hold. Beyond a request's size: 413, or 422 for a bad field; beyond
    `max_concurrent_requests` in flight: 429 with Retry-After; headers or body slower than their deadline: 408.
    `max_input_tokens` counts a text's tokens as the model reads them (a message template's included); a text
    over it is refused (413) rather than truncated, as a truncated message's score is not that message's."""

    max_body_bytes: int = 1_000_000
    max_texts: int = 256
    max_text_chars: int = 100_000
    max_input_tokens: int | None = None  # None: 512, or the model's context where that is shorter
    max_concurrent_requests: int = 128
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


class RequestError(ValueError):
    """A request that cannot be answered: the HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], bool, int | None]:
    """The texts of a body, whether `inputs` was a single string, and `parameters.top_k`."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"the body is {len(body):,} bytes; at most {limits.max_body_bytes:,}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"the body is not UTF-8 (byte {err.start})") from None
    try:
        payload = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RequestError:
        raise
    except json.JSONDecodeError as err:
        raise RequestError(400, f"the body is not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:  # nesting deeper than Python's parser follows
        raise RequestError(400, "the body is JSON nested too deeply") from None
    except ValueError as err:  # a number of more digits than Python converts (4,300)
        raise RequestError(400, f"the body holds a number too large: {err}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body must be a JSON object with inputs, got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"inputs", "parameters"})
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; expected inputs and parameters", unknown[0])
    if "inputs" not in payload:
        raise RequestError(422, "missing field inputs: a text or a list of texts", "inputs")
    inputs, single = payload["inputs"], isinstance(payload["inputs"], str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not texts:
        got = "an empty list" if texts == [] else type(inputs).__name__
        raise RequestError(422, f"inputs: expected a text or a non-empty list of texts, got {got}", "inputs")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"inputs: {len(texts):,} texts; at most {limits.max_texts:,} a request", "inputs")
    for i, item in enumerate(texts):
        where = "inputs" if single else f"inputs[{i}]"
        if not isinstance(item, str):
            raise RequestError(422, f"{where}: expected a text, got {type(item).__name__}", where)
        if not item.strip():
            raise RequestError(422, f"{where}: empty text", where)
        if len(item) > limits.max_text_chars:
            raise RequestError(413, f"{where}: {len(item):,} characters; at most {limits.max_text_chars:,}", where)
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate (JSON "\ud800"): valid JSON, not text
            message = f"{where}: not Unicode text (a lone surrogate at character {err.start})"
            raise RequestError(422, message, where) from None
    parameters = payload.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise RequestError(422, f"parameters: expected an object, got {type(parameters).__name__}", "parameters")
    top_k = parameters.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise RequestError(422, f"parameters.top_k: expected a positive integer, got {top_k!r}", "parameters.top_k")
    function = parameters.get("function_to_apply")
    if function not in (None, "softmax"):
        raise RequestError(
            422, f"parameters.function_to_apply: this model's scores are softmax, got {function!r}",
            "parameters.function_to_apply",
        )  # fmt: skip
    for name in sorted(set(parameters) - {"top_k", "function_to_apply"}):
        raise RequestError(422, f"unknown parameter {name!r}; expected top_k", f"parameters.{name}")
    return texts, single, top_k


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once: `{"inputs": "a", "inputs": ["b"]}` is ambiguous (parsers
    disagree on which one wins), so it is refused rather than read one way here and another by a proxy."""
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise RequestError(400, f"the body is not valid JSON for this API: the key {key!r} is given twice", key)
    return dict(pairs)


def _no_constant(name: str):
    """NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them."""
    raise RequestError(400, f"the body is not JSON: {name} is not a JSON value")


def answers(predict, probabilities: np.ndarray, top_k: int | None) -> list[list[dict]]:
    """One list per text: the decided label first (its score as `hf-spam predict` gives it), then the rest by
    score, at most `top_k`."""
    id2label = predict.config.id2label
    decided = predict.decide(probabilities)
    result = []
    for row, label in zip(probabilities, decided, strict=True):
        order = [int(label)] + [int(i) for i in np.argsort(-row, kind="stable") if i != label]
        result.append([{"label": id2label[i], "score": float(row[i])} for i in order[:top_k]])
    return result


class ClientGone(Exception):
    """The client closed its connection before it had sent the whole body."""


async def read_body(request, limits: Limits) -> bytes:
    """The body, read no further than the limit allows (a huge upload is refused, not buffered), and within
    `body_timeout_s` (a client that trickles its body would hold a request slot for ever)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        await drain(request, limits)
        raise RequestError(413, f"the body is {int(declared):,} bytes; at most {limits.max_body_bytes:,}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_body_bytes:
                    await drain(request, limits)
                    raise RequestError(413, f"the body is over {limits.max_body_bytes:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body took over {limits.body_timeout_s:g} s ({size:,} bytes came)") from None
    except ClientDisconnect:
        client = f"{request.client[0]}:{request.client[1]}" if request.client else "a client"
        raise ClientGone(f"{client} disconnected after {size:,} of {declared or '?'} body bytes") from None
    return b"".join(chunks)


# A refused body is read and discarded up to this many bytes and seconds before the answer (and the connection
# is then closed): a client still sending it gets its 413 instead of a reset; a client trickling it is cut.
DRAIN_BYTES, DRAIN_SECONDS = 16_000_000, 2.0


async def drain(request, limits: Limits) -> None:
    from starlette.requests import ClientDisconnect

    size = 0
    try:
        async with asyncio.timeout(min(DRAIN_SECONDS, limits.body_timeout_s)):
            async for chunk in request.stream():
                size += len(chunk)
                if size > DRAIN_BYTES:
                    return
    except (TimeoutError, ClientDisconnect, RuntimeError):  # RuntimeError: the stream was read already
        return


# Up to this many characters a request's texts are tokenized on the event loop: about 0.25 ms of work, where
# the hop to a worker thread and back took 0.4 ms of a lone SMS message's request (serve, 2 cores).
INLINE_TOKENIZE_CHARS = 500


async def check_tokens(predict, texts: list[str], single: bool, max_tokens: int) -> list[int]:
    """Each text's tokens; refuse (413) a text of more than `max_tokens`, naming it: the work of one request is bounded in
    tokens, not characters. A short request is tokenized at once; a longer one on a worker thread (the fast
    tokenizer releases the GIL), so that it does not hold up the other requests."""
    try:
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            counts = predict.token_counts(texts)
        else:
            counts = await asyncio.to_thread(predict.token_counts, texts)
    except (TypeError, ValueError, UnicodeError) as err:
        raise RequestError(422, f"inputs: cannot be tokenized: {type(err).__name__}: {err}", "inputs") from None
    for i, count in enumerate(counts):
        if count > max_tokens:
            where = "inputs" if single else f"inputs[{i}]"
            raise RequestError(413, f"{where}: {count:,} tokens; at most {max_tokens:,} (--max_input_tokens)", where)
    return list(counts)

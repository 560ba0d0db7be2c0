"""What `hf-spam serve` checks before it reads a request, and the headers every answer carries: the API key,
the JSON content type, a slot to classify in, and no connection left open on a body nobody read."""

from __future__ import annotations

import hmac
from contextlib import contextmanager

from hf_spam.deploy.requests import RequestError

# On every answer: no MIME sniffing, no framing by other sites, and the page's scripts its own.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
}


async def security_headers(request, call_next):
    response = await call_next(request)
    response.headers.update(SECURITY_HEADERS)
    declared = (
        request.headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in request.headers
    )
    if declared and (response.status_code >= 400 or request.url.path not in ("/", "/predict")):
        # A body answered without being read (a 401, 413 or 404; a GET with a body) would be read as the next
        # request, or held open by a client trickling it for ever: close the connection after the answer.
        response.headers["Connection"] = "close"
    return response


def not_json(request):
    """None for a JSON body; else the 415 to answer. A web page may send text/plain or a form to any address
    without asking first (no CORS preflight); application/json it may not: requiring it keeps other sites'
    pages from driving this server."""
    from fastapi.responses import JSONResponse

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        return None
    error = f"send the body as Content-Type: application/json, got {media_type or 'none'!r}"
    return JSONResponse({"error": error, "field": "Content-Type"}, 415)


def unauthorized(request, expected: bytes | None):
    """None when the request may go on; else the 401 to answer. The key is compared in constant time: the
    answer's timing tells nothing of it."""
    from fastapi.responses import JSONResponse

    if expected is None:
        return None
    # The scheme is case-insensitive (RFC 9110, 11.1): "bearer KEY" is the same credential as "Bearer KEY".
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    if hmac.compare_digest(token.strip().encode("latin-1"), expected) and scheme.lower() == "bearer":
        return None
    error = "missing or wrong API key: send the header Authorization: Bearer <key>"
    return JSONResponse({"error": error}, 401, headers={"WWW-Authenticate": "Bearer"})


class Slots:
    """Requests being classified, at most `limit`: a slot is taken once the body is read and checked, so that
    clients trickling bodies (bounded by their own deadline) cannot hold every slot and starve the others."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    @contextmanager
    def taken(self):
        if self.used >= self.limit:
            raise RequestError(429, f"the server is answering its limit of {self.limit} requests; retry shortly")
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1

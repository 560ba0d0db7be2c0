"""What `hf-spam serve` tells its operator: Prometheus metrics on `GET /metrics` and one access-log line per
request (method, path, status, milliseconds, texts, tokens; never a message's text), from one middleware."""

from __future__ import annotations

import logging
import time

ACCESS = logging.getLogger("hf_spam.access")

# Seconds: from a one-message answer on a fast CPU (a few ms) to a 256-text batch on a slow one.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Why a request was refused, by its status.
REASONS = {
    400: "bad_json",
    401: "unauthorized",
    408: "too_slow",
    413: "too_large",
    415: "not_json",
    422: "bad_field",
    429: "busy",
}
ROUTES = ("/", "/predict", "/health", "/info", "/metrics")


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (one per app, so that tests' apps and a
    process's second server never share counts)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hf_spam_requests", "HTTP requests answered, by route and status.", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "hf_spam_request_duration_seconds", "Time to answer a request, by route.", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "hf_spam_rejected_requests", "Requests refused before classification, by reason.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.batch_texts = Histogram(
            "hf_spam_batch_texts", "Texts per model call (micro-batching gathers requests into one call).",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge("hf_spam_requests_in_flight", "Requests being answered now.", registry=self.registry)
        self.queued = Gauge(
            "hf_spam_queue_depth", "Requests with texts waiting for the model.", registry=self.registry
        )

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def observing(metrics: ServerMetrics, access_log: bool):
    """The middleware: counts and times every request, counts refusals by reason, writes the access line."""

    async def middleware(request, call_next):
        started = time.perf_counter()
        route = request.url.path if request.url.path in ROUTES else "other"
        metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight.dec()
        seconds = time.perf_counter() - started
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        if response.status_code in REASONS and route in ("/", "/predict", "/info", "/metrics"):
            metrics.rejected.labels(REASONS[response.status_code]).inc()
        if access_log:
            texts = getattr(request.state, "texts", "-")
            tokens = getattr(request.state, "tokens", "-")
            ACCESS.info(
                "%s %s %d %.1f ms texts=%s tokens=%s", request.method, request.url.path, response.status_code,
                seconds * 1000, texts, tokens,
            )  # fmt: skip
        return response

    return middleware

"""`hf-spam serve` under hostile clients: an API key checked in constant time, a bound on requests in flight
(429), on tokens per text (413), deadlines for headers and body (408) that keep `/health` answering while
sockets are held open, and a client that disconnects mid-body logged in one line."""

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hf_spam.deploy.classifier import load_classifier  # noqa: E402
from hf_spam.deploy.requests import Limits
from hf_spam.deploy.serve import create_app, header_deadline_protocol

from .test_serve import MESSAGES, Server, post, saved  # noqa: E402, F401  (saved: a fixture)

KEY = "s3cret-key"


def get(url: str, headers=None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            return (
                response.status,
                dict(response.headers),
                json.loads(body) if url.endswith(("health", "info")) else {},
            )
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_the_api_key_guards_predictions_and_info_but_not_health_or_the_page(saved):  # noqa: F811
    with Server(create_app(saved, api_key=KEY)) as server:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": KEY},
            {"Authorization": f"Bearer {KEY}x"},
        ):
            status, body = post(server.url + "/predict", b'{"inputs": "hi"}', headers=headers)
            assert status == 401 and "API key" in body["error"], headers
        status, headers, _ = get(server.url + "/info")
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        status, body = post(server.url + "/", b'{"inputs": "hi"}', headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200 and body[0][0]["label"] in {"ham", "spam"}
        assert get(server.url + "/info", {"Authorization": f"Bearer {KEY}"})[2]["api_key_required"] is True
        assert get(server.url + "/health")[0] == 200 and get(server.url + "/")[0] == 200


def test_requests_beyond_the_concurrency_limit_get_429_with_retry_after(saved):  # noqa: F811
    predict = load_classifier(saved)
    probabilities = predict.probabilities

    def slow(texts):
        time.sleep(1.0)
        return probabilities(texts)

    predict.probabilities = slow
    app = create_app(
        saved, predict=predict, batch_wait_ms=0, max_batch_texts=0, limits=Limits(max_concurrent_requests=2)
    )
    with Server(app) as server, ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda m: post(server.url + "/predict", json.dumps({"inputs": m}).encode()), MESSAGES * 2)
        )
        statuses = [status for status, _ in results]
        assert set(statuses) == {200, 429} and 2 <= statuses.count(200) < 8, statuses
        assert all("limit of 2 requests" in body["error"] for status, body in results if status == 429)
        request = urllib.request.Request(
            server.url + "/predict", data=b'{"inputs": "hi"}', headers={"Content-Type": "application/json"}
        )
        held = [pool.submit(post, server.url + "/predict", json.dumps({"inputs": m}).encode()) for m in "ab"]
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 429 and err.value.headers["Retry-After"] == "1"
        assert [future.result()[0] for future in held] == [200, 200]
        assert post(server.url + "/predict", b'{"inputs": "hi"}')[0] == 200  # the slots come back


def test_a_text_over_max_input_tokens_is_refused_by_name_and_counts_as_the_model_reads_it(saved):  # noqa: F811
    predict = load_classifier(saved)
    with Server(create_app(saved, predict=predict, limits=Limits(max_input_tokens=8))) as server:
        short = "one two three four five six seven eight nine ten"
        for long in (short, short * 60):  # counted on the event loop, and over 500 characters on a worker thread
            n = predict.token_counts([long])[0]
            status, body = post(server.url + "/predict", json.dumps({"inputs": ["ok", long]}).encode())
            assert status == 413 and body["field"] == "inputs[1]" and f"{n:,} tokens; at most 8" in body["error"]
        assert post(server.url + "/predict", b'{"inputs": "ok"}')[0] == 200


def open_socket(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (headers and body may come apart)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_headers_and_slow_bodies_get_408_and_health_keeps_answering(saved):  # noqa: F811
    app = create_app(saved, limits=Limits(body_timeout_s=0.5))
    with Server(app, http=header_deadline_protocol(0.5)) as server:
        silent, trickling, slow_body = open_socket(server.port), open_socket(server.port), open_socket(server.port)
        trickling.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        slow_body.sendall(
            b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inputs"'
        )
        started = time.monotonic()
        for _ in range(3):  # held-open sockets do not starve the rest
            assert get(server.url + "/health")[0] == 200
        assert time.monotonic() - started < 0.4
        for sock in (silent, trickling):
            answer = read_until_closed(sock)  # and closed
            assert answer.startswith(b"HTTP/1.1 408 ") and b"no complete request headers in 0.5 s" in answer
        answer = read_until_closed(slow_body)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"the body took over 0.5 s (9 bytes came)" in answer
        for sock in (silent, trickling, slow_body):
            sock.close()
        # A keep-alive connection's next request gets its own deadline.
        kept = open_socket(server.port)
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += kept.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        kept.sendall(b"GET /hea")
        assert read_until_closed(kept).startswith(b"HTTP/1.1 408 ")
        kept.close()


def test_a_client_that_disconnects_mid_body_is_one_log_line(saved, caplog):  # noqa: F811
    with Server(create_app(saved)) as server, caplog.at_level(logging.WARNING):
        sock = open_socket(server.port)
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + b"x" * 10
        )
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 5
        while not any("disconnected" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert post(server.url + "/predict", b'{"inputs": "ok"}')[0] == 200
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and "disconnected after 10 of 1000 body bytes" in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_serve_reads_the_key_from_the_environment_and_refuses_a_bad_one(saved, monkeypatch, capsys):  # noqa: F811
    from hf_spam.cli import main

    monkeypatch.setenv("HF_SPAM_API_KEY", "has space ")
    assert main(["serve", "--model", saved]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "hf-spam serve: the API key must be printable ASCII with no spaces at its ends"
    )


def test_a_threaded_burst_with_a_key_all_answered(saved):  # noqa: F811
    """Many concurrent clients with the key and the default limits: every one answered, none refused."""
    with Server(create_app(saved, api_key=KEY)) as server, ThreadPoolExecutor(16) as pool:
        auth = {"Authorization": f"Bearer {KEY}"}
        statuses = list(
            pool.map(
                lambda i: post(server.url + "/", json.dumps({"inputs": MESSAGES[i % 4]}).encode(), headers=auth)[0],
                range(64),
            )
        )
    assert statuses == [200] * 64

"""`hf-spam serve`, round two of hostile and careless use (issue 34): a model that cannot answer never starts,
a page elsewhere cannot drive it, ambiguous JSON is refused, the key is checked as RFC 9110 says, no docs
routes, security headers, no local paths."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from hf_spam.cli import main as cli_main  # noqa: E402
from hf_spam.deploy.classifier import load_classifier  # noqa: E402
from hf_spam.deploy.requests import Limits, RequestError, parse_request  # noqa: E402
from hf_spam.deploy.serve import create_app  # noqa: E402

from .test_serve import Server, post, saved  # noqa: E402, F401  (saved is a fixture)


def ours(stderr: str) -> list[str]:
    """hf_spam's own lines of a command's stderr (Transformers' loading bars aside)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("hf-spam ")]


def get(url: str, headers=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.fixture
def keyed(saved):  # noqa: F811
    with Server(create_app(saved, api_key="s3cret")) as running:
        yield running


def test_a_page_elsewhere_cannot_post_text_plain_or_a_form(keyed):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        auth = {"Authorization": "Bearer s3cret", "Origin": "http://evil.example"}
        status, body = post(keyed.url + "/predict", b'{"inputs": "hi"}', content_type, auth)
        assert status == 415 and "application/json" in body["error"]
    assert (
        post(
            keyed.url + "/predict",
            b'{"inputs": "hi"}',
            "application/json; charset=utf-8",
            {"Authorization": "Bearer s3cret"},
        )[0]
        == 200
    )


def test_the_bearer_scheme_is_case_insensitive_and_the_key_is_not(keyed):
    for header, expected in (("bearer s3cret", 200), ("BEARER s3cret", 200), ("Bearer S3CRET", 401), ("s3cret", 401)):
        assert post(keyed.url + "/predict", b'{"inputs": "hi"}', headers={"Authorization": header})[0] == expected


def test_no_docs_routes_and_security_headers_on_every_answer(keyed):
    for route in ("/docs", "/redoc", "/openapi.json"):
        assert get(keyed.url + route)[0] == 404
    status, headers, page = get(keyed.url + "/")
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, headers, _ = get(keyed.url + "/info", {"Authorization": "Bearer s3cret"})
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"


def test_info_names_the_model_without_its_local_path(keyed, saved):  # noqa: F811
    _, _, body = get(keyed.url + "/info", {"Authorization": "Bearer s3cret"})
    assert json.loads(body)["model"] == Path(saved).name and str(Path(saved).parent) not in body.decode()


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"inputs": "a", "inputs": ["b"]}', 400, "the key 'inputs' is given twice"),
        (b'{"inputs": NaN}', 400, "NaN is not a JSON value"),
        (b'{"inputs": ["a", Infinity]}', 400, "Infinity is not a JSON value"),
        (b'{"inputs": "a", "options": {"wait_for_model": true}}', 422, "unknown field 'options'"),
        (b'{"inputs": "a", "parameters": 0}', 422, "parameters: expected an object, got int"),
        (b'{"inputs": "a", "parameters": ""}', 422, "parameters: expected an object, got str"),
        (b'{"inputs": "a", "parameters": []}', 422, "parameters: expected an object, got list"),
    ],
)
def test_ambiguous_or_non_json_bodies_are_refused(body, status, words):
    with pytest.raises(RequestError, match=words) as err:
        parse_request(body, Limits())
    assert err.value.status == status


def test_a_token_limit_above_the_models_context_does_not_start(saved):  # noqa: F811
    with pytest.raises(ValueError, match=r"--max_input_tokens 4,096 is above the model's context of 1,024 tokens"):
        create_app(saved, limits=Limits(max_input_tokens=4096))


def test_a_model_that_cannot_classify_does_not_start(saved, capsys):  # noqa: F811
    config = json.loads((Path(saved) / "config.json").read_text())
    (Path(saved) / "config.json").write_text(json.dumps({**config, "hf_spam_pooling": "__class__"}))
    assert cli_main(["serve", "--model", saved, "--port", "1"]) == 2
    (line,) = ours(capsys.readouterr().err)
    assert "fails its self-test on one text" in line and "hf_spam_pooling" in line


def test_a_model_without_its_tokenizer_file_does_not_start(saved, capsys):  # noqa: F811
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (Path(saved) / name).unlink(missing_ok=True)
    assert cli_main(["serve", "--model", saved, "--port", "1"]) == 2
    (line,) = ours(capsys.readouterr().err)
    assert "its tokenizer turns text into no tokens (is tokenizer.json missing?)" in line


@pytest.mark.parametrize("value", ["0.5", [0.5], True])
def test_a_spam_threshold_of_the_wrong_type_is_one_line(saved, value, capsys):  # noqa: F811
    config = json.loads((Path(saved) / "config.json").read_text())
    (Path(saved) / "config.json").write_text(json.dumps({**config, "spam_threshold": value}))
    with pytest.raises(ValueError, match=r"spam_threshold \(config.json\): a number in \[0, 1\], got"):
        load_classifier(saved)
    assert cli_main(["predict", "--model", saved, "hello"]) == 2
    (line,) = ours(capsys.readouterr().err)
    assert "spam_threshold (config.json)" in line


def test_an_empty_api_key_is_refused_not_served_open(saved, monkeypatch, capsys):  # noqa: F811
    assert cli_main(["serve", "--model", saved, "--host", "0.0.0.0", "--api_key", ""]) == 2
    assert "the API key is empty" in capsys.readouterr().err
    monkeypatch.setenv("HF_SPAM_API_KEY", "  ")
    assert cli_main(["serve", "--model", saved, "--port", "1"]) == 2


def closed_after_answer(url: str, request: bytes, seconds: float = 5.0) -> tuple[bytes, bool]:
    """Send `request` on a raw connection; the answer's first line, and whether the server then closed it."""
    import socket
    import time

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(request)
        answer, deadline = b"", time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return answer.split(b"\r\n")[0], False
            if not chunk:
                return answer.split(b"\r\n")[0], True
            answer += chunk
        return answer.split(b"\r\n")[0], False


@pytest.mark.parametrize(
    "head",
    [
        b"GET /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    ],
)
def test_a_declared_body_nobody_reads_closes_the_connection_after_the_answer(keyed, head):
    first, closed = closed_after_answer(keyed.url, head + b"x")  # then the client would trickle the rest
    assert first.split()[1] in (b"401", b"404", b"200") and closed, first


def test_slow_bodies_hold_no_slot_while_they_trickle(saved):  # noqa: F811
    import socket
    import time

    limits = Limits(max_concurrent_requests=2, body_timeout_s=8.0)
    with Server(create_app(saved, limits=limits)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        trickling = []
        for _ in range(6):  # three times the slots, each body still arriving
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
            )
            trickling.append(sock)
        time.sleep(0.5)
        try:
            statuses = [
                post(server.url + "/predict", json.dumps({"inputs": "are we still on?"}).encode())[0] for _ in range(5)
            ]
        finally:
            for sock in trickling:
                sock.close()
    assert statuses == [200] * 5


def test_allowed_hosts_refuse_a_rebound_host_name_and_no_cors_is_granted(saved):  # noqa: F811
    import http.client

    app = create_app(saved, allowed_hosts=["spam.internal", "127.0.0.1"])
    with Server(app) as server:

        def ask(method: str, path: str, host: str, body: bytes | None = None, headers=None):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request(
                method, path, body, {"Host": host, "Content-Type": "application/json", **(headers or {})}
            )
            response = connection.getresponse()
            response.read()
            return response.status, response.headers

        for host in ("evil.example", "evil.example:8000", "spam.internal.evil.example"):
            status, headers = ask("GET", "/info", host)
            assert status == 400 and headers["X-Content-Type-Options"] == "nosniff"
            assert ask("POST", "/predict", host, b'{"inputs": "hi"}')[0] == 400
        assert ask("GET", "/info", "spam.internal")[0] == 200
        assert ask("POST", "/predict", f"127.0.0.1:{server.port}", b'{"inputs": "hi"}')[0] == 200
        # CORS is off: no origin is ever allowed, so a preflight fails and a page elsewhere reads nothing.
        origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        status, headers = ask("OPTIONS", "/predict", "127.0.0.1", headers=origin)
        assert status == 405 and "Access-Control-Allow-Origin" not in headers
        status, headers = ask("POST", "/predict", "127.0.0.1", b'{"inputs": "hi"}', {"Origin": "http://evil.example"})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_serve_takes_allowed_hosts_from_its_flag():
    from hf_spam.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m", "--allowed_hosts", "a.example", "*.b.example"])
    assert args.allowed_hosts == ["a.example", "*.b.example"]

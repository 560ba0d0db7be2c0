"""The operator's view of `hf-spam serve`: Prometheus `/metrics` that count what a load test sent, and an
access line per request that names the texts and tokens, never a message's text."""

import json
import logging
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from hf_spam.deploy.loadtest import run_load  # noqa: E402
from hf_spam.deploy.serve import create_app  # noqa: E402

from .test_serve import Server, post, saved  # noqa: E402, F401  (saved is a fixture)

SECRET = "a personal message nobody else should read"


def samples(url: str, headers=None) -> dict:
    request = urllib.request.Request(url + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in found.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def test_metrics_count_what_the_load_test_reports(saved):  # noqa: F811
    with Server(create_app(saved)) as server:
        texts = ["WINNER!! Claim your prize now", "see you at 5", "ok"]
        report = run_load(server.port, texts, clients=4, seconds=3.0, max_requests=60, seed=1, poison_rate=0.25)
        found = samples(server.url)
    answered = report["requests"] - report["errors"]
    assert answered > 0 and report["poisoned"]["requests"] > 0
    assert total(found, "hf_spam_requests_total", route="/predict", status="200") == answered
    assert total(found, "hf_spam_rejected_requests_total") == report["poisoned"]["answered_4xx"]
    assert total(found, "hf_spam_batch_texts_sum") == answered  # one text each, however they were gathered
    assert (
        total(found, "hf_spam_request_duration_seconds_count", route="/predict")
        == answered + report["poisoned"]["requests"]
    )
    assert ("hf_spam_requests_in_flight", ()) in found and ("hf_spam_queue_depth", ()) in found


def test_metrics_need_the_key_when_the_server_has_one(saved):  # noqa: F811
    with Server(create_app(saved, api_key="k")) as server:
        with pytest.raises(urllib.error.HTTPError) as err:
            samples(server.url)
        assert err.value.code == 401
        assert (
            total(samples(server.url, {"Authorization": "Bearer k"}), "hf_spam_requests_total", route="/metrics") >= 1
        )


def test_one_access_line_per_request_without_the_messages_text(saved, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="hf_spam.access"), Server(create_app(saved)) as server:
        assert post(server.url + "/predict", json.dumps({"inputs": [SECRET, "ok"]}).encode())[0] == 200
        assert post(server.url + "/predict", b'{"inputs": "x"}', "text/plain")[0] == 415
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_spam.access"]
    assert len(lines) == 2 and not any(SECRET in line for line in lines)
    assert lines[0].startswith("POST /predict 200 ") and " texts=2 tokens=" in lines[0]
    assert lines[1].startswith("POST /predict 415 ") and lines[1].endswith("texts=- tokens=-")

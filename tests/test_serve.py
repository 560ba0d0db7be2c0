"""`hf-spam serve`: the Inference API's shape (through the real huggingface_hub client), micro-batching that
answers as predict does, every bad request a 4xx naming the field, a failing model a 500 that the server
survives, SIGTERM finishing what is in flight, and the page driven in a real headless Chromium."""

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from hf_spam.deploy.classifier import load_classifier  # noqa: E402
from hf_spam.deploy.loadtest import free_port  # noqa: E402
from hf_spam.deploy.requests import Limits, RequestError, parse_request  # noqa: E402
from hf_spam.deploy.serve import MicroBatcher, create_app  # noqa: E402

from .conftest import ROOT  # noqa: E402

MESSAGES = [
    "WINNER!! You have been selected to receive a $1000 prize. Call 09061701461 now",
    "Are we still on for dinner tonight? Let me know",
    "ok",
    "Free entry in 2 a wkly comp to win FA Cup final tkts " * 4,
]


class Server:
    """A real uvicorn server on loopback, in a thread of this process."""

    def __init__(self, app, **config):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


def post(url: str, body: bytes, content_type: str = "application/json", headers=None) -> tuple[int, object]:
    headers = {"Content-Type": content_type, **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def saved(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


@pytest.fixture
def server(saved):
    app = create_app(saved, limits=Limits(max_body_bytes=20_000, max_texts=8, max_text_chars=5_000))
    with Server(app) as running:
        running.app = app
        yield running


def test_the_huggingface_hub_client_works_unchanged_and_answers_as_predict(server, saved, monkeypatch):
    from huggingface_hub import InferenceClient, constants

    # HF_HUB_OFFLINE (set for every test) blocks all of the client's requests, loopback too.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    expected = load_classifier(saved, device="cpu")(MESSAGES)  # serve runs on the CPU unless --device
    client = InferenceClient(base_url=server.url)
    for message, answer in zip(MESSAGES, expected, strict=True):
        got = client.text_classification(message)
        assert [g.label for g in got][0] == answer["label"]
        assert got[0].score == pytest.approx(answer["score"], abs=1e-6)
        assert {g.label for g in got} == {"ham", "spam"} and got[0].score + got[1].score == pytest.approx(1.0)
        assert len(client.text_classification(message, top_k=1)) == 1
    status, body = post(server.url + "/predict", json.dumps({"inputs": MESSAGES}).encode())
    assert status == 200 and [b[0]["label"] for b in body] == [a["label"] for a in expected]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answers(server, saved):
    expected = load_classifier(saved, device="cpu")(MESSAGES)
    batcher = server.app.state.batcher
    before = batcher.batches

    def ask(i):
        texts = [MESSAGES[i % 4], MESSAGES[(i + 1) % 4]]
        return i, post(server.url + "/", json.dumps({"inputs": texts}).encode())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, range(48)))
    for i, (status, body) in results:
        assert status == 200
        assert [b[0]["label"] for b in body] == [expected[i % 4]["label"], expected[(i + 1) % 4]["label"]]
        assert body[0][0]["score"] == pytest.approx(expected[i % 4]["score"], abs=1e-6)
    assert batcher.batches - before < 48  # requests were gathered: fewer model calls than requests


class RecordingModel:
    """A model that answers [1 - i/10, i/10] for text "i" and records the texts of each call."""

    def __init__(self):
        self.calls = []

    def predict_proba(self, texts):
        self.calls.append(list(texts))
        return np.array([[1 - int(t) / 10, int(t) / 10] for t in texts])


@asynccontextmanager
async def running(model, batch_wait_ms: float = 60_000, **kwargs):
    """A started MicroBatcher over `model`, stopped on the way out. The default wait is one no test run could sit
    out: a test that passes did not wait for it."""
    batcher = MicroBatcher(model, batch_wait_ms=batch_wait_ms, **kwargs)
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


def test_a_lone_request_does_not_wait_for_company():
    async def scenario():
        model = RecordingModel()
        async with running(model) as batcher:
            got = await asyncio.wait_for(batcher.classify(["3"]), timeout=30)
        return model.calls, got

    calls, got = asyncio.run(scenario())
    assert calls == [["3"]] and got.tolist() == [[0.7, 0.3]]


def test_a_batch_waits_for_a_request_still_being_read_and_both_get_their_own_answers():
    async def scenario():
        model = RecordingModel()
        async with running(model) as batcher:
            with batcher.arrival():  # a second request whose body is still coming
                first = asyncio.ensure_future(batcher.classify(["1"]))
                await asyncio.sleep(0.2)
                assert not first.done() and model.calls == []  # the first waits for it
            second = await asyncio.wait_for(batcher.classify(["2", "1"]), timeout=30)
            return model.calls, (await asyncio.wait_for(first, timeout=30)), second

    calls, first, second = asyncio.run(scenario())
    assert calls == [["1", "2", "1"]]  # one model call for both
    assert first.tolist() == [[0.9, 0.1]] and second.tolist() == [[0.8, 0.2], [0.9, 0.1]]


def test_under_load_a_batch_waits_for_more_requests():
    """A request that queued up while the model ran is answered with the ones that come within the wait."""
    import threading

    async def scenario():
        model, running_now, release = RecordingModel(), threading.Event(), threading.Event()
        answer = model.predict_proba

        def busy(texts):
            running_now.set()
            release.wait(30)
            return answer(texts)

        model.predict_proba = busy
        async with running(model, max_batch_texts=2) as batcher:
            try:
                first = asyncio.ensure_future(batcher.classify(["1"]))  # alone: straight to the model
                await asyncio.to_thread(running_now.wait, 30)
                second = asyncio.ensure_future(batcher.classify(["2"]))  # queued while the model is busy
                await asyncio.sleep(0.05)
                release.set()
                await asyncio.sleep(0.2)
                assert not second.done()  # waiting for company, not sent alone
                third = await asyncio.wait_for(batcher.classify(["3"]), timeout=30)
                return model.calls, (await first).tolist(), (await second).tolist(), third.tolist()
            finally:
                release.set()  # before the batcher stops: its model thread may be waiting on it

    calls, first, second, third = asyncio.run(scenario())
    assert calls == [["1"], ["2", "3"]]
    assert (first, second, third) == ([[0.9, 0.1]], [[0.8, 0.2]], [[0.7, 0.3]])


def test_a_request_that_fails_while_being_read_is_not_waited_for():
    async def scenario():
        async with running(RecordingModel()) as batcher:
            with pytest.raises(RuntimeError), batcher.arrival():
                raise RuntimeError("a bad body")
            return await asyncio.wait_for(batcher.classify(["4"]), timeout=30), batcher.arriving

    got, arriving = asyncio.run(scenario())
    assert got.tolist() == [[0.6, 0.4]] and arriving == 0


@pytest.mark.parametrize(
    "body, status, field, message",
    [
        (b"{not json", 400, None, "not JSON"),
        (b'{"inputs": "caf\xe9"}', 400, None, "not UTF-8 (byte 15)"),
        (b"[1, 2]", 422, None, "JSON object"),
        (b'{"text": "hi"}', 422, "text", "unknown field 'text'"),
        (b'{"parameters": {}}', 422, "inputs", "missing field inputs"),
        (b'{"inputs": 42}', 422, "inputs", "got int"),
        (b'{"inputs": []}', 422, "inputs", "got an empty list"),
        (b'{"inputs": ["ok", "  "]}', 422, "inputs[1]", "empty text"),
        (b'{"inputs": ["ok", null]}', 422, "inputs[1]", "got NoneType"),
        (json.dumps({"inputs": ["ok"] * 9}).encode(), 413, "inputs", "at most 8"),
        (json.dumps({"inputs": "x" * 5001}).encode(), 413, "inputs", "at most 5,000"),
        (json.dumps({"inputs": ["x " * 2000] * 6}).encode(), 413, None, "at most 20,000"),
        (b'{"inputs": "hi", "parameters": {"top_k": 0}}', 422, "parameters.top_k", "positive integer"),
        (b'{"inputs": "hi", "parameters": {"temperature": 1}}', 422, "parameters.temperature", "unknown parameter"),
        (b'{"inputs": "hi", "parameters": {"function_to_apply": "sigmoid"}}', 422, "parameters.function_to_apply", "softmax"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_naming_the_field(server, body, status, field, message):
    got_status, got = post(server.url + "/predict", body)
    assert got_status == status and message in got["error"] and got.get("field") == field


def test_a_failure_inside_the_model_is_a_500_and_the_server_keeps_serving(saved):
    predict = load_classifier(saved)
    probabilities = predict.probabilities

    def fragile(texts):
        if "boom" in texts:
            raise RuntimeError("out of memory (simulated)")
        return probabilities(texts)

    predict.probabilities = fragile
    with Server(create_app(saved, predict=predict, batch_wait_ms=0, max_batch_texts=0)) as server:
        status, body = post(server.url + "/predict", b'{"inputs": "boom"}')
        assert status == 500 and "out of memory (simulated)" in body["error"]
        status, body = post(server.url + "/predict", b'{"inputs": "ok"}')
        assert status == 200 and body[0][0]["label"] in {"ham", "spam"}


def test_deep_nesting_and_huge_numbers_are_4xx_not_500():
    limits = Limits(max_body_bytes=1_000_000, max_texts=8, max_text_chars=1000)
    with pytest.raises(RequestError) as err:
        parse_request(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", limits)
    assert err.value.status == 400 and "nested too deeply" in str(err.value)
    with pytest.raises(RequestError) as err:
        parse_request(b'{"inputs": "hi", "parameters": {"top_k": ' + b"9" * 5000 + b"}}", limits)
    assert err.value.status == 400 and "number too large" in str(err.value)


POISON = [
    '{"inputs": "\\ud800"}',  # a lone surrogate: valid JSON, not text
    '{"inputs": ["fine", "\\udfff and more"]}',
    '{"inputs": "nul \\u0000 inside"}',
    json.dumps({"inputs": "\U0001f600" * 250_000}, ensure_ascii=False),  # 1 MB of one emoji: over max_text_chars
    '{"inputs": ["a", 3, null]}',  # mixed types
    '{"inputs": [[["deep"]]]}',
]


def test_poisoned_requests_fail_alone_and_innocent_ones_get_their_own_scores(saved):
    """Concurrent innocent requests with poisoned ones gathered into the same batches: every innocent request
    gets 200 and the scores it gets alone; each poisoned one gets its own 4xx naming the field."""
    predict = load_classifier(saved)
    alone = {m: predict([m])[0]["score"] for m in MESSAGES}
    probabilities = predict.probabilities

    def picky(texts):  # a model that fails on one text of its batch, as a tokenizer refusing a text does
        if any("poison" in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...] (simulated)")
        return probabilities(texts)

    predict.probabilities = picky
    limits = Limits(max_body_bytes=2_000_000, max_texts=8, max_text_chars=100_000)
    bodies = [json.dumps({"inputs": MESSAGES[i % 4]}) for i in range(24)]
    bodies += [*POISON, '{"inputs": "poison pill"}', '{"inputs": ["ok", "poison"]}']
    app = create_app(saved, predict=predict, batch_wait_ms=300, max_batch_texts=64, limits=limits)
    with Server(app) as server, ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: post(server.url + "/", b.encode()), bodies))
        assert post(server.url + "/", b'{"inputs": "ok"}')[0] == 200  # and it goes on serving
    for body, (status, answer) in zip(bodies, results, strict=True):
        text = json.loads(body)["inputs"]
        if isinstance(text, str) and text in alone:
            assert status == 200 and answer[0][0]["score"] == pytest.approx(alone[text], abs=1e-6), (body, answer)
        elif "\\u0000" in body:
            assert status == 200, answer  # NUL is text like any other
        else:
            assert 400 <= status < 500 and str(answer.get("field")).startswith("inputs"), (body[:80], status, answer)


def test_health_fails_when_the_batching_loop_is_dead(server):
    assert urllib.request.urlopen(server.url + "/health").status == 200
    task = server.app.state.batcher.task
    task.get_loop().call_soon_threadsafe(task.cancel)
    time.sleep(0.2)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "/health")
    assert err.value.code == 503 and json.loads(err.value.read())["status"] == "error"


def test_health_and_info(server, saved):
    with urllib.request.urlopen(server.url + "/health") as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(server.url + "/info") as response:
        info = json.loads(response.read())
    assert info["labels"] == ["ham", "spam"] and info["backend"] == "torch" and info["model"] == Path(saved).name
    assert info["threshold"] is None and info["limits"]["max_texts"] == 8


def test_sigterm_finishes_the_request_in_flight_then_exits(saved):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.serve_worker", saved, str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
                time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(post, url + "/predict", b'{"inputs": "see you at lunch"}')
            assert any(line.strip() == "batch started" for line in process.stdout)  # the model call is under way
            process.send_signal(signal.SIGTERM)
            status, body = answer.result(timeout=30)
        assert status == 200 and body[0][0]["label"] in {"ham", "spam"}
        # uvicorn shuts down cleanly, then re-raises the signal: the status of a process ended by SIGTERM.
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        process.kill()


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


PAGE_EXAMPLES = ["Claim your FREE prize now, text WIN to 80086", "See you at the station at 6", "ok"]


@pytest.fixture
def page_server(saved):
    """A model whose run recorded example messages and chose a spam threshold, as `hf-spam train` leaves it."""
    config_path = Path(saved) / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "spam_threshold": 0.25}))
    (Path(saved) / "metrics.json").write_text(json.dumps({"examples": PAGE_EXAMPLES}))
    with Server(create_app(saved, limits=Limits(max_texts=8))) as running:
        yield running


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)
def test_the_page_in_a_real_headless_browser(page_server, saved):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={Path(saved).parent / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    predict = load_classifier(saved, device="cpu")
    labels = [predict.config.id2label[i] for i in sorted(predict.config.id2label)]

    def answers_shown(count):
        WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result .answer")) == count)
        return driver.find_elements(By.CSS_SELECTOR, "#result .answer")

    def check(answer, message):
        best = predict([message])[0]
        assert answer.find_element(By.CSS_SELECTOR, ".label").text == best["label"]
        assert answer.find_element(By.CSS_SELECTOR, ".score").text.strip() == f"{best['score']:.3f}"
        bars = answer.find_elements(By.CSS_SELECTOR, ".bar")
        assert [bar.get_attribute("data-label") for bar in bars] == labels  # one bar per class, in label order
        probabilities = predict.predict_proba([message])[0]
        assert [bar.find_element(By.CSS_SELECTOR, ".value").text for bar in bars] == [
            f"{p:.3f}" for p in probabilities
        ]

    try:
        driver.get(page_server.url + "/")
        WebDriverWait(driver, 20).until(lambda d: "labels" in d.find_element(By.ID, "model").text)
        assert str(Path(saved).parent) not in driver.page_source  # the model's name, never where it lies
        assert "at least 0.2500" in driver.find_element(By.ID, "explain").text  # the threshold, explained
        examples = driver.find_elements(By.CSS_SELECTOR, "#examples button")
        assert [button.text for button in examples] == PAGE_EXAMPLES
        examples[0].click()
        check(answers_shown(1)[0], PAGE_EXAMPLES[0])

        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys("\n".join(MESSAGES[:3]))
        driver.find_element(By.ID, "lines").click()
        driver.find_element(By.ID, "classify").click()
        for answer, message in zip(answers_shown(3), MESSAGES[:3], strict=True):
            check(answer, message)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#history li")) == 4
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_load_test_stops_by_itself_and_reports_both_servers(saved, tmp_path):
    from hf_spam.deploy.loadtest import main as loadtest_main

    out = tmp_path / "load.json"
    assert loadtest_main(["--model", saved, "--clients", "4", "--seconds", "3", "--max_requests", "200",
                          "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    for name, result in report["setups"].items():
        assert 0 < result["requests"] <= 200 and result["errors"] == 0, name
        assert result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
        assert result["server_peak_rss_mb"] > 0 and result["server_exit_code"] == -signal.SIGTERM  # a clean stop


@pytest.mark.slow  # over 15 s on 2 cores: `make test-all`
def test_the_onnxruntime_backend_serves_the_exported_graph(saved, tmp_path):
    pytest.importorskip("onnxruntime")
    from hf_spam.deploy.export import export

    test_file = tmp_path / "check.csv"
    test_file.write_text(
        "text,label\n" + "".join(f'"{m}",{"spam" if i % 2 == 0 else "ham"}\n' for i, m in enumerate(MESSAGES))
    )
    export(saved, test_file=str(test_file))
    expected = load_classifier(saved, device="cpu")(MESSAGES)
    with Server(create_app(saved, backend="onnxruntime")) as server:
        status, body = post(server.url + "/predict", json.dumps({"inputs": MESSAGES}).encode())
        with urllib.request.urlopen(server.url + "/info") as response:
            assert json.loads(response.read())["backend"] == "onnxruntime"
    assert status == 200 and [b[0]["label"] for b in body] == [e["label"] for e in expected]
    assert [b[0]["score"] for b in body] == pytest.approx([e["score"] for e in expected], abs=1e-5)


@pytest.mark.slow  # about 40 s: `make test-all`
def test_a_hostile_load_hurts_no_innocent_request(saved, tmp_path):
    """`--poison_rate` and `--slow_clients` against a real server process: every poisoned request a 4xx, every
    innocent one a 200, slowloris connections cut with 408 while /health keeps answering."""
    from hf_spam.deploy.loadtest import main as loadtest_main

    out = tmp_path / "load.json"
    # The server cuts slow headers after its default 10 s: 12 s of load sees each slow connection cut once.
    assert loadtest_main(["--model", saved, "--clients", "4", "--seconds", "12", "--poison_rate", "0.3",
                          "--slow_clients", "3", "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    for name, result in report["setups"].items():
        poisoned, slow = result["poisoned"], result["slow_clients"]
        assert result["errors"] == 0 and result["requests"] > 0, name
        assert poisoned["requests"] > 0 and poisoned["answered_4xx"] == poisoned["requests"], (name, poisoned)
        assert slow["closed_with_408"] >= 3 and slow["health_failed"] == 0 and slow["health_checks"] > 10, slow


def test_the_first_request_after_start_does_not_wait_for_company():
    """Queued before the batching loop first runs (Python 3.12's `wait_for` awaits in the caller's task), the
    first request is not a sign of load: no batch ran yet."""

    async def scenario():
        model = RecordingModel()
        async with running(model) as batcher:
            started = time.perf_counter()
            got = await batcher.classify(["3"])  # in this task: queued before the loop's first turn
            return time.perf_counter() - started, got

    seconds, got = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert seconds < 5 and got.tolist() == [[0.7, 0.3]]


def test_one_clients_big_batch_cannot_starve_a_one_text_request():
    """Calls hold at most max_batch_tokens, dealt a text at a time across the requests waiting: the lone text
    that came after 20 long ones goes in the next call, and the long request still gets every answer in order."""
    import threading

    async def scenario():
        model, running_now, release = RecordingModel(), threading.Event(), threading.Event()
        answer = model.predict_proba

        def busy(texts):
            if len(model.calls) == 0:  # the first call holds the model while the others queue up
                running_now.set()
                release.wait(30)
            return answer(texts)

        model.predict_proba = busy
        async with running(model, batch_wait_ms=0, max_batch_tokens=50) as batcher:
            try:
                first = asyncio.ensure_future(batcher.classify(["5"], [10]))
                await asyncio.to_thread(running_now.wait, 30)
                big_texts = [str(i % 10) for i in range(20)]
                big = asyncio.ensure_future(batcher.classify(big_texts, [10] * 20))
                await asyncio.sleep(0.05)
                small = asyncio.ensure_future(batcher.classify(["1"], [10]))
                await asyncio.sleep(0.05)
                release.set()
                small_result = await asyncio.wait_for(small, 30)
                return model.calls, await big, small_result, await first
            finally:
                release.set()

    calls, big, small, first = asyncio.run(scenario())
    assert calls[0] == ["5"]
    assert "1" in calls[1]  # the next call, not after the 20
    assert all(len(call) <= 5 for call in calls)  # 50 tokens of 10 a text
    assert sum(map(len, calls)) == 22
    assert big.tolist() == [[1 - (i % 10) / 10, (i % 10) / 10] for i in range(20)]
    assert small.tolist() == [[0.9, 0.1]] and first.tolist() == [[0.5, 0.5]]


def test_a_long_request_split_over_calls_fails_alone_when_one_of_its_texts_fails():
    async def scenario():
        model = RecordingModel()
        answer = model.predict_proba

        def fragile(texts):
            if "x" in texts:
                raise ValueError("cannot read x")
            return answer(texts)

        model.predict_proba = fragile
        async with running(model, batch_wait_ms=0, max_batch_texts=2) as batcher:
            bad = asyncio.ensure_future(batcher.classify(["1", "2", "x", "3"]))
            good = asyncio.ensure_future(batcher.classify(["4", "5", "6"]))
            with pytest.raises(ValueError, match="cannot read x"):
                await asyncio.wait_for(bad, 30)
            return await asyncio.wait_for(good, 30), model.calls

    good, calls = asyncio.run(scenario())
    assert good.tolist() == [[0.6, 0.4], [0.5, 0.5], [0.4, 0.6]]
    assert all(len(call) <= 2 for call in calls)


def test_short_requests_are_not_held_behind_a_long_text_they_share_a_call_with():
    """Deficit round-robin by tokens: four 5-token texts and a request of 40-token texts, 50 tokens a call.
    The short ones fill the first call alone; the long request then spends what it earned, a text a call."""
    from hf_spam.deploy.batching import _Request

    loop = asyncio.new_event_loop()
    try:
        batcher = MicroBatcher(RecordingModel(), max_batch_tokens=50)
        long = _Request(["9"] * 3, [40] * 3, loop.create_future())
        shorts = [_Request([str(i)], [5], loop.create_future()) for i in range(4)]
        batcher.waiting.extend([long, *shorts])
        calls = []
        while batcher.waiting:
            calls.append([(request.texts[0], len(rows)) for request, rows in batcher._deal()])
    finally:
        loop.close()
        batcher.executor.shutdown()
    assert calls == [[("0", 1), ("1", 1), ("2", 1), ("3", 1)], [("9", 1)], [("9", 1)], [("9", 1)]]

"""`hf-spam serve` as a process, against the attackers of `hf-spam loadtest` (issue 34, cases 1-3 and 17):
honest clients all answered, held connections cut, and SIGTERM within its grace while bodies trickle."""

import json
import signal
import socket
import time

import pytest

pytest.importorskip("fastapi")

from hf_spam.deploy.loadtest import main as loadtest_main  # noqa: E402
from hf_spam.deploy.loadtest import start_server  # noqa: E402

from .test_serve import saved  # noqa: E402, F401  (a fixture)


def test_sigterm_ends_the_server_within_its_grace_while_clients_trickle(saved):  # noqa: F811
    process, port = start_server(saved, ["--shutdown_grace_s", "2"], "torch", "float32")
    sockets = []
    try:
        for _ in range(3):  # a /predict body that will never be finished
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"inp")  # fmt: skip
            sockets.append(sock)
        held = socket.create_connection(("127.0.0.1", port), timeout=5)  # an unread body after its answer
        held.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nxx")
        sockets.append(held)
        time.sleep(1.0)
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        seconds = time.monotonic() - stopping
    finally:
        for sock in sockets:
            sock.close()
        if process.poll() is None:
            process.kill()
    assert seconds < 2 + 3  # the grace, and the moment uvicorn takes to cancel what is left


def test_the_default_shutdown_grace_is_inside_kubernetes_30_seconds():
    from hf_spam.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "m"]).shutdown_grace_s < 30


@pytest.mark.slow  # about 40 s: `make test-all`
def test_honest_clients_are_all_answered_under_every_attacker(saved, tmp_path):  # noqa: F811
    out = tmp_path / "load.json"
    assert loadtest_main(["--model", saved, "--clients", "3", "--seconds", "8", "--held_connections", "12",
                          "--slow_bodies", "6", "--big_batches", "1", "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    quiet, attacked = report["setups"]["micro_batched"], report["setups"]["micro_batched_under_attack"]
    assert "held_connections" not in quiet and quiet["errors"] == 0 and quiet["requests"] > 0
    assert attacked["errors"] == 0 and attacked["requests"] > 0
    held = attacked["held_connections"]
    assert held["closed_by_server"] >= 12 and held["longest_held_s"] <= 7  # cut within the 2 s drain, not held
    assert attacked["slow_bodies"]["connections"] >= 6
    assert attacked["big_batches"]["requests"] > 0 and attacked["big_batches"]["not_200"] == 0
    assert attacked["server_exit_s"] < 25

"""The hostile clients of `hf-spam loadtest`, each a thread that runs until `stop_at` and counts what the server
did to it. They exist to show what honest clients see while they run (issue 34, cases 1-3):

- `held_connection`: declares a large body on a request the server answers without reading it (`/health`, an
  unknown path, a body over the limit), then trickles a byte every 3 s, to hold a socket for ever;
- `slow_body`: a `/predict` body sent a byte every 5 s, to hold a request slot;
- `big_batches`: 256 texts of nearly `--max_input_tokens` tokens a request, in a loop, to hold the model.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time

HELD_REQUESTS = [
    b"GET /health HTTP/1.1\r\nHost: loopback\r\nContent-Length: 100000000\r\n\r\n",
    b"POST /nope HTTP/1.1\r\nHost: loopback\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: loopback\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
]
HELD_TRICKLE_S, SLOW_BODY_TRICKLE_S = 3.0, 5.0


class Tally:
    """Counts shared by the threads of one kind of attacker."""

    def __init__(self, **counts: float):
        self.counts, self.lock = dict(counts), threading.Lock()

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            self.counts[name] += value

    def most(self, name: str, value: float) -> None:
        with self.lock:
            self.counts[name] = max(self.counts[name], value)


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (reading what it answered meanwhile)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def _sent(sock: socket.socket, data: bytes) -> bool:
    """Whether `data` could be sent: False once the server has closed the connection."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def held_connection(port: int, index: int, stop_at: float, tally: Tally) -> None:
    """Answered without its body being read, it keeps trickling that body: the server should close the
    connection (or cut the drain) within seconds. Reconnects when closed, to keep the pressure on."""
    while time.monotonic() < stop_at:
        tally.add("connections")
        opened = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(HELD_REQUESTS[index % len(HELD_REQUESTS)])
                outcome = "open_at_end"
                while time.monotonic() < stop_at:
                    time.sleep(min(HELD_TRICKLE_S, max(0.0, stop_at - time.monotonic())))
                    if _closed(sock) or not _sent(sock, b"x"):
                        outcome = "closed_by_server"
                        break
                tally.add(outcome)
                tally.most("longest_held_s", time.monotonic() - opened)
        except OSError:
            tally.add("refused")
            time.sleep(0.5)


def slow_body(port: int, stop_at: float, tally: Tally) -> None:
    """A `/predict` whose 40-byte body comes a byte every 5 s; reconnects when the server answers (408)."""
    body = json.dumps({"inputs": "a slow body " * 2})[:40].ljust(40).encode()
    head = (
        "POST /predict HTTP/1.1\r\nHost: loopback\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    while time.monotonic() < stop_at:
        tally.add("connections")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head)
                for byte in body:
                    time.sleep(min(SLOW_BODY_TRICKLE_S, max(0.0, stop_at - time.monotonic())))
                    if time.monotonic() >= stop_at:
                        tally.add("open_at_end")
                        return
                    sock.setblocking(False)
                    try:
                        answer = sock.recv(64)
                    except BlockingIOError:
                        answer = None
                    finally:
                        sock.setblocking(True)
                    if answer is not None:
                        tally.add("answered_408" if answer.startswith(b"HTTP/1.1 408") else "closed_otherwise")
                        break
                    sock.sendall(bytes([byte]))
        except OSError:
            tally.add("closed_otherwise")
            time.sleep(0.5)


def long_texts(texts: list[str], tokenizer, tokens: int, count: int, seed: int) -> list[str]:
    """`count` texts of `tokens` tokens each (by `tokenizer`), made of the collection's messages joined."""
    rng = random.Random(seed)
    result = []
    for _ in range(count):
        parts, ids = [], []
        while len(ids) < tokens:
            parts.append(rng.choice(texts))
            ids = tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]
        result.append(tokenizer.decode(ids[:tokens]))
    return result


def big_batches(port: int, body: bytes, stop_at: float, tally: Tally, latencies: list[float]) -> None:
    """Closed loop on requests of 256 long texts, as fast as the server answers them."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        try:
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            status = response.status
        except OSError:
            connection, status = http.client.HTTPConnection("127.0.0.1", port, timeout=300), None
        tally.add("requests")
        if status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            tally.add("not_200")


def attacking(port: int, stop_at: float, attack: dict) -> dict:
    """The attackers' threads (not started) and their tallies, for `attack`'s `held_connections`,
    `slow_bodies` and `big_batches` (a count and the body of one request)."""
    threads, tallies = [], {}
    if attack.get("held_connections"):
        tally = tallies["held_connections"] = Tally(
            connections=0, closed_by_server=0, open_at_end=0, refused=0, longest_held_s=0.0
        )
        threads += [
            threading.Thread(target=held_connection, args=(port, i, stop_at, tally))
            for i in range(attack["held_connections"])
        ]
    if attack.get("slow_bodies"):
        tally = tallies["slow_bodies"] = Tally(connections=0, answered_408=0, closed_otherwise=0, open_at_end=0)
        threads += [
            threading.Thread(target=slow_body, args=(port, stop_at, tally)) for _ in range(attack["slow_bodies"])
        ]
    if attack.get("big_batches"):
        tally, latencies = Tally(requests=0, not_200=0), []
        tallies["big_batches"], tallies["big_batch_latencies"] = tally, latencies
        threads += [
            threading.Thread(target=big_batches, args=(port, attack["big_batch_body"], stop_at, tally, latencies))
            for _ in range(attack["big_batches"])
        ]
    return {"threads": threads, **tallies}


def big_batch_body(model_dir: str, port: int, texts: list[str], seed: int) -> bytes:
    """One request of 256 texts each a few tokens under the server's `max_input_tokens` (the model's own
    tokenizer, its message template included, counts them as the server does)."""
    from transformers import AutoTokenizer

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/info")
    limits = json.loads(connection.getresponse().read())["limits"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    tokens = limits["max_input_tokens"] - template - 4  # decoding and re-encoding may merge a few differently
    count = min(256, limits["max_texts"])
    return json.dumps({"inputs": long_texts(texts, tokenizer, tokens, count, seed)}).encode()


def tallied(hostile: dict, percentiles) -> dict:
    """The attackers' figures for the report, by kind; the big batches' latency as `percentiles` gives it."""
    latencies = hostile.pop("big_batch_latencies", [])
    result = {name: {key: round(value, 1) for key, value in tally.counts.items()} for name, tally in hostile.items()}
    if "big_batches" in result:
        result["big_batches"]["latency_ms"] = percentiles(latencies)
    return result

"""`hf-spam loadtest --model DIR`: N concurrent clients for T seconds against `hf-spam serve` on loopback.

    hf-spam loadtest --model outputs/gpt2-small --clients 16 --seconds 20

The server runs in its own process, started here on a free port, once micro-batched (the default) and once
with one model call per request (`--batch_wait_ms 0 --max_batch_texts 0`), against the same load: each client
keeps one connection and sends one SMS message of the collection per request (drawn with a seed), waiting
for each answer before the next. It stops by itself after `--seconds` or `--max_requests`, whichever comes
first. Reported: requests/s, latency p50/p95/p99, errors (anything but a 200), and the server's peak RSS.
The clients share the machine with the server; on a 2-core machine they take some of its CPU.

Hostile load, to check that one client cannot hurt the others:
- `--poison_rate P`: each request is, with probability P, one that must fail alone (a lone surrogate, mixed
  types, deep nesting, 1 MB of one emoji, a text over `--max_input_tokens`, broken JSON). Each must get a 4xx,
  and every innocent request a 200; latency is the innocent requests'.
- `--slow_clients N`: N more connections that send their headers a byte a second (slowloris) and reconnect
  when the server closes them; `/health` is timed every 0.2 s meanwhile.
- `--held_connections N`, `--slow_bodies N`, `--big_batches N` (hf_spam/deploy/attackers.py): N connections
  that trickle a body the server answered without reading, N that trickle a `/predict` body, N clients looping
  on 256 texts of nearly `--max_input_tokens` tokens. With any of them, the micro-batched server is loaded
  twice, without and with the attackers, and the honest clients' figures are reported side by side.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hf_spam.argtypes import ArgumentParser, non_negative_int, positive_float, positive_int, unit_fraction
from hf_spam.deploy import attackers

JSON = {"Content-Type": "application/json"}
ATTACKS = ("held_connections", "slow_bodies", "big_batches")
SETUPS = {"micro_batched": [], "one_call_per_request": ["--batch_wait_ms", "0", "--max_batch_texts", "0"]}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, extra: list[str], backend: str, dtype: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "hf_spam.cli", "serve", "--model", model_dir, "--port", str(port)]
    # Its stderr (the access log: a line a request) goes to a file: an undrained pipe would fill and stop it.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [*command, "--backend", backend, "--dtype", dtype, *extra], stdout=subprocess.DEVNULL, stderr=log
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            raise RuntimeError(f"the server did not start: {log.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.2)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has held (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Bodies that must each fail alone with a 4xx: not text, not the shape, too deep, too large, too many tokens.
POISON = [
    '{"inputs": "\\ud800"}',
    '{"inputs": ["fine", 3, null]}',
    '{"inputs": ' + "[" * 50_000 + "]" * 50_000 + "}",
    json.dumps({"inputs": "\U0001f600" * 250_000}, ensure_ascii=False),
    json.dumps({"inputs": "free prize " * 400}),
    '{"inputs": "unterminated',
]


def run_load(
    port: int,
    texts: list[str],
    clients: int,
    seconds: float,
    max_requests: int,
    seed: int,
    poison_rate: float = 0.0,
    slow_clients: int = 0,
    attack: dict | None = None,
) -> dict:
    """`clients` closed-loop clients (and `slow_clients` slowloris connections, and the `attack`ers: see
    `attacking`) for `seconds`: the figures."""
    latencies: list[float] = []
    errors: list[str] = []
    poisoned = {"requests": 0, "answered_4xx": 0, "other": []}
    lock = threading.Lock()
    sent = 0
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        nonlocal sent
        rng = random.Random(seed + index)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                if sent >= max_requests:
                    return
                sent += 1
            poison = rng.random() < poison_rate
            body = rng.choice(POISON) if poison else json.dumps({"inputs": rng.choice(texts)})
            start = time.perf_counter()
            connection, status, payload = post(connection, port, body)
            elapsed = time.perf_counter() - start
            with lock:
                if poison:
                    poisoned["requests"] += 1
                    if status is not None and 400 <= status < 500:
                        poisoned["answered_4xx"] += 1
                    else:
                        poisoned["other"].append(f"{status}: {payload.decode(errors='replace')[:200]}")
                elif status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{status}: {payload.decode(errors='replace')[:200]}")

    slow = {"connections": 0, "closed_with_408": 0}
    health: list[float | None] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if slow_clients:
        threads += [
            threading.Thread(target=slow_client, args=(port, stop_at, slow, lock)) for _ in range(slow_clients)
        ]
        threads.append(threading.Thread(target=health_probe, args=(port, stop_at, health)))
    hostile = attackers.attacking(port, stop_at, attack or {})
    threads += hostile.pop("threads")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    result = {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_ms": percentiles(latencies),
    }
    if poison_rate:
        result["poisoned"] = {**poisoned, "other": len(poisoned["other"]), "first_other": poisoned["other"][:3]}
    if slow_clients:
        answered = [t for t in health if t is not None]
        result["slow_clients"] = {**slow, "health_checks": len(health), "health_failed": len(health) - len(answered)}
        result["slow_clients"]["health_ms"] = percentiles(answered)
    result.update(attackers.tallied(hostile, percentiles))
    return result


def post(connection, port: int, body: str) -> tuple:
    """POST one body on a kept-alive connection: (the connection to use next, the status or None, the payload)."""
    try:
        connection.request("POST", "/predict", body.encode("utf-8", "surrogatepass"), JSON)
        response = connection.getresponse()
        return connection, response.status, response.read()
    except OSError as err:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=60), None, str(err).encode()


def slow_client(port: int, stop_at: float, slow: dict, lock: threading.Lock) -> None:
    """Slowloris: a header byte a second, a new connection each time the server cuts one off."""
    request = b"POST /predict HTTP/1.1\r\nHost: loopback\r\nContent-Type: application/json\r\n"
    while time.monotonic() < stop_at:
        with lock:
            slow["connections"] += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                for byte in request:
                    if time.monotonic() >= stop_at:
                        return
                    sock.sendall(bytes([byte]))
                    try:
                        if sock.recv(64).startswith(b"HTTP/1.1 408"):
                            with lock:
                                slow["closed_with_408"] += 1
                        break  # answered or closed: reconnect
                    except TimeoutError:
                        continue  # nothing yet: one more byte
        except OSError:
            time.sleep(0.1)


def health_probe(port: int, stop_at: float, health: list) -> None:
    """`GET /health` every 0.2 s: its latency, or None where it was not answered 200."""
    while time.monotonic() < stop_at:
        start = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            ok = connection.getresponse().status == 200
            connection.close()
        except OSError:
            ok = False
        health.append(time.perf_counter() - start if ok else None)
        time.sleep(0.2)


def percentiles(seconds: list[float]) -> dict:
    """p50/p95/p99 in milliseconds (None where nothing was measured)."""
    seconds = sorted(seconds)

    def at(q: float) -> float | None:
        return round(1000 * seconds[min(len(seconds) - 1, int(q * len(seconds)))], 1) if seconds else None

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def loadtest(
    model_dir: str,
    clients: int,
    seconds: float,
    max_requests: int,
    backend: str,
    dtype: str,
    seed: int,
    poison_rate: float = 0.0,
    slow_clients: int = 0,
    attack: dict | None = None,
):
    from hf_spam.data.collection import bundled_data_file

    texts = [line.split("\t", 1)[1] for line in bundled_data_file().read_text(encoding="utf-8").splitlines()]
    attack = {name: count for name, count in (attack or {}).items() if count}
    report = {
        "model": model_dir,
        "backend": backend,
        "dtype": dtype,
        "clients": clients,
        "seconds": seconds,
        "max_requests": max_requests,
        "poison_rate": poison_rate,
        "slow_clients": slow_clients,
        **{name: attack.get(name, 0) for name in ATTACKS},
        "cpu_count": os.cpu_count(),
        "setups": {},
    }
    # Under attack, the comparison that matters is the same server with and without the attackers.
    setups = (
        [("micro_batched", [], {}), ("micro_batched_under_attack", [], attack)]
        if attack
        else [(name, extra, {}) for name, extra in SETUPS.items()]
    )
    for name, extra, attackers_of_setup in setups:
        print(f"[loadtest] {name}: {clients} clients for {seconds:g} s ...", file=sys.stderr, flush=True)
        process, port = start_server(model_dir, extra, backend, dtype)
        result: dict = {}
        try:
            if attackers_of_setup.get("big_batches"):
                attackers_of_setup = {
                    **attackers_of_setup,
                    "big_batch_body": attackers.big_batch_body(model_dir, port, texts, seed),
                }
            result = run_load(
                port, texts, clients, seconds, max_requests, seed, poison_rate, slow_clients, attackers_of_setup
            )
            result["server_peak_rss_mb"] = round(peak_rss_mb(process.pid), 1)
        finally:
            stopping = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            try:
                result["server_exit_code"] = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                result["server_exit_code"] = None
            result["server_exit_s"] = round(time.perf_counter() - stopping, 2)
        report["setups"][name] = result
    first, second = (report["setups"][name] for name, _, _ in setups)
    if not attack and second["requests_per_s"]:
        report["throughput_ratio"] = round(first["requests_per_s"] / second["requests_per_s"], 2)
    return report


def table(report: dict) -> str:
    lines = [
        f"{report['model']} ({report['backend']} {report['dtype']}), {report['clients']} clients, {report['seconds']:g} s:",
        "| server | requests | requests/s | p50 ms | p95 ms | p99 ms | errors | server peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in report["setups"].items():
        latency = r["latency_ms"]
        lines.append(
            f"| {name} | {r['requests']:,} | {r['requests_per_s']} | {latency['p50']} | {latency['p95']} | "
            f"{latency['p99']} | {r['errors']} | {r['server_peak_rss_mb']} |"
        )
    for name, r in report["setups"].items():
        if "poisoned" in r:
            p = r["poisoned"]
            lines.append(
                f"{name}: {p['requests']:,} poisoned requests, {p['answered_4xx']:,} answered 4xx, {p['other']} "
                f"otherwise; {r['errors']} innocent requests failed"
            )
        if "slow_clients" in r:
            s, h = r["slow_clients"], r["slow_clients"]["health_ms"]
            lines.append(
                f"{name}: {s['connections']} slow connections, {s['closed_with_408']} closed with 408; /health "
                f"{s['health_checks'] - s['health_failed']}/{s['health_checks']} answered, p50 {h['p50']} ms, "
                f"p99 {h['p99']} ms"
            )
        if "held_connections" in r:
            h = r["held_connections"]
            lines.append(
                f"{name}: {h['connections']:g} held connections: {h['closed_by_server']:g} closed by the server "
                f"(longest held {h['longest_held_s']:g} s), {h['open_at_end']:g} open at the end"
            )
        if "slow_bodies" in r:
            b = r["slow_bodies"]
            lines.append(
                f"{name}: {b['connections']:g} slow bodies: {b['answered_408']:g} answered 408, "
                f"{b['closed_otherwise']:g} closed otherwise, {b['open_at_end']:g} still sending at the end"
            )
        if "big_batches" in r:
            g = r["big_batches"]
            lines.append(
                f"{name}: {g['requests']:g} big-batch requests, {g['not_200']:g} not answered 200, "
                f"p50 {g['latency_ms']['p50']} ms"
            )
        lines.append(f"{name}: the server exited {r['server_exit_s']} s after SIGTERM")
    if "throughput_ratio" in report:
        lines.append(f"micro-batching: {report['throughput_ratio']}x the requests/s of one call per request")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="hf-spam loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A directory written by `hf-spam train`.")
    parser.add_argument("--clients", type=positive_int, default=16, help="Concurrent clients (default 16).")
    parser.add_argument(
        "--seconds", type=positive_float, default=20.0, help="How long each server is loaded (default 20)."
    )
    parser.add_argument("--max_requests", type=positive_int, default=100_000, help="Stop after this many requests.")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--poison_rate",
        type=unit_fraction,
        default=0.0,
        help="Share of requests that must fail alone with a 4xx (default 0).",
    )
    parser.add_argument(
        "--slow_clients",
        type=non_negative_int,
        default=0,
        help="Extra connections that send headers a byte a second (slowloris); /health is timed meanwhile.",
    )
    for name, what in (
        ("held_connections", "connections that trickle a body the server answered without reading"),
        ("slow_bodies", "connections that send a /predict body a byte every 5 s"),
        ("big_batches", "clients looping on 256 texts of nearly --max_input_tokens tokens"),
    ):
        parser.add_argument(f"--{name}", type=non_negative_int, default=0, help=f"Attackers: {what} (default 0).")
    parser.add_argument("--output", type=Path, help="Also write the JSON report here.")
    args = parser.parse_args(argv)
    for name in ("clients", "max_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be in (0, 3600]")
    try:
        report = loadtest(
            args.model,
            args.clients,
            args.seconds,
            args.max_requests,
            args.backend,
            args.dtype,
            args.seed,
            args.poison_rate,
            args.slow_clients,
            {name: getattr(args, name) for name in ATTACKS},
        )
    except RuntimeError as err:
        print(f"hf-spam loadtest: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    print(table(report))
    hurt = [r["errors"] or r.get("poisoned", {}).get("other") for r in report["setups"].values()]
    return 1 if any(hurt) else 0


if __name__ == "__main__":
    sys.exit(main())

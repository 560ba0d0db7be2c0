"""`hf-spam loadtest --model DIR`: N concurrent clients for T seconds against `hf-spam serve` on loopback.

    hf-spam loadtest --model outputs/gpt2-small --clients 16 --seconds 20

The server runs in its own process, started here on a free port, once micro-batched (the default) and once
with one model call per request (`--batch_wait_ms 0 --max_batch_texts 0`), against the same load: each client
keeps one connection and sends one SMS message of the collection per request (drawn with a seed), waiting
for each answer before the next. It stops by itself after `--seconds` or `--max_requests`, whichever comes
first. Reported: requests/s, latency p50/p95/p99, errors (anything but a 200), and the server's peak RSS.
The clients share the machine with the server; on a 2-core machine they take some of its CPU.
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
import threading
import time
from pathlib import Path

from hf_spam.argtypes import ArgumentParser, positive_float, positive_int

SETUPS = {"micro_batched": [], "one_call_per_request": ["--batch_wait_ms", "0", "--max_batch_texts", "0"]}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, extra: list[str], backend: str, dtype: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "hf_spam.cli", "serve", "--model", model_dir, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--backend", backend, "--dtype", dtype, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
            raise RuntimeError(f"the server did not start: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has held (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(port: int, texts: list[str], clients: int, seconds: float, max_requests: int, seed: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
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
            body = json.dumps({"inputs": rng.choice(texts)})
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200
            except OSError as err:
                ok, payload = False, str(err).encode()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(payload.decode(errors="replace")[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()

    def percentile(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {"p50": percentile(0.50), "p95": percentile(0.95), "p99": percentile(0.99)},
    }


def loadtest(model_dir: str, clients: int, seconds: float, max_requests: int, backend: str, dtype: str, seed: int):
    from hf_spam.data import bundled_data_file

    texts = [line.split("\t", 1)[1] for line in bundled_data_file().read_text(encoding="utf-8").splitlines()]
    report = {
        "model": model_dir,
        "backend": backend,
        "dtype": dtype,
        "clients": clients,
        "seconds": seconds,
        "max_requests": max_requests,
        "cpu_count": os.cpu_count(),
        "setups": {},
    }
    for name, extra in SETUPS.items():
        print(f"[loadtest] {name}: {clients} clients for {seconds:g} s ...", file=sys.stderr, flush=True)
        process, port = start_server(model_dir, extra, backend, dtype)
        result: dict = {}
        try:
            result = run_load(port, texts, clients, seconds, max_requests, seed)
            result["server_peak_rss_mb"] = round(peak_rss_mb(process.pid), 1)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                result["server_exit_code"] = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                result["server_exit_code"] = None
        report["setups"][name] = result
    batched, single = report["setups"]["micro_batched"], report["setups"]["one_call_per_request"]
    if single["requests_per_s"]:
        report["throughput_ratio"] = round(batched["requests_per_s"] / single["requests_per_s"], 2)
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
    parser.add_argument("--output", type=Path, help="Also write the JSON report here.")
    args = parser.parse_args(argv)
    for name in ("clients", "max_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be in (0, 3600]")
    try:
        report = loadtest(
            args.model, args.clients, args.seconds, args.max_requests, args.backend, args.dtype, args.seed
        )
    except RuntimeError as err:
        print(f"hf-spam loadtest: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    print(table(report))
    return 0 if all(r["errors"] == 0 for r in report["setups"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`hf-spam bench --predict`: the prediction backends side by side on one machine, in one run. Each is timed
over the same messages against `pipeline()` one message at a time, with its labels compared, and the CPU's
int8 and float32 matrix-product rates measured beside them."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_spam.models.loading import cpu_has_bfloat16

PREDICTION_BACKENDS = (
    "torch_float32",
    "torch_bfloat16",
    "onnxruntime_float32",
    "onnxruntime_int8",
    "pipeline_one_at_a_time",
    "pipeline_batch_64",
)


NO_NATIVE_BFLOAT16 = (
    "this CPU has no bfloat16 matrix instructions (AVX-512 BF16, AMX or Arm BF16): torch emulates them, 60x "
    "slower than float32 for gpt2-small on an AVX2 CPU (--backends torch_bfloat16 runs it anyway)"
)


def default_backends() -> list[str]:
    return [name for name in PREDICTION_BACKENDS if name != "torch_bfloat16" or cpu_has_bfloat16()]


def prediction_backends(
    model_dir: str,
    n_messages: int | None = None,
    backends: list[str] | None = None,
    reference: str | None = None,
    max_accuracy_drop: float = 0.5,
) -> dict:
    """Every way to classify with one trained model, timed on the same messages in this process.

    torch float32 (`hf-spam predict`, exact), torch bfloat16, ONNX Runtime float32 and int8 (`hf-spam export
    --quantize int8` first, into `model_dir/onnx`), and a plain `pipeline()` one message at a time and with
    `batch_size=64`: `backends` of `PREDICTION_BACKENDS`, by default all but bfloat16 on a CPU without bfloat16
    instructions. Each is loaded and warmed up before its clock starts; each row gives messages/s over the
    collection (or its first `n_messages`), label agreement with torch float32 there, and accuracy on the
    model's test split. `matmul_rates` gives this CPU's float32 and int8 matrix-product rates beside them.

    `reference`: another model directory (the full-depth model a `keep_layers` model was cut from), whose
    `pipeline()` one message at a time and torch float32 rows are timed in the same run; speedups are then
    over the reference's `pipeline()`. `max_accuracy_drop`: what the int8 export may lose (as `hf-spam export`).
    """
    from transformers import AutoConfig

    from hf_spam.data.collection import bundled_data_file
    from hf_spam.deploy.export import export, verification_split
    from hf_spam.deploy.onnx_runtime import require_onnx

    require_onnx()  # `matmul_rates` runs ONNX Runtime whichever rows are asked for: say so before any row runs
    backends = default_backends() if backends is None else backends
    unknown = sorted(set(backends) - set(PREDICTION_BACKENDS))
    if unknown:
        raise ValueError(f"backends: {', '.join(unknown)} unknown; choose from {', '.join(PREDICTION_BACKENDS)}")
    texts = [line.split("\t", 1)[1] for line in bundled_data_file().read_text(encoding="utf-8").splitlines()]
    texts = texts[:n_messages] if n_messages else texts
    verification = None
    if any(name.startswith("onnxruntime") for name in backends):
        print("[bench] export to ONNX (float32, int8) ...", file=sys.stderr, flush=True)
        verification = export(model_dir, quantize="int8", max_accuracy_drop=max_accuracy_drop)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    test = verification_split(model_dir, config, None)[:2]
    runs = [(f"reference_{name}", reference, name) for name in ("pipeline_one_at_a_time", "torch_float32")]
    runs = (runs if reference else []) + [(name, model_dir, name) for name in PREDICTION_BACKENDS if name in backends]
    rows, labels = {}, {}
    for row_name, directory, way in runs:
        print(f"[bench] predict: {row_name} ...", file=sys.stderr, flush=True)
        rows[row_name], labels[row_name] = time_backend(loader(directory, way), texts, test, config)
    baseline = "reference_pipeline_one_at_a_time" if reference else "pipeline_one_at_a_time"
    for name, row in rows.items():
        if "torch_float32" in labels:
            row["same_label_as_torch_float32"] = sum(
                a == b for a, b in zip(labels[name], labels["torch_float32"], strict=True)
            )
        if baseline in rows:
            row["speedup_over_pipeline_one_at_a_time"] = round(row["msgs_per_s"] / rows[baseline]["msgs_per_s"], 2)
    no_bfloat16 = not cpu_has_bfloat16()
    skipped = {
        name: NO_NATIVE_BFLOAT16 if name == "torch_bfloat16" and no_bfloat16 else "not asked for"
        for name in PREDICTION_BACKENDS
        if name not in backends
    }
    return {
        "model_dir": model_dir,
        "reference": reference,
        "speedups_over": f"{baseline} ({reference or model_dir})",
        "messages": len(texts),
        "distinct_messages": len(set(texts)),
        "test_messages": len(test[0]),
        "onnx_verification": verification,
        "matmul_rates": matmul_rates(),
        "rows": rows,
        "skipped": skipped,
    }


def loader(model_dir: str, way: str):
    """The prediction function of one row of `PREDICTION_BACKENDS` for `model_dir`: texts -> answers."""
    from transformers import AutoConfig, pipeline

    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.models.loading import model_context

    if way.startswith("pipeline"):
        max_length = model_context(AutoConfig.from_pretrained(model_dir, trust_remote_code=False))
        classify = pipeline("text-classification", model=model_dir, model_kwargs={"use_safetensors": True})
        options = {"truncation": True, "max_length": max_length}
        if way == "pipeline_one_at_a_time":
            return lambda batch: [classify(text, **options)[0] for text in batch]
        return lambda batch: [answer[0] for answer in classify(batch, batch_size=64, top_k=1, **options)]
    backend, dtype = way.split("_", 1)
    return load_classifier(model_dir, backend=backend, dtype=dtype)


def time_backend(predict, texts: list[str], test: tuple, config) -> tuple[dict, list[str]]:
    """Warm up, then time `predict` over `texts`; its row and labels, and its accuracy on the test split."""
    predict(texts[:8])  # warm-up: lazy initialisation, first allocations
    start = time.perf_counter()
    answers = predict(texts)
    seconds = time.perf_counter() - start
    test_texts, test_labels = test
    test_predictions = [config.label2id[a["label"]] for a in predict(test_texts)]
    row = {
        "seconds": round(seconds, 2),
        "msgs_per_s": round(len(texts) / seconds, 1),
        "test_accuracy": round(float((np.array(test_predictions) == test_labels).mean()), 4),
    }
    return row, [a["label"] for a in answers]


def matmul_rates(rows: int = 1600, inner: int = 768, columns: int = 3072, repeats: int = 10) -> dict:
    """The CPU's matrix-product rates on one product the size of gpt2-small's MLP over a batch of 64 messages of
    25 tokens: torch float32, ONNX Runtime float32 and ONNX Runtime int8 (the dynamic quantization `hf-spam
    export` writes), in billions of multiply-adds x 2 per second, best of `repeats`. Where int8 is no faster
    than float32 (AVX2 without VNNI), no int8 graph can be much faster than a float32 one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hf_spam.deploy.export import quantize_int8
    from hf_spam.deploy.onnx_runtime import session

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inner, generator=generator)
    w = torch.randn(inner, columns, generator=generator) * 0.02

    def rate(run) -> float:
        run()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return round(2 * rows * inner * columns / best / 1e9, 1)

    rates = {"shape": [rows, inner, columns], "torch_float32_gflops": rate(lambda: torch.matmul(x, w))}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, columns])],
        [numpy_helper.from_array(w.numpy(), "w")],
    )
    feeds = {"x": x.numpy()}
    with tempfile.TemporaryDirectory(prefix="hf_spam_matmul_") as tmp:
        float_path, int8_path = Path(tmp) / "matmul.onnx", Path(tmp) / "matmul_int8.onnx"
        # IR version 10 (onnx 1.16): onnx's own default follows its release (14 in 1.23), newer than an older
        # ONNX Runtime reads ("max supported IR version: 13" in 1.30).
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        onnx.save(model, str(float_path))
        quantize_int8(float_path, int8_path)
        for name, path in (("onnxruntime_float32_gflops", float_path), ("onnxruntime_int8_gops", int8_path)):
            run = session(path).run
            rates[name] = rate(lambda run=run: run(None, feeds))
    rates["int8_over_float32"] = round(rates["onnxruntime_int8_gops"] / rates["onnxruntime_float32_gflops"], 2)
    return rates


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def predict_table(predict: dict) -> str:
    """The prediction rows as the README's markdown table, with the CPU's matrix-product rates under it."""
    lines = [
        f"{predict['messages']:,} messages ({predict['distinct_messages']:,} distinct), test split {predict['test_messages']}; "
        f"speedups over {predict.get('speedups_over', 'pipeline_one_at_a_time')}:",
        "| | seconds | messages/s | vs pipeline() one at a time | same label as torch float32 | test accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in predict["rows"].items():
        speedup = (
            f"{row['speedup_over_pipeline_one_at_a_time']}x" if "speedup_over_pipeline_one_at_a_time" in row else ""
        )
        same = (
            f"{row['same_label_as_torch_float32']:,} of {predict['messages']:,}"
            if "same_label_as_torch_float32" in row
            else ""
        )
        lines.append(
            f"| {name} | {row['seconds']} | {row['msgs_per_s']} | {speedup} | {same} | {row['test_accuracy']:.4f} |"
        )
    for name, why in predict.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} | | | | |")
    rates = predict["matmul_rates"]
    lines.append(
        f"matrix product {' x '.join(map(str, rates['shape']))}: torch float32 {rates['torch_float32_gflops']} GFLOP/s, "
        f"ONNX Runtime float32 {rates['onnxruntime_float32_gflops']} GFLOP/s, int8 {rates['onnxruntime_int8_gops']} "
        f"GOP/s ({rates['int8_over_float32']}x float32)"
    )
    return "\n".join(lines)


LATENCY_BACKENDS = ("torch_float32", "onnxruntime_float32", "onnxruntime_int8")


def latency(model_dir: str, requests: int = 200, backends: tuple[str, ...] = LATENCY_BACKENDS, seed: int = 0) -> dict:
    """The time to classify one message, one request after another (nothing else in flight): p50/p99 over
    `requests` messages of the collection, through the Python API (`load_classifier(...)([text])`) and through
    `hf-spam serve` on loopback (one kept-alive connection), with its default gathering (a lone request does not
    wait) and without any (`--batch_wait_ms 0 --max_batch_texts 0`). ONNX rows need `hf-spam export --quantize
    int8` first."""
    import http.client
    import random
    import signal

    from hf_spam.data.collection import bundled_data_file
    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.deploy.loadtest import percentiles, start_server
    from hf_spam.deploy.onnx_runtime import exported_graph

    for way in backends:  # before anything is timed: a missing export is said at once
        backend, dtype = way.split("_", 1)
        if backend == "onnxruntime":
            exported_graph(model_dir, dtype)
    lines = bundled_data_file().read_text(encoding="utf-8").splitlines()
    texts = random.Random(seed).sample([line.split("\t", 1)[1] for line in lines], requests)
    rows = {}
    for way in backends:
        backend, dtype = way.split("_", 1)
        print(f"[bench] latency: {way} ...", file=sys.stderr, flush=True)
        predict = load_classifier(model_dir, backend=backend, dtype=dtype)
        predict(texts[:10])  # warm-up
        seconds = []
        for text in texts:
            start = time.perf_counter()
            predict([text])
            seconds.append(time.perf_counter() - start)
        rows[way] = {"python_api_ms": percentiles(seconds)}
        del predict
        for name, extra in (
            ("serve_ms", []),
            ("serve_no_gathering_ms", ["--batch_wait_ms", "0", "--max_batch_texts", "0"]),
        ):
            process, port = start_server(model_dir, extra, backend, dtype)
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                seconds = []
                warm = texts[:10]
                for i, text in enumerate([*warm, *texts]):
                    start = time.perf_counter()
                    connection.request(
                        "POST", "/predict", json.dumps({"inputs": text}), {"Content-Type": "application/json"}
                    )
                    response = connection.getresponse()
                    response.read()
                    if response.status != 200:
                        raise RuntimeError(f"serve answered {response.status} to a plain message")
                    if i >= len(warm):  # the first ones warm the server up
                        seconds.append(time.perf_counter() - start)
                rows[way][name] = percentiles(seconds)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    return {"model_dir": model_dir, "requests": requests, "rows": rows}


def latency_table(report: dict) -> str:
    """The latency rows as a markdown table (milliseconds)."""
    lines = [
        f"{report['model_dir']}: one message at a time, {report['requests']} requests, p50 / p99 ms:",
        "| backend | Python API | `hf-spam serve` | `hf-spam serve --batch_wait_ms 0 --max_batch_texts 0` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for way, row in report["rows"].items():
        cells = [f"{row[k]['p50']} / {row[k]['p99']}" for k in ("python_api_ms", "serve_ms", "serve_no_gathering_ms")]
        lines.append(f"| {way} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

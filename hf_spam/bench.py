"""`hf-spam bench`: the same training work done three ways, and the floor, timed in one run on one machine.

    (a) book     every message padded to the longest training message, full forward every step, no cache
    (b) dynamic  Trainer with per-batch padding, full forward every step, no cache
    (c) hf_spam  the default: frozen-trunk cache, per-batch padding
    (d) floor    one no-grad, length-sorted forward of the whole model over every message of the splits

Each training variant runs `hf_spam.train` in its own process (so peak RSS is its own), with its own empty
cache directory (so (c) pays for its trunk pass), and then classifies the test split from the saved model so
that (b) and (c) can be compared prediction by prediction. (c) and (d) run back to back, `--repeats` times, and
c/d is the median of those pairs. Prediction throughput (`prediction_backends`, also alone with `--predict
MODEL_DIR`) compares every backend of `hf-spam predict` on the model (c) trained with a plain `pipeline()`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_spam.argtypes import ArgumentParser, positive_int
from hf_spam.malloc import keep_freed_memory
from hf_spam.modeling import cpu_has_bfloat16

FULL = {
    "model_name_or_path": "gpt2",
    "init": "random",
    "trainable": "last_block",
    "num_train_epochs": "5",
    "per_device_train_batch_size": "8",
    "per_device_eval_batch_size": "8",
    "learning_rate": "5e-5",
    "weight_decay": "0.1",
    "lr_scheduler_type": "constant",
    "seed": "123",
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": "50",
    "disable_tqdm": "true",
    "report_to": "none",
    # The timed work is the book's: train and evaluate the three splits. The natural-rate evaluation of the
    # messages balancing left out (3,865 more forward passes) is left out of every variant alike.
    "evaluate_held_out": "false",
}
QUICK = {**FULL, "config_overrides": "n_layer=4,n_head=4,n_embd=64", "num_train_epochs": "1"}
VARIANTS = {
    "a_book": {"padding": "max_length", "trunk_cache": "false"},
    "b_dynamic": {"padding": "longest", "trunk_cache": "false"},
    "c_hf_spam": {},
    "c_hf_spam_bf16_trunk": {"trunk_dtype": "bfloat16"},
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_variant(settings: dict, out: Path) -> None:
    """In a child process: train, evaluate and save with `settings`, then record time, memory, predictions."""
    from hf_spam.data import load_sms_spam
    from hf_spam.inference import load_classifier
    from hf_spam.train import main as train_main

    argv = [arg for key, value in settings.items() for arg in (f"--{key}", value)]
    start = time.perf_counter()
    summary = train_main(argv)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    splits, _ = load_sms_spam(seed=int(settings["seed"]))
    predictions = load_classifier(settings["output_dir"], batch_size=32)(list(splits["test"]["text"]))
    report = {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak, 1),
        "train_runtime_s": round(summary["train"]["train_runtime"], 2),
        "test_accuracy": summary["metrics"]["test"]["accuracy"],
        "test_f1": summary["metrics"]["test"]["f1"],
        "test_confusion_matrix": summary["metrics"]["test"]["confusion_matrix"],
        "test_predictions": predictions,
    }
    out.write_text(json.dumps(report))


def _child(name: str, settings: dict, workdir: Path) -> dict:
    out = workdir / f"{name}.json"
    env = {**os.environ, "HF_SPAM_CACHE": str(workdir / f"cache-{name}")}
    settings = {**settings, "output_dir": str(workdir / name)}
    command = [sys.executable, "-m", "hf_spam.bench", "--_variant", json.dumps(settings), "--_out", str(out)]
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _tokenizer(settings: dict):
    from hf_spam.modeling import load_tokenizer

    name = settings["model_name_or_path"]
    return load_tokenizer(name, use_bundled=settings["init"] == "random" and name == "gpt2")


def _train_tokens(settings: dict) -> int:
    """Real (non-pad) tokens one epoch of the training split holds."""
    from hf_spam.data import load_sms_spam

    splits, _ = load_sms_spam(seed=int(settings["seed"]))
    encoded = _tokenizer(settings)(list(splits["train"]["text"]), truncation=True, max_length=1024)
    return sum(len(ids) for ids in encoded["input_ids"])


@torch.no_grad()
def floor(settings: dict) -> dict:
    """(d): one no-grad forward of the whole model over every message of the splits, sorted by length."""
    from hf_spam.data import load_sms_spam
    from hf_spam.modeling import load_model, model_context

    tokenizer = _tokenizer(settings)
    splits, _ = load_sms_spam(seed=int(settings["seed"]))
    texts = [t for split in splits.values() for t in split["text"]]
    model = load_model(
        settings["model_name_or_path"],
        tokenizer,
        init=settings["init"],
        config_overrides=settings.get("config_overrides"),
    ).eval()
    encoded = tokenizer(texts, truncation=True, max_length=model_context(model.config))
    ids = sorted(encoded["input_ids"], key=len)
    start = time.perf_counter()
    for i in range(0, len(ids), 64):
        batch = tokenizer.pad({"input_ids": ids[i : i + 64]}, return_tensors="pt")
        model(**batch)
    seconds = time.perf_counter() - start
    tokens = sum(map(len, ids))
    return {
        "seconds": round(seconds, 2),
        "messages": len(ids),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds),
    }


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


def prediction_backends(model_dir: str, n_messages: int | None = None, backends: list[str] | None = None) -> dict:
    """Every way to classify with one trained model, timed on the same messages in this process.

    torch float32 (`hf-spam predict`, exact), torch bfloat16, ONNX Runtime float32 and int8 (`hf-spam export
    --quantize int8` first, into `model_dir/onnx`), and a plain `pipeline()` one message at a time and with
    `batch_size=64`: `backends` of `PREDICTION_BACKENDS`, by default all but bfloat16 on a CPU without bfloat16
    instructions. Each is loaded and warmed up before its clock starts; each row gives messages/s over the
    collection (or its first `n_messages`), label agreement with torch float32 there, and accuracy on the
    model's test split. `matmul_rates` gives this CPU's float32 and int8 matrix-product rates beside them.
    """
    from transformers import AutoConfig, pipeline

    from hf_spam.data import bundled_data_file
    from hf_spam.export import export, require_onnx, verification_split
    from hf_spam.inference import load_classifier
    from hf_spam.modeling import model_context

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
        verification = export(model_dir, quantize="int8")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    test_texts, test_labels, _ = verification_split(model_dir, config, None)
    max_length = model_context(config)

    def plain_pipeline(batch_size: int | None):
        classify = pipeline("text-classification", model=model_dir, model_kwargs={"use_safetensors": True})
        options = {"truncation": True, "max_length": max_length}
        if batch_size is None:
            return lambda batch: [classify(text, **options)[0] for text in batch]
        return lambda batch: [answer[0] for answer in classify(batch, batch_size=batch_size, top_k=1, **options)]

    ways = {
        "torch_float32": lambda: load_classifier(model_dir),
        "torch_bfloat16": lambda: load_classifier(model_dir, dtype="bfloat16"),
        "onnxruntime_float32": lambda: load_classifier(model_dir, backend="onnxruntime"),
        "onnxruntime_int8": lambda: load_classifier(model_dir, backend="onnxruntime", dtype="int8"),
        "pipeline_one_at_a_time": lambda: plain_pipeline(None),
        "pipeline_batch_64": lambda: plain_pipeline(64),
    }
    rows, labels = {}, {}
    for name in [name for name in PREDICTION_BACKENDS if name in backends]:
        print(f"[bench] predict: {name} ...", file=sys.stderr, flush=True)
        predict = ways[name]()
        predict(texts[:8])  # warm-up: lazy initialisation, first allocations
        start = time.perf_counter()
        answers = predict(texts)
        seconds = time.perf_counter() - start
        labels[name] = [a["label"] for a in answers]
        test_predictions = [config.label2id[a["label"]] for a in predict(test_texts)]
        rows[name] = {
            "seconds": round(seconds, 2),
            "msgs_per_s": round(len(texts) / seconds, 1),
            "test_accuracy": round(float((np.array(test_predictions) == test_labels).mean()), 4),
        }
        del predict
    for name, row in rows.items():
        if "torch_float32" in labels:
            row["same_label_as_torch_float32"] = sum(
                a == b for a, b in zip(labels[name], labels["torch_float32"], strict=True)
            )
        if "pipeline_one_at_a_time" in rows:
            row["speedup_over_pipeline_one_at_a_time"] = round(
                row["msgs_per_s"] / rows["pipeline_one_at_a_time"]["msgs_per_s"], 2
            )
    no_bfloat16 = not cpu_has_bfloat16()
    skipped = {
        name: NO_NATIVE_BFLOAT16 if name == "torch_bfloat16" and no_bfloat16 else "not asked for"
        for name in PREDICTION_BACKENDS
        if name not in backends
    }
    return {
        "model_dir": model_dir,
        "messages": len(texts),
        "distinct_messages": len(set(texts)),
        "test_messages": len(test_texts),
        "onnx_verification": verification,
        "matmul_rates": matmul_rates(),
        "rows": rows,
        "skipped": skipped,
    }


def matmul_rates(rows: int = 1600, inner: int = 768, columns: int = 3072, repeats: int = 10) -> dict:
    """The CPU's matrix-product rates on one product the size of gpt2-small's MLP over a batch of 64 messages of
    25 tokens: torch float32, ONNX Runtime float32 and ONNX Runtime int8 (the dynamic quantization `hf-spam
    export` writes), in billions of multiply-adds x 2 per second, best of `repeats`. Where int8 is no faster
    than float32 (AVX2 without VNNI), no int8 graph can be much faster than a float32 one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from hf_spam.export import quantize_int8, session

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
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(float_path))
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
        f"{predict['messages']:,} messages ({predict['distinct_messages']:,} distinct), test split {predict['test_messages']}:",
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


def bench(quick: bool, workdir: Path, repeats: int = 1, model: str | None = None) -> dict:
    """The whole comparison; with `model` (a pretrained decoder, e.g. smollm2-135m), (b), (c) and (d) only."""
    settings = QUICK if quick else FULL
    if model is not None:
        from hf_spam.pretrained import resolve_pretrained

        # Converted (GGUF) or downloaded once, here: what the variants time is training, as for gpt2.
        path = resolve_pretrained(model)
        settings = {**settings, "model_name_or_path": path, "init": "pretrained"}
        settings.pop("config_overrides", None)
    report = {
        "machine": machine(),
        "quick": quick,
        "model": model or f"gpt2 ({settings['init']})",
        "repeats": repeats,
        "settings": settings,
        "variants": {},
    }
    variants = VARIANTS if not quick else {k: v for k, v in VARIANTS.items() if "bf16" not in k}
    if model is not None:  # the book's padded loop and the bf16 trunk are GPT-2 comparisons
        variants = {k: v for k, v in VARIANTS.items() if k in ("b_dynamic", "c_hf_spam")}
    for name, overrides in variants.items():
        report["variants"][name] = _child(name, {**settings, **overrides}, workdir)
        if name == "c_hf_spam":
            print("[bench] d_floor ...", file=sys.stderr, flush=True)
            report["variants"]["d_floor"] = floor(settings)
    tokens = _train_tokens(settings) * float(settings["num_train_epochs"])
    for result in report["variants"].values():
        if "train_runtime_s" in result:
            result["train_tokens_per_s"] = round(tokens / result["train_runtime_s"])
    # The machine's speed drifts by 10-20% over minutes: c/d is measured on pairs run back to back, (c) then
    # (d), and the median pair is reported. Each (c) starts with an empty trunk cache.
    c_runs, d_runs = [report["variants"]["c_hf_spam"]], [report["variants"]["d_floor"]]
    for repeat in range(2, repeats + 1):
        c_runs.append(_child(f"c_hf_spam_{repeat}", {**settings, **VARIANTS["c_hf_spam"]}, workdir))
        print(f"[bench] d_floor ({repeat}) ...", file=sys.stderr, flush=True)
        d_runs.append(floor(settings))
    report["c_over_d_pairs"] = [
        {"c_seconds": c["seconds"], "c_peak_rss_mb": c["peak_rss_mb"], "d_seconds": d["seconds"],
         "c_over_d": round(c["seconds"] / d["seconds"], 2)}
        for c, d in zip(c_runs, d_runs, strict=True)
    ]  # fmt: skip

    b, c = report["variants"]["b_dynamic"], report["variants"]["c_hf_spam"]
    pairs = list(zip(b.pop("test_predictions"), c.pop("test_predictions"), strict=True))
    report["b_vs_c"] = {
        "test_messages": len(pairs),
        "identical_labels": sum(x["label"] == y["label"] for x, y in pairs),
        "max_score_difference": max(abs(x["score"] - y["score"]) for x, y in pairs),
    }
    for result in [*report["variants"].values(), *c_runs]:
        result.pop("test_predictions", None)
    c_median = statistics.median(run["seconds"] for run in c_runs)
    report["ratios"] = {
        "b_over_c": round(b["seconds"] / c_median, 2),
        "c_over_d": round(statistics.median(pair["c_over_d"] for pair in report["c_over_d_pairs"]), 2),
    }
    if model is not None:
        return report
    print("[bench] prediction throughput ...", file=sys.stderr, flush=True)
    report["predict"] = prediction_backends(str(workdir / "c_hf_spam"), 300 if quick else None)
    report["ratios"]["a_over_c"] = round(report["variants"]["a_book"]["seconds"] / c_median, 2)
    return report


def _backend_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PREDICTION_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected names among {','.join(PREDICTION_BACKENDS)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="hf-spam bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A tiny model and 1 epoch: under a minute, for CI.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Runs of (c) and (d), back to back, for c/d (default 3; 1 with --quick).",
    )
    parser.add_argument(
        "--model",
        help="A pretrained decoder (e.g. smollm2-135m): times (b), (c) and (d) on it, with its real weights.",
    )
    parser.add_argument(
        "--predict",
        metavar="MODEL_DIR",
        help="Only the prediction rows, on this trained model (exports it to MODEL_DIR/onnx first).",
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=None,
        help="With --predict: time the first N messages of the collection.",
    )
    parser.add_argument(
        "--backends",
        type=_backend_list,
        default=None,
        help=f"With --predict: comma-separated rows of {','.join(PREDICTION_BACKENDS)} (default: all, but "
        "torch_bfloat16 only on CPUs with bfloat16 instructions).",
    )
    parser.add_argument("--workdir", type=Path, help="Where runs write (default: a temporary directory).")
    parser.add_argument("--output", type=Path, help="Also write the JSON report here.")
    parser.add_argument("--_variant", help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args._variant:
        run_variant(json.loads(args._variant), args._out)
        return 0
    keep_freed_memory()  # the floor and the pipeline run here: the same allocator settings as train and predict
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally: never wait on the Hub
    if args.predict:
        from safetensors import SafetensorError

        try:
            predict = prediction_backends(args.predict, args.messages, args.backends)
        except (ValueError, OSError, SafetensorError, RuntimeError) as err:  # as `hf-spam predict` reports them
            message = str(err) if args.predict in str(err) else f"{args.predict}: {err}"
            print(f"hf-spam bench: {message}", file=sys.stderr)
            return 2
        report = {"machine": machine(), "predict": predict}
        print(json.dumps(report, indent=2))
        if args.output:
            args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(predict_table(report["predict"]))
        return 0
    with tempfile.TemporaryDirectory(prefix="hf_spam_bench_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = bench(args.quick, workdir, args.repeats or (1 if args.quick else 3), args.model)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    r = report["ratios"]
    pairs = ", ".join(f"{pair['c_over_d']}" for pair in report["c_over_d_pairs"])
    if args.model:
        print(f"{args.model}: b/c = {r['b_over_c']}x  c/d = {r['c_over_d']}x (median of {pairs})")
        return 0
    print(f"a/c = {r['a_over_c']}x  c/d = {r['c_over_d']}x (median of {pairs})")
    print(predict_table(report["predict"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

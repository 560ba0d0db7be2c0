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
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_spam.argtypes import ArgumentParser, non_negative_float, positive_int
from hf_spam.deploy.spam_classifier import naming_the_model
from hf_spam.malloc import keep_freed_memory
from hf_spam.reports.bench_predict import (
    PREDICTION_BACKENDS,
    latency,
    latency_table,
    machine,
    predict_table,
    prediction_backends,
)
from hf_spam.training.arguments import book_recipe

FULL = {
    "model_name_or_path": "gpt2",
    "init": "random",
    **book_recipe(),
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
    from hf_spam.data.splits import load_sms_spam
    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.training.run import main as train_main

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
    command = [sys.executable, "-m", "hf_spam.reports.bench", "--_variant", json.dumps(settings), "--_out", str(out)]
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _tokenizer(settings: dict):
    from hf_spam.models.tokenizer import load_tokenizer

    name = settings["model_name_or_path"]
    return load_tokenizer(name, use_bundled=settings["init"] == "random" and name == "gpt2")


def _train_tokens(settings: dict) -> int:
    """Real (non-pad) tokens one epoch of the training split holds."""
    from hf_spam.data.splits import load_sms_spam

    splits, _ = load_sms_spam(seed=int(settings["seed"]))
    encoded = _tokenizer(settings)(list(splits["train"]["text"]), truncation=True, max_length=1024)
    return sum(len(ids) for ids in encoded["input_ids"])


@torch.no_grad()
def floor(settings: dict) -> dict:
    """(d): one no-grad forward of the whole model over every message of the splits, sorted by length."""
    from hf_spam.data.splits import load_sms_spam
    from hf_spam.models.loading import load_model, model_context

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


def bench(quick: bool, workdir: Path, repeats: int = 1, model: str | None = None) -> dict:
    """The whole comparison; with `model` (a pretrained decoder, e.g. smollm2-135m), (b), (c) and (d) only."""
    settings = QUICK if quick else FULL
    if model is not None:
        from hf_spam.models.pretrained import resolve_pretrained

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


def build_parser() -> ArgumentParser:
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
    parser.add_argument(
        "--reference",
        metavar="MODEL_DIR",
        help="With --predict: a second trained model (the full-depth one a keep_layers model was cut from) whose "
        "pipeline() one at a time and torch float32 rows run in the same process; speedups are over its pipeline().",
    )
    parser.add_argument(
        "--latency",
        metavar="MODEL_DIR",
        help="Only the one-message latency (p50/p99 of 200 requests) through the Python API and `hf-spam serve`, "
        "for torch float32 and ONNX Runtime float32 and int8 (export with --quantize int8 first).",
    )
    parser.add_argument(
        "--max_accuracy_drop",
        type=non_negative_float,
        default=0.5,
        help="With --predict: the points of test accuracy the int8 export may lose (as hf-spam export; default 0.5).",
    )
    parser.add_argument("--workdir", type=Path, help="Where runs write (default: a temporary directory).")
    parser.add_argument("--output", type=Path, help="Also write the JSON report here.")
    parser.add_argument("--_variant", help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args._variant:
        run_variant(json.loads(args._variant), args._out)
        return 0
    keep_freed_memory()  # the floor and the pipeline run here: the same allocator settings as train and predict
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally: never wait on the Hub
    if args.latency:
        try:
            report = {"machine": machine(), "latency": latency(args.latency)}
        except (ValueError, OSError, RuntimeError) as err:  # as `hf-spam predict` reports them
            print(f"hf-spam bench: {naming_the_model(args.latency, err)}", file=sys.stderr)
            return 2
        print(json.dumps(report, indent=2))
        if args.output:
            args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(latency_table(report["latency"]))
        return 0
    if args.predict:
        from safetensors import SafetensorError

        try:
            predict = prediction_backends(
                args.predict, args.messages, args.backends, args.reference, args.max_accuracy_drop
            )
        except (ValueError, OSError, SafetensorError, RuntimeError) as err:  # as `hf-spam predict` reports them
            print(f"hf-spam bench: {naming_the_model(args.predict, err)}", file=sys.stderr)
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

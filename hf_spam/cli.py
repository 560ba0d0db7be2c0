"""`hf-spam` command line: data | train | predict | eval | cv | export | serve | loadtest | score | push | bench | baseline |
experiments."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys

from hf_spam.argtypes import (
    ArgumentParser,
    finite_float,
    non_negative_float,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
)
from hf_spam.progress import add_disable_tqdm, quiet_library_bars

# Heavy libraries (torch, transformers, datasets) are imported by the command that runs, never by the parser:
# `hf-spam --help` and a mistyped flag answer at once.


def data_command(args: argparse.Namespace) -> int:
    from hf_spam.data.arguments import DataArguments, check_finite
    from hf_spam.data.collection import DataFormatError, DataIntegrityError, DownloadError
    from hf_spam.data.sources import SourceError
    from hf_spam.data.splits import load_splits

    try:
        data_args = DataArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataArguments)})
        check_finite(data_args)
        _, report = load_splits(data_args, seed=args.seed)
    except (DataFormatError, DataIntegrityError, DownloadError, SourceError, FileNotFoundError) as err:
        print(f"hf-spam data: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # DataArguments' own checks, whose messages start with the field's name
        print(f"hf-spam data: error: --{err} (see --help)", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.deploy.spam_classifier import naming_the_model
    from hf_spam.malloc import keep_freed_memory

    keep_freed_memory()
    quiet_library_bars(args.disable_tqdm)  # "Loading weights" too: a log in a file gets no \r fragments
    try:
        classifier = load_classifier(
            args.model,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
            threshold=args.threshold,
            backend=args.backend,
        )
    # Refused (UnsafeModelError is a ValueError), missing, not a model directory, or a config.json or
    # model.safetensors that does not parse (JSONDecodeError, transformers' ValueError, SafetensorError);
    # for onnxruntime, no exported graph or no onnx extra (ExportError).
    except (ValueError, OSError, SafetensorError, RuntimeError) as err:
        print(f"hf-spam predict: {naming_the_model(args.model, err)}", file=sys.stderr)
        return 2
    if not args.texts:
        first = sys.stdin.buffer.peek(4)[:4] if hasattr(sys.stdin.buffer, "peek") else b""
        if first.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in first:
            # NUL-interleaved lines would otherwise be classified as text, one after another.
            print("hf-spam predict: stdin is UTF-16 (a byte-order mark or NUL bytes); convert it to UTF-8, e.g. "
                  "iconv -f UTF-16 -t UTF-8", file=sys.stderr)  # fmt: skip
            return 2
    from hf_spam.deploy.predict_input import input_records, where_of
    from hf_spam.progress import progress_bar

    failed = False
    records = input_records(args)
    bar = progress_bar(len(args.texts) or None, "Classifying", disable=args.disable_tqdm)
    # Read in chunks so that a long stream is answered as it goes, in bounded memory.
    try:
        while chunk := list(itertools.islice(records, args.chunk_size)):
            answers = {
                where: {**where_of(args, where, key), "error": error} for where, key, _, error in chunk if error
            }
            valid = [(where, key, text) for where, key, text, error in chunk if not error]
            # A chunk of nothing but empty or undecodable lines has nothing to classify (pipeline([]) fails).
            predictions = classifier([text for _, _, text in valid], bar.update) if valid else []
            bar.update(len(chunk) - len(valid))  # the refused lines, answered with their error
            for (where, key, _), prediction in zip(valid, predictions, strict=True):
                answers[where] = {**where_of(args, where, key), **prediction} if args.id_column else prediction
            for where, *_ in chunk:
                failed |= "error" in answers[where]
                print(json.dumps(answers[where]), flush=False)
            sys.stdout.flush()
    except ValueError as err:  # a CSV without the text or id column: nothing can be read
        print(f"hf-spam predict: {err}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    return 1 if failed else 0


def export_command(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from hf_spam.data.collection import DataFormatError, DownloadError
    from hf_spam.deploy.export import ExportError, export
    from hf_spam.deploy.onnx_runtime import OnnxMissingError
    from hf_spam.deploy.spam_classifier import naming_the_model

    quiet_library_bars(args.disable_tqdm)
    try:
        report = export(
            args.model_dir, args.quantize, args.test_file, args.max_accuracy_drop, args.opset, args.disable_tqdm
        )
    except ExportError as err:  # the graph does not match, or int8 costs too much: nothing was kept
        print(f"hf-spam export: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError, SafetensorError, DataFormatError, DownloadError, OnnxMissingError) as err:
        print(f"hf-spam export: {naming_the_model(args.model_dir, err)}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    kept = [f"{report[k]['file']} ({report[k]['bytes'] / 1e6:.1f} MB)" for k in ("float32", "int8") if k in report]
    print(f"hf-spam export: {', '.join(kept)} in {args.model_dir}/onnx, verified on {report['messages']:,} messages "
          f"of the {report['verified_on']}", file=sys.stderr)  # fmt: skip
    return 0


def serve_command(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from hf_spam.deploy.serve import serve
    from hf_spam.deploy.spam_classifier import naming_the_model

    api_key = args.api_key if args.api_key is not None else os.environ.get("HF_SPAM_API_KEY")
    if api_key is not None and not api_key.strip():
        # `--api_key "$UNSET_VAR"` must not serve without a key: fail closed.
        print("hf-spam serve: the API key is empty (an unset variable?); give a key, or leave it out", file=sys.stderr)
        return 2
    if api_key is not None and not (api_key.isascii() and api_key.isprintable() and api_key.strip() == api_key):
        print("hf-spam serve: the API key must be printable ASCII with no spaces at its ends", file=sys.stderr)
        return 2
    args.api_key = api_key or None  # resolved once: serve() reads the flag only
    if args.batch_wait_ms < 0 or args.max_batch_texts < 0:
        print("hf-spam serve: --batch_wait_ms and --max_batch_texts must not be negative", file=sys.stderr)
        return 2
    try:
        return serve(args)
    except ImportError as err:
        print(
            f"hf-spam serve: needs the serve extra: `pip install fastapi uvicorn` ({err.name} is missing)",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError, SafetensorError, RuntimeError) as err:
        print(f"hf-spam serve: {naming_the_model(args.model, err)}", file=sys.stderr)
        return 2


def push_command(args: argparse.Namespace) -> int:
    from hf_spam.deploy.hub import push_output_dir
    from hf_spam.deploy.spam_classifier import read_run_summary
    from hf_spam.evaluation.model_card import SpamModelCardData, write_model_card

    summary = read_run_summary(args.output_dir)
    if "model_card" in summary:  # re-render so that the card's name and usage snippet are the repo id
        card = SpamModelCardData(**{**summary["model_card"], "model_id": args.repo_id})
        write_model_card(args.output_dir, card)
    try:
        url = push_output_dir(args.output_dir, args.repo_id, private=args.private)
    except (FileNotFoundError, PermissionError) as err:
        print(f"hf-spam push: {err}", file=sys.stderr)
        return 2
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="hf-spam", description="Decoder (GPT-2, Llama, Gemma, ...) spam classifiers on the Hugging Face stack."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("data", help="Obtain, verify, dedupe, balance and split the data; print a JSON report.")
    sub.add_parser(
        "baseline", help="Char TF-IDF + logistic regression on the same splits (`hf-spam baseline --help`)."
    )
    sub.add_parser("cv", help="Cross-validate a training recipe against baselines (`hf-spam cv --help`).")
    sub.add_parser("eval", help="Score a saved model on labelled files it never saw, beside baselines (`--help`).")
    sub.add_parser("bench", help="Time the book's loop, plain Trainer and hf_spam (see `hf-spam bench --help`).")
    sub.add_parser("experiments", help="The book's table of chapter 6 experiments (`hf-spam experiments --help`).")
    sub.add_parser("loadtest", help="Load `hf-spam serve` on loopback (see `hf-spam loadtest --help`).")
    sub.add_parser("score", help="Score Parquet/CSV/JSONL files on Ray Data (see `hf-spam score --help`).")
    sub.add_parser(
        "train", help="Fine-tune (all flags of hf_spam/train.py; see `hf-spam train --help`).", add_help=False
    )

    push = sub.add_parser("push", help="Push a trained output directory (model, tokenizer, card) to the Hub.")
    push.add_argument("output_dir", help="A directory written by `hf-spam train`.")
    push.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="user/name on the Hub.")
    push.add_argument("--private", action="store_true", default=None, help="Create the repository private.")

    add_predict_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    return parser


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_spam")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def data_parser() -> argparse.ArgumentParser:
    """`hf-spam data`: the data stage alone, its report as JSON. Its flags are `DataArguments`' fields, as in
    `hf-spam train`, so the two commands cannot drift apart."""
    from transformers import HfArgumentParser

    from hf_spam.data.arguments import DataArguments

    fields = HfArgumentParser(DataArguments, add_help=False)
    # "never download" is `--data_urls` with no URL; HfArgumentParser asks lists for at least one value.
    fields._option_string_actions["--data_urls"].nargs = "*"
    data = ArgumentParser(
        prog="hf-spam data",
        parents=[fields],
        allow_abbrev=False,
        description="Obtain, verify, dedupe, balance and split the data; print a JSON report.",
    )
    data.add_argument("--cache_dir", dest="data_cache_dir", help="The same as --data_cache_dir.")
    data.add_argument("--seed", type=int, default=123, help="The seed of balancing and splitting.")
    return data


def add_predict_parser(sub) -> None:
    """`hf-spam predict`: JSON lines of labels and scores."""
    predict = sub.add_parser("predict", help="Classify texts (arguments, or one per line on stdin) as JSON lines.")
    predict.add_argument("--model", required=True, help="A directory written by `hf-spam train` (or a Hub id).")
    predict.add_argument("texts", nargs="*", help="Texts to classify; read from stdin, one per line, if none.")
    predict.add_argument(
        "--batch_size", type=positive_int, default=64, help="Texts per forward pass, in token-length order."
    )
    predict.add_argument(
        "--chunk_size",
        type=positive_int,
        default=8192,
        help="Lines read from stdin per batch of work: larger chunks sort by length and dedupe better.",
    )
    predict.add_argument(
        "--threshold",
        type=finite_float,
        default=None,
        help="Spam when P(spam) >= this (default: the model's saved spam_threshold, else the argmax, as pipeline()).",
    )
    predict.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    predict.add_argument("--input_format", choices=["lines", "csv", "jsonl"], default="lines",
                         help="stdin as one text a line (default), a CSV with a header, or JSON Lines.")  # fmt: skip
    predict.add_argument("--text_column", default="text", help="The text's column or field (csv, jsonl).")
    add_disable_tqdm(predict)
    predict.add_argument("--id_column", default=None, help="A column or field to echo as `id` in each answer.")
    predict.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: the graph `hf-spam export` wrote into the model directory, on the CPU.",
    )
    predict.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "int8"],
        default="float32",
        help="torch: float32 or bfloat16 (about 2x faster on CPUs with AVX-512 BF16/AMX and on GPUs, not exact; "
        "emulated, 60x slower, on CPUs without them); "
        "onnxruntime: float32 (onnx/model.onnx) or int8 (onnx/model_quantized.onnx).",
    )


def add_export_parser(sub) -> None:
    """`hf-spam export`: ONNX (and int8), verified on the model's test split."""
    export = sub.add_parser("export", help="Export a trained model to ONNX (and int8), verified on its test split.")
    export.add_argument("model_dir", help="A directory written by `hf-spam train`; the files go to MODEL_DIR/onnx/.")
    export.add_argument("--quantize", choices=["int8"], default=None, help="Also write onnx/model_quantized.onnx.")
    add_disable_tqdm(export)
    export.add_argument(
        "--test_file",
        default=None,
        help="Labelled messages to verify on (csv/tsv/json/jsonl/parquet); default: the model's own test split.",
    )
    export.add_argument(
        "--max_accuracy_drop",
        type=non_negative_float,
        default=0.5,
        help="Fail when int8 test accuracy is more than this many points below float32's (default 0.5).",
    )
    export.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset, 18 to 23 (default 23: one Attention and one Gelu op per layer, for ONNX Runtime >= 1.23; "
        "18 for older runtimes).",
    )


def add_serve_parser(sub) -> None:
    """`hf-spam serve`: the HTTP API and its limits."""
    serve = sub.add_parser("serve", help="An HTTP API (Hugging Face Inference API shape) and a page to try it.")
    serve.add_argument("--model", required=True, help="A directory written by `hf-spam train`.")
    serve.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only)."
    )
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument(
        "--access_log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="One line per request on stderr: method, path, status, ms, texts, tokens (never a message's text).",
    )
    serve.add_argument(
        "--shutdown_grace_s",
        type=positive_float,
        default=20.0,
        help="Seconds SIGTERM leaves requests in flight to finish before the server stops (default 20: inside "
        "Kubernetes' 30 s grace period).",
    )
    serve.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    serve.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default="float32", help="As for predict.")
    serve.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ... (torch backend).")
    serve.add_argument(
        "--batch_size", type=positive_int, default=64, help="Texts per forward pass, in token-length order."
    )
    serve.add_argument(
        "--batch_wait_ms",
        type=non_negative_float,
        default=5.0,
        help="How long a batch waits for more requests while the server is busy; a request that finds the model "
        "idle waits only for those already being read (0 with --max_batch_texts 0: one model call per request).",
    )
    serve.add_argument("--max_batch_texts", type=int, default=256, help="Texts gathered into one call at most.")
    serve.add_argument("--max_batch_tokens", type=non_negative_int, default=2048, help="Tokens in one model call at "
                       "most (one text at least), dealt fairly across requests (0: no token budget).")  # fmt: skip
    serve.add_argument("--max_body_bytes", type=positive_int, default=1_000_000)
    serve.add_argument("--max_texts", type=positive_int, default=256, help="Texts one request may hold.")
    serve.add_argument("--max_text_chars", type=positive_int, default=100_000, help="Characters one text may hold.")
    serve.add_argument(
        "--max_input_tokens",
        type=positive_int,
        default=None,
        help="Tokens one text may hold, as the model reads it (a message template's included); a longer text is "
        "refused with 413, not truncated (default 512, or the model's context where shorter; a value above the "
        "context is refused at start).",
    )
    serve.add_argument(
        "--max_concurrent_requests",
        type=positive_int,
        default=128,
        help="Requests answered at once; beyond, 429 with Retry-After (default 128).",
    )
    serve.add_argument(
        "--header_timeout_s",
        type=positive_float,
        default=10.0,
        help="Seconds a connection has to send a request's line and headers; then 408 and closed (default 10).",
    )
    serve.add_argument(
        "--body_timeout_s",
        type=positive_float,
        default=30.0,
        help="Seconds a request has to send its body; then 408 (default 30).",
    )
    serve.add_argument(
        "--api_key",
        default=None,
        help="Require `Authorization: Bearer KEY` on POST / , POST /predict and GET /info (401 otherwise); "
        "GET /health and the page stay open. Prefer the HF_SPAM_API_KEY environment variable: a flag shows in ps.",
    )
    serve.add_argument("--allowed_hosts", nargs="+", metavar="HOST", help="Answer only these Host header names "
                       "(*.example.com for subdomains), 400 otherwise: no DNS rebinding. Default: any.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from hf_spam.training.run import run

        return run(argv[1:])
    if argv[:1] == ["baseline"]:
        from hf_spam.evaluation.baseline import main as baseline_main

        return baseline_main(argv[1:])
    if argv[:1] == ["cv"]:
        from hf_spam.reports.cv import main as cv_main

        return cv_main(argv[1:])
    if argv[:1] == ["eval"]:
        from hf_spam.reports.eval import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] == ["bench"]:
        from hf_spam.reports.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["experiments"]:
        from hf_spam.reports.experiments import main as experiments_main

        return experiments_main(argv[1:])
    if argv[:1] == ["loadtest"]:
        from hf_spam.deploy.loadtest import main as loadtest_main

        return loadtest_main(argv[1:])
    if argv[:1] == ["score"]:
        from hf_spam.deploy.batch_score import main as score_main

        return score_main(argv[1:])
    if argv[:1] == ["data"]:
        args = data_parser().parse_args(argv[1:])
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
        return data_command(args)
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    if args.command == "push":
        return push_command(args)
    if args.command == "export":
        return export_command(args)
    if args.command == "serve":
        return serve_command(args)
    return predict_command(args)


if __name__ == "__main__":
    sys.exit(main())

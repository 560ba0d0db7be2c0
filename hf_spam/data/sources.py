"""Users' own messages: a Hub dataset or local CSV / TSV / JSON / JSONL / Parquet files, read the `datasets` way.

    --dataset_name ucirvine/sms_spam                       (columns sms, label: found by name)
    --train_file mail.csv --text_column body --label_column is_spam
    --train_file train.parquet --validation_file dev.parquet --test_file test.parquet

Columns are found among common names when exactly one fits. Labels come from strings (any case, surrounding
spaces ignored), integers, booleans or a `ClassLabel`: two labels are mapped to ham (0) and spam (1); more
than two are classes of their own, named by the data (a `ClassLabel`'s order, integers in numeric order, else
sorted), and trained as a multi-class classifier. Of integer labels only 0/1 say which is spam (1); any other
two integers ({1, 2}) need `spam_label`. Every row is checked: a
missing or unknown label, an empty text or a value of the wrong type is an error naming the file and row, or,
with `lenient`, is skipped and counted. What comes out is plain `(texts, labels)` per split, for the same
dedupe -> balance -> split -> tokenize pipeline the SMS Spam Collection goes through (`hf_spam.data`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sms", "message", "body", "content", "email", "comment", "sentence")
LABEL_COLUMNS = ("label", "labels", "is_spam", "spam", "class", "category", "target")
FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
# Binary label names where the positive class goes without saying.
POSITIVE = ("spam", "1", "true", "yes", "junk")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


class SourceError(ValueError):
    """A data source, column or row that cannot be used: the message names the file (or dataset) and row."""


@dataclass
class UserRows:
    """What `read_user_data` found: `splits[name] = (texts, labels)`, labels indexing `classes`."""

    source: str
    paths: dict[str, str]
    text_column: str
    label_column: str
    classes: list[str]  # ["ham", "spam"] for two labels, else the data's own names
    label_names: dict[str, str]  # the data's own label -> its class name
    splits: dict[str, tuple[list[str], list[int]]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def read_user_data(
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
) -> UserRows:
    """Read and check a Hub dataset or local files; see the module docstring."""
    from datasets import load_dataset

    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if dataset_name is not None and files:
        raise SourceError("give either dataset_name or train_file/validation_file/test_file, not both")
    if files and "train" not in files:
        raise SourceError("validation_file and test_file need a train_file")
    if dataset_name is not None:
        loaded = load_dataset(dataset_name, dataset_config_name, revision=dataset_revision)
        datasets = {}
        for split, names in SPLIT_NAMES.items():
            found = [name for name in names if name in loaded]
            if found:
                datasets[split] = loaded[found[0]]
        if "train" not in datasets:
            raise SourceError(f"{dataset_name}: no train split (it has {', '.join(loaded) or 'none'})")
        where = {split: f"{dataset_name} [{split}]" for split in datasets}
        source = f"hub:{dataset_name}"
    else:
        datasets, where = {}, {}
        for split, path in files.items():
            datasets[split], where[split] = _read_file(path), path
        source = "files"

    columns = list(datasets["train"].column_names)
    text = _column(columns, text_column, TEXT_COLUMNS, "text_column", where["train"])
    label = _column(columns, label_column, LABEL_COLUMNS, "label_column", where["train"])
    for split, dataset in datasets.items():
        missing = {text, label} - set(dataset.column_names)
        if missing:
            raise SourceError(
                f"{where[split]}: no column {', '.join(sorted(missing))} (it has {', '.join(dataset.column_names)})"
            )
    feature = datasets["train"].features[label]
    names = getattr(feature, "names", None)  # a ClassLabel: the stored ints index these names
    classes, mapping = _label_mapping(datasets, label, names, spam_label, where)
    rows = UserRows(source, where, text, label, classes, {str(k): classes[v] for k, v in mapping.items()})
    skipped: Counter[str] = Counter()
    for split, dataset in datasets.items():
        rows.splits[split] = _checked_rows(dataset, text, label, names, mapping, lenient, where[split], skipped)
    rows.skipped = dict(skipped)
    if skipped:
        logger.warning("Skipped %d rows: %s", sum(skipped.values()), rows.skipped)
    return rows


def _read_file(path: str):
    from datasets import load_dataset

    file = Path(path)
    if file.is_dir():
        raise SourceError(f"{path}: is a directory; give a data file ({', '.join(FORMATS)})")
    if not file.is_file():
        raise SourceError(f"{path}: no such file")
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise SourceError(f"{path}: unknown format {file.suffix!r}; expected one of {', '.join(FORMATS)}")
    if file.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty")
    builder, options = kind
    if builder in ("csv", "json"):
        check_utf8(file)
    try:
        dataset = load_dataset(builder, data_files=str(file), split="train", **options)
    except Exception as err:  # pandas, pyarrow and json parsers each raise their own types
        if "corresponds to no data" in str(err):  # datasets' words for a header without rows
            raise SourceError(f"{path}: no messages in it (a header, but no rows)") from None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise SourceError(f"{path}: cannot be read as {file.suffix[1:]}: {reason}") from err
    if len(dataset) == 0:
        raise SourceError(f"{path}: no messages in it (a header, but no rows)")
    return dataset


def check_utf8(path: Path) -> None:
    """Text files must be UTF-8: say which encoding it looks like and where it breaks, not a reader's
    "An error occurred while generating the dataset"."""
    import codecs

    with open(path, "rb") as f:
        head = f.read(4)
        for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # fmt: skip
            if head.startswith(bom):
                raise SourceError(f"{path}: the file is {name} (it starts with a byte-order mark); save it as UTF-8")
        f.seek(0)
        if b"\x00" in f.read(1 << 16):
            raise SourceError(
                f"{path}: the file holds NUL bytes, as UTF-16 without a byte-order mark does; save it as UTF-8"
            )
        f.seek(0)
        decoder, line, offset = codecs.getincrementaldecoder("utf-8")(), 1, 0
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line += chunk[: err.start].count(b"\n")
                raise SourceError(
                    f"{path}: line {line}: not UTF-8 (byte {offset + err.start}); it looks like a legacy encoding "
                    "such as cp1252 or latin-1: save it as UTF-8"
                ) from None
            line += chunk.count(b"\n")
            offset += len(chunk)


def _column(columns: list[str], chosen: str | None, candidates: tuple[str, ...], option: str, where: str) -> str:
    if chosen is not None:
        if chosen not in columns:
            raise SourceError(f"{where}: {option} {chosen!r} is not a column (it has {', '.join(columns)})")
        return chosen
    found = [c for c in columns if c.strip().lower() in candidates]
    if len(found) != 1:
        how = "none of the usual names" if not found else f"several candidates ({', '.join(found)})"
        raise SourceError(f"{where}: set {option}: {how} among the columns {', '.join(columns)}")
    return found[0]


def _normalize(value) -> str:
    if isinstance(value, float) and value.is_integer():  # 0/1 read as floats (a column with gaps, say)
        value = int(value)
    return str(value).strip().lower()


def _label_mapping(datasets, label: str, names, spam_label: str | None, where) -> tuple[list[str], dict]:
    """The class names, and the data's labels (normalized) -> class index: ham (0) / spam (1) for two labels,
    the data's own names for more. The classes are those of the train split; a label that only a validation or
    test split has is a row error there, since no model could learn it."""
    values = {v for v in datasets["train"].unique(label) if not _missing(v, names)}
    if names is not None:
        values = {names[v] for v in values if isinstance(v, int) and 0 <= v < len(names)}
    distinct = {_normalize(v) for v in values}
    if len(distinct) < 2:
        raise SourceError(
            f"{where['train']}: column {label!r} has {len(distinct)} label ({', '.join(sorted(distinct)) or 'none'}); "
            "a classifier needs two or more"
        )
    if len(distinct) > 2:
        if spam_label is not None:
            raise SourceError(
                f"spam_label names the positive one of two labels; column {label!r} has {len(distinct)} "
                f"({', '.join(_ordered(distinct, names)[:10])}): leave spam_label out to train them all as classes"
            )
        classes = _ordered(distinct, names)
        return classes, {name: i for i, name in enumerate(classes)}
    if spam_label is not None:
        positive = _normalize(spam_label)
        if positive not in distinct:
            raise SourceError(f"spam_label {spam_label!r} is not one of the labels {', '.join(sorted(distinct))}")
    elif all(v.lstrip("-").isdigit() for v in distinct) and distinct != {"0", "1"}:
        # Only 0/1 say which is spam; {1, 2} could be ham=1 or spam=1, and a guess would invert every label.
        raise SourceError(
            f"{where['train']}: which of the labels {', '.join(sorted(distinct, key=int))} is spam? Set spam_label"
        )
    else:
        known = [name for name in POSITIVE if name in distinct]
        if len(known) != 1:
            raise SourceError(
                f"{where['train']}: which of the labels {', '.join(sorted(distinct))} is spam? Set spam_label"
            )
        positive = known[0]
    return ["ham", "spam"], {name: int(name == positive) for name in sorted(distinct)}


def _missing(value, names) -> bool:
    """A label that is not there: None, NaN, an empty string, or a `ClassLabel`'s -1 (its "no label")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return names is not None and value == -1


def _ordered(distinct: set[str], names) -> list[str]:
    """A `ClassLabel`'s own order, integers in numeric order, else sorted: the order of the model's label ids."""
    if names is not None:
        return [n for n in dict.fromkeys(_normalize(n) for n in names) if n in distinct]
    if all(n.lstrip("-").isdigit() for n in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _checked_rows(dataset, text: str, label: str, names, mapping: dict, lenient: bool, where: str, skipped: Counter):
    texts, labels = [], []
    column_texts, column_labels = dataset[text], dataset[label]
    for row, (message, value) in enumerate(zip(column_texts, column_labels, strict=True), start=1):
        reason = kind = None
        if _missing(value, names):
            reason, kind = f"missing {label} ({value!r})", "missing_label"
        elif names is not None and not (isinstance(value, int) and 0 <= value < len(names)):
            reason, kind = f"{label} id {value!r} is not one of the {len(names)} ClassLabel names", "unknown_label"
        elif not isinstance(message, str):
            reason, kind = f"{text} is {type(message).__name__}, not text", "wrong_type"
        elif not message.strip():
            reason, kind = f"empty {text}", "empty_text"
        else:
            key = _normalize(names[value] if names is not None else value)
            if key not in mapping:
                reason, kind = f"unknown {label} {value!r} (labels: {', '.join(mapping)})", "unknown_label"
        if reason is None:
            texts.append(message)
            labels.append(mapping[key])
        elif lenient:
            skipped[kind] += 1
        else:
            raise SourceError(f"{where}: row {row}: {reason}")
    if not texts:
        raise SourceError(f"{where}: no usable rows")
    return texts, labels


# Binary label names where the negative class goes without saying (the positive ones are POSITIVE).
NEGATIVE = ("ham", "0", "false", "no", "legit", "legitimate", "not spam", "not_spam")


def read_labelled_file(
    path: str, classes: list[str], text_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], list[int]]:
    """A file of messages to *score* (CSV/TSV/JSON/JSONL/Parquet, as `train_file` reads them), its labels
    mapped to a model's `classes`: texts and label ids. Unlike training data, a file may hold one label only
    (a corpus of spam reports, one of personal messages). For a ham/spam model the usual names of each side are
    understood (spam/1/true/junk, ham/0/false/legit); every row is checked, an error naming the file and row."""
    dataset = _read_file(path)
    columns = list(dataset.column_names)
    text = _column(columns, text_column, TEXT_COLUMNS, "text_column", path)
    label = _column(columns, label_column, LABEL_COLUMNS, "label_column", path)
    names = getattr(dataset.features[label], "names", None)
    mapping = {name.lower(): i for i, name in enumerate(classes)}
    if classes == ["ham", "spam"]:
        mapping |= {name: 1 for name in POSITIVE} | {name: 0 for name in NEGATIVE}
    return _checked_rows(dataset, text, label, names, mapping, False, path, Counter())

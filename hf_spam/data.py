"""The SMS Spam Collection: obtain and verify -> parse -> dedupe -> balance -> split -> tokenize.

Every step is deterministic for a given seed, and the tokenized splits live in the `datasets` Arrow
cache under fingerprints derived from what produced them (data hash, settings, tokenizer), so a
second identical run loads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from sklearn.model_selection import train_test_split

logger = logging.getLogger(__name__)

LABELS = ["ham", "spam"]
FEATURES = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
ARCHIVE_MEMBER = "SMSSpamCollection"
URLS = [
    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
    # The mirror chapter 6 of the book falls back to.
    "https://f001.backblazeb2.com/file/LLMs-from-scratch/sms%2Bspam%2Bcollection.zip",
]
SPLITS = ("train", "validation", "test")


class DataFormatError(ValueError):
    """A line of the data file that is not `ham|spam<TAB>text`."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")


class DataIntegrityError(ValueError):
    """Downloaded bytes that are not the SMS Spam Collection we expect."""


class SplitError(ValueError):
    """Data that cannot make the splits a classifier needs (one label only, a split without a label)."""


class DownloadError(OSError):
    """Every download source failed (network errors, HTTP errors, timeouts, short transfers)."""


@dataclass
class DataReport:
    """What `load_sms_spam` did, in numbers; `hf-spam data` prints it as JSON."""

    source: str
    path: str
    sha256: str
    rows: int
    labels: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates_removed: int = 0
    conflicting_duplicates: int = 0
    balance: str = "undersample"
    splits: dict[str, int] = field(default_factory=dict)
    split_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    # The distinct messages balancing left out, by label: never trained on, scored at the end to measure the
    # false-positive rate at the data's own spam rate.
    held_out: dict[str, int] = field(default_factory=dict)
    # A source of one's own: the columns used, the data's labels -> ham/spam, texts dropped from a later split
    # because an earlier one holds them.
    columns: dict[str, str] = field(default_factory=dict)
    label_names: dict[str, str] = field(default_factory=dict)
    cross_split_duplicates: dict[str, int] = field(default_factory=dict)
    # The model's labels, by id: ham and spam, or the classes of a multi-class source.
    classes: list[str] = field(default_factory=lambda: list(LABELS))

    @property
    def is_binary(self) -> bool:
        """Whether this is ham/spam data: what the spam metrics, the threshold and the natural rate are for."""
        return self.classes == LABELS

    @property
    def spam_rate(self) -> float:
        """The spam share of the distinct messages (after dedupe, before balancing): the natural rate."""
        totals = Counter(self.held_out)
        for labels in self.split_labels.values():
            totals.update(labels)
        return totals["spam"] / max(sum(totals.values()), 1)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# Obtain and verify
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_SPAM_CACHE", Path.home() / ".cache" / "hf_spam"))


def bundled_data_file() -> Path:
    return Path(str(resources.files("hf_spam") / "assets" / "sms_spam_collection" / ARCHIVE_MEMBER))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


# The zip is about 200 KB and its one file 478 KB: anything far larger is not the collection, and is neither
# downloaded whole nor decompressed.
MAX_DOWNLOAD_BYTES = 10 << 20
MAX_MEMBER_BYTES = 10 << 20


def _fetch(url: str, timeout: float) -> bytes:
    """Download `url` whole, or raise DownloadError. `timeout` bounds each socket wait and the total; the
    download stops past `MAX_DOWNLOAD_BYTES`."""
    max_bytes = MAX_DOWNLOAD_BYTES
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) > max_bytes:
                raise DownloadError(
                    f"{url}: {int(expected):,} bytes announced; the archive is far smaller (cap {max_bytes:,})"
                )
            buffer = io.BytesIO()
            while chunk := response.read(1 << 16):
                buffer.write(chunk)
                if buffer.tell() > max_bytes:
                    raise DownloadError(f"{url}: more than {max_bytes:,} bytes; the archive is far smaller")
                if time.monotonic() > deadline:
                    raise DownloadError(f"{url}: download took longer than {timeout:g}s")
    # HTTPError, refused, DNS, socket timeout, reset; HTTPException: a chunked transfer cut short, a bad status line
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        if isinstance(err, DownloadError):
            raise
        raise DownloadError(f"{url}: {err}") from err
    data = buffer.getvalue()
    if expected is not None and len(data) != int(expected):
        raise DownloadError(f"{url}: transfer interrupted ({len(data)} of {expected} bytes)")
    return data


def _extract_and_verify(archive: bytes, url: str) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            names = [n for n in zf.namelist() if Path(n).name == ARCHIVE_MEMBER]
            if not names:
                raise DataIntegrityError(f"{url}: the archive has no {ARCHIVE_MEMBER} file (found {zf.namelist()})")
            size = zf.getinfo(names[0]).file_size
            if size > MAX_MEMBER_BYTES:  # checked before decompressing: a zip bomb never unpacks
                raise DataIntegrityError(
                    f"{url}: {ARCHIVE_MEMBER} would unpack to {size:,} bytes; expected about 478 KB"
                )
            content = zf.read(names[0])
    except zipfile.BadZipFile as err:
        raise DataIntegrityError(
            f"{url}: not a valid zip archive ({err}); sha256 of the download "
            f"{hashlib.sha256(archive).hexdigest()}, expected {ARCHIVE_MEMBER} with sha256 {SHA256}"
        ) from err
    actual = hashlib.sha256(content).hexdigest()
    if actual != SHA256:
        raise DataIntegrityError(f"{url}: {ARCHIVE_MEMBER} has sha256 {actual}, expected {SHA256}")
    return content


def write_atomically(content: bytes, target: Path) -> None:
    """Write to a temporary file beside `target` and rename: a reader never sees a partial file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def obtain_data_file(
    data_file: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    urls: list[str] | None = None,
    timeout: float = 30.0,
    allow_bundled: bool = True,
) -> tuple[str, Path]:
    """Find a verified `SMSSpamCollection` and return `(source, path)`.

    Tries, in order: `data_file` (used as given, not hash-checked: it may be the user's own data), the cache,
    each of `urls` (the zip is downloaded, its member checked against the known sha256, and only then renamed
    into the cache), and last the copy bundled in the package. Network failures move on to the next source;
    a download whose content does not match the hash raises `DataIntegrityError`, because that is a broken
    or tampered mirror, not an outage.
    """
    if data_file is not None:
        path = Path(data_file)
        if not path.is_file():
            raise FileNotFoundError(f"data_file {path} does not exist or is not a file")
        logger.info("Data source: data_file %s", path)
        return "data_file", path

    cached = Path(cache_dir or default_cache_dir()) / ARCHIVE_MEMBER
    if cached.is_file():
        actual = sha256_of(cached)
        if actual == SHA256:
            logger.info("Data source: cache %s", cached)
            return "cache", cached
        logger.warning("Ignoring cached %s: sha256 %s, expected %s", cached, actual, SHA256)

    urls = URLS if urls is None else urls
    if _offline():
        logger.info("HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: not downloading")
        urls = []
    failures = []
    for url in urls:
        try:
            archive = _fetch(url, timeout)
        except DownloadError as err:
            logger.warning("Download failed, trying the next source: %s", err)
            failures.append(str(err))
            continue
        write_atomically(_extract_and_verify(archive, url), cached)
        logger.info("Data source: downloaded %s, verified sha256, cached at %s", url, cached)
        return url, cached

    if not allow_bundled:
        raise DownloadError(
            "could not download the SMS Spam Collection:\n  " + "\n  ".join(failures or ["no URL to try"])
        )
    bundled = bundled_data_file()
    logger.info("Data source: the copy bundled with hf_spam, %s", bundled)
    return "bundled", bundled


# --------------------------------------------------------------------------------------------
# Parse
# --------------------------------------------------------------------------------------------


def parse_data_file(path: str | os.PathLike, lenient: bool = False) -> tuple[list[str], list[int], dict[str, int]]:
    """Parse `label<TAB>text` lines strictly; return `(texts, labels, skipped_by_reason)`.

    Quoting is disabled: a text may hold quotes and tabs (only the first tab separates). A malformed line
    raises `DataFormatError` naming `path:line`, or, with `lenient=True`, is skipped and counted by reason.
    """
    texts: list[str] = []
    labels: list[int] = []
    skipped: Counter[str] = Counter()
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":  # the newline that ends the last line
        lines.pop()
    for number, line in enumerate(lines, start=1):
        reason, kind = None, None
        try:
            decoded = line.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            reason, kind = f"invalid UTF-8 at byte {err.start}", "invalid_utf8"
        else:
            label, tab, text = decoded.partition("\t")
            if not tab:
                reason, kind = "no tab between label and text", "no_tab"
            elif label not in LABELS:
                reason, kind = f"unknown label {label!r} (expected 'ham' or 'spam')", "unknown_label"
            elif not text.strip():
                reason, kind = "empty text", "empty_text"
        if reason is None:
            texts.append(text)
            labels.append(LABELS.index(label))
        elif lenient:
            skipped[kind] += 1
        else:
            raise DataFormatError(path, number, reason)
    if skipped:
        logger.warning("Skipped %d malformed lines of %s: %s", sum(skipped.values()), path, dict(skipped))
    if not texts:
        raise DataFormatError(path, max(len(lines), 1), "no valid rows" if lines else "the file is empty")
    return texts, labels, dict(skipped)


# --------------------------------------------------------------------------------------------
# Dedupe, balance, split
# --------------------------------------------------------------------------------------------


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
    from hf_spam.sources import SourceError, read_user_data

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


# --------------------------------------------------------------------------------------------
# Tokenize
# --------------------------------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer) -> str:
    if hasattr(tokenizer, "backend_tokenizer"):
        # The backend records the truncation/padding of the last call; that transient state must not change the
        # key (max_length is part of it anyway), or a repeated call in the same process misses the cache.
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend["truncation"] = backend["padding"] = None
        state = json.dumps(backend)
    else:
        state = repr(tokenizer)
    return hashlib.sha256(f"{state}|{tokenizer.pad_token_id}|{tokenizer.padding_side}".encode()).hexdigest()[:16]


def _splits_fingerprint(splits: DatasetDict) -> str:
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True):
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def tokenize_splits(
    splits: DatasetDict,
    tokenizer,
    max_length: int,
    padding: str = "longest",
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Tokenize every split: right padding with the tokenizer's pad token, truncation to `max_length`.

    `padding="longest"` leaves sequences unpadded; a `DataCollatorWithPadding` pads each batch.
    `padding="max_length"` is the book's: every example is padded to the longest *training* example, and
    validation/test are padded or truncated to that same length.

    `split_special_tokens=True` makes a literal "<|endoftext|>" in a message ordinary text, so the pad/EOS id
    never comes from user text and the last real token of a row is always found where the mask says.
    """
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with hf_spam.modeling.load_tokenizer")
    if tokenizer.padding_side != "right":
        raise ValueError(f"the tokenizer pads on the {tokenizer.padding_side}; hf_spam needs right padding")
    cache = Path(cache_dir or default_cache_dir()) / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        f"{_splits_fingerprint(splits)}|{_tokenizer_fingerprint(tokenizer)}|{max_length}".encode()
    ).hexdigest()[:16]

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length, split_special_tokens=True)

    tokenized = DatasetDict(
        {
            name: split.map(
                encode,
                batched=True,
                cache_file_name=str(cache / f"{key}-{name}.arrow"),
                new_fingerprint=f"{key}-{name}",
                desc=f"Tokenizing {name}",
            )
            for name, split in splits.items()
        }
    )
    if padding == "longest":
        return tokenized

    length = max(len(ids) for ids in tokenized["train"]["input_ids"])
    pad_id = tokenizer.pad_token_id

    def pad_to_length(example):
        ids = example["input_ids"][:length]
        n_pad = length - len(ids)
        return {"input_ids": ids + [pad_id] * n_pad, "attention_mask": [1] * len(ids) + [0] * n_pad}

    return DatasetDict(
        {
            name: split.map(
                pad_to_length,
                cache_file_name=str(cache / f"{key}-{name}-pad{length}.arrow"),
                new_fingerprint=f"{key}-{name}-pad{length}",
                desc=f"Padding {name} to {length}",
            )
            for name, split in tokenized.items()
        }
    )

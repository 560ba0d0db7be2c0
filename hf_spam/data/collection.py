"""The SMS Spam Collection: obtain and verify -> parse -> dedupe -> balance -> split -> tokenize.

Every step is deterministic for a given seed, and the tokenized splits live in the `datasets` Arrow
cache under fingerprints derived from what produced them (data hash, settings, tokenizer), so a
second identical run loads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import http.client
import io
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

from datasets import ClassLabel, Features, Value

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


class DataFormatError(ValueError):
    """A line of the data file that is not `ham|spam<TAB>text`."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")


class DataIntegrityError(ValueError):
    """Downloaded bytes that are not the SMS Spam Collection we expect."""


class DownloadError(OSError):
    """Every download source failed (network errors, HTTP errors, timeouts, short transfers)."""


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
    """Write to a temporary file beside `target` and rename: a reader never sees a partial file. The file gets
    the mode a plain `open()` would give it (0644 under the usual umask), not `mkstemp`'s private 0600: a
    server running as another user, as in a container, must be able to read what a run wrote."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it, as POSIX offers no other way, and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# A cell a spreadsheet would run as a formula when it starts with one of these (OWASP, "CSV Injection"); a
# leading quote is escaped too, so that `from_csv_cell` gives back exactly the text that was written.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(text: str) -> str:
    """A text as a CSV cell that no spreadsheet runs as a formula: a leading quote where it starts with one of
    `FORMULA_STARTS` (shown as text by Excel, LibreOffice and Google Sheets)."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def from_csv_cell(cell: str) -> str:
    """The text `csv_cell` wrote."""
    return cell[1:] if cell.startswith("'") else cell


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

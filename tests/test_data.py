"""Parsing, deduplication, balancing and splitting of the SMS Spam Collection (no network, no model)."""

import hashlib

import numpy as np
import pytest
from datasets import ClassLabel

from hf_spam.data.collection import FEATURES, SHA256, DataFormatError, parse_data_file, sha256_of
from hf_spam.data.splits import SPLITS, load_sms_spam

# Known facts about the canonical file shipped with hf_spam.
ROWS, HAM, SPAM, DUPLICATES = 5574, 4827, 747, 403


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return load_sms_spam(cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def no_dedupe_run(tmp_path_factory):
    return load_sms_spam(cache_dir=str(tmp_path_factory.mktemp("cache")), dedupe_texts=False)


@pytest.fixture(scope="module")
def unbalanced_run(tmp_path_factory):
    return load_sms_spam(cache_dir=str(tmp_path_factory.mktemp("cache")), balance="none")


def spam_fraction(labels) -> float:
    return float(np.mean(labels))


# --------------------------------------------------------------------------------------------
# The canonical file
# --------------------------------------------------------------------------------------------


def test_bundled_file_has_the_known_hash_and_label_counts(canonical_file):
    assert sha256_of(canonical_file) == SHA256 == hashlib.sha256(canonical_file.read_bytes()).hexdigest()
    texts, labels, skipped = parse_data_file(canonical_file)
    assert skipped == {}
    assert len(texts) == len(labels) == ROWS
    assert labels.count(0) == HAM
    assert labels.count(1) == SPAM


def test_report_counts_rows_and_labels_before_dedupe(default_run):
    _, report = default_run
    assert report.source == "bundled"
    assert report.sha256 == SHA256
    assert report.rows == ROWS
    assert report.labels == {"ham": HAM, "spam": SPAM}
    assert report.skipped == {}


def test_dedupe_removes_every_repeated_text_and_keeps_first_occurrences(canonical_file, default_run):
    texts, _, _ = parse_data_file(canonical_file)
    splits, report = default_run
    assert report.duplicates_removed == DUPLICATES == len(texts) - len(set(texts))
    kept = [text for name in SPLITS for text in splits[name]["text"]]
    assert len(kept) == len(set(kept))


def test_undersampled_dedupe_splits_are_balanced_with_known_sizes(default_run):
    splits, report = default_run
    assert report.splits == {"train": 914, "validation": 130, "test": 262}
    for name in SPLITS:
        assert len(splits[name]) == report.splits[name]
        counts = report.split_labels[name]
        assert counts["ham"] == counts["spam"]
        assert counts["ham"] + counts["spam"] == report.splits[name]
        assert counts["spam"] == sum(splits[name]["label"])


def test_no_dedupe_gives_the_books_split_sizes(no_dedupe_run):
    splits, report = no_dedupe_run
    assert report.duplicates_removed == 0
    assert report.splits == {"train": 1045, "validation": 149, "test": 300}
    assert sum(report.splits.values()) == 2 * SPAM
    for name in SPLITS:
        counts = report.split_labels[name]
        assert counts["ham"] + counts["spam"] == len(splits[name])
        assert abs(counts["ham"] - counts["spam"]) <= 1


def test_balance_none_keeps_every_row_after_dedupe_and_stratifies(unbalanced_run):
    splits, report = unbalanced_run
    assert report.balance == "none"
    assert sum(report.splits.values()) == ROWS - DUPLICATES == 5171
    all_labels = [label for name in SPLITS for label in splits[name]["label"]]
    overall = spam_fraction(all_labels)
    for name in SPLITS:
        counts = report.split_labels[name]
        assert counts["ham"] + counts["spam"] == report.splits[name] == len(splits[name])
        assert counts["spam"] == sum(splits[name]["label"])
        assert spam_fraction(splits[name]["label"]) == pytest.approx(overall, abs=0.01)


def test_split_sizes_follow_the_ratios(unbalanced_run):
    _, report = unbalanced_run
    n = sum(report.splits.values())
    assert report.splits["train"] == int(n * 0.7)
    assert report.splits["validation"] == int(n * 0.1)


@pytest.mark.parametrize("run", ["default_run", "unbalanced_run"])
def test_no_text_appears_in_two_splits(run, request):
    splits, _ = request.getfixturevalue(run)
    sets = {name: set(splits[name]["text"]) for name in SPLITS}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]


def test_same_seed_gives_identical_splits_and_another_seed_does_not(tmp_path, default_run):
    first, _ = default_run
    again, _ = load_sms_spam(cache_dir=str(tmp_path), seed=123)
    other, _ = load_sms_spam(cache_dir=str(tmp_path), seed=7)
    for name in SPLITS:
        assert again[name].to_dict() == first[name].to_dict()
    assert any(other[name]["text"] != first[name]["text"] for name in SPLITS)


def test_labels_are_a_ham_spam_class_label(default_run):
    splits, _ = default_run
    for name in SPLITS:
        assert splits[name].features == FEATURES
        assert splits[name].features["label"] == ClassLabel(names=["ham", "spam"])
        assert splits[name].features["label"].int2str(1) == "spam"


def test_unknown_balance_mode_and_bad_ratios_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="balance"):
        load_sms_spam(cache_dir=str(tmp_path), balance="oversample")
    with pytest.raises(ValueError, match="split_ratios"):
        load_sms_spam(cache_dir=str(tmp_path), split_ratios=(0.7, 0.2, 0.2))


# --------------------------------------------------------------------------------------------
# Malformed lines
# --------------------------------------------------------------------------------------------

GOOD_LINES = [b"ham\tOk lar... Joking wif u oni...", b"spam\tFree entry in 2 a wkly comp to win"]
# kind -> (line, a phrase of the reason)
BAD_LINES = {
    "no_tab": (b"ham Ok this line has no tab", "no tab"),
    "unknown_label": (b"eggs\tsome text", "unknown label 'eggs'"),
    "empty_text": (b"spam\t   ", "empty text"),
    "invalid_utf8": (b"ham\tcaf\xe9 au lait", "invalid UTF-8 at byte 7"),
}


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_malformed_line_raises_with_path_line_and_reason(tmp_path, kind):
    line, reason = BAD_LINES[kind]
    path = write_lines(tmp_path / "data.tsv", [*GOOD_LINES, line, GOOD_LINES[0]])
    with pytest.raises(DataFormatError) as info:
        parse_data_file(path)
    err = info.value
    assert err.line == 3
    assert err.path == str(path)
    assert str(err).startswith(f"{path}:3: ")
    assert reason in str(err)


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_strict_load_reports_the_malformed_line(tmp_path, kind):
    line, reason = BAD_LINES[kind]
    path = write_lines(tmp_path / "data.tsv", [GOOD_LINES[1], line])
    with pytest.raises(DataFormatError, match=rf"^{path}:2: .*{reason}"):
        load_sms_spam(data_file=str(path), cache_dir=str(tmp_path))


def test_lenient_mode_skips_malformed_lines_and_counts_them_by_reason(tmp_path):
    lines = [
        GOOD_LINES[0],
        BAD_LINES["no_tab"][0],
        GOOD_LINES[1],
        BAD_LINES["unknown_label"][0],
        BAD_LINES["empty_text"][0],
        BAD_LINES["invalid_utf8"][0],
        BAD_LINES["no_tab"][0],
    ]
    path = write_lines(tmp_path / "data.tsv", lines)
    texts, labels, skipped = parse_data_file(path, lenient=True)
    assert texts == ["Ok lar... Joking wif u oni...", "Free entry in 2 a wkly comp to win"]
    assert labels == [0, 1]
    assert skipped == {"no_tab": 2, "unknown_label": 1, "empty_text": 1, "invalid_utf8": 1}


def test_lenient_load_reports_skipped_lines(tmp_path):
    good = [b"ham\tham message %d" % i for i in range(20)] + [b"spam\tspam message %d" % i for i in range(20)]
    path = write_lines(tmp_path / "data.tsv", [*good, BAD_LINES["empty_text"][0], BAD_LINES["no_tab"][0]])
    splits, report = load_sms_spam(data_file=str(path), cache_dir=str(tmp_path), lenient=True)
    assert report.source == "data_file"
    assert report.rows == 40
    assert report.skipped == {"empty_text": 1, "no_tab": 1}
    assert sum(len(splits[name]) for name in SPLITS) == 40


def test_a_file_with_only_malformed_lines_fails_even_when_lenient(tmp_path):
    path = write_lines(tmp_path / "data.tsv", [BAD_LINES["no_tab"][0], BAD_LINES["empty_text"][0]])
    with pytest.raises(DataFormatError, match="no valid rows"):
        parse_data_file(path, lenient=True)


def test_quotes_are_kept_verbatim_and_do_not_join_lines(tmp_path):
    lines = [
        b'ham\t"Hello," she said, "see you at 5"',
        b'spam\t"Unterminated quote: WIN a prize',
        b'ham\tit\'s "fine"',
        b'spam\t""',
    ]
    path = write_lines(tmp_path / "data.tsv", lines)
    texts, labels, _ = parse_data_file(path)
    assert texts == ['"Hello," she said, "see you at 5"', '"Unterminated quote: WIN a prize', 'it\'s "fine"', '""']
    assert labels == [0, 1, 0, 1]


def test_only_the_first_tab_separates_label_from_text(tmp_path):
    path = write_lines(tmp_path / "data.tsv", [b"ham\tcol one\tcol two\t"])
    texts, labels, _ = parse_data_file(path)
    assert texts == ["col one\tcol two\t"]
    assert labels == [0]


def test_crlf_line_endings_and_a_missing_final_newline_parse_like_lf(tmp_path):
    lf = write_lines(tmp_path / "lf.tsv", GOOD_LINES)
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes(b"\r\n".join(GOOD_LINES))
    assert parse_data_file(crlf) == parse_data_file(lf)


def test_dedupe_counts_duplicates_whose_label_disagrees(tmp_path):
    good = [b"ham\tham message %d" % i for i in range(20)] + [b"spam\tspam message %d" % i for i in range(20)]
    repeats = [b"ham\tham message 0", b"spam\tham message 1", b"ham\tspam message 2"]
    path = write_lines(tmp_path / "data.tsv", good + repeats)
    splits, report = load_sms_spam(data_file=str(path), cache_dir=str(tmp_path), balance="none")
    assert report.rows == 43
    assert report.duplicates_removed == 3
    assert report.conflicting_duplicates == 2
    rows = {
        text: label for name in SPLITS for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True)
    }
    assert rows["ham message 1"] == 0  # the first occurrence wins
    assert rows["spam message 2"] == 1


def test_held_out_is_every_distinct_message_balancing_left_out(canonical_file):
    splits, report = load_sms_spam(data_file=str(canonical_file), keep_held_out=True)
    held_out = splits["held_out"]
    assert report.held_out == {"ham": 3865, "spam": 0} and len(held_out) == 3865
    used = {t for name in ("train", "validation", "test") for t in splits[name]["text"]}
    assert not used & set(held_out["text"])
    assert len(used) + len(set(held_out["text"])) == 5574 - 403  # every distinct message, once
    assert report.spam_rate == 653 / 5171
    assert "held_out" not in load_sms_spam(data_file=str(canonical_file))[0]


def test_data_of_one_label_or_a_split_without_one_is_a_clear_error(tmp_path):
    from hf_spam.data.splits import SplitError

    one = tmp_path / "all_ham.txt"
    one.write_text("".join(f"ham\tmessage number {i}\n" for i in range(50)))
    with pytest.raises(SplitError, match="every message has the same label \\(ham\\)"):
        load_sms_spam(data_file=str(one))
    few = tmp_path / "few.txt"
    few.write_text("".join(f"{'spam' if i < 3 else 'ham'}\tmessage number {i}\n" for i in range(40)))
    with pytest.raises(SplitError, match="the validation split holds no spam messages"):
        load_sms_spam(data_file=str(few), balance="none", split_ratios=(0.9, 0.05, 0.05))

"""Users' own data: every file format, columns and labels found or refused, rows checked, splits given."""

import json

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from hf_spam.data.sources import SourceError, read_user_data
from hf_spam.data.splits import load_data

from .conftest import ROOT

HAM = ["see you at lunch", "ok thanks", "running late, sorry", "call me when you land", "happy birthday!"]
SPAM = [
    "WIN a prize now call 0900",
    "Free entry txt WIN to 8000",
    "URGENT your account",
    "claim 1000 cash",
    "txt STOP",
]


def _rows(n=40, spam="spam", ham="ham"):
    return [(f"{(SPAM if i % 2 else HAM)[i % 5]} {i}", spam if i % 2 else ham) for i in range(n)]


def _write(path, rows, text="body", label="is_spam"):
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        lines = [f"{text}{sep}{label}"] + [f'"{t}"{sep}{lab}' for t, lab in rows]
        path.write_text("\n".join(lines) + "\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({text: t, label: lab}) + "\n" for t, lab in rows))
    elif suffix == ".json":
        path.write_text(json.dumps([{text: t, label: lab} for t, lab in rows]))
    elif suffix == ".parquet":
        Dataset.from_dict({text: [t for t, _ in rows], label: [lab for _, lab in rows]}).to_parquet(str(path))
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_every_format_reads_with_columns_and_labels_found(tmp_path, suffix):
    path = _write(tmp_path / f"mail{suffix}", _rows())
    rows = read_user_data(train_file=path)
    assert (rows.text_column, rows.label_column) == ("body", "is_spam")
    texts, labels = rows.splits["train"]
    assert len(texts) == 40 and labels == [i % 2 for i in range(40)]
    assert rows.label_names == {"ham": "ham", "spam": "spam"}


@pytest.mark.parametrize(
    "values, spam_label, expected",
    [
        ((" Spam ", "HAM"), None, {"ham": "ham", "spam": "spam"}),  # case and spaces normalized
        ((1, 0), None, {"0": "ham", "1": "spam"}),
        ((True, False), None, {"false": "ham", "true": "spam"}),
        (("junk", "legit"), None, {"junk": "spam", "legit": "ham"}),
        (("bad", "good"), "bad", {"bad": "spam", "good": "ham"}),
    ],
)
def test_labels_come_from_the_data(tmp_path, values, spam_label, expected):
    path = _write(tmp_path / "mail.jsonl", _rows(spam=values[0], ham=values[1]))
    rows = read_user_data(train_file=path, spam_label=spam_label)
    assert rows.label_names == expected
    assert rows.splits["train"][1] == [i % 2 for i in range(40)]


def test_a_class_label_column_is_read_by_its_names(tmp_path):
    features = Features({"sms": Value("string"), "label": ClassLabel(names=["ham", "spam"])})
    data = Dataset.from_dict({"sms": [t for t, _ in _rows()], "label": [i % 2 for i in range(40)]}, features=features)
    data.to_parquet(str(tmp_path / "sms.parquet"))
    rows = read_user_data(train_file=str(tmp_path / "sms.parquet"))
    assert rows.text_column == "sms" and rows.splits["train"][1] == [i % 2 for i in range(40)]


def test_labels_that_do_not_say_which_is_spam_need_spam_label(tmp_path):
    path = _write(tmp_path / "mail.csv", _rows(spam="bad", ham="good"))
    with pytest.raises(SourceError, match="which of the labels bad, good is spam.*spam_label"):
        read_user_data(train_file=path)
    with pytest.raises(SourceError, match="spam_label 'evil' is not one of the labels bad, good"):
        read_user_data(train_file=path, spam_label="evil")


def test_ambiguous_or_missing_columns_are_errors_that_list_the_columns(tmp_path):
    path = tmp_path / "mail.jsonl"
    path.write_text(json.dumps({"text": "hi", "body": "hi", "label": "ham"}) + "\n")
    with pytest.raises(SourceError, match=r"set text_column: several candidates \(text, body\).*text, body, label"):
        read_user_data(train_file=str(path))
    with pytest.raises(SourceError, match="label_column 'kind' is not a column"):
        read_user_data(train_file=str(path), text_column="text", label_column="kind")


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"body": "hello", "is_spam": None}, "row 3: missing is_spam"),
        ({"body": "   ", "is_spam": "ham"}, "row 3: empty body"),
        ({"body": 42, "is_spam": "ham"}, "row 3: body is int, not text"),
    ],
)
def test_a_bad_row_names_the_file_and_row_or_is_skipped_when_lenient(tmp_path, bad_row, message):
    path = tmp_path / "mail.jsonl"
    good = [{"body": t, "is_spam": lab} for t, lab in _rows(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good[:2], bad_row, *good[2:]]))
    with pytest.raises(SourceError, match=f"{path}: {message}"):
        read_user_data(train_file=str(path))
    rows = read_user_data(train_file=str(path), lenient=True)
    assert len(rows.splits["train"][0]) == 4 and sum(rows.skipped.values()) == 1


def test_an_unknown_label_in_the_test_file_names_that_file(tmp_path):
    train = _write(tmp_path / "train.csv", _rows())
    test = _write(tmp_path / "test.csv", [*_rows(4), ("what is this", "maybe")])
    with pytest.raises(SourceError, match=r"test.csv: row 5: unknown is_spam 'maybe' \(labels: ham, spam\)"):
        read_user_data(train_file=train, test_file=test)


def test_one_label_is_refused_and_spam_label_needs_two(tmp_path):
    one = _write(tmp_path / "one.csv", [(f"hello {i}", "ham") for i in range(10)])
    with pytest.raises(SourceError, match="has 1 label.*needs two or more"):
        read_user_data(train_file=one)
    three = _write(tmp_path / "three.csv", [(f"m {i}", ["a", "b", "c"][i % 3]) for i in range(12)])
    with pytest.raises(SourceError, match="spam_label names the positive one of two labels.*has 3 \\(a, b, c\\)"):
        read_user_data(train_file=three, spam_label="a")


@pytest.mark.parametrize(
    "values, classes",
    [
        ((" Promo ", "personal", "PHISHING"), ["personal", "phishing", "promo"]),  # normalized, then sorted
        ((10, 2, 1), ["1", "2", "10"]),  # integers in numeric order, not as text
    ],
)
def test_more_than_two_labels_are_classes_named_by_the_data(tmp_path, values, classes):
    path = _write(tmp_path / "mail.jsonl", [(f"message {i}", values[i % 3]) for i in range(30)], label="category")
    rows = read_user_data(train_file=path)
    assert rows.classes == classes
    texts, labels = rows.splits["train"]
    assert [rows.classes[label] for label in labels[:3]] == [str(v).strip().lower() for v in values]


def test_a_class_label_keeps_its_own_order_and_only_the_classes_present(tmp_path):
    features = Features({"text": Value("string"), "label": ClassLabel(names=["sport", "world", "unused", "tech"])})
    data = Dataset.from_dict({"text": [f"news {i}" for i in range(12)], "label": [3, 0, 1] * 4}, features=features)
    data.to_parquet(str(tmp_path / "train.parquet"))
    # Parquet keeps the ClassLabel in its schema metadata, so the file reads back with it.
    rows = read_user_data(train_file=str(tmp_path / "train.parquet"))
    assert rows.classes == ["sport", "world", "tech"]
    assert rows.splits["train"][1][:3] == [2, 0, 1]


def test_multi_class_data_is_balanced_to_the_smallest_class_and_split_by_class(tmp_path):
    rows = [(f"promo {i}", "promo") for i in range(30)] + [(f"personal {i}", "personal") for i in range(60)]
    rows += [(f"phishing {i}", "phishing") for i in range(20)]
    splits, report = load_data(train_file=_write(tmp_path / "m.csv", rows, label="category"), keep_held_out=True)
    assert report.classes == ["personal", "phishing", "promo"] and not report.is_binary
    assert report.labels == {"personal": 60, "phishing": 20, "promo": 30}
    assert report.splits == {"train": 42, "validation": 6, "test": 12}
    assert report.split_labels["test"] == {"personal": 4, "phishing": 4, "promo": 4}
    assert report.held_out == {"personal": 40, "phishing": 0, "promo": 10}
    assert splits["train"].features["label"].names == report.classes
    assert len(splits["held_out"]) == 50


def test_unreadable_or_unknown_files_are_one_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        read_user_data(train_file=str(tmp_path / "nope.csv"))
    (tmp_path / "mail.xlsx").write_text("x")
    with pytest.raises(SourceError, match="unknown format '.xlsx'"):
        read_user_data(train_file=str(tmp_path / "mail.xlsx"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SourceError, match="broken.json: cannot be read as json"):
        read_user_data(train_file=str(tmp_path / "broken.json"))


def test_given_splits_are_kept_and_a_text_in_two_of_them_leaves_the_later(tmp_path):
    rows = _rows(60)
    train = _write(tmp_path / "train.csv", rows[:40])
    validation = _write(tmp_path / "validation.csv", rows[40:50])
    test = _write(tmp_path / "test.csv", [*rows[50:], rows[0], rows[1]])  # two training texts again
    splits, report = load_data(train_file=train, validation_file=validation, test_file=test)
    assert report.splits == {"train": 40, "validation": 10, "test": 10}
    assert report.cross_split_duplicates == {"test": 2}
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


def test_a_missing_validation_split_is_drawn_from_train(tmp_path):
    rows = _rows(100)
    splits, report = load_data(
        train_file=_write(tmp_path / "t.csv", rows[:80]), test_file=_write(tmp_path / "s.csv", rows[80:])
    )
    assert report.splits["test"] == 20 and report.splits["validation"] > 0
    assert report.splits["train"] + report.splits["validation"] == 80


def test_a_local_dataset_directory_loads_like_a_hub_dataset(tmp_path):
    rows = _rows(60)
    _write(tmp_path / "train.csv", rows[:50], text="sms", label="label")
    _write(tmp_path / "test.csv", rows[50:], text="sms", label="label")
    splits, report = load_data(dataset_name=str(tmp_path))
    assert report.source == f"hub:{tmp_path}" and report.splits["test"] == 10


def test_the_tiny_recipe_trains_from_a_csv_of_ones_own(tmp_path):
    from hf_spam.training.run import main

    rows = [(f"{t} {i}", "true" if s else "false") for i in range(120) for t, s in [(HAM[i % 5], 0), (SPAM[i % 5], 1)]]
    path = _write(tmp_path / "mail.csv", rows)
    summary = main(
        ["--config", str(ROOT / "configs" / "tiny.yaml"), "--train_file", path, "--output_dir", str(tmp_path / "out"),
         "--num_train_epochs", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    )  # fmt: skip
    assert summary["data"]["columns"] == {"text": "body", "label": "is_spam"}
    assert summary["data"]["splits"] == {"train": 168, "validation": 24, "test": 48}
    assert summary["metrics"]["test"]["examples"] == 48
    card = (tmp_path / "out" / "README.md").read_text()
    assert "text from\ncolumn `body`, label from column `is_spam` (`false` = ham, `true` = spam)" in card


def test_the_tiny_recipe_trains_three_classes_with_labels_from_the_data(tmp_path):
    from transformers import pipeline

    from hf_spam.training.run import main, run

    kinds = {"personal": HAM, "promo": SPAM, "phishing": ["verify your bank login", "your parcel is held, pay fee"]}
    rows = [(f"{texts[i % len(texts)]} {i}", kind) for i in range(80) for kind, texts in kinds.items()]
    path = _write(tmp_path / "mail.csv", rows, label="category")
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--train_file", path, "--num_train_epochs", "1",
            "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
    assert run([*args, "--output_dir", str(tmp_path / "refused"), "--max_fpr", "0.01"]) == 2
    assert not (tmp_path / "refused" / "config.json").exists()

    out = tmp_path / "out"
    summary = main([*args, "--output_dir", str(out), "--class_weights", "balanced"])
    test = summary["metrics"]["test"]
    assert list(test["per_class"]) == ["personal", "phishing", "promo"]
    assert len(test["confusion_matrix"]) == 3 and sum(map(sum, test["confusion_matrix"])) == test["examples"] == 48
    assert "natural_rate" not in summary["metrics"]  # a spam rate means nothing for three classes
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "personal", "1": "phishing", "2": "promo"}
    classify = pipeline("text-classification", model=str(out))
    assert classify("verify your bank login now")[0]["label"] in kinds
    card = (out / "README.md").read_text()
    assert "into 3 classes: **personal**, **phishing**, **promo**" in card
    assert "| Class | Precision | Recall | F1 | Messages |" in card and "| **True phishing** |" in card
    from hf_spam.deploy.classifier import load_classifier

    with pytest.raises(ValueError, match="needs a ham/spam model; this one's labels are personal, phishing, promo"):
        load_classifier(str(out), threshold=0.5)


@pytest.mark.parametrize(
    "values, message",
    [
        ([0, 1, -1, 1], "row 3: missing label \\(-1\\)"),  # ClassLabel's "no label" is not names[-1]
        ([0, 1, 5, 1], "row 3: label id 5 is not one of the 2 ClassLabel names"),
    ],
)
def test_a_class_label_with_no_label_or_an_unknown_id_is_a_row_error(tmp_path, values, message):
    import pyarrow.parquet as pq

    # datasets itself refuses to write an id past the names, but another tool's Parquet file can hold one.
    features = Features({"sms": Value("string"), "label": ClassLabel(names=["ham", "spam", "x", "y", "z", "w"])})
    values = (values * 10)[:40]
    data = Dataset.from_dict({"sms": [t for t, _ in _rows()], "label": values}, features=features)
    data.to_parquet(str(tmp_path / "sms.parquet"))
    table = pq.read_table(tmp_path / "sms.parquet")
    meta = {k: v for k, v in table.schema.metadata.items()}
    meta[b"huggingface"] = meta[b"huggingface"].replace(b'"ham", "spam", "x", "y", "z", "w"', b'"ham", "spam"')
    meta[b"huggingface"] = meta[b"huggingface"].replace(b'"ham","spam","x","y","z","w"', b'"ham","spam"')
    assert b'"w"' not in meta[b"huggingface"]
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "sms.parquet")
    with pytest.raises(SourceError, match=message):
        read_user_data(train_file=str(tmp_path / "sms.parquet"))
    rows = read_user_data(train_file=str(tmp_path / "sms.parquet"), lenient=True)
    assert len(rows.splits["train"][1]) == 30 and rows.skipped in ({"missing_label": 10}, {"unknown_label": 10})
    assert rows.splits["train"][1] == [v for v in values if v in (0, 1)]  # nothing invented, nothing flipped


@pytest.mark.parametrize("gap", ["", "nan"])
def test_a_missing_label_in_a_csv_is_a_row_error_not_a_class(tmp_path, gap):
    rows = _rows(8, spam="1", ham="0")
    rows[2] = (rows[2][0], gap)
    path = _write(tmp_path / "mail.csv", rows)
    with pytest.raises(SourceError, match="row 3: missing is_spam"):
        read_user_data(train_file=path)
    assert read_user_data(train_file=path, lenient=True).skipped == {"missing_label": 1}


def test_integer_labels_other_than_0_and_1_need_spam_label(tmp_path):
    path = _write(tmp_path / "mail.csv", _rows(spam="2", ham="1"))
    with pytest.raises(SourceError, match="which of the labels 1, 2 is spam\\? Set spam_label"):
        read_user_data(train_file=path)
    rows = read_user_data(train_file=path, spam_label="2")
    assert rows.splits["train"][1] == [i % 2 for i in range(40)]

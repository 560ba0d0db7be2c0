"""A model trained on one's own data is described as what it is: its own file (by name, never a local path),
the classes balancing cut, its own labels and tags, examples that fit its labels."""

import csv
import json

from hf_spam.data.collection import parse_data_file
from hf_spam.training.run import run as train_run

from .conftest import ROOT

TINY = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1", "--label_column", "verdict"]


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["message", "verdict"])
        writer.writerows(rows)


def test_a_three_class_model_of_ones_own_data_is_described_truly(tmp_path, canonical_file, capsys):
    texts, labels, _ = parse_data_file(canonical_file)
    ham = list(dict.fromkeys(t for t, label in zip(texts, labels, strict=True) if label == 0))
    spam = list(dict.fromkeys(t for t, label in zip(texts, labels, strict=True) if label == 1))
    rows = [(t, "ham") for t in ham[:90]] + [(t, "promo") for t in spam[:60]] + [(t, "phishing") for t in spam[60:120]]
    data = tmp_path / "three.csv"
    write_rows(data, rows)
    out = tmp_path / "model"
    assert train_run([*TINY, "--train_file", str(data), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "SMS Spam Collection" not in card and "almeida2011sms" not in card and "SMS data" not in card
    assert "three.csv" in card and str(tmp_path) not in card
    assert "undersampling ham (leaving out 30) to the size of the smallest class" in card
    front = card.split("---")[1]
    assert "spam-detection" not in front and "- sms" not in front
    assert "You are a winner" not in card and "You are a winner" not in printed
    assert printed.splitlines()[-2].split()[0] in {"ham", "promo", "phishing"}  # a test message of its own
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["classes"] == ["ham", "phishing", "promo"]
    assert not list(out.glob("*pr_roc.png"))  # spam-vs-ham rankings mean nothing for three classes
    # What `hf-spam serve`'s page offers to click: a test message of each class, from this data.
    by_text = dict(rows)
    assert sorted(by_text[text] for text in metrics["examples"]) == ["ham", "phishing", "promo"]


def test_a_binary_model_whose_spam_was_cut_says_so(tmp_path, canonical_file, capsys):
    texts, labels, _ = parse_data_file(canonical_file)
    ham = list(dict.fromkeys(t for t, label in zip(texts, labels, strict=True) if label == 0))
    spam = list(dict.fromkeys(t for t, label in zip(texts, labels, strict=True) if label == 1))
    data = tmp_path / "binary.csv"
    write_rows(data, [(t, "ok") for t in ham[:80]] + [(t, "junk") for t in spam[:160]])
    out = tmp_path / "model"
    assert train_run([*TINY, "--train_file", str(data), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "undersampling spam (leaving out 80) to the size of the smallest class" in card
    assert "undersampling ham" not in card
    # Its rankings drawn and embedded: the test split, and every message it never saw (test + the held-out spam).
    for stem in ("test", "held_out"):
        for picture in (f"{stem}_pr_roc.png", f"{stem}_scores.png"):
            assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({picture})" in card
    assert "the test split + the held-out messages (" in card
    line = next(line for line in printed.splitlines() if line.startswith("at the data's spam rate"))
    assert "(the test split and the 80 messages balancing left out)" in line
    assert "unseen ham (test +" not in line

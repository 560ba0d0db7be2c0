"""What a run writes must not attack or lock out its reader: no CSV cell a spreadsheet runs as a formula, and
files readable by another user (a server in a container) as `open()` would make them."""

import csv
import os
import stat

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value
from transformers import GPT2Config

from hf_spam.data.collection import csv_cell, from_csv_cell, write_atomically
from hf_spam.training.evaluate import write_predictions

HOSTILE = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "-2+3"]
HOSTILE += ["\t=1+1", "\r=1+1", "'quoted already", "plain text", ""]


def test_csv_cells_never_start_a_formula_and_read_back_exactly():
    for text in HOSTILE:
        cell = csv_cell(text)
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert from_csv_cell(cell) == text


def test_test_predictions_escape_hostile_texts_and_labels(tmp_path):
    config = GPT2Config(id2label={0: "ham", 1: "=spam"}, label2id={"ham": 0, "=spam": 1})
    features = Features({"text": Value("string"), "label": ClassLabel(names=["ham", "=spam"])})
    split = Dataset.from_dict({"text": HOSTILE, "label": [1] * len(HOSTILE)}, features=features)
    path = tmp_path / "test_predictions.csv"
    write_predictions(path, split, np.full((len(HOSTILE), 2), 0.5, dtype=np.float32), config)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    for row, text in zip(rows, HOSTILE, strict=True):
        assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row)
        assert from_csv_cell(row[0]) == text and row[1] == "'=spam"


def test_files_written_atomically_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomically(b"{}\n", tmp_path / "metrics.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644

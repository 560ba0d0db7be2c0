"""Input that is not what it seems: a file or stdin in another encoding is named as such, one line, exit 2;
a line of megabytes is cut to what the model can read before tokenizing, with the same score."""

import io
import re
import sys

import numpy as np
import pytest

from hf_spam.cli import main as cli_main
from hf_spam.data.sources import SourceError, read_user_data
from hf_spam.deploy.classifier import classifier
from hf_spam.deploy.spam_classifier import character_cap

ROWS = "text,label\nhello there,ham\nwin cash now,spam\ncafé at 5?,ham\n"


@pytest.mark.parametrize(
    "encoding, words",
    [
        ("utf-16", "the file is UTF-16 (it starts with a byte-order mark); save it as UTF-8"),
        ("utf-16-le", "the file holds NUL bytes, as UTF-16 without a byte-order mark does; save it as UTF-8"),
        (
            "cp1252",
            "line 4: not UTF-8 (byte 48); it looks like a legacy encoding such as cp1252 or latin-1: save it as UTF-8",
        ),
    ],
)
def test_a_csv_in_another_encoding_is_named(tmp_path, encoding, words):
    path = tmp_path / "mine.csv"
    path.write_bytes(ROWS.encode(encoding))
    with pytest.raises(SourceError, match=re.escape(f"{path}: {words}")):
        read_user_data(train_file=str(path))
    assert cli_main(["data", "--train_file", str(path)]) == 2


def test_utf16_on_predicts_stdin_is_refused_before_anything_is_classified(
    tmp_path, tiny_model, tokenizer, monkeypatch, capsys
):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO("hello\nwin cash now\n".encode("utf-16"))))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert cli_main(["predict", "--model", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "stdin is UTF-16" in captured.err.strip().splitlines()[-1]


def test_a_huge_line_is_cut_before_tokenizing_and_scores_the_same(tiny_model, tokenizer, monkeypatch):
    predict = classifier(tiny_model, tokenizer)
    cap = character_cap(tokenizer, 1024)
    text = "WINNER!! claim your prize now " * 20_000  # 600,000 characters, far past 1,024 tokens
    assert len(text) > cap
    seen = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(
        type(tokenizer), "__call__", lambda self, texts, **kw: seen.append(texts) or original(self, texts, **kw)
    )
    got = predict.predict_proba([text])
    assert max(len(t) for batch in seen for t in batch) <= cap
    monkeypatch.undo()
    full = tokenizer([text], truncation=True, max_length=1024)["input_ids"][0]
    cut = tokenizer([text[:cap]], truncation=True, max_length=1024)["input_ids"][0]
    assert cut == full
    import torch

    from hf_spam.models.pooled_forward import pooled_logits

    with torch.inference_mode():
        ids = torch.tensor([full])
        expected = pooled_logits(tiny_model, ids, torch.ones_like(ids)).softmax(-1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)

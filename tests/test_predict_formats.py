"""`hf-spam predict --input_format csv|jsonl --text_column --id_column`: each answer carries its id and
place, bad records are answered with an error, and a CSV without the column is refused in one line."""

import io
import json
import sys

import pytest

from hf_spam.cli import main
from hf_spam.deploy.classifier import load_classifier

from .test_serve import saved  # noqa: F401  (a fixture)

TEXTS = ["WINNER!! Claim your prize now", "are we still on for dinner?", "123"]


def predict(monkeypatch, capsys, data: bytes, *flags: str, model: str) -> tuple[int, list[dict], str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code = main(["predict", "--model", model, *flags])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_csv_answers_carry_their_ids_and_scores_equal_the_classifiers(saved, monkeypatch, capsys):  # noqa: F811
    data = "msg,ref\n" + "".join(f'"{t}",r{i}\n' for i, t in enumerate(TEXTS)) + '"",r3\n'
    code, answers, _ = predict(monkeypatch, capsys, data.encode(), "--input_format", "csv", "--text_column", "msg",
                               "--id_column", "ref", model=saved)  # fmt: skip
    expected = load_classifier(saved)(TEXTS)
    assert code == 1  # the empty row
    assert [a["id"] for a in answers] == ["r0", "r1", "r2", "r3"] and [a["row"] for a in answers] == [1, 2, 3, 4]
    for answer, want in zip(answers[:3], expected, strict=True):
        assert answer["label"] == want["label"] and answer["score"] == pytest.approx(want["score"], abs=1e-6)
    assert answers[3] == {"row": 4, "id": "r3", "error": "empty text"}


def test_jsonl_answers_name_the_line_and_refuse_what_is_not_a_text(saved, monkeypatch, capsys):  # noqa: F811
    lines = [
        json.dumps({"text": TEXTS[0], "id": 7}),
        "{broken",
        json.dumps({"text": 5, "id": 8}),
        json.dumps({"id": 9}),
    ]
    code, answers, _ = predict(monkeypatch, capsys, ("\n".join(lines) + "\n").encode(), "--input_format", "jsonl",
                               "--id_column", "id", model=saved)  # fmt: skip
    assert code == 1
    assert answers[0]["id"] == 7 and answers[0]["line"] == 1 and answers[0]["label"] in ("ham", "spam")
    assert answers[1]["line"] == 2 and answers[1]["error"].startswith("not JSON")
    assert answers[2] == {"line": 3, "id": 8, "error": "field 'text': expected a text, got int"}
    assert answers[3] == {"line": 4, "id": 9, "error": "field 'text': expected a text, got NoneType"}


def test_a_csv_without_the_text_column_is_one_line_and_exit_2(saved, monkeypatch, capsys):  # noqa: F811
    code, answers, err = predict(monkeypatch, capsys, b"message,id\nhello,1\n", "--input_format", "csv", model=saved)
    assert code == 2 and answers == []
    assert (
        err.strip().splitlines()[-1]
        == "hf-spam predict: stdin (CSV): no column 'text'; its columns are ['message', 'id']"
    )


def test_plain_lines_answer_as_before_without_an_id(saved, monkeypatch, capsys):  # noqa: F811
    code, answers, _ = predict(monkeypatch, capsys, ("\n".join(TEXTS) + "\n").encode(), model=saved)
    assert code == 0 and [set(a) for a in answers] == [{"label", "score"}] * 3

"""Bad input: `hf-spam predict` answers every line (or says what is wrong with it) in bounded memory, and a
data file is either parsed or rejected as `path:line: reason`, never with another exception."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from hf_spam.cli import main as cli_main
from hf_spam.data.collection import DataFormatError, parse_data_file

from ..conftest import ROOT
from .conftest import record_figure

EOT = "<|endoftext|>"
# One line each, in this order (numbers from 1); `--chunk_size 2` puts lines 3 and 4, both empty, in a chunk of
# their own: a chunk with nothing to classify (and 7 and 8 too).
LONG = "Congratulations you won a free prize call now " * 700  # > 5,000 tokens
LINES = {
    "plain": b"Free entry to win cash",
    "long": LONG.encode(),
    "empty": b"",
    "blank": b" \t   ",
    "long prefix": None,  # the first 1024 tokens of LONG, filled in below
    "eot": ("see you " + EOT * 300).encode(),
    "invalid utf-8": b"bad \xff\xfe byte",
    "cr only": b"\r",
    "crlf": b"ends with a carriage return\r",
    "control": b"nul \x00 and bell \x07 inside",
    "surrogate": b"lone surrogate \xed\xa0\x80",
    "unicode": "Gewinn! \u202eerp\u0301 \U0001f4b0\U0001f4b0 \u0644\u0627".encode(),
    "eot at end": f"win cash now{EOT}".encode(),
    "no eot": b"win cash now",
}
ERRORS = {"empty": "empty text", "blank": "empty text", "cr only": "empty text"}
INVALID = {"invalid utf-8": "invalid UTF-8 at byte 4", "surrogate": "invalid UTF-8 at byte 15"}


def predict_process(model_dir, *args: str, stdin=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hf_spam.cli", "predict", "--model", str(model_dir), *args],
        stdin=stdin, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def answered(tiny_model_dir):
    """`hf-spam predict` on LINES through stdin: (answers by name, tokenizer, the completed process)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(LONG)["input_ids"]
    assert len(ids) > 5000
    lines = dict(LINES, **{"long prefix": tokenizer.decode(ids[:1024]).encode()})
    stdin = b"\n".join(lines.values())  # and no newline after the last line
    proc = predict_process(tiny_model_dir, "--chunk_size", "2", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(stdin, timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(lines), result.stderr[-3000:]
    return dict(zip(lines, answers, strict=True)), tokenizer, result


def test_every_line_is_answered_in_order_without_a_traceback(answered):
    answers, _, result = answered
    assert "Traceback" not in result.stderr
    assert result.returncode == 1  # some lines were errors; all the others were still answered
    for number, (name, answer) in enumerate(answers.items(), start=1):
        if name in ERRORS or name in INVALID:
            assert answer["line"] == number, name
        else:
            assert answer["label"] in {"spam", "ham"} and 0.5 <= answer["score"] <= 1.0, (name, answer)


def test_empty_and_whitespace_lines_are_errors_with_their_line_number(answered):
    answers, _, _ = answered
    numbers = {name: i for i, name in enumerate(answers, start=1)}
    for name, error in ERRORS.items():
        assert answers[name] == {"line": numbers[name], "error": error}


def test_invalid_utf8_is_an_error_with_its_line_and_byte(answered):
    answers, _, _ = answered
    numbers = {name: i for i, name in enumerate(answers, start=1)}
    for name, error in INVALID.items():
        assert answers[name] == {"line": numbers[name], "error": error}


def test_a_5000_token_message_is_truncated_to_the_context(answered):
    answers, _, _ = answered
    # Truncated, it is its own first 1024 tokens: the same score as that prefix sent on its own.
    assert answers["long"]["label"] == answers["long prefix"]["label"]
    assert answers["long"]["score"] == pytest.approx(answers["long prefix"]["score"], abs=1e-5)


def test_end_of_text_strings_are_text_not_padding(answered):
    answers, tokenizer, _ = answered
    assert answers["eot"]["label"] in {"spam", "ham"}
    for name in ("eot", "eot at end"):
        assert tokenizer.pad_token_id == 50256 and 50256 not in tokenizer(LINES[name].decode())["input_ids"]
    # Were "<|endoftext|>" the pad id, the model's pooling would skip it and read "now": the same answer.
    assert answers["eot at end"] != answers["no eot"]


def test_invalid_utf8_in_arguments_is_reported_like_stdin(tiny_model_dir, capsys):
    # Arguments arrive as str with undecodable bytes smuggled in as surrogates (PEP 383).
    code = cli_main(["predict", "--model", str(tiny_model_dir), "fine", os.fsdecode(b"bad \xff"), "  "])
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and answers[0]["label"] in {"spam", "ham"}
    assert answers[1:] == [{"line": 2, "error": "invalid UTF-8 at byte 4"}, {"line": 3, "error": "empty text"}]


def test_nothing_to_classify_is_still_answered(tiny_model_dir, capsys):
    # `hf-spam predict --model DIR ""`: every line of the chunk is an error, and the classifier gets no text.
    assert cli_main(["predict", "--model", str(tiny_model_dir), "", " "]) == 1
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert answers == [{"line": 1, "error": "empty text"}, {"line": 2, "error": "empty text"}]


# ---- a long stream, in bounded memory ----


JUNK = {1: b"\xff" + b"x" * 1023, 2: b" " * 1024}  # by line index % 4: cheap to answer, costly to hold


def stream_peak_rss(model_dir, n_lines: int, tmp_path) -> tuple[int, list[str], str, int]:
    """Send `n_lines` lines to one `hf-spam predict` child, half of them 1 kB of junk (invalid UTF-8, blanks);
    return its peak RSS in kB (from wait4: this child's alone), its output lines, stderr and exit code."""
    stdin, stdout, stderr = (tmp_path / f"{n_lines}.{ext}" for ext in ("in", "out", "err"))
    with open(stdin, "wb") as f:
        for i in range(n_lines):
            f.write(
                JUNK.get(
                    i % 4, b"message %d: call 0800 %d now to claim your prize, or see you at %d?" % (i, i, i % 24)
                )
            )
            f.write(b"\n")
    with open(stdin, "rb") as i, open(stdout, "wb") as o, open(stderr, "wb") as e:
        proc = predict_process(model_dir, "--batch_size", "64", stdin=i, stdout=o, stderr=e)
    watchdog = threading.Timer(900, proc.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # not proc.wait(): wait4 also returns the child's own rusage
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss, stdout.read_text().splitlines(), stderr.read_text(), proc.returncode


@pytest.mark.slow
def test_a_100000_line_stream_is_answered_in_order_in_bounded_memory(tiny_model_dir, tmp_path):
    peaks = {}
    for n_lines in (10_000, 100_000):
        peak, out, err, code = stream_peak_rss(tiny_model_dir, n_lines, tmp_path)
        peaks[n_lines] = peak
        assert "Traceback" not in err and code == 1, err[-3000:]
        assert len(out) == n_lines
        for i, line in enumerate(out):
            answer = json.loads(line)
            if i % 4 == 1:
                assert answer == {"line": i + 1, "error": "invalid UTF-8 at byte 0"}
            elif i % 4 == 2:
                assert answer == {"line": i + 1, "error": "empty text"}
            else:
                assert answer["label"] in {"spam", "ham"}, (i, answer)
    record_figure(
        "predict peak RSS",
        f"10,000 lines: {peaks[10_000] / 1024:.0f} MB, 100,000 lines: {peaks[100_000] / 1024:.0f} MB "
        f"(+{(peaks[100_000] - peaks[10_000]) / 1024:.1f} MB)",
    )
    # The 90,000 more lines hold ~45 MB of junk alone: a predict that kept the stream (or its answers) in
    # memory would grow by more than that; one that works chunk by chunk does not grow at all.
    assert peaks[100_000] < peaks[10_000] + 24 * 1024


# ---- data files: parsed, or `path:line: reason` ----


def number_of_lines(content: bytes) -> int:
    """Lines as an editor counts them: a final line without a newline counts; an empty file has one line."""
    return max(content.count(b"\n") + (0 if content.endswith(b"\n") else 1), 1)


VALID_LINE = st.builds(
    lambda label, text: f"{label}\t{text}".encode(),
    st.sampled_from(["ham", "spam"]),
    st.text(min_size=1).filter(lambda t: t.strip() and "\n" not in t),
)
DATA_FILES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(VALID_LINE, VALID_LINE, st.binary(max_size=20)), max_size=12).map(b"\n".join),
    st.lists(VALID_LINE, min_size=1, max_size=12).map(lambda lines: b"\r\n".join(lines) + b"\r\n"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=DATA_FILES, lenient=st.booleans())
def test_a_data_file_parses_or_fails_at_a_line_of_it(tmp_path, content, lenient):
    with tempfile.NamedTemporaryFile(dir=tmp_path, suffix=".tsv", delete=False) as f:
        f.write(content)
    try:
        texts, labels, skipped = parse_data_file(f.name, lenient=lenient)
    except DataFormatError as err:
        assert str(err).startswith(f"{f.name}:{err.line}: ")
        assert 1 <= err.line <= number_of_lines(content), (err.line, content)
    else:
        assert len(texts) == len(labels) > 0 and set(labels) <= {0, 1}
        assert all(text.strip() for text in texts)
        assert len(texts) + sum(skipped.values()) <= number_of_lines(content)
    finally:
        os.unlink(f.name)


def test_an_empty_data_file_is_reported_at_line_1(tmp_path):
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"^{tmp_path / 'empty.tsv'}:1: "):
        parse_data_file(tmp_path / "empty.tsv")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=DATA_FILES)
def test_the_data_command_exits_0_or_2_on_any_file(tmp_path, capsys, content):
    path = tmp_path / "data.tsv"
    path.write_bytes(content)
    code = cli_main(["data", "--data_file", str(path)])
    captured = capsys.readouterr()
    assert code in (0, 2)
    if code == 0:
        assert json.loads(captured.out)["source"] == "data_file"
    else:
        assert captured.err.startswith("hf-spam data: ") and captured.out == ""


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage\n", b"spam\tx\nham\ty\n" * 3],
    ids=["binary", "two-rows-after-dedupe"],
)
def test_the_data_command_never_shows_a_traceback(tmp_path, content):
    path = tmp_path / "data.tsv"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "data", "--data_file", str(path)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith("hf-spam data: ") and result.stdout == ""

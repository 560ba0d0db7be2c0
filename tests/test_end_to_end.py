"""`configs/tiny.yaml` through the real CLI, then the output directory in a plain `pipeline()`."""

import json
import os
import subprocess
import sys

import pytest

from hf_spam.cli import main as cli_main
from hf_spam.deploy.spam_classifier import BOOK_EXAMPLES

from .conftest import ROOT

# Runs in a fresh interpreter in which importing hf_spam fails: the saved directory must stand alone.
PLAIN_PIPELINE = """
import json, sys
sys.modules["hf_spam"] = None
from transformers import pipeline
classifier = pipeline("text-classification", model=sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({
    "top": classifier(texts),
    "all": classifier(texts, top_k=None),
    "one_by_one": [classifier(t)[0] for t in texts],
    "batched": classifier(texts, batch_size=8),
}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    env = {**os.environ, "HF_SPAM_CACHE": str(out / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
         "--output_dir", str(out / "model"), "--num_train_epochs", "2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model", result


def test_training_writes_a_standalone_classifier_and_metrics(trained):
    model_dir, result = trained
    files = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.json"} <= files
    # Weights only as safetensors; the one pickle is Trainer's training_args.bin, which no loader reads.
    assert {name for name in files if name.endswith((".bin", ".pt", ".pth"))} <= {"training_args.bin"}
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["pad_token_id"] == 50256
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["split_special_tokens"] is True
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["data"]["splits"] == {"train": 914, "validation": 130, "test": 262}
    for split, n in metrics["data"]["splits"].items():
        m = metrics["metrics"][split]
        assert m["examples"] == n == sum(map(sum, m["confusion_matrix"]))
        assert 0.0 <= m["f1"] <= 1.0
    # Every distinct message balancing left out is scored too: the false-positive rate at the real spam rate.
    assert metrics["metrics"]["held_out"]["examples"] == metrics["data"]["held_out"]["ham"] == 3865
    natural = metrics["metrics"]["natural_rate"]
    assert natural["unseen_ham"] == 3865 + 131 and natural["spam_rate"] == 653 / 5171
    low, high = natural["false_positive_rate_95ci"]
    assert 0 <= low <= natural["false_positive_rate"] <= high <= 1
    pictures = ("test_pr_roc.png", "test_scores.png", "held_out_pr_roc.png", "held_out_scores.png")
    for plot in ("loss.png", "accuracy.png", "confusion_matrix.png", *pictures):
        assert (model_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    card = (model_dir / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    test = metrics["metrics"]["test"]
    assert f"{test['accuracy']:.4f}" in card or f"{100 * test['accuracy']:.2f}" in card
    assert "test" in result.stdout and "accuracy" in result.stdout
    assert BOOK_EXAMPLES[0] in result.stdout and BOOK_EXAMPLES[1] in result.stdout


def test_plain_pipeline_loads_the_output_and_answers_spam_or_ham(trained):
    model_dir, _ = trained
    texts = [*BOOK_EXAMPLES, "ok", "Call 0800 now to claim your FREE prize!!! " * 30, "see you <|endoftext|>"]
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_PIPELINE, str(model_dir), json.dumps(texts)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert all(p["label"] in {"spam", "ham"} for p in out["top"])
    for scores in out["all"]:
        assert {s["label"] for s in scores} == {"spam", "ham"}
        assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-6)
    for single, batched in zip(out["one_by_one"], out["batched"], strict=True):
        assert single["label"] == batched["label"]
        assert single["score"] == pytest.approx(batched["score"], abs=1e-5)


def test_predict_cli_prints_one_json_object_per_text(trained, capsys):
    model_dir, _ = trained
    assert cli_main(["predict", "--model", str(model_dir), *BOOK_EXAMPLES]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        answer = json.loads(line)
        assert answer["label"] in {"spam", "ham"} and 0.5 <= answer["score"] <= 1.0


def test_predict_reads_stdin_and_reports_bad_lines_by_number(trained):
    model_dir, _ = trained
    stdin = b"Free entry to win cash\n\n   \nbad \xff byte\nsee you later\n"
    result = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "predict", "--model", str(model_dir)],
        input=stdin, capture_output=True, timeout=300,
    )  # fmt: skip
    answers = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(answers) == 5
    assert answers[0]["label"] in {"spam", "ham"} and answers[4]["label"] in {"spam", "ham"}
    assert answers[1] == {"line": 2, "error": "empty text"} and answers[2] == {"line": 3, "error": "empty text"}
    assert answers[3]["line"] == 4 and "invalid UTF-8" in answers[3]["error"]
    assert result.returncode == 1  # some lines failed; the others were still answered
    assert b"Traceback" not in result.stderr

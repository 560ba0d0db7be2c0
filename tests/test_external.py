"""Messages for evaluation only: figures computed by hand on hand-made files, the files never in a training
split, `hf-spam eval`'s baselines fitted on the model's own training data, and `cv --external`."""

import csv
import json

import numpy as np
import pytest
import yaml

from hf_spam.data.external import evaluation_set
from hf_spam.data.sources import SourceError
from hf_spam.data.splits import splits_of_run
from hf_spam.evaluation.baseline import tfidf_classifier
from hf_spam.evaluation.cross_corpus import corpus_metrics
from hf_spam.evaluation.metrics import spam_log_odds
from hf_spam.reports.cv import main as cv_main
from hf_spam.reports.eval import main as eval_main
from hf_spam.training.run import run as train_run

from .conftest import ROOT

TINY = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1"]

# Two hand-made files: each row's text, label and the log-odds of spam a model is said to give it.
FILE_A = [("a spam 1", "spam", 6.0), ("a spam 2", "spam", 4.0), ("a spam 3", "spam", 3.0), ("a ham 0", "ham", 5.0)]
FILE_A += [(f"a ham {i}", "ham", -float(i)) for i in range(1, 10)]
FILE_B = [("b spam 1", "spam", 1.0), ("b spam 2", "spam", -3.25), ("b ham 0", "ham", 2.0)]
FILE_B += [(f"b ham {i}", "ham", -i - 0.5) for i in range(1, 10)]


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(row[:2] for row in rows)
    return str(path)


@pytest.fixture
def hand_made(tmp_path):
    return write_csv(tmp_path / "a.csv", FILE_A), write_csv(tmp_path / "b.csv", FILE_B)


def test_figures_on_hand_made_files_are_the_ones_computed_by_hand(hand_made):
    data = evaluation_set(list(hand_made), ["ham", "spam"])
    scores = {text: score for text, _, score in FILE_A + FILE_B}
    m = corpus_metrics(data.labels, [scores[t] for t in data.texts], data.source, data.files)
    # 20 ham: at 0.1%, 0.5% and 1% no ham may be flagged, so only spam above the top ham (5.0) counts: 1 of 5.
    for budget in ("0.001", "0.005", "0.01"):
        assert m["at_fpr"][budget]["recall"] == pytest.approx(0.2)
        assert m["at_fpr"][budget]["false_positives"] == 0
        assert m["at_fpr"][budget]["threshold"] == 6.0
    # Wilson 95% of 1 in 5: centre (0.2 + 1.96^2/10) / (1 + 1.96^2/5), half-width as computed by hand.
    assert m["at_fpr"]["0.001"]["recall_95ci"] == pytest.approx([0.03623, 0.62447], abs=1e-5)
    # 5% of 20 ham is one: the threshold goes just above the second ham (2.0): spam 6, 4, 3, and ham 5.0.
    assert m["at_fpr"]["0.05"]["recall"] == pytest.approx(0.6)
    assert m["at_fpr"]["0.05"]["false_positives"] == 1
    assert m["at_fpr"]["0.05"]["threshold"] == 3.0
    # The model's own rule (log-odds 0, probability 0.5): spam 6, 4, 3, 1; ham 5.0 and 2.0.
    assert m["decision"]["recall"]["count"] == 4 and m["decision"]["recall"]["of"] == 5
    assert m["decision"]["false_positive_rate"]["rate"] == pytest.approx(2 / 20)
    # Ranked: 6s 5h 4s 3s 2h 1s -1h -1.5h -2h -2.5h -3h -3.25s: precisions at the spam 1, 2/3, 3/4, 4/6, 5/12.
    assert m["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 6 + 5 / 12) / 5)
    a, b = m["per_file"]["a.csv"], m["per_file"]["b.csv"]
    assert (a["spam"], a["ham"], b["spam"], b["ham"]) == (3, 10, 2, 10)
    assert a["at_fpr"]["0.05"]["recall"]["rate"] == 1.0 and a["at_fpr"]["0.05"]["false_positive_rate"]["rate"] == 0.1
    assert b["at_fpr"]["0.05"]["recall"]["rate"] == 0.0 and b["at_fpr"]["0.05"]["false_positive_rate"]["count"] == 0
    assert a["at_fpr"]["0.001"]["recall"]["count"] == 1 and b["decision"]["recall"]["count"] == 1
    # File a alone: 6s 5h 4s 3s then its ham: AP (1 + 2/3 + 3/4) / 3; ROC AUC 28 of 30 pairs.
    assert a["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert a["roc_auc"] == pytest.approx(28 / 30)


def test_evaluation_set_leaves_out_trained_texts_and_duplicates_and_samples_ham(tmp_path, hand_made):
    c = write_csv(tmp_path / "c.json.csv", [("a spam 1", "spam"), ("trained on", "ham"), ("c ham", "0")])
    data = evaluation_set([*hand_made, c], ["ham", "spam"], exclude=["trained on", "not in any file"])
    assert data.dropped == {"duplicates": 1, "in the training data": 1, "ham not sampled": 0}
    assert len(data) == len(FILE_A) + len(FILE_B) + 1 and "c ham" in data.texts
    sampled = evaluation_set(list(hand_made), ["ham", "spam"], max_ham=7, seed=5)
    assert int((sampled.labels == 0).sum()) == 7 and int(sampled.labels.sum()) == 5
    assert sampled.dropped["ham not sampled"] == 13
    again = evaluation_set(list(hand_made), ["ham", "spam"], max_ham=7, seed=5)
    assert again.texts == sampled.texts  # seeded


def test_a_bad_row_of_an_external_file_names_the_file_and_row(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [("fine", "spam"), ("odd", "maybe")])
    with pytest.raises(SourceError, match=r"bad.csv: row 2: unknown label 'maybe'"):
        evaluation_set([path], ["ham", "spam"])


def test_no_config_or_test_reads_the_external_corpora_as_training_data():
    for config in (ROOT / "configs").glob("*.yaml"):
        values = yaml.safe_load(config.read_text()) or {}
        for key in ("data_file", "train_file", "validation_file", "test_file", "dataset_name"):
            assert "external" not in str(values.get(key) or ""), f"{config.name}: {key} names an external file"
    for test in (ROOT / "tests").glob("test_*.py"):
        text = test.read_text()
        for flag in ("--train_file", "--data_file", "--validation_file", "--test_file"):
            assert f'"{flag}", EXTERNAL' not in text and f'"{flag}", str(EXTERNAL' not in text, test.name


def test_an_external_file_that_is_also_training_data_is_refused(tmp_path, canonical_file, capsys):
    argv = [*TINY, "--data_file", str(canonical_file), "--external_files", str(canonical_file)]
    assert train_run([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert "is also a training data file; external files are for evaluation only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, canonical_file):
    """A tiny model trained on the collection, with a hand-made external file holding one collection text."""
    root = tmp_path_factory.mktemp("external")
    first_ham = next(
        line.split("\t", 1)[1] for line in canonical_file.read_text().splitlines() if line.startswith("ham")
    )
    external = write_csv(root / "ext.csv", [*FILE_A, (first_ham, "ham", 0.0)])
    out = root / "model"
    argv = [*TINY, "--output_dir", str(out), "--external_files", external, str(root / "missing.csv")]
    assert train_run(argv) == 0  # a missing file skips the external evaluation with one line
    assert not (out / "external_predictions.csv").exists()
    argv = [*TINY, "--output_dir", str(out), "--external_files", external, "--overwrite_output_dir", "true"]
    assert train_run(argv) == 0
    return out, external, first_ham


def test_training_scores_external_files_but_never_trains_on_them(trained):
    out, _, first_ham = trained
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["data"]["splits"]["train"] == 914  # the book's split, unchanged
    with open(out / "external_predictions.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [t for t, _, _ in FILE_A]  # the collection's text left out
    assert {r["file"] for r in rows} == {"ext.csv"}
    splits = splits_of_run(summary, out, "", keep_held_out=True)
    trained_on = {t for split in splits.values() for t in split["text"]}
    assert not trained_on & {r["text"] for r in rows}
    external = summary["metrics"]["external"]
    assert external["messages"] == {"ext.csv": {"ham": 10, "spam": 3}}
    assert external["dropped"]["in the training data"] == 1
    assert set(external["models"]) == {"model", "tfidf"} and external["tfidf_trained_on"] == 914
    card = (out / "README.md").read_text()
    assert "On messages unlike the training data" in card and "external_pr_roc.png" in card
    assert (out / "external_pr_roc.png").stat().st_size > 0


def test_eval_reports_the_model_beside_baselines_fitted_on_its_own_training_data(trained, tmp_path, capsys):
    out, external, first_ham = trained
    report_dir = tmp_path / "report"
    assert eval_main([str(out), "--data", external, "--output_dir", str(report_dir), "--disable_tqdm"]) == 0
    assert "this model" in capsys.readouterr().out
    report = json.loads((report_dir / "eval.json").read_text())
    assert report["left_out"]["in the training data"] == 1 and report["baselines_trained_on"] == 914
    assert report["model_dir"] == "model" and str(tmp_path) not in json.dumps(report)  # no local path
    with open(report_dir / "eval_scores.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([r["label"] == "spam" for r in rows], dtype=int)
    summary = json.loads((out / "metrics.json").read_text())
    train = splits_of_run(summary, out, "")["train"]
    tfidf = tfidf_classifier(summary["seed"]).fit(list(train["text"]), np.asarray(train["label"]))
    expected = spam_log_odds(tfidf.predict_proba([r["text"] for r in rows]), 1)
    assert np.allclose([float(r["tfidf_log_odds"]) for r in rows], expected, atol=1e-6)
    for name in report["models"]:
        odds = [float(r[f"{name}_log_odds"]) for r in rows]
        again = corpus_metrics(labels, odds, np.zeros(len(rows), int), ["ext.csv"])
        for budget, at in report["models"][name]["at_fpr"].items():
            assert at["recall"] == pytest.approx(again["at_fpr"][budget]["recall"])
        assert report["models"][name]["average_precision"] == pytest.approx(again["average_precision"])
    from hf_spam.evaluation.sentence_baseline import sentence_model_dir

    assert ("minilm" in report["models"]) == (sentence_model_dir() is not None)  # installed by make install
    assert "eval_pr_roc.png" in (report_dir / "eval.md").read_text()
    assert (report_dir / "eval_pr_roc.png").stat().st_size > 0 and (report_dir / "eval_scores.png").exists()


def test_eval_of_a_missing_file_is_one_line(trained, tmp_path, capsys):
    out, _, _ = trained
    assert eval_main([str(out), "--data", str(tmp_path / "nope.csv"), "--disable_tqdm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"hf-spam eval: {tmp_path / 'nope.csv'}: no such file"


def test_cv_scores_each_folds_model_and_the_baselines_on_the_external_files(tmp_path, hand_made, capsys):
    out = tmp_path / "recipe"
    argv = [*TINY, "--output_dir", str(out), "--folds", "2", "--external", *hand_made, "--no-baselines"]
    assert cv_main(argv) == 0
    cv = json.loads((tmp_path / "recipe" / "cv.json").read_text())
    external = cv["external"]
    assert external["messages"] == {"a.csv": {"ham": 10, "spam": 3}, "b.csv": {"ham": 10, "spam": 2}}
    assert set(external["models"]) == {"model"} and len(external["models"]["model"]["per_fold"]) == 2
    with open(tmp_path / "recipe" / "external_scores.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 25 and {r["fold"] for r in rows} == {"1", "2"}
    md = (tmp_path / "recipe" / "cv.md").read_text()
    assert "External messages (evaluation only, never trained on)" in md and "external_pr_roc.png" in md
    assert "pr_roc.png" in md and (tmp_path / "recipe" / "pr_roc.png").exists()

"""`hf-spam cv`: the fold arithmetic (no text in two folds, every message scored once), pooled figures that
equal those recomputed from oof.csv, resuming at the first unfinished fold, and the metrics it reports."""

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from hf_spam.data.collection import from_csv_cell, parse_data_file
from hf_spam.evaluation.metrics import recall_at_fpr, spam_log_odds, spam_score_metrics
from hf_spam.reports.cv import main as cv_main
from hf_spam.reports.cv import make_folds
from hf_spam.reports.cv_report import model_metrics

from .conftest import ROOT

TINY = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1", "--logging_steps", "5"]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, canonical_file):
    """100 ham and 30 spam of the real collection, at a natural-looking rate, plus 5 exact duplicates."""
    texts, labels, _ = parse_data_file(canonical_file)
    ham = [t for t, label in zip(texts, labels, strict=True) if label == 0][:100]
    spam = [t for t, label in zip(texts, labels, strict=True) if label == 1][:30]
    lines = [f"ham\t{t}" for t in ham] + [f"spam\t{t}" for t in spam] + [f"ham\t{t}" for t in ham[:5]]
    path = tmp_path_factory.mktemp("data") / "small.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(set(ham)) + len(set(spam))


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, small_file):
    out = tmp_path_factory.mktemp("cv")
    argv = [*TINY, "--data_file", str(small_file[0]), "--output_dir", str(out / "recipe"), "--folds", "3"]
    assert cv_main(argv) == 0
    return out / "recipe", argv  # --output_dir as given


def read_oof(cv_dir):
    """oof.csv's rows, their texts as written before escaping against spreadsheet formulas."""
    with open(cv_dir / "oof.csv", encoding="utf-8", newline="") as f:
        return [{**row, "text": from_csv_cell(row["text"])} for row in csv.DictReader(f)]


def test_folds_are_stratified_and_disjoint():
    labels = [0] * 40 + [1] * 10
    folds = make_folds([f"t{i}" for i in range(50)], labels, ["ham", "spam"], 5, seed=1)
    assert sorted(Counter(folds.fold.tolist()).values()) == [10] * 5
    for k in range(5):
        assert folds.labels[folds.fold == k].sum() == 2  # each fold holds its share of spam


def test_too_few_messages_of_a_label_for_the_folds_is_one_error():
    from hf_spam.reports.cv import CVError

    with pytest.raises(CVError, match="5 folds need at least 5 messages of each label; the data has 10 ham, 3 spam"):
        make_folds([f"t{i}" for i in range(13)], [0] * 10 + [1] * 3, ["ham", "spam"], 5, seed=1)


def test_every_distinct_message_is_scored_once_in_one_fold(cv_run, small_file):
    cv_dir, _ = cv_run
    rows = read_oof(cv_dir)
    texts = [row["text"] for row in rows]
    assert len(texts) == len(set(texts)) == small_file[1]  # duplicates removed, nothing scored twice
    assert {row["fold"] for row in rows} == {"1", "2", "3"}
    # Each fold's model was tested on exactly its fold and trained and validated on none of it.
    for k in (1, 2, 3):
        result = json.loads((cv_dir / f"fold-{k}" / "result.json").read_text())
        assert sorted(result["texts"]) == sorted(row["text"] for row in rows if row["fold"] == str(k))
        assert result["splits"]["test"] == len(result["texts"])
        assert sum(result["splits"].values()) <= small_file[1]


def test_fold_training_splits_never_hold_the_fold_messages(small_file):
    from hf_spam.data.splits import distinct_rows, read_data
    from hf_spam.reports.cv import fold_splits
    from hf_spam.training.arguments import parse_args

    _, data_args, _ = parse_args([*TINY, "--data_file", str(small_file[0])])
    given, report = read_data(data_file=str(small_file[0]))
    texts, labels = distinct_rows(given, report)
    folds = make_folds(texts, labels, report.classes, 3, seed=123)
    for k in range(3):
        splits, fold_report = fold_splits(folds, k, report, data_args, 123)
        test = set(splits["test"]["text"])
        assert test == {t for t, f in zip(folds.texts, folds.fold, strict=True) if f == k}
        assert not test & (set(splits["train"]["text"]) | set(splits["validation"]["text"]))
        # undersampling (tiny.yaml) applies to the training rows only: the test fold keeps the natural rate
        assert fold_report.split_labels["train"]["ham"] == fold_report.split_labels["train"]["spam"]
        assert fold_report.split_labels["test"]["ham"] > 2 * fold_report.split_labels["test"]["spam"]


def test_pooled_figures_equal_those_recomputed_from_oof_csv(cv_run, small_file):
    cv_dir, _ = cv_run
    rows = read_oof(cv_dir)
    summary = json.loads((cv_dir / "cv.json").read_text())
    y = np.array([row["label"] == "spam" for row in rows], dtype=int)
    for name, prefix in (("model", ""), ("tfidf", "tfidf_")):
        scores = np.array([float(row[f"{prefix}log_odds"]) for row in rows])
        probabilities = np.array([float(row[f"{prefix}score"]) for row in rows])
        # the log-odds rank as the probabilities do, without their rounding to 1.0
        assert np.all(np.diff(probabilities[np.argsort(scores, kind="stable")]) >= -1e-7)
        pooled = summary["models"][name]["pooled"]
        assert pooled["average_precision"] == pytest.approx(average_precision_score(y, scores), abs=1e-6)
        assert pooled["roc_auc"] == pytest.approx(roc_auc_score(y, scores), abs=1e-6)
        assert pooled["accuracy"] == pytest.approx(np.mean((probabilities >= 0.5) == y), abs=1e-9)
        for budget, at in pooled["at_fpr"].items():
            again = recall_at_fpr(y, scores, float(budget))
            assert (at["recall"], at["false_positives"]) == (again["recall"], again["false_positives"])
            if again["threshold"] is None:  # nothing can be flagged within this budget
                assert at["threshold"] is None and at["recall"] == 0
            else:
                assert at["threshold"] == pytest.approx(again["threshold"], rel=1e-6)
        per_fold_ap = [f["average_precision"] for f in summary["models"][name]["per_fold"]]
        assert summary["models"][name]["across_folds"]["average_precision"]["mean"] == pytest.approx(
            np.mean(per_fold_ap)
        )
    assert len(summary["worst_errors"]) <= 20
    assert (cv_dir / "cv.md").read_text().startswith(f"3-fold cross-validation over {small_file[1]} distinct messages")
    tfidf_seconds = summary["baseline_fold_seconds"]["tfidf"]
    assert len(tfidf_seconds) == 3 and all(s > 0 for s in tfidf_seconds)
    assert "Time per fold of TF-IDF char_wb 2-5 + LR (fitting and scoring): " in (cv_dir / "cv.md").read_text()


def test_a_killed_run_resumes_at_the_first_unfinished_fold(cv_run, capsys):
    cv_dir, argv = cv_run
    before = {row["text"]: row for row in read_oof(cv_dir)}
    (cv_dir / "fold-3" / "result.json").unlink()
    capsys.readouterr()
    assert cv_main(argv) == 0
    out = capsys.readouterr().out
    assert "fold 1/3: done earlier" in out and "fold 2/3: done earlier" in out
    assert "fold 3/3: train" in out
    after = {row["text"]: row for row in read_oof(cv_dir)}
    assert before.keys() == after.keys()
    assert all(after[t] == before[t] for t in after if before[t]["fold"] != "3")


def test_other_settings_in_the_same_directory_stop_with_one_line(cv_run, caplog):
    _, argv = cv_run
    assert cv_main([*argv, "--learning_rate", "1.0e-3"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "training.learning_rate differ" in errors[0]


def test_recall_at_fpr_takes_the_lowest_threshold_within_the_budget():
    labels = [0] * 1000 + [1] * 10
    ham = np.linspace(0.0, 0.5, 1000)
    ham[-3:] = [0.9, 0.95, 0.99]  # three ham score high
    spam = np.array([0.2, 0.6, 0.7, 0.8, 0.91, 0.92, 0.96, 0.97, 0.98, 0.995])
    scores = np.concatenate([ham, spam])
    at = recall_at_fpr(labels, scores, 0.001)  # one ham may be flagged (0.99): every spam above the next, 0.95
    assert (at["false_positives"], at["spam_caught"], at["threshold"]) == (1, 4, 0.96)
    at = recall_at_fpr(labels, scores, 0.005)  # five may: the three high ones and the two highest others
    assert (at["false_positives"], at["spam_caught"]) == (5, 9)
    assert at["threshold"] == np.sort(ham)[-5] and at["recall"] == 0.9
    at = recall_at_fpr(labels, scores, 0.0)  # none may: only spam above 0.99
    assert (at["false_positives"], at["spam_caught"], at["threshold"]) == (0, 1, 0.995)


def test_score_metrics_match_sklearn_and_give_wilson_intervals():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    m = spam_score_metrics(y, s)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, s))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["tp"] + m["fn"] == y.sum() and m["tp"] + m["fp"] == (s >= 0.5).sum()
    low, high = m["recall_95ci"]
    assert low < m["recall"] < high


def test_confident_scores_are_ranked_by_log_odds_not_rounded_probabilities():
    """A float32 softmax rounds p(spam) to 1.0 from a logit margin of about 17: a ham at margin 18 would tie
    with spam at margin 40 and hide them at a 0% false-positive budget. The ham column keeps the digits."""
    classes = ["ham", "spam"]
    logits = torch.tensor([[0.0, 40.0], [0.0, 30.0], [0.0, 18.0], [0.0, -5.0], [0.0, -9.0]])
    probabilities = logits.softmax(-1).numpy()
    assert (probabilities[:3, 1] == 1.0).all()  # what the spam column alone would rank by
    labels = np.array([1, 1, 0, 0, 0])
    metrics = model_metrics(labels, probabilities, classes, binary=True)
    at_zero = recall_at_fpr(labels, spam_log_odds(probabilities, 1), 0.0)
    assert (at_zero["recall"], at_zero["false_positives"]) == (1.0, 0)
    assert metrics["average_precision"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(0.8)  # the ham at margin 18 is flagged at p >= 0.5
    assert spam_log_odds(probabilities, 1)[0] == pytest.approx(40.0, abs=1e-3)


def test_the_output_dir_is_honoured_as_given_and_the_configs_gets_cv_appended():
    from hf_spam.reports.cv import cv_directory

    assert str(cv_directory(["--config", "c.yaml", "--output_dir", "runs/x"], "runs/x")) == "runs/x"
    assert str(cv_directory(["--config", "c.yaml", "--output_dir=runs/x"], "runs/x")) == "runs/x"
    assert str(cv_directory(["--config", "c.yaml"], "outputs/recommended/")) == "outputs/recommended-cv"

"""The offline `evaluate` module and the Trainer's compute_metrics (spam = 1 is the positive class)."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score
from transformers import EvalPrediction

from hf_spam.evaluation.metrics import compute_metrics, load_spam_metric

# A hand-checked example: rows are (reference, prediction).
#   (1, 1) (1, 1)          -> tp = 2
#   (1, 0)                 -> fn = 1
#   (0, 1)                 -> fp = 1
#   (0, 0) (0, 0) (0, 0)   -> tn = 3
REFERENCES = [1, 1, 1, 0, 0, 0, 0]
PREDICTIONS = [1, 1, 0, 1, 0, 0, 0]


def sklearn_metrics(references, predictions) -> dict:
    return {
        "accuracy": accuracy_score(references, predictions),
        "precision": precision_score(references, predictions, pos_label=1, zero_division=0),
        "recall": recall_score(references, predictions, pos_label=1, zero_division=0),
        "f1": f1_score(references, predictions, pos_label=1, zero_division=0),
    }


def test_metric_module_loads_without_the_hub():
    metric = load_spam_metric()
    assert metric is load_spam_metric()
    assert set(metric.features) == {"predictions", "references"}


def test_hand_checked_confusion_matrix_and_scores():
    result = load_spam_metric().compute(predictions=PREDICTIONS, references=REFERENCES)
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (3, 1, 1, 2)
    assert result["confusion_matrix"] == [[3, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(5 / 7)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_equal_sklearn_with_spam_positive(seed):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 2, size=200).tolist()
    predictions = rng.integers(0, 2, size=200).tolist()
    result = load_spam_metric().compute(predictions=predictions, references=references)
    for name, expected in sklearn_metrics(references, predictions).items():
        assert result[name] == pytest.approx(expected)
    assert result["confusion_matrix"] == confusion_matrix(references, predictions, labels=[0, 1]).tolist()
    assert result["tn"] + result["fp"] + result["fn"] + result["tp"] == 200


def test_spam_is_the_positive_class_not_ham():
    # Every ham found, no spam found: ham-positive scores would be perfect recall, spam-positive are 0.
    result = load_spam_metric().compute(predictions=[0, 0, 0, 0], references=[0, 0, 1, 1])
    assert result["recall"] == 0.0
    assert result["precision"] == 0.0
    assert result["f1"] == 0.0
    assert result["accuracy"] == 0.5
    assert result["confusion_matrix"] == [[2, 0], [2, 0]]


def test_compute_metrics_takes_logits_and_reports_cells_and_examples():
    logits = np.array([[-1.0, 2.0] if p else [3.0, 0.5] for p in PREDICTIONS], dtype=np.float32)
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array(REFERENCES)))
    assert "confusion_matrix" not in result
    assert result["examples"] == len(REFERENCES)
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (3, 1, 1, 2)
    for name, expected in sklearn_metrics(REFERENCES, PREDICTIONS).items():
        assert result[name] == pytest.approx(expected)
    assert all(np.isscalar(value) for value in result.values())


def test_wilson_interval_matches_known_values():
    from hf_spam.evaluation.metrics import wilson_interval

    low, high = wilson_interval(0, 100)
    assert low == 0.0 and abs(high - 0.0370) < 1e-4  # the "rule of three" region, where Wald gives [0, 0]
    low, high = wilson_interval(5, 100)
    assert abs(low - 0.0215) < 1e-4 and abs(high - 0.1118) < 1e-4
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_at_spam_rate_pools_unseen_ham_and_reweights_precision():
    from hf_spam.evaluation.metrics import at_spam_rate

    test = {"tn": 125, "fp": 6, "fn": 9, "tp": 122}
    held_out = {"tn": 3845, "fp": 20, "fn": 0, "tp": 0}
    result = at_spam_rate(test, held_out, spam_rate=0.125)
    assert result["unseen_ham"] == 3996 and result["false_positives"] == 26 and result["unseen_spam"] == 131
    assert result["false_positive_rate"] == 26 / 3996 and result["recall"] == 122 / 131
    recall, fpr = 122 / 131, 26 / 3996
    assert abs(result["precision"] - recall * 0.125 / (recall * 0.125 + fpr * 0.875)) < 1e-12
    low, high = result["false_positive_rate_95ci"]
    assert low < result["false_positive_rate"] < high


def test_multi_class_metrics_are_macro_averages_with_per_class_figures():
    from hf_spam.evaluation.metrics import score_predictions

    references = [0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 1, 1, 1, 2, 0, 2]
    classes = ["personal", "promo", "phishing"]
    result = score_predictions(predictions, references, classes)
    assert result["confusion_matrix"] == confusion_matrix(references, predictions).tolist()
    assert result["f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert result["precision"] == pytest.approx(precision_score(references, predictions, average="macro"))
    assert list(result["per_class"]) == classes
    assert result["per_class"]["promo"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert "tp" not in result  # the spam cells mean nothing with three classes
    logged = compute_metrics(
        EvalPrediction(predictions=np.eye(3)[predictions], label_ids=np.array(references)), classes
    )
    assert logged["phishing_f1"] == pytest.approx(0.8) and "per_class" not in logged
    assert all(np.isscalar(v) for v in logged.values())

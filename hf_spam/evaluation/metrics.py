"""Offline metrics for the Trainer and the final report (spam is the positive class; a multi-class source
gets macro averages and per-class figures)."""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

import evaluate
import numpy as np

SPAM_METRIC_PATH = str(resources.files("hf_spam") / "spam_metric" / "spam_metric.py")


@cache
def load_spam_metric() -> evaluate.EvaluationModule:
    """The `evaluate` module shipped in hf_spam; loads from its path, so it works without the Hub."""
    return evaluate.load(SPAM_METRIC_PATH)


def compute_metrics(eval_pred, classes: list[str] | None = None) -> dict:
    """`Trainer` hook: logits -> accuracy, precision, recall, f1 and the confusion-matrix cells (tn, fp, fn, tp);
    for more than two `classes`, macro averages and `<class>_f1` per class.

    Only scalars: `Trainer` logs every value as one. `score_predictions` gives the confusion matrix.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    result = score_predictions(np.asarray(logits).argmax(-1), labels, classes)
    result.pop("confusion_matrix")
    for name, scores in result.pop("per_class", {}).items():
        result[f"{name}_f1"] = scores["f1"]
    return result


def score_predictions(predictions, references, classes: list[str] | None = None) -> dict:
    """The spam metric of predicted label ids against the true ones, with the number of examples; for more
    than two `classes`, the multi-class metrics with `per_class[name] = {precision, recall, f1, support}`."""
    num_labels = len(classes) if classes else 2
    result = load_spam_metric().compute(predictions=predictions, references=references, num_labels=num_labels)
    if num_labels > 2:
        scores = result.pop("per_class")
        result["per_class"] = {
            name: {key: values[i] for key, values in scores.items()} for i, name in enumerate(classes)
        }
    result["examples"] = int(len(references))
    return result


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96): sound near 0, where a rare false
    positive puts the plain normal interval below zero."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def at_spam_rate(test: dict, held_out: dict, spam_rate: float) -> dict:
    """What the classifier does at the data's own spam rate, from messages it never trained on.

    The false-positive rate is counted on all unseen ham (the test split's and the `held_out` messages that
    balancing left out), recall on all unseen spam likewise; neither depends on the class mix, so precision at spam
    share p follows as recall * p / (recall * p + fpr * (1 - p)). Intervals are Wilson 95%.
    """
    fp, tp = test["fp"] + held_out["fp"], test["tp"] + held_out["tp"]
    ham = fp + test["tn"] + held_out["tn"]
    spam = tp + test["fn"] + held_out["fn"]
    fpr, recall = fp / max(ham, 1), tp / max(spam, 1)
    flagged = recall * spam_rate + fpr * (1 - spam_rate)
    return {
        "spam_rate": spam_rate,
        "unseen_ham": ham,
        "false_positives": fp,
        "false_positive_rate": fpr,
        "false_positive_rate_95ci": list(wilson_interval(fp, ham)),
        "recall": recall,
        "unseen_spam": spam,
        "recall_95ci": list(wilson_interval(tp, spam)),
        "precision": recall * spam_rate / flagged if flagged else None,
    }


# The false-positive budgets a real SMS filter works at (an operator's 0.1% to a lenient 5%): recall is
# reported at each.
FPR_BUDGETS = (0.001, 0.005, 0.01, 0.05)


def spam_log_odds(probabilities, spam: int) -> np.ndarray:
    """Each message's log(p(spam) / p(not spam)), from every class's probability: the spam column alone rounds
    to 1.0 for a confident model (a float32 softmax does from a logit margin of about 17), which ties confident
    ham with confident spam and ruins the ranking at small false-positive budgets; the other columns keep their
    digits there. Ranks exactly as the spam probability does, and 0 is the probability 0.5."""
    p = np.asarray(probabilities, dtype=np.float64)
    rest = np.delete(p, spam, axis=1).sum(axis=1)
    with np.errstate(divide="ignore"):
        odds = np.log(p[:, spam]) - np.log(rest)
    return np.clip(odds, -LOG_ODDS_LIMIT, LOG_ODDS_LIMIT)


# A probability of exactly 0 or 1 (beyond float64) is this sure, so that sklearn's metrics get finite scores.
LOG_ODDS_LIMIT = 1000.0


def spam_score_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """Everything a spam score per message says against the truth (1 = spam): a probability, or any score that
    ranks as it does (`spam_log_odds`, with `threshold` 0 for the probability 0.5). Accuracy, precision, recall
    and F1 when flagging at `threshold`, with Wilson 95% intervals; average precision (PR AUC) and ROC AUC; and,
    for each budget of `FPR_BUDGETS`, the recall at the lowest threshold that flags at most that share of ham."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    flagged = s >= threshold
    tp, fp = int((flagged & (y == 1)).sum()), int((flagged & (y == 0)).sum())
    fn, tn = int((~flagged & (y == 1)).sum()), int((~flagged & (y == 0)).sum())
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    both = len(set(y.tolist())) == 2
    return {
        "examples": len(y),
        "threshold": threshold,
        "accuracy": (tp + tn) / max(len(y), 1),
        "accuracy_95ci": list(wilson_interval(tp + tn, len(y))),
        "precision": precision,
        "precision_95ci": list(wilson_interval(tp, tp + fp)),
        "recall": recall,
        "recall_95ci": list(wilson_interval(tp, tp + fn)),
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "average_precision": float(average_precision_score(y, s)) if both else None,
        "roc_auc": float(roc_auc_score(y, s)) if both else None,
        "at_fpr": {f"{budget:g}": recall_at_fpr(y, s, budget) for budget in FPR_BUDGETS},
    }


def recall_at_fpr(labels, scores, max_fpr: float) -> dict:
    """The most spam caught while at most `max_fpr` of the ham is flagged: the threshold (flag when the score is
    at least it; `None` when no threshold flags anything at that budget), recall with its Wilson interval, and
    the false positives it costs."""
    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=np.float64)
    ham, spam = np.sort(s[y == 0])[::-1], s[y == 1]
    allowed = int(np.floor(max_fpr * len(ham) + 1e-9))  # ham that may be flagged
    # Flag at scores strictly above the first ham that must stay unflagged (ties with it stay unflagged too).
    if allowed >= len(ham):
        threshold = float(min(s.min(), 0.0)) if len(s) else 0.0
        flagged_spam = spam >= threshold
        flagged_ham = len(ham)
    else:
        limit = ham[allowed]
        above = s[s > limit]
        threshold = float(above.min()) if len(above) else None
        flagged_spam = spam > limit
        flagged_ham = int((ham > limit).sum())
    tp = int(flagged_spam.sum())
    return {
        "max_fpr": max_fpr,
        "threshold": threshold,
        "recall": tp / max(len(spam), 1),
        "recall_95ci": list(wilson_interval(tp, len(spam))),
        "spam_caught": tp,
        "false_positives": flagged_ham,
        "false_positive_rate": flagged_ham / max(len(ham), 1),
    }


def mean_and_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key of `rows` (one dict of figures per fold): the mean and the sample standard deviation."""
    return {
        key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows], ddof=1))}
        for key in rows[0]
    }

"""Offline metrics for the Trainer and the final report (spam is the positive class)."""

from __future__ import annotations

from functools import cache
from importlib import resources

import evaluate
import numpy as np

SPAM_METRIC_PATH = str(resources.files("hf_spam") / "spam_metric" / "spam_metric.py")


@cache
def load_spam_metric() -> evaluate.EvaluationModule:
    """The `evaluate` module shipped in hf_spam; loads from its path, so it works without the Hub."""
    return evaluate.load(SPAM_METRIC_PATH)


def compute_metrics(eval_pred) -> dict:
    """`Trainer` hook: logits -> accuracy, precision, recall, f1 and the confusion-matrix cells (tn, fp, fn, tp).

    The matrix itself is left out here because `Trainer` logs every value as a scalar; it is rebuilt from the
    four cells for `metrics.json`.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    predictions = np.asarray(logits).argmax(-1)
    result = load_spam_metric().compute(predictions=predictions, references=labels)
    result.pop("confusion_matrix")
    result["examples"] = int(len(labels))
    return result

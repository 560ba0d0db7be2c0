"""Binary spam-classification metrics as an `evaluate` module that needs no Hub access.

`evaluate.load("accuracy")` downloads its script from the Hub; this module ships inside hf_spam and is
loaded from its path: `evaluate.load(hf_spam.evaluation.metrics.SPAM_METRIC_PATH)`.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = """Accuracy, precision, recall and F1 with spam (label 1) as the positive class, and the 2x2
confusion matrix [[tn, fp], [fn, tp]] with rows = true label (ham, spam) and columns = prediction. With
num_labels > 2 (a multi-class source): accuracy, macro-averaged precision, recall and F1, the same per class,
and the num_labels x num_labels confusion matrix."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels, 0 = ham, 1 = spam.
    references (`list` of `int`): true labels.
    num_labels (`int`, default 2): the number of classes; above 2, the metrics are multi-class.
Returns:
    accuracy, precision, recall, f1 (`float`), tn, fp, fn, tp (`int`), confusion_matrix (`list[list[int]]`);
    for num_labels > 2, precision, recall and f1 are macro averages, `per_class` holds precision, recall, f1
    and support as lists by label id, and tn, fp, fn, tp are left out.
Examples:
    >>> metric = evaluate.load(SPAM_METRIC_PATH)
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 1, 0])["f1"]
    0.5
"""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython},
author={Pedregosa, F. and others}, journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830},
year={2011}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpamMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, num_labels=2):
        if num_labels > 2:
            return _multi_class(predictions, references, list(range(num_labels)))
        precision, recall, f1, _ = precision_recall_fscore_support(
            references, predictions, labels=[1], average="binary", pos_label=1, zero_division=0
        )
        matrix = confusion_matrix(references, predictions, labels=[0, 1])
        (tn, fp), (fn, tp) = matrix.tolist()
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
            "confusion_matrix": matrix.tolist(),
        }


def _multi_class(predictions, references, labels):
    # zero_division=0: a class absent from both predictions and references scores 0, and pulls the macro
    # average down, rather than being skipped and hiding that the split lacks it.
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=labels, average=None, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(references, predictions)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.tolist(),
        },
        "confusion_matrix": confusion_matrix(references, predictions, labels=labels).tolist(),
    }

"""`hf-spam baseline`: a classical text classifier on the same splits, the bar a fine-tuned decoder must clear.

Character n-gram TF-IDF (`char_wb`, 2-5, sublinear term frequency) + class-weighted logistic regression
(C=10, the strongest of C in {1, 10, 100} with and without class weights, both on the book's split and under
5-fold cross-validation), fitted on the training split and scored on each split with the metrics
`hf-spam train` reports. It takes seconds and is a strong baseline for SMS spam: a language model that does
not beat it has not learned much from pretraining.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from hf_spam.data.splits import load_sms_spam
from hf_spam.evaluation.metrics import score_predictions


def tfidf_classifier(seed: int = 123) -> Pipeline:
    """The unfitted baseline: `fit(texts, labels)`, then `predict` / `predict_proba`."""
    return make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000, random_state=seed),
    )


def tfidf_baseline(splits, seed: int = 123, model=None) -> dict[str, dict]:
    """Fit on `splits["train"]` (or take `model`, fitted there); per split: accuracy, precision, recall, f1,
    examples, confusion matrix."""
    if model is None:
        model = tfidf_classifier(seed).fit(list(splits["train"]["text"]), np.asarray(splits["train"]["label"]))
    classes = splits["train"].features["label"].names
    return {
        name: score_predictions(model.predict(list(split["text"])), np.asarray(split["label"]), classes)
        for name, split in splits.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-spam baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_file", help="A local label<TAB>text file instead of the SMS Spam Collection.")
    parser.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)
    splits, report = load_sms_spam(data_file=args.data_file, dedupe_texts=args.dedupe, seed=args.seed)
    print(
        json.dumps({"data": report.to_dict(), "tfidf_char_wb_2_5_logreg": tfidf_baseline(splits, args.seed)}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a finished run is scored on: each split's metrics, the test predictions file, the decision
threshold at a false-positive budget, the natural-rate figures, and the final table."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch

from hf_spam.data.collection import csv_cell
from hf_spam.data.splits import SPLITS
from hf_spam.deploy.classifier import classifier
from hf_spam.deploy.spam_classifier import SpamClassifier
from hf_spam.evaluation.baseline import tfidf_baseline, tfidf_classifier
from hf_spam.evaluation.cross_corpus import budget_names, corpus_metrics
from hf_spam.evaluation.metrics import FPR_BUDGETS, at_spam_rate, score_predictions, spam_log_odds
from hf_spam.evaluation.plots import plot_ranking, plot_score_histogram
from hf_spam.progress import progress_bar
from hf_spam.training.arguments import ConfigError

logger = logging.getLogger("hf_spam")


def evaluate_split(
    trainer, features, split: str, classes: list[str], order: list[int] | None
) -> tuple[dict, np.ndarray]:
    """The final metrics of one split (logged and saved as `<split>_*`), with its confusion matrix and, for a
    multi-class model, the per-class figures; and each message's class probabilities, in the split's order
    (`features` is the split reordered by `order`, or in its order where `order` is None)."""
    output = trainer.predict(features, metric_key_prefix=split)
    trainer.log_metrics(split, output.metrics)
    metrics = {k.removeprefix(f"{split}_"): v for k, v in output.metrics.items()}
    logits = torch.as_tensor(np.asarray(output.predictions), dtype=torch.float32)
    scored = score_predictions(logits.argmax(-1).numpy(), output.label_ids, classes)
    metrics["confusion_matrix"] = scored["confusion_matrix"]
    if "per_class" in scored:
        metrics["per_class"] = scored["per_class"]
    probabilities = logits.softmax(-1).numpy()
    if order is not None:
        probabilities[np.asarray(order)] = probabilities.copy()
    return metrics, probabilities


def write_predictions(path: Path, split, probabilities: np.ndarray, config, files: list[str] | None = None) -> None:
    """`text,label,prediction,p_<class>...` for each message of `split`, in its order: the errors to read, and
    what `hf-spam cv` pools across folds. The prediction follows the model's saved `spam_threshold`, if any.
    With `files` (the external messages'), a `file` column says where each message came from."""
    names = [config.id2label[i] for i in range(len(config.id2label))]
    predicted = SpamClassifier(None, config).decide(probabilities)  # predict's own rule: argmax, or the threshold
    origin = files if files is not None else [None] * len(predicted)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["text", "label", "prediction", *(f"p_{name}" for name in names), *(["file"] if files is not None else [])]
        )
        rows = zip(split["text"], split["label"], predicted, probabilities, origin, strict=True)
        for text, label, guess, row, file in rows:
            cells = [csv_cell(text), csv_cell(names[label]), csv_cell(names[guess]), *(f"{p:.8g}" for p in row)]
            writer.writerow(cells + ([csv_cell(file)] if file is not None else []))


def decision_threshold(model, tokenizer, validation, test, max_fpr: float) -> tuple[float, dict]:
    """The lowest spam-probability threshold that flags at most `max_fpr` of the validation ham, and the
    test metrics at it. Lowest: of the thresholds that keep the false-positive rate, it catches most spam."""
    spam = model.config.label2id["spam"]
    predictions = classifier(model, tokenizer)(list(validation["text"]))
    p_spam = [p["score"] if p["label"] == "spam" else 1.0 - p["score"] for p in predictions]
    ham = sorted((p for p, label in zip(p_spam, validation["label"], strict=True) if label != spam), reverse=True)
    allowed = int(max_fpr * len(ham))
    # Just above the first ham score that must not be flagged, in float32: the precision predict compares in.
    threshold = float(np.nextafter(np.float32(ham[allowed]), np.float32(np.inf))) if allowed < len(ham) else 0.0
    threshold = min(threshold, 1.0)
    test_metrics = _scored(classifier(model, tokenizer, threshold=threshold), model, test)
    flagged = sum(p >= threshold for p in ham)
    return threshold, {
        "spam_threshold": threshold,
        "max_fpr": max_fpr,
        "chosen_on": "validation",
        "validation_ham": len(ham),
        "validation_false_positives": flagged,
        "test": test_metrics,
    }


def natural_rate_metrics(
    model, tokenizer, held_out, test: dict, spam_rate: float, disable_tqdm: bool = False
) -> tuple[dict, dict, np.ndarray]:
    """Score the messages balancing left out with the trained model (the prediction path users get): their
    metrics, what test + held-out say of the data's own spam rate (`metrics.at_spam_rate`), and their class
    probabilities. Thousands of messages at full depth: a progress bar on a terminal."""
    predict = classifier(model, tokenizer)
    texts = list(held_out["text"])
    with progress_bar(len(texts), "Scoring the held-out messages", disable=disable_tqdm) as bar:
        probabilities = predict.predict_proba(texts, bar.update)
    held = score_predictions(predict.decide(probabilities).tolist(), list(held_out["label"]))
    return held, at_spam_rate(test, held, spam_rate), probabilities


def _scored(predict, model, split) -> dict:
    """The metrics of `predict` (a `SpamClassifier`) on a split of texts and labels."""
    label_ids = [model.config.label2id[p["label"]] for p in predict(list(split["text"]))]
    return score_predictions(label_ids, list(split["label"]))


def length_order(dataset) -> list[int]:
    """The indices of tokenized examples, shortest first."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def class_weights(option: str | None, train_counts: dict[str, int]) -> torch.Tensor | None:
    """`None`, inverse-frequency weights for `"balanced"` (sklearn's n / (k * count)), or one weight per class
    in label-id order (`"w_ham,w_spam"`). `train_counts` is by class, in label-id order."""
    if option is None:
        return None
    classes = list(train_counts)
    if option == "balanced":
        counts = torch.tensor([train_counts[name] for name in classes], dtype=torch.float32)
        return counts.sum() / (len(classes) * counts)
    try:
        weights = [float(w) for w in option.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(classes) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(
            f"class_weights must be 'balanced' or {len(classes)} positive numbers '{','.join(classes)}', got {option!r}"
        )
    return torch.tensor(weights)


def metrics_table(results: dict[str, dict], classes: list[str] | None = None) -> str:
    """The printed results: one row per split; then per class on the test split (multi-class), the threshold
    and the natural spam rate (binary) where the run has them."""
    columns = ("accuracy", "precision", "recall", "f1")
    multi = classes is not None and len(classes) > 2
    lines = [f"{'split':<11}" + "".join(f"{c:>10}" for c in columns) + f"{'examples':>10}"]
    for split in SPLITS:
        metrics = results[split]
        lines.append(f"{split:<11}" + "".join(f"{metrics[c]:>10.4f}" for c in columns) + f"{metrics['examples']:>10}")
    if "tfidf" in results:
        metrics = results["tfidf"]["test"]
        lines.append(
            f"{'test tfidf':<11}"
            + "".join(f"{metrics[c]:>10.4f}" for c in columns)
            + f"{metrics['examples']:>10}"
            + "  (char TF-IDF + logistic regression, same splits: the bar to clear)"
        )
    if multi:
        lines[0] += "  (precision, recall, f1: macro averages over the classes)"
        lines.append(f"{'test class':<21}" + "".join(f"{c:>10}" for c in ("precision", "recall", "f1", "support")))
        for name, scores in results["test"]["per_class"].items():
            lines.append(
                f"{name[:20]:<21}"
                + "".join(f"{scores[c]:>10.4f}" for c in ("precision", "recall", "f1"))
                + f"{scores['support']:>10}"
            )
    if "threshold" in results:
        t, metrics = results["threshold"], results["threshold"]["test"]
        lines.append(
            f"{'test@' + format(t['spam_threshold'], '.3g'):<11}"
            + "".join(f"{metrics[c]:>10.4f}" for c in columns)
            + f"{metrics['examples']:>10}"
            + f"  (threshold for <= {t['max_fpr']:g} of validation ham flagged: {t['validation_false_positives']} of {t['validation_ham']})"
        )
    if "natural_rate" in results:
        n = results["natural_rate"]
        low, high = n["false_positive_rate_95ci"]
        precision = "n/a" if n["precision"] is None else f"{n['precision']:.4f}"
        lines.append(
            f"at the data's spam rate ({n['spam_rate']:.1%}), from {n['unseen_ham']:,} unseen ham and "
            f"{n['unseen_spam']:,} unseen spam (the test split and the {results['held_out']['examples']:,} "
            f"messages balancing left out): false-positive rate {n['false_positive_rate']:.4f} (95% CI "
            f"{low:.4f}-{high:.4f}), precision {precision}, recall {n['recall']:.4f}"
        )
    if "external" in results:
        lines += external_lines(results["external"])
    return "\n".join(lines)


def external_results(external, probabilities: np.ndarray, tfidf, trained_on: int, config) -> tuple[dict, np.ndarray]:
    """The cross-corpus figures of the model (at its own decision rule too) and of `tfidf` (fitted on the
    model's `trained_on` training messages), on the external messages; and TF-IDF's probabilities there."""
    spam = config.label2id["spam"]
    flagged = SpamClassifier(None, config).decide(probabilities) == spam
    model = corpus_metrics(
        external.labels, spam_log_odds(probabilities, spam), external.source, external.files, flagged
    )
    baseline = tfidf.predict_proba(external.texts)
    bar = corpus_metrics(external.labels, spam_log_odds(baseline, spam), external.source, external.files)
    return {
        "messages": external.counts(list(config.label2id)),
        "dropped": external.dropped,
        "models": {"model": model, "tfidf": bar},
        "tfidf_trained_on": trained_on,
    }, baseline


def external_lines(external: dict) -> list[str]:
    """The printed cross-corpus rows: recall at each false-positive budget and average precision."""
    budgets = budget_names()
    counts = {label: sum(c[label] for c in external["messages"].values()) for label in ("spam", "ham")}
    lines = [
        f"external messages, evaluation only ({counts['spam']:,} spam, {counts['ham']:,} ham from "
        f"{', '.join(external['messages'])}):",
        f"{'':<11}" + "".join(f"{'@FPR ' + format(float(b), '.1%'):>12}" for b in budgets) + f"{'AP':>10}",
    ]
    names = {"model": "model", "tfidf": "tfidf"}
    for name, m in external["models"].items():
        lines.append(
            f"{names[name]:<11}"
            + "".join(f"{m['at_fpr'][b]['recall']:>12.2%}" for b in budgets)
            + f"{m['average_precision']:>10.4f}"
            + (
                f"  (char TF-IDF + LR on the same {external['tfidf_trained_on']:,} training messages)"
                if name == "tfidf"
                else "  (recall of the spam at a false-positive rate on the ham)"
            )
        )
    return lines


def plot_external(directory: Path, external, probabilities: dict, spam: int) -> dict[str, str]:
    """PR/ROC curves of the model and TF-IDF, and the model's score histogram, on the external messages."""
    labels = external.labels
    model = spam_log_odds(probabilities["external"], spam)
    curves = {"fine-tuned": (labels, model), "TF-IDF": (labels, spam_log_odds(probabilities["external_tfidf"], spam))}
    title = f"External messages ({', '.join(external.files)})"
    plot_ranking(curves, directory / "external_pr_roc.png", FPR_BUDGETS, title, float(labels.mean()))
    plot_score_histogram(labels, model, directory / "external_scores.png", title)
    return {
        "external_pr_roc.png": "Precision-recall and ROC on the external messages (evaluation only)",
        "external_scores.png": "The model's spam log-odds on the external messages, by true label",
    }


def ranking_scores(test, held_out, probabilities: dict, tfidf, config) -> dict[str, dict]:
    """What the test split's pictures, and those at the data's own spam rate (test + the messages balancing
    left out), are drawn from: labels (1 = spam) and the spam log-odds of the model and of TF-IDF."""
    spam = config.label2id["spam"]
    parts = {"test": (test, probabilities["test"])}
    if "held_out" in probabilities:
        both = list(test["text"]) + list(held_out["text"])
        labels = list(test["label"]) + list(held_out["label"])
        parts["natural_rate"] = (
            {"text": both, "label": labels},
            np.concatenate([probabilities["test"], probabilities["held_out"]]),
        )
    return {
        name: {
            "labels": (np.asarray(split["label"]) == spam).astype(int),
            "fine-tuned": spam_log_odds(model_p, spam),
            "TF-IDF": spam_log_odds(tfidf.predict_proba(list(split["text"])), spam),
        }
        for name, (split, model_p) in parts.items()
    }


def plot_rankings(directory: Path, rankings: dict[str, dict], threshold: float | None) -> dict[str, str]:
    """PR/ROC curves (the model beside TF-IDF, false-positive budgets marked) and the model's score histogram
    (the decision threshold marked) for the test split and, where balancing left messages out, for every
    message the model never saw (test + held out: the PR curve's precision is at that pool's spam share)."""
    marks = {"threshold": math.log(threshold / (1 - threshold))} if threshold not in (None, 0.0, 1.0) else None
    where = {
        "test": ("test", "the test split"),
        "natural_rate": ("held_out", "the test split + the held-out messages"),
    }
    figures = {}
    for name, scores in rankings.items():
        stem, what = where[name]
        labels = scores["labels"]
        curves = {k: (labels, v) for k, v in scores.items() if k != "labels"}
        counts = f"{int(labels.sum()):,} spam, {int((1 - labels).sum()):,} ham ({labels.mean():.1%} spam)"
        title = f"{what[0].upper()}{what[1:]}: {counts}"
        plot_ranking(curves, directory / f"{stem}_pr_roc.png", FPR_BUDGETS, title, float(labels.mean()))
        plot_score_histogram(labels, scores["fine-tuned"], directory / f"{stem}_scores.png", title, marks)
        figures[f"{stem}_pr_roc.png"] = f"Precision-recall and ROC on {what} ({counts}), beside TF-IDF"
        figures[f"{stem}_scores.png"] = f"The model's spam log-odds on {what}, by true label"
    return figures


def ranking_figures(directory: Path, probabilities: dict, external, config) -> dict[str, str]:
    """Every ranking picture a binary run draws (test, natural rate, external), by file, with its caption."""
    figures = {}
    if "rankings" in probabilities:
        figures |= plot_rankings(directory, probabilities["rankings"], getattr(config, "spam_threshold", None))
    if external is not None:
        figures |= plot_external(directory, external, probabilities, config.label2id["spam"])
    return figures


def evaluate_run(trainer, model, tokenizer, eval_features, orders, splits, held_out, report, external=None):
    """Every split's metrics and probabilities, the TF-IDF row, the threshold at `max_fpr`, the natural-rate
    figures and, with `external`, the cross-corpus figures."""
    training_args = trainer.args
    results, probabilities = {}, {}
    for split in SPLITS:
        results[split], probabilities[split] = evaluate_split(
            trainer, eval_features[split], split, report.classes, orders[split]
        )
    # The bar the language model must clear, fitted and scored on the same splits.
    tfidf = tfidf_classifier(training_args.seed).fit(
        list(splits["train"]["text"]), np.asarray(splits["train"]["label"])
    )
    results["tfidf"] = tfidf_baseline(splits, training_args.seed, tfidf)
    if training_args.max_fpr is not None:
        # Saved in config.json with the model: `hf-spam predict` and every metric below then use it.
        model.config.spam_threshold, results["threshold"] = decision_threshold(
            model, tokenizer, splits["validation"], splits["test"], training_args.max_fpr
        )
    if held_out is not None and len(held_out) and report.is_binary and trainer.is_world_process_zero():
        test = results["threshold"]["test"] if "threshold" in results else results["test"]
        results["held_out"], results["natural_rate"], probabilities["held_out"] = natural_rate_metrics(
            model, tokenizer, held_out, test, report.spam_rate, training_args.disable_tqdm
        )
    if report.is_binary:
        probabilities["rankings"] = ranking_scores(splits["test"], held_out, probabilities, tfidf, model.config)
    if external is not None:
        _, probabilities["external"] = evaluate_split(
            trainer, eval_features["external"], "external", report.classes, orders["external"]
        )
        results["external"], probabilities["external_tfidf"] = external_results(
            external, probabilities["external"], tfidf, len(splits["train"]), model.config
        )
    return results, probabilities

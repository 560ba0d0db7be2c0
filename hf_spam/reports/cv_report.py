"""What `hf-spam cv` reports: per-fold and pooled metrics, mean and spread across folds, the worst out-of-fold
errors, and the files (`oof.csv`, `cv.json`, `cv.md`) and lines that carry them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hf_spam.data.collection import csv_cell, write_atomically
from hf_spam.evaluation.metrics import (
    FPR_BUDGETS,
    mean_and_std,
    score_predictions,
    spam_log_odds,
    spam_score_metrics,
)
from hf_spam.evaluation.plots import plot_ranking, plot_score_histogram
from hf_spam.evaluation.sentence_baseline import SENTENCE_MODEL
from hf_spam.reports.cv_external import external_markdown, write_external

if TYPE_CHECKING:
    from hf_spam.reports.cv import Folds

MODEL_NAMES = {"model": "fine-tuned", "tfidf": "TF-IDF char_wb 2-5 + LR", "minilm": f"{SENTENCE_MODEL} + LR"}


WORST = 20


def model_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str], binary: bool) -> dict:
    """A binary model is ranked by its log-odds of spam (thresholds in log-odds; 0 is the probability 0.5)."""
    if binary:
        return spam_score_metrics(labels, spam_log_odds(probabilities, classes.index("spam")), threshold=0.0)
    return score_predictions(probabilities.argmax(-1), labels, classes)


SCALARS = ("accuracy", "precision", "recall", "f1", "average_precision", "roc_auc")


def scalars(metrics: dict) -> dict[str, float]:
    """The figures that are averaged over folds."""
    values = {name: metrics[name] for name in SCALARS if metrics.get(name) is not None}
    for budget, at in metrics.get("at_fpr", {}).items():
        values[f"recall_at_fpr_{budget}"] = at["recall"]
    return values


def summarize(results: list[dict], folds: Folds, binary: bool, seconds: float) -> dict:
    """Per fold, pooled (every message's out-of-fold score together) and mean +- std across folds."""
    names = list(results[0]["probabilities"])
    summary = {"folds": len(results), "messages": len(folds.texts), "wall_seconds_this_call": round(seconds, 1)}
    summary["fold_seconds"] = [r["seconds"] for r in results]
    if all("baseline_seconds" in r for r in results):  # folds run before baselines were timed have none
        summary["baseline_fold_seconds"] = {
            name: [r["baseline_seconds"][name] for r in results] for name in results[0]["baseline_seconds"]
        }
    summary["fold_train_runtime"] = [r["train_runtime"] for r in results]
    summary["models"] = {}
    for name in names:
        per_fold = [
            model_metrics(np.asarray(r["labels"]), np.asarray(r["probabilities"][name]), folds.classes, binary)
            for r in results
        ]
        labels = np.concatenate([r["labels"] for r in results])
        pooled = model_metrics(
            labels, np.concatenate([r["probabilities"][name] for r in results]), folds.classes, binary
        )
        fold_scalars = [scalars(m) for m in per_fold]
        spread = mean_and_std(fold_scalars)
        summary["models"][name] = {"pooled": pooled, "across_folds": spread, "per_fold": per_fold}
    if binary:
        summary["worst_errors"] = worst_errors(results, folds.classes)
    return summary


def worst_errors(results: list[dict], classes: list[str]) -> list[dict]:
    """The messages the recipe got most wrong out of fold: spam it scored lowest, ham it scored highest."""
    spam = classes.index("spam")
    rows = []
    for r in results:
        for i, (text, label) in enumerate(zip(r["texts"], r["labels"], strict=True)):
            scores = {name: p[i][spam] for name, p in r["probabilities"].items()}
            error = abs((label == spam) - scores["model"])
            if error > 0.5:
                rows.append({"text": text, "label": classes[label], "fold": r["fold"], "error": error, **scores})
    return sorted(rows, key=lambda row: -row["error"])[:WORST]


def write_outputs(cv_dir: Path, results: list[dict], folds: Folds, summary: dict, binary: bool) -> None:
    names = list(results[0]["probabilities"])
    target = {"spam": folds.classes.index("spam")} if binary else {}
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    if binary:
        others = [n for n in names if n != "model"]
        writer.writerow(
            ["text", "label", "fold", "score", *(f"{n}_score" for n in others)]
            + ["log_odds", *(f"{n}_log_odds" for n in others)]
        )
    else:
        writer.writerow(["text", "label", "fold", "prediction", *(f"p_{c}" for c in folds.classes)])
    for r in results:
        log_odds = {n: spam_log_odds(r["probabilities"][n], target["spam"]) for n in names} if binary else {}
        for i, (text, label) in enumerate(zip(r["texts"], r["labels"], strict=True)):
            if binary:
                scores = [f"{r['probabilities'][n][i][target['spam']]:.8g}" for n in names]
                odds = [f"{log_odds[n][i]:.10g}" for n in names]
                writer.writerow([csv_cell(text), csv_cell(folds.classes[label]), r["fold"], *scores, *odds])
            else:
                p = r["probabilities"]["model"][i]
                predicted = csv_cell(folds.classes[int(np.argmax(p))])
                writer.writerow([csv_cell(text), csv_cell(folds.classes[label]), r["fold"], predicted, *p])
    write_atomically(f.getvalue().encode(), cv_dir / "oof.csv")
    if binary:
        plot_oof(cv_dir, results, names, target["spam"], summary)
    if "external" in summary:
        write_external(cv_dir, results, summary["external"], MODEL_NAMES)
    write_atomically(json.dumps(summary, indent=2).encode() + b"\n", cv_dir / "cv.json")
    write_atomically((markdown_summary(summary, binary, full=True) + "\n").encode(), cv_dir / "cv.md")


def plot_oof(cv_dir: Path, results: list[dict], names: list[str], spam: int, summary: dict) -> None:
    """PR/ROC of every model's pooled out-of-fold scores on the same axes, and the recipe's score histogram."""
    labels = np.concatenate([np.asarray(r["labels"]) == spam for r in results]).astype(int)
    odds = {n: np.concatenate([spam_log_odds(r["probabilities"][n], spam) for r in results]) for n in names}
    title = f"Out-of-fold, {summary['messages']:,} messages"
    curves = {MODEL_NAMES.get(n, n): (labels, odds[n]) for n in names}
    plot_ranking(curves, cv_dir / "pr_roc.png", FPR_BUDGETS, title, float(labels.mean()))
    plot_score_histogram(labels, odds["model"], cv_dir / "scores.png", f"{title}: the fine-tuned models' scores")


def fold_line(fold: dict, n_folds: int, classes: list[str], binary: bool) -> str:
    parts = []
    for name, p in fold["probabilities"].items():
        m = model_metrics(np.asarray(fold["labels"]), np.asarray(p), classes, binary)
        parts.append(
            f"{name} AP {m['average_precision']:.4f} acc {m['accuracy']:.4f}"
            if binary
            else f"{name} acc {m['accuracy']:.4f} F1 {m['f1']:.4f}"
        )
    if "external" in fold and binary:
        ext = fold["external"]
        odds = spam_log_odds(ext["probabilities"]["model"], classes.index("spam"))
        m = spam_score_metrics(ext["labels"], odds, threshold=0.0)
        parts.append(
            f"external: model AP {m['average_precision']:.4f}, recall at FPR 0.1% {m['at_fpr']['0.001']['recall']:.1%}"
        )
    sizes = fold["splits"]
    return (
        f"fold {fold['fold']}/{n_folds}: train {sizes['train']}, validation {sizes['validation']}, test "
        f"{sizes['test']}: "
        + " | ".join(parts)
        + f" ({fold['seconds']:.0f} s, training {fold['train_runtime']:.0f} s)"
    )


def markdown_summary(summary: dict, binary: bool, full: bool = False) -> str:
    """The pooled table (every message's out-of-fold score), mean +- std across folds; with `full`, per fold
    and the worst errors too."""
    lines = [
        f"{summary['folds']}-fold cross-validation over {summary['messages']:,} distinct messages (pooled out-of-fold scores)",
        "",
    ]
    budgets = [f"{b:g}" for b in FPR_BUDGETS]
    if binary:
        lines += [
            "| model | average precision | ROC AUC | "
            + " | ".join(f"recall at FPR {float(b):.1%}" for b in budgets)
            + " | accuracy at 0.5 | F1 | AP across folds |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: | ---: |",
        ]
        for name, m in summary["models"].items():
            p, spread = m["pooled"], m["across_folds"]["average_precision"]
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {p['average_precision']:.4f} | {p['roc_auc']:.4f} | "
                + " | ".join(f"{p['at_fpr'][b]['recall']:.2%}" for b in budgets)
                + f" | {p['accuracy']:.2%} | {p['f1']:.4f} | {spread['mean']:.4f} ± {spread['std']:.4f} |"
            )
    else:
        lines += ["| model | accuracy | macro F1 | accuracy across folds |", "| --- | ---: | ---: | ---: |"]
        for name, m in summary["models"].items():
            p, spread = m["pooled"], m["across_folds"]["accuracy"]
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {p['accuracy']:.4f} | {p['f1']:.4f} | {spread['mean']:.4f} ± {spread['std']:.4f} |"
            )
    seconds = summary["fold_seconds"]
    lines += [
        "",
        f"Time per fold (training and scoring the fine-tuned model): {', '.join(f'{s:.0f} s' for s in seconds)} (mean {np.mean(seconds):.0f} s).",
    ]
    for name, times in summary.get("baseline_fold_seconds", {}).items():
        lines.append(
            f"Time per fold of {MODEL_NAMES.get(name, name)} (fitting and scoring): "
            f"{', '.join(f'{s:.1f} s' for s in times)} (mean {np.mean(times):.1f} s)"
            + (", its embeddings computed once for all folds." if name == "minilm" else ".")
        )
    if "external" in summary:
        lines += external_markdown(summary["external"], MODEL_NAMES, full)
    if full:
        lines += detail_tables(summary, binary, budgets)
        if binary:
            lines += [
                "",
                "![Out-of-fold precision-recall and ROC](pr_roc.png)",
                "",
                "![Out-of-fold scores](scores.png)",
            ]
    return "\n".join(lines)


def threshold_cells(log_odds: float) -> str:
    """A log-odds threshold, and its spam probability with the digits that tell it from 1."""
    rest = float(np.exp(-np.logaddexp(0.0, log_odds)))  # 1 - p, computed without rounding p to 1
    probability = float(np.exp(-np.logaddexp(0.0, -log_odds)))
    shown = f"1 - {rest:.3g}" if rest < 1e-3 else f"{probability:.6g}"
    return f"{log_odds:.6g} | {shown}"


def detail_tables(summary: dict, binary: bool, budgets: list[str]) -> list[str]:
    """`cv.md`'s tables under the pooled one: thresholds and intervals, per fold, the worst errors."""
    lines = []
    if binary:
        lines += [
            "",
            "Thresholds (flag at a log-odds of spam of at least it; the spam probability beside it) and 95% Wilson "
            "intervals of the pooled recall at each false-positive budget:",
            "",
        ]
        lines += [
            "| model | budget | threshold: log-odds | probability | recall | 95% interval | false positives |",
            "| --- | ---: | ---: | ---: | ---: | :--- | ---: |",
        ]
        for name, m in summary["models"].items():
            for b in budgets:
                at = m["pooled"]["at_fpr"][b]
                threshold = "none | none" if at["threshold"] is None else threshold_cells(at["threshold"])
                low, high = at["recall_95ci"]
                lines.append(
                    f"| {MODEL_NAMES.get(name, name)} | {float(b):.1%} | {threshold} | {at['recall']:.2%} | {low:.2%} to {high:.2%} | {at['false_positives']} |"
                )
    lines += ["", "Per fold:", ""]
    keys = list(next(iter(summary["models"].values()))["across_folds"])
    lines += [
        "| model | fold | " + " | ".join(keys) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for name, m in summary["models"].items():
        for k, fold in enumerate(m["per_fold"], start=1):
            values = scalars(fold)
            lines.append(
                f"| {MODEL_NAMES.get(name, name)} | {k} | " + " | ".join(f"{values[key]:.4f}" for key in keys) + " |"
            )
        lines.append(
            f"| {MODEL_NAMES.get(name, name)} | mean ± std | "
            + " | ".join(f"{m['across_folds'][key]['mean']:.4f} ± {m['across_folds'][key]['std']:.4f}" for key in keys)
            + " |"
        )
    if binary and summary.get("worst_errors"):
        names = [n for n in summary["models"] if n != "model"]
        lines += ["", f"The {len(summary['worst_errors'])} worst out-of-fold errors of the fine-tuned model:", ""]
        lines += [
            "| label | fold | score | " + " | ".join(f"{n} score" for n in names) + " | text |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " | --- |",
        ]
        for row in summary["worst_errors"]:
            text = row["text"].replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {row['label']} | {row['fold']} | {row['model']:.3f} | "
                + " | ".join(f"{row[n]:.3f}" for n in names)
                + f" | {text} |"
            )
    return lines

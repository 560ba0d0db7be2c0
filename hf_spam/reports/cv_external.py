"""`hf-spam cv --external`: each fold's model, and the baselines fitted on the fold's training rows, scored on
messages unlike the training data (`data.external`), pooled over the folds and as mean +- std across them.

The fold's `hf-spam train` run scores the external messages itself (`external_files`): they are one more
tokenized split that is never trained on, so under the frozen-trunk cache they pass through the trunk once
for all folds, and each fold runs only its trained tail on them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from hf_spam.data.collection import csv_cell, from_csv_cell, write_atomically
from hf_spam.evaluation.cross_corpus import (
    budget_names,
    corpus_metrics,
    errors_table,
    per_file_table,
    summary_table,
    worst_errors,
)
from hf_spam.evaluation.metrics import FPR_BUDGETS, mean_and_std, spam_log_odds
from hf_spam.evaluation.plots import plot_ranking, plot_score_histogram
from hf_spam.evaluation.sentence_baseline import sentence_probe

# cv's default sample: every spam and this many ham, drawn with the recipe's seed.
DEFAULT_MAX_HAM = 10_000


def read_external_predictions(path: Path, classes: list[str]) -> dict:
    """What a fold's run wrote of the external messages: texts, label ids, files and class probabilities."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "texts": [from_csv_cell(row["text"]) for row in rows],
        "labels": [classes.index(from_csv_cell(row["label"])) for row in rows],
        "files": [from_csv_cell(row["file"]) for row in rows],
        "probabilities": {"model": [[float(row[f"p_{name}"]) for name in classes] for row in rows]},
    }


def baseline_scores(external: dict, splits, seed: int, embed) -> dict[str, list]:
    """The baselines fitted on the fold's training split, scored on the external messages. `embed(texts)` gives
    the sentence baseline's vectors (None: that baseline is skipped)."""
    from hf_spam.evaluation.baseline import tfidf_classifier

    train_texts, train_labels = list(splits["train"]["text"]), np.asarray(splits["train"]["label"])
    scores = {"tfidf": tfidf_classifier(seed).fit(train_texts, train_labels).predict_proba(external["texts"]).tolist()}
    if embed is not None:
        probe = sentence_probe(seed)
        probe.fit(embed(train_texts), train_labels)
        scores["minilm"] = probe.predict_proba(embed(external["texts"])).tolist()
    return scores


def _fold_metrics(external: dict, probabilities, spam: int) -> tuple[dict, np.ndarray, np.ndarray]:
    files = list(dict.fromkeys(external["files"]))
    source = np.asarray([files.index(f) for f in external["files"]])
    odds = spam_log_odds(probabilities, spam)
    return corpus_metrics(external["labels"], odds, source, files), odds, source


def _scalars(m: dict) -> dict[str, float]:
    values = {f"recall_at_fpr_{b}": at["recall"] for b, at in m["at_fpr"].items()}
    values |= {"average_precision": m["average_precision"], "roc_auc": m["roc_auc"]}
    return values


def summarize_external(results: list[dict], classes: list[str]) -> dict:
    """Per model: pooled over the folds (every fold's scores of the external messages together), per fold,
    and mean +- std across folds; the pooled worst errors."""
    spam = classes.index("spam")
    first = results[0]["external"]
    files = list(dict.fromkeys(first["files"]))
    summary = {"messages": {f: {c: 0 for c in classes} for f in files}, "models": {}}
    for file, label in zip(first["files"], first["labels"], strict=True):
        summary["messages"][file][classes[label]] += 1
    pooled_odds = {}
    for name in first["probabilities"]:
        per_fold = [_fold_metrics(r["external"], r["external"]["probabilities"][name], spam) for r in results]
        odds = np.concatenate([odds for _, odds, _ in per_fold])
        source = np.concatenate([source for _, _, source in per_fold])
        labels = np.concatenate([r["external"]["labels"] for r in results])
        pooled = corpus_metrics(labels, odds, source, files)
        fold_scalars = [_scalars(m) for m, _, _ in per_fold]
        spread = mean_and_std(fold_scalars)
        summary["models"][name] = {"pooled": pooled, "across_folds": spread, "per_fold": fold_scalars}
        pooled_odds[name] = odds
    texts = [t for r in results for t in r["external"]["texts"]]
    labels = np.concatenate([r["external"]["labels"] for r in results])
    source = np.concatenate([[files.index(f) for f in r["external"]["files"]] for r in results])
    summary["worst_errors"] = worst_errors(texts, labels, pooled_odds, source, files)
    summary["_curves"] = (labels, pooled_odds)  # for the plots; not written to cv.json
    return summary


def external_markdown(summary: dict, names: dict[str, str], full: bool = False) -> list[str]:
    """cv.md's section on the external messages."""
    counts = ", ".join(
        f"`{f}` ({c.get('spam', 0):,} spam, {c.get('ham', 0):,} ham)" for f, c in summary["messages"].items()
    )
    lines = [
        "",
        f"External messages (evaluation only, never trained on): {counts}, scored by every fold's model; pooled over "
        "the folds. Recall of the spam at a false-positive rate measured on the ham (95% Wilson intervals):",
        "",
    ]
    lines += summary_table({n: m["pooled"] for n, m in summary["models"].items()}, names)
    budgets = budget_names()
    lines += ["", "Across folds (mean ± std of each fold's model on the same messages):", ""]
    lines += [
        "| model | " + " | ".join(f"recall at FPR {float(b):.1%}" for b in budgets) + " | AP |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: |",
    ]
    for name, m in summary["models"].items():
        a = m["across_folds"]
        lines.append(
            f"| {names.get(name, name)} | "
            + " | ".join(
                f"{a[f'recall_at_fpr_{b}']['mean']:.1%} ± {a[f'recall_at_fpr_{b}']['std']:.1%}" for b in budgets
            )
            + f" | {a['average_precision']['mean']:.4f} ± {a['average_precision']['std']:.4f} |"
        )
    if full:
        lines += ["", "Per file, at the pooled thresholds:", ""]
        lines += per_file_table({n: m["pooled"] for n, m in summary["models"].items()}, names)
        lines += ["", "The worst errors of the fine-tuned models (pooled over the folds; log-odds of spam):", ""]
        lines += errors_table(summary["worst_errors"], list(summary["models"]), names)
        lines += ["", "![External messages: precision-recall and ROC](external_pr_roc.png)", ""]
        lines += ["![External messages: the fine-tuned models' scores](external_scores.png)"]
    return lines


def write_external(cv_dir: Path, results: list[dict], summary: dict, names: dict[str, str]) -> None:
    """`external_scores.csv` (every fold's log-odds of every external message) and the pictures."""
    labels, odds = summary.pop("_curves")
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    models = list(odds)
    writer.writerow(["text", "label", "file", "fold", *(f"{n}_log_odds" for n in models)])
    offset = 0
    for r in results:
        ext = r["external"]
        for i, (text, label, file) in enumerate(zip(ext["texts"], ext["labels"], ext["files"], strict=True)):
            scores = (f"{odds[n][offset + i]:.10g}" for n in models)
            writer.writerow([csv_cell(text), "spam" if label else "ham", csv_cell(file), r["fold"], *scores])
        offset += len(ext["texts"])
    write_atomically(f.getvalue().encode(), cv_dir / "external_scores.csv")
    curves = {names.get(n, n): (labels, odds[n]) for n in models}
    plot_ranking(
        curves,
        cv_dir / "external_pr_roc.png",
        FPR_BUDGETS,
        "External messages, every fold's model",
        float(labels.mean()),
    )
    plot_score_histogram(labels, odds["model"], cv_dir / "external_scores.png", "External messages: fine-tuned models")

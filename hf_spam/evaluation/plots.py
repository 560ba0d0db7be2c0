"""Training curves and the confusion matrix as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_loss(log_history: list[dict], examples_per_step: int, path: str | Path) -> Path:
    """Training and validation loss against epochs, with examples seen on a second axis (as in the book)."""
    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e and "epoch" in e]
    validation = [(e["epoch"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="Training loss")
    if validation:
        ax.plot(*zip(*validation, strict=True), "o-.", label="Validation loss")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
    steps_per_epoch = _steps_per_epoch(log_history)
    if steps_per_epoch:
        top = ax.secondary_xaxis(
            "top",
            functions=(
                lambda epoch: epoch * steps_per_epoch * examples_per_step,
                lambda seen: seen / (steps_per_epoch * examples_per_step),
            ),
        )
        top.set_xlabel("Examples seen")
    return _save(fig, path)


def plot_accuracy(log_history: list[dict], path: str | Path, f1_name: str = "spam") -> Path:
    """Validation accuracy and F1 (of spam, or the macro average of a multi-class model) at the end of each epoch."""
    rows = [e for e in log_history if "eval_accuracy" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [e["epoch"] for e in rows]
    ax.plot(epochs, [e["eval_accuracy"] for e in rows], "o-", label="Validation accuracy")
    ax.plot(epochs, [e["eval_f1"] for e in rows], "s-.", label=f"Validation F1 ({f1_name})")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Score")
    # Its own range: scores of 0.915-0.946 on a 0-1 axis would be drawn as one flat line.
    values = [e[key] for e in rows for key in ("eval_accuracy", "eval_f1")]
    if values:
        low, high = min(values), max(values)
        margin = max((high - low) * 0.15, 0.005)
        ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin) + 0.002)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_ranking(
    curves: dict[str, tuple], path: str | Path, budgets=(), title: str = "", spam_share: float | None = None
) -> Path:
    """Precision-recall and ROC curves side by side, one line per model: `curves[name] = (labels, scores)`
    (1 = spam; scores rank as the spam probability does, log-odds included). The ROC's false-positive axis is
    logarithmic, with the `budgets` (false-positive rates) marked, where a spam filter is operated."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    fig, (pr, roc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, (labels, scores) in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        ap = average_precision_score(labels, scores)
        pr.step(recall, precision, where="post", label=f"{name} (AP {ap:.4f})")
        fpr, tpr, _ = roc_curve(labels, scores)
        roc.step(fpr, tpr, where="post", label=name)
    pr.set_xlabel("Recall (spam caught)")
    pr.set_ylabel("Precision" + (f" at {spam_share:.0%} spam" if spam_share is not None else ""))
    pr.legend(loc="lower left", fontsize=8)
    pr.grid(alpha=0.3)
    first = next(iter(curves.values()), None)
    ham = int((np.asarray(first[0]) == 0).sum()) if first is not None else 0
    roc.set_xscale("log")
    roc.set_xlim(max(1.0 / max(ham, 1), 1e-4) / 2, 1.0)
    for budget in budgets:
        roc.axvline(budget, color="grey", linestyle=":", linewidth=1)
        roc.text(budget, 0.02, f" {budget:.1%}", rotation=90, color="grey", fontsize=7, va="bottom")
    roc.set_xlabel("False-positive rate (ham flagged), log scale")
    roc.set_ylabel("Recall (spam caught)")
    roc.legend(loc="lower right", fontsize=8)
    roc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_score_histogram(labels, scores, path: str | Path, title: str = "", thresholds: dict | None = None) -> Path:
    """How the model's spam log-odds fall for each true class (log counts), with decision thresholds marked."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    finite = np.clip(scores, -50, 50)  # a saturated softmax gives +-1000; keep the bins readable
    bins = np.linspace(finite.min(), finite.max(), 60) if len(finite) else 10
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, name, colour in ((0, "ham", "tab:blue"), (1, "spam", "tab:red")):
        part = finite[labels == label]
        if len(part):
            ax.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{name} ({len(part):,})", log=True)
    for name, value in (thresholds or {}).items():
        if value is not None:
            ax.axvline(max(-50, min(50, value)), color="black", linestyle=":", linewidth=1)
            ax.text(max(-50, min(50, value)), ax.get_ylim()[1], f" {name}", rotation=90, fontsize=7, va="top")
    ax.set_xlabel("Log-odds of spam (0 = probability 0.5; clipped to +-50)")
    ax.set_ylabel("Messages (log scale)")
    ax.legend(loc="upper center")
    if title:
        ax.set_title(title, fontsize=9 if len(title) > 60 else None)
    return _save(fig, path)


def plot_confusion_matrix(
    matrix: list[list[int]], path: str | Path, classes: list[str] | None = None, title: str = "Test split"
) -> Path:
    """`[[tn, fp], [fn, tp]]` (or one row and column per class): rows are the true label, columns the prediction."""
    names = classes or ["ham", "spam"]
    size = max(4, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(
        range(len(names)), names, rotation=45 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center"
    )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    return _save(fig, path)


def _steps_per_epoch(log_history: list[dict]) -> float | None:
    for entry in log_history:
        if entry.get("epoch") and entry.get("step"):
            return entry["step"] / entry["epoch"]
    return None


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

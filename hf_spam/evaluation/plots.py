"""Training curves and the confusion matrix as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
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

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


def plot_accuracy(log_history: list[dict], path: str | Path) -> Path:
    """Validation accuracy and F1 at the end of each epoch."""
    rows = [e for e in log_history if "eval_accuracy" in e]
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [e["epoch"] for e in rows]
    ax.plot(epochs, [e["eval_accuracy"] for e in rows], "o-", label="Validation accuracy")
    ax.plot(epochs, [e["eval_f1"] for e in rows], "s-.", label="Validation F1 (spam)")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Score")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_confusion_matrix(matrix: list[list[int]], path: str | Path, title: str = "Test split") -> Path:
    """`[[tn, fp], [fn, tp]]`: rows are the true label, columns the prediction."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    names = ["ham", "spam"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
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

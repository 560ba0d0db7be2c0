"""What a spam score says on messages from other sources than the training data (`data.external`): recall at
false-positive budgets where the false positives are counted on the files' ham, at the model's own decision
rule, average precision and ROC AUC, per file and pooled, and the worst errors to read.

Every figure ranks messages by their log-odds of spam (`metrics.spam_log_odds`), as `hf-spam cv` does. The
thresholds of the budgets are set on all the ham of all files together; each file's recall (a file of spam)
or false-positive rate (a file of ham) is then read at those thresholds, so the rows of one table are one
operating point each.
"""

from __future__ import annotations

import numpy as np

from hf_spam.evaluation.metrics import FPR_BUDGETS, spam_score_metrics, wilson_interval

WORST = 20


def share(hits: int, trials: int) -> dict:
    """A proportion with its Wilson 95% interval."""
    return {"rate": hits / max(trials, 1), "count": hits, "of": trials, "95ci": list(wilson_interval(hits, trials))}


def corpus_metrics(labels, log_odds, source, files: list[str], flagged=None) -> dict:
    """`labels` (1 = spam), each message's spam log-odds, the index of its file in `files`, and, where the model
    has a decision rule of its own (argmax, or a saved `spam_threshold`), whether it flags each message.

    Returns the pooled `spam_score_metrics` (thresholds in log-odds, 0 = probability 0.5; budgets
    `FPR_BUDGETS`), `decision` (recall and false-positive rate at the model's own rule), and `per_file`: its
    messages, and at each budget's pooled threshold and at the model's rule, its recall (spam) and
    false-positive rate (ham); AP and ROC AUC where a file holds both labels."""
    y, s, source = np.asarray(labels, dtype=int), np.asarray(log_odds, dtype=np.float64), np.asarray(source)
    pooled = spam_score_metrics(y, s, threshold=0.0)
    decided = s >= 0.0 if flagged is None else np.asarray(flagged, dtype=bool)
    pooled["decision"] = rates(y, decided)
    thresholds = {b: at["threshold"] for b, at in pooled["at_fpr"].items()}
    per_file = {}
    for k, name in enumerate(files):
        mine = source == k
        yk, sk = y[mine], s[mine]
        row = {"spam": int(yk.sum()), "ham": int((yk == 0).sum())}
        row["at_fpr"] = {
            b: rates(yk, np.zeros(len(sk), bool) if t is None else sk >= t) for b, t in thresholds.items()
        }
        row["decision"] = rates(yk, decided[mine])
        if row["spam"] and row["ham"]:
            both = spam_score_metrics(yk, sk, threshold=0.0)
            row["average_precision"], row["roc_auc"] = both["average_precision"], both["roc_auc"]
        per_file[name] = row
    pooled["per_file"] = per_file
    return pooled


def rates(labels: np.ndarray, flagged: np.ndarray) -> dict:
    """Recall on the spam and false-positive rate on the ham of `labels`, flagging `flagged`."""
    spam, ham = labels == 1, labels == 0
    return {
        "recall": share(int((flagged & spam).sum()), int(spam.sum())),
        "false_positive_rate": share(int((flagged & ham).sum()), int(ham.sum())),
    }


def worst_errors(texts, labels, scores: dict[str, np.ndarray], source, files: list[str], n: int = WORST) -> list[dict]:
    """The `n` spam the model scored lowest and the `n` ham it scored highest (log-odds of `scores["model"]`,
    the other models' beside them), to read."""
    y, model = np.asarray(labels), np.asarray(scores["model"])
    rows = []
    for label, order in ((1, np.argsort(model)), (0, np.argsort(-model))):
        picked = [i for i in order if y[i] == label][:n]
        for i in picked:
            rows.append(
                {
                    "text": texts[i],
                    "label": "spam" if label else "ham",
                    "file": files[int(source[i])],
                    **{name: float(np.asarray(values)[i]) for name, values in scores.items()},
                }
            )
    return rows


def budget_names() -> list[str]:
    return [f"{b:g}" for b in FPR_BUDGETS]


def summary_table(models: dict[str, dict], names: dict[str, str]) -> list[str]:
    """One row per model: recall at each budget (with its interval), at the model's own rule, AP, ROC AUC."""
    budgets = budget_names()
    lines = [
        "| model | "
        + " | ".join(f"recall at FPR {float(b):.1%}" for b in budgets)
        + " | own rule: recall / FPR | AP | ROC AUC |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: | ---: |",
    ]
    for name, m in models.items():
        cells = []
        for b in budgets:
            at = m["at_fpr"][b]
            low, high = at["recall_95ci"]
            cells.append(f"{at['recall']:.1%} ({low:.1%}-{high:.1%})")
        rule = m["decision"]
        lines.append(
            f"| {names.get(name, name)} | "
            + " | ".join(cells)
            + f" | {rule['recall']['rate']:.1%} / {rule['false_positive_rate']['rate']:.2%} | "
            f"{_figure(m['average_precision'])} | {_figure(m['roc_auc'])} |"
        )
    return lines


def per_file_table(models: dict[str, dict], names: dict[str, str]) -> list[str]:
    """Per file and model: recall (a file's spam) or false-positive rate (its ham) at each budget's pooled
    threshold and at the model's own rule."""
    budgets = budget_names()
    lines = [
        "| file | model | measure | " + " | ".join(f"at FPR {float(b):.1%}" for b in budgets) + " | own rule |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in budgets) + " | ---: |",
    ]
    first = next(iter(models.values()))
    for file in first["per_file"]:
        for name, m in models.items():
            row = m["per_file"][file]
            for label, measure in (("spam", "recall"), ("ham", "false_positive_rate")):
                if not row[label]:
                    continue
                cells = [_rate(row["at_fpr"][b][measure]) for b in budgets]
                what = f"recall ({row['spam']:,} spam)" if label == "spam" else f"FPR ({row['ham']:,} ham)"
                lines.append(
                    f"| {file} | {names.get(name, name)} | {what} | "
                    + " | ".join(cells)
                    + f" | {_rate(row['decision'][measure])} |"
                )
    return lines


def errors_table(rows: list[dict], models: list[str], names: dict[str, str]) -> list[str]:
    """The worst errors, as a table (log-odds of spam, each model's)."""
    lines = [
        "| label | file | " + " | ".join(f"{names.get(n, n)} log-odds" for n in models) + " | text |",
        "| --- | --- | " + " | ".join("---:" for _ in models) + " | --- |",
    ]
    for row in rows:
        text = row["text"].replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {row['label']} | {row['file']} | " + " | ".join(f"{row[n]:.2f}" for n in models) + f" | {text} |"
        )
    return lines


def _rate(share_: dict) -> str:
    return f"{share_['rate']:.2%}"


def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

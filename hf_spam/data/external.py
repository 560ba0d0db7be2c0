"""Messages for evaluation only: labelled files unlike the training data (other people's spam reports, other
people's personal messages), read, cleaned of every text the model trained on, and sampled with a seed.

What they measure is how a classifier does on messages of another time, place and sender than its training
data, which a held-out split of the same collection cannot show. They are never a training split: `hf-spam
train` scores them after training (`external_files`), `hf-spam cv --external` with each fold's model, and
`hf-spam eval` with a saved one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from hf_spam.data.sources import SourceError, read_labelled_file

logger = logging.getLogger(__name__)

# Where to read about the two public corpora the project measures on (not redistributed with it).
EXTERNAL_DOCS = "docs/quality.md#external-corpora"


@dataclasses.dataclass
class EvaluationSet:
    """Labelled messages from several files: `source[i]` indexes `files` (each file's base name)."""

    texts: list[str]
    labels: np.ndarray
    source: np.ndarray
    files: list[str]
    # What was left out, by reason: duplicates across the files, texts the model trained on, ham not sampled.
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self, classes: list[str]) -> dict[str, dict[str, int]]:
        """Messages per file and label."""
        return {
            name: {c: int(((self.source == k) & (self.labels == i)).sum()) for i, c in enumerate(classes)}
            for k, name in enumerate(self.files)
        }

    def describe(self, classes: list[str]) -> str:
        total = ", ".join(f"{int((self.labels == i).sum()):,} {c}" for i, c in enumerate(classes))
        left = ", ".join(f"{n:,} {why}" for why, n in self.dropped.items() if n)
        return f"{total} from {', '.join(self.files)}" + (f" (left out: {left})" if left else "")


def evaluation_set(
    paths: list[str],
    classes: list[str],
    max_ham: int | None = None,
    seed: int = 123,
    exclude=(),
    text_column: str | None = None,
    label_column: str | None = None,
) -> EvaluationSet:
    """The messages of `paths`, each text once (its first file), none of `exclude` (the texts a model trained
    on or was tuned on), and, with `max_ham`, every message that is not ham but only `max_ham` ham drawn with
    `seed` (scoring tens of thousands of messages with a 30-layer model takes a while on a CPU)."""
    names = [Path(p).name for p in paths]
    if len(set(names)) != len(names):
        raise SourceError(f"external files: two files share a base name ({', '.join(paths)}); rename one")
    excluded = set(exclude)
    texts, labels, source = [], [], []
    seen: set[str] = set()
    dropped = {"duplicates": 0, "in the training data": 0, "ham not sampled": 0}
    for k, path in enumerate(paths):
        file_texts, file_labels = read_labelled_file(path, classes, text_column, label_column)
        for text, label in zip(file_texts, file_labels, strict=True):
            if text in excluded:
                dropped["in the training data"] += 1
            elif text in seen:
                dropped["duplicates"] += 1
            else:
                seen.add(text)
                texts.append(text)
                labels.append(label)
                source.append(k)
    labels, source = np.asarray(labels, dtype=np.int64), np.asarray(source, dtype=np.int64)
    if max_ham is not None and "ham" in classes:
        ham = np.flatnonzero(labels == classes.index("ham"))
        if len(ham) > max_ham:
            chosen = np.random.default_rng(seed).choice(ham, size=max_ham, replace=False)
            keep = np.sort(np.concatenate([np.flatnonzero(labels != classes.index("ham")), chosen]))
            dropped["ham not sampled"] = len(ham) - max_ham
            texts, labels, source = [texts[i] for i in keep], labels[keep], source[keep]
    if dropped["in the training data"]:
        logger.info("External files: %d texts the model trained on are left out", dropped["in the training data"])
    return EvaluationSet(texts, labels, source, names, dropped)


def present_files(paths: list[str]) -> list[str] | None:
    """The external files when all are on this machine; None, after one line that says how to get them,
    where any is missing (they are public corpora that hf_spam does not redistribute)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        logger.warning(
            "External evaluation skipped: %s not found (public corpora that hf_spam does not ship; %s says how "
            "to get them)",
            ", ".join(missing),
            EXTERNAL_DOCS,
        )
        return None
    return list(paths)

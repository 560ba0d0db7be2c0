"""The classifier object both backends answer through: `SpamClassifier` (probabilities, decision rule,
tokenizer) and the batching that feeds a forward function each distinct text once, in batches of similar
token length."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hf_spam.models.loading import (
    missing_local_path,
)

# The two messages chapter 6 of the book classifies after training.
BOOK_EXAMPLES = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
]


def check_model_location(model_dir: str) -> None:
    """A trained directory must be one: a file, or a path that is not there (and cannot be a Hub id `user/name` or `name`),
    is said as such, before Transformers reports it as an invalid repository id or a JSON error."""
    path = Path(model_dir)
    if path.is_file():
        raise NotADirectoryError(f"{model_dir} is a file; give the output directory of `hf-spam train` (or a Hub id)")
    if missing_local_path(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such directory; give the output directory of `hf-spam train`")


def batched(forward, tokenizer, max_length: int, batch_size: int, tensors: str):
    """`texts -> [len(texts), labels]` probabilities from `forward(padded batch)`, each distinct text computed
    once, in batches of similar token length (the less padding, the less work), right-padded, truncated to
    `max_length`. `tensors` is the batch type `forward` takes: "pt" (torch) or "np" (ONNX Runtime)."""

    cap = character_cap(tokenizer, max_length)

    def probabilities(texts: list[str], on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """`on_batch(n)` after each forward pass: the n input texts (repeats included) it answered."""
        repeats = Counter(texts)
        distinct = list(repeats)  # real streams repeat messages: classify each once
        # Cut first: tokenizing an 18 MB line to keep its first 1,024 tokens took 24 s and 4 GB.
        input_ids = tokenizer([t[:cap] for t in distinct], truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(distinct)), key=lambda i: len(input_ids[i]))
        rows: list[np.ndarray | None] = [None] * len(distinct)
        for index in _length_batches(order, [len(ids) for ids in input_ids], batch_size):
            batch = tokenizer.pad(
                {"input_ids": [input_ids[i] for i in index]}, padding_side="right", return_tensors=tensors
            )
            for i, row in zip(index, forward(dict(batch)), strict=True):
                rows[i] = row
            if on_batch is not None:
                on_batch(sum(repeats[distinct[i]] for i in index))
        position = {text: i for i, text in enumerate(distinct)}
        return np.stack([rows[position[text]] for text in texts]) if texts else np.zeros((0, 0), np.float32)

    return probabilities


def character_cap(tokenizer, max_length: int) -> int:
    """How many characters of a text can matter once it is truncated to `max_length` tokens: no token spans
    more characters than the longest entry of the vocabulary, so cutting a text there first changes none of
    its first `max_length` tokens (a word cut in two lies past them)."""
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return max_length * max(longest, 1) + 1


def _length_batches(order: list[int], lengths: list[int], batch_size: int, slack: float = 0.25):
    """Consecutive runs of `order` (ascending length) of at most `batch_size`, cut early where padding to the
    run's longest text would add more than `slack` of its real tokens (plus a few): a few dozen texts of mixed
    lengths, as a server gathers them, then go as several batches instead of one padded to the longest."""
    batch: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]
        if batch and (len(batch) == batch_size or n * (len(batch) + 1) > (1 + slack) * (tokens + n) + 16):
            yield batch
            batch, tokens = [], 0
        batch.append(i)
        tokens += n
    if batch:
        yield batch


class SpamClassifier:
    """A saved classifier ready to answer: its batched probability function, config, tokenizer and decision rule.

    As in setfit, `predict_proba(texts)` gives one row of label probabilities per text and `predict(texts)` the
    label names; calling it gives `pipeline()`'s answers, `[{"label", "score"}, ...]`.

    The label is the argmax, as in `pipeline()`, unless there is a decision threshold: `threshold`, else the
    config's `spam_threshold`. Then a message is spam when its spam probability is at least the threshold,
    and `score` is the probability of the label given.
    """

    def __init__(
        self, probabilities: Callable[[list[str]], np.ndarray] | None, config, tokenizer=None, threshold=None
    ):
        threshold = threshold if threshold is not None else getattr(config, "spam_threshold", None)
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            # config.json is anyone's file: "0.5" or [0.5] must be one clear line, not a TypeError traceback.
            raise ValueError(f"spam_threshold (config.json): a number in [0, 1], got {threshold!r}")
        spam = config.label2id.get("spam")
        if threshold is not None and (spam is None or len(config.id2label) != 2):
            labels = ", ".join(config.id2label[i] for i in sorted(config.id2label))
            raise ValueError(f"threshold: a spam threshold needs a ham/spam model; this one's labels are {labels}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: a spam probability in [0, 1], got {threshold!r}")
        self.probabilities, self.config, self.tokenizer, self.threshold = probabilities, config, tokenizer, threshold
        self.spam = spam
        self._counting, self._counting_lock = None, threading.Lock()

    def predict_proba(self, texts: list[str], on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """`[len(texts), labels]` probabilities, in input order; `on_batch(n)` as texts are answered (a
        progress bar's `update`)."""
        return self.probabilities(texts, on_batch) if on_batch is not None else self.probabilities(texts)

    def decide(self, p: np.ndarray) -> np.ndarray:
        """The label id of each probability row."""
        if self.threshold is None:
            return p.argmax(-1)
        return np.where(p[:, self.spam] >= np.float32(self.threshold), self.spam, 1 - self.spam)

    def predict(self, texts: list[str], on_batch: Callable[[int], object] | None = None) -> list[str]:
        """The label of each text."""
        p = self.predict_proba(texts, on_batch)
        return [self.config.id2label[int(i)] for i in self.decide(p)] if len(p) else []

    def __call__(self, texts: list[str], on_batch: Callable[[int], object] | None = None) -> list[dict]:
        p = self.predict_proba(texts, on_batch)
        if not len(p):
            return []
        labels = self.decide(p)
        scores = p[np.arange(len(p)), labels]
        return [
            {"label": self.config.id2label[int(label)], "score": float(score)}
            for label, score in zip(labels, scores, strict=True)
        ]

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens the model would read of each text, before truncation (a template's included).

        A server counts on its request threads while its batcher classifies: a Rust tokenizer used by two
        threads at once fails with "Already borrowed" (tokenizers 0.22), so counting has a copy of its own,
        used by one thread at a time."""
        with self._counting_lock:
            if self._counting is None:
                self._counting = copy.deepcopy(self.tokenizer)
            return [len(ids) for ids in self._counting(texts)["input_ids"]]


def read_run_summary(model_dir: str | Path) -> dict:
    """What `hf-spam train` recorded of the run beside its model (`metrics.json`), or {} where there is none."""
    path = Path(model_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def naming_the_model(model_dir: str, err: Exception) -> str:
    """An error's one line, always saying which model it is about."""
    return str(err) if str(model_dir) in str(err) else f"{model_dir}: {err}"

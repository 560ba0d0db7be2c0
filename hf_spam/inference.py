"""Prediction with a saved classifier: the answers of `pipeline("text-classification")`, computed faster.

A saved output directory is a plain `*ForSequenceClassification` (GPT-2, Llama, Gemma 3, ...) that `pipeline()`
loads without hf_spam. `hf-spam predict` gives the same labels and scores (up to float rounding) for less work:
it classifies each distinct text once and batches texts of similar token length together; for GPT-2 it also
runs the final block only at the last real token, the one whose logits are read
(`trunk_cache.last_block_at_ends`), and computes GELU with PyTorch's fused kernel (`modeling.use_fused_gelu`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from hf_spam.modeling import (
    check_decoder,
    check_local_model_dir,
    missing_local_path,
    model_context,
    use_fused_gelu,
    warn_if_bfloat16_is_emulated,
)
from hf_spam.pooled_forward import pooled_logits

# The two messages chapter 6 of the book classifies after training.
BOOK_EXAMPLES = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_classifier(
    model_dir: str,
    batch_size: int = 64,
    device: str | int | None = None,
    dtype: str = "float32",
    threshold: float | None = None,
    backend: str = "torch",
) -> SpamClassifier:
    """The `SpamClassifier` of a trained directory: `classifier(texts)` answers
    `[{"label": "spam"|"ham", "score": float}, ...]` in input order, `predict_proba` gives the probabilities.

    The label is the argmax, as in `pipeline()`, unless there is a decision threshold: `threshold`, else the
    `spam_threshold` saved in the model's config (`--max_fpr` at training). Then a message is spam when its
    spam probability is at least the threshold, and `score` is the probability of the label given.

    Texts longer than the model context are truncated to it. Only safetensors weights are loaded; no remote
    code runs. `dtype="bfloat16"` computes the matrix products in bfloat16 (autocast): about twice as fast on
    CPUs with AVX-512 BF16 or AMX and on recent GPUs, but not exact: a score can move in its second decimal,
    and a message near 0.5 can change label.

    `backend="onnxruntime"` runs `hf-spam export`'s graph instead: `onnx/model.onnx` (float32, exact) or, with
    `dtype="int8"`, `onnx/model_quantized.onnx`, on the CPU, with the same batching and answers.
    """
    if backend == "onnxruntime":
        from hf_spam.export import onnx_classifier

        return onnx_classifier(model_dir, batch_size, dtype, threshold)
    if backend != "torch":
        raise ValueError(f"backend: torch or onnxruntime, got {backend!r}")
    _torch_dtype(dtype)  # before loading: an unknown dtype fails at once
    model, tokenizer = load_model_dir(model_dir, device)
    return classifier(model, tokenizer, batch_size, dtype, threshold)


def check_model_location(model_dir: str) -> None:
    """A trained directory must be one: a file, or a path that is not there (and cannot be a Hub id `user/name` or `name`),
    is said as such, before Transformers reports it as an invalid repository id or a JSON error."""
    path = Path(model_dir)
    if path.is_file():
        raise NotADirectoryError(f"{model_dir} is a file; give the output directory of `hf-spam train` (or a Hub id)")
    if missing_local_path(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such directory; give the output directory of `hf-spam train`")


def load_model_dir(model_dir: str, device: str | int | None = "cpu") -> tuple[PreTrainedModel, object]:
    """The model (eval mode, fused GELU for GPT-2, on `device`; None: cuda if available) and tokenizer of a
    trained directory or Hub id: safetensors only, never remote code."""
    check_model_location(model_dir)
    check_local_model_dir(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)  # first: a broken one fails clearly
    check_decoder(config, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, config=config, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, config=config, trust_remote_code=False, use_safetensors=True
    ).eval()
    use_fused_gelu(model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(f"cuda:{device}" if isinstance(device, int) else device))
    return model, tokenizer


def classifier(
    model: PreTrainedModel,
    tokenizer,
    batch_size: int = 64,
    dtype: str = "float32",
    threshold: float | None = None,
) -> SpamClassifier:
    """`load_classifier`'s classifier for a model already in memory (put in eval mode), on its device."""
    torch_dtype = _torch_dtype(dtype)
    model.eval()
    if torch_dtype == torch.bfloat16:
        warn_if_bfloat16_is_emulated(model.device, "Prediction")

    def forward(batch: dict[str, torch.Tensor]) -> np.ndarray:
        autocast = torch.autocast(model.device.type, dtype=torch_dtype, enabled=torch_dtype != torch.float32)
        with torch.inference_mode(), autocast:
            logits = pooled_logits(model, **{k: v.to(model.device) for k, v in batch.items()})
        return logits.float().softmax(-1).cpu().numpy()

    probabilities = batched(forward, tokenizer, model_context(model.config), batch_size, "pt")
    return SpamClassifier(probabilities, model.config, tokenizer, threshold)


def batched(forward, tokenizer, max_length: int, batch_size: int, tensors: str):
    """`texts -> [len(texts), labels]` probabilities from `forward(padded batch)`, each distinct text computed
    once, in batches of similar token length (the less padding, the less work), right-padded, truncated to
    `max_length`. `tensors` is the batch type `forward` takes: "pt" (torch) or "np" (ONNX Runtime)."""

    def probabilities(texts: list[str]) -> np.ndarray:
        distinct = list(dict.fromkeys(texts))  # real streams repeat messages: classify each once
        input_ids = tokenizer(distinct, truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(distinct)), key=lambda i: len(input_ids[i]))
        rows: list[np.ndarray | None] = [None] * len(distinct)
        for index in _length_batches(order, [len(ids) for ids in input_ids], batch_size):
            batch = tokenizer.pad(
                {"input_ids": [input_ids[i] for i in index]}, padding_side="right", return_tensors=tensors
            )
            for i, row in zip(index, forward(dict(batch)), strict=True):
                rows[i] = row
        position = {text: i for i, text in enumerate(distinct)}
        return np.stack([rows[position[text]] for text in texts]) if texts else np.zeros((0, 0), np.float32)

    return probabilities


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
        spam = config.label2id.get("spam")
        if threshold is not None and (spam is None or len(config.id2label) != 2):
            labels = ", ".join(config.id2label[i] for i in sorted(config.id2label))
            raise ValueError(f"threshold: a spam threshold needs a ham/spam model; this one's labels are {labels}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: a spam probability in [0, 1], got {threshold!r}")
        self.probabilities, self.config, self.tokenizer, self.threshold = probabilities, config, tokenizer, threshold
        self.spam = spam

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """`[len(texts), labels]` probabilities, in input order."""
        return self.probabilities(texts)

    def decide(self, p: np.ndarray) -> np.ndarray:
        """The label id of each probability row."""
        if self.threshold is None:
            return p.argmax(-1)
        return np.where(p[:, self.spam] >= np.float32(self.threshold), self.spam, 1 - self.spam)

    def predict(self, texts: list[str]) -> list[str]:
        """The label of each text."""
        p = self.predict_proba(texts)
        return [self.config.id2label[int(i)] for i in self.decide(p)] if len(p) else []

    def __call__(self, texts: list[str]) -> list[dict]:
        p = self.predict_proba(texts)
        if not len(p):
            return []
        labels = self.decide(p)
        scores = p[np.arange(len(p)), labels]
        return [
            {"label": self.config.id2label[int(label)], "score": float(score)}
            for label, score in zip(labels, scores, strict=True)
        ]

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens the model would read of each text, before truncation (a template's included)."""
        return [len(ids) for ids in self.tokenizer(texts)["input_ids"]]


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        hint = (
            " (int8 runs on --backend onnxruntime, after `hf-spam export --quantize int8`)" if dtype == "int8" else ""
        )
        raise ValueError(f"dtype: torch runs {' or '.join(DTYPES)}, got {dtype!r}{hint}")
    return DTYPES[dtype]

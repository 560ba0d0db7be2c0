"""Tokenized splits, cached on disk under a key of the splits and the tokenizer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from datasets import DatasetDict

from hf_spam.data.collection import default_cache_dir

logger = logging.getLogger(__name__)


def _tokenizer_fingerprint(tokenizer) -> str:
    if hasattr(tokenizer, "backend_tokenizer"):
        # The backend records the truncation/padding of the last call; that transient state must not change the
        # key (max_length is part of it anyway), or a repeated call in the same process misses the cache.
        backend = json.loads(tokenizer.backend_tokenizer.to_str())
        backend["truncation"] = backend["padding"] = None
        state = json.dumps(backend)
    else:
        state = repr(tokenizer)
    return hashlib.sha256(f"{state}|{tokenizer.pad_token_id}|{tokenizer.padding_side}".encode()).hexdigest()[:16]


def _splits_fingerprint(splits: DatasetDict) -> str:
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(name.encode())
        for text, label in zip(splits[name]["text"], splits[name]["label"], strict=True):
            digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def tokenize_splits(
    splits: DatasetDict,
    tokenizer,
    max_length: int,
    padding: str = "longest",
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Tokenize every split: right padding with the tokenizer's pad token, truncation to `max_length`.

    `padding="longest"` leaves sequences unpadded; a `DataCollatorWithPadding` pads each batch.
    `padding="max_length"` is the book's: every example is padded to the longest *training* example, and
    validation/test are padded or truncated to that same length.

    `split_special_tokens=True` makes a literal "<|endoftext|>" in a message ordinary text, so the pad/EOS id
    never comes from user text and the last real token of a row is always found where the mask says.
    """
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with hf_spam.models.tokenizer.load_tokenizer")
    if tokenizer.padding_side != "right":
        raise ValueError(f"the tokenizer pads on the {tokenizer.padding_side}; hf_spam needs right padding")
    cache = Path(cache_dir or default_cache_dir()) / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        f"{_splits_fingerprint(splits)}|{_tokenizer_fingerprint(tokenizer)}|{max_length}".encode()
    ).hexdigest()[:16]

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length, split_special_tokens=True)

    tokenized = DatasetDict(
        {
            name: split.map(
                encode,
                batched=True,
                cache_file_name=str(cache / f"{key}-{name}.arrow"),
                new_fingerprint=f"{key}-{name}",
                desc=f"Tokenizing {name}",
            )
            for name, split in splits.items()
        }
    )
    if padding == "longest":
        return tokenized

    length = max(len(ids) for ids in tokenized["train"]["input_ids"])
    pad_id = tokenizer.pad_token_id

    def pad_to_length(example):
        ids = example["input_ids"][:length]
        n_pad = length - len(ids)
        return {"input_ids": ids + [pad_id] * n_pad, "attention_mask": [1] * len(ids) + [0] * n_pad}

    return DatasetDict(
        {
            name: split.map(
                pad_to_length,
                cache_file_name=str(cache / f"{key}-{name}-pad{length}.arrow"),
                new_fingerprint=f"{key}-{name}-pad{length}",
                desc=f"Padding {name} to {length}",
            )
            for name, split in tokenized.items()
        }
    )

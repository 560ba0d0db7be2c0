"""Which token positions a message's logits are read from: the book's last token, or the other choices of its
bonus experiments. Saved in the model's config as `hf_spam_pooling`, so that every path that loads the model
(`hf-spam predict`, `export`, `serve`) reads the same positions as training did.

    last       the last real token (the book's "flexible" last token; what `pipeline()` reads)
    first      the first token
    mean       the average over the real tokens
    last_mean  the average of `last` and `mean` (the book's "last token + average of all tokens")

`score` is a linear map, so averaging per-token logits equals scoring the averaged hidden states. A plain
`pipeline()` reads the last non-pad token: it reproduces `last` only.
"""

from __future__ import annotations

import torch

POOLINGS = ("last", "first", "mean", "last_mean")
CONFIG_KEY = "hf_spam_pooling"


def pooling_of(config) -> str:
    """The model's pooling (a config without one is `last`, the book's and Transformers' own)."""
    pooling = getattr(config, CONFIG_KEY, None) or "last"
    if pooling not in POOLINGS:
        raise ValueError(f"{CONFIG_KEY} in the model's config must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row (right or left padding alike): the one place hf_spam finds
    it. Taken from the mask, not by comparing ids with the pad id: GPT-2's pad id is its EOS id, and a
    template or `append_eos` can end a message with that very token."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.to(positions.dtype)).argmax(-1)


def pool_padded(token_logits: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """`[rows, tokens, labels]` -> `[rows, labels]` at the positions `pooling` names, the real tokens being
    where `attention_mask` is 1 (right or left padding alike)."""
    mask = attention_mask.to(token_logits.dtype)
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    rows = torch.arange(token_logits.shape[0], device=token_logits.device)
    if pooling == "first":
        # The highest score of (mask, -position) is the leftmost real token.
        first = (attention_mask.to(positions.dtype) * (attention_mask.shape[-1] - positions)).argmax(-1)
        return token_logits[rows, first]
    last = token_logits[rows, last_token_index(attention_mask)]
    if pooling == "last":
        return last
    mean = (token_logits * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return mean if pooling == "mean" else (last + mean) / 2


def pool_packed(token_logits: torch.Tensor, ends: torch.Tensor, pooling: str) -> torch.Tensor:
    """`[tokens, labels]` of messages packed one after another, the last of each at `ends` -> `[messages, labels]`."""
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    if pooling == "first":
        return token_logits[starts]
    last = token_logits[ends]
    if pooling == "last":
        return last
    message = torch.repeat_interleave(torch.arange(len(ends), device=ends.device), ends - starts + 1)
    sums = token_logits.new_zeros(len(ends), token_logits.shape[-1]).index_add_(0, message, token_logits)
    mean = sums / (ends - starts + 1)[:, None].to(sums.dtype)
    return mean if pooling == "mean" else (last + mean) / 2

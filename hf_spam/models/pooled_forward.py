"""The classifier's pooled forward: logits at the last real token of each right-padded row (or where the
model's `pooling` says). `hf-spam predict`, `serve`, `bench`, the export's verification and the ONNX graph
all compute their scores here.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from hf_spam.models.gpt2_last_block import last_block_at_last_tokens
from hf_spam.models.parts import is_gpt2, trunk_module
from hf_spam.models.pooling import last_token_index, pool_padded, pooling_of
from hf_spam.models.template_prefix import TemplatePrefix


def pooled_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    c_attn: tuple | None = None,
    prefix: TemplatePrefix | None = None,
) -> torch.Tensor:
    """`[rows, labels]` logits of right-padded rows: what `pipeline("text-classification")` computes.

    GPT-2 reading the last token runs blocks before the final one on every token (their outputs are the final
    block's keys and values) and the final block, `ln_f` and `score` on the last token of each row only.
    Other decoders run their base model, then `score` at the last real token; another pooling scores every
    token and pools. `c_attn`: GPT-2's final `c_attn` split, held as constants by the ONNX wrapper.
    `prefix`: the template's opening (`template_prefix`), which every row must begin with (`prefix.begins`);
    the layers then run on the rest of each row only.
    """
    if prefix is not None:
        return _logits_after_prefix(model, input_ids, attention_mask, prefix)
    # Position ids as wide as the batch: left to the model they are one row, broadcast, and ONNX Runtime's
    # RotaryEmbedding (opset 23) wants its cos/sin caches to have the batch's own size.
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    pooling = pooling_of(model.config)
    if pooling == "last" and is_gpt2(model):
        trunk = trunk_module(model, model.config.n_layer - 1)
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False)
        transformer = model.transformer
        last = last_block_at_last_tokens(transformer.h[-1], hidden[0], attention_mask, c_attn)
        return model.score(transformer.ln_f(last))
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    )[0]
    if pooling != "last":
        return pool_padded(model.score(hidden), attention_mask, pooling)
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)])


def _logits_after_prefix(model, input_ids, attention_mask, prefix: TemplatePrefix) -> torch.Tensor:
    """The last-token logits of rows that begin with `prefix.ids`, the layers running on what follows only."""
    n, rows = len(prefix.ids), input_ids.shape[0]
    rest = input_ids[:, n:]
    positions = torch.arange(n, input_ids.shape[1], device=input_ids.device).expand_as(rest)
    hidden = model.base_model(
        input_ids=rest,
        attention_mask=attention_mask,  # the opening's columns included: the cache holds their keys
        position_ids=positions,
        past_key_values=prefix.cache(rows, model.config),
        use_cache=True,
    )[0]
    return model.score(hidden[torch.arange(rows, device=hidden.device), last_token_index(attention_mask) - n])

"""The trainable tails that read cached trunk states: GPT-2's (its final block at the last token only)
and any other decoder's (its own layers on packed rows)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, GPT2ForSequenceClassification, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_spam.models.gpt2_last_block import last_block_at_ends
from hf_spam.models.parts import base_view, decoder_parts, is_gpt2, trunk_includes_norm
from hf_spam.models.pooling import pool_packed, pooling_of

logger = logging.getLogger(__name__)


class FrozenTrunkTail(nn.Module):
    """The trainable tail of a `GPT2ForSequenceClassification`: blocks `n_frozen:`, `ln_f`, `score`.

    It reads packed rows of trunk states (`collate_trunk_states`), shares its parameters with `classifier`
    (which is what gets saved: training the tail trains the classifier) and returns the logits of each
    message's last token, computing the final block only where they need it (`last_block_at_ends`).
    """

    returns_pooled_logits = True  # `SpamTrainer` takes `logits` as they are, instead of pooling

    def __init__(self, classifier: GPT2ForSequenceClassification, n_frozen: int):
        super().__init__()
        self.classifier = classifier
        self.n_frozen = n_frozen
        self.apply_ln_f = not trunk_includes_norm(classifier, n_frozen)

    @property
    def config(self):
        return self.classifier.config

    def forward(self, hidden_states, position_ids, packed_ends, labels=None, **kwargs) -> SequenceClassifierOutput:
        transformer = self.classifier.transformer
        blocks = list(transformer.h[self.n_frozen :])
        causal_mask = None
        if len(blocks) > 1 or pooling_of(self.classifier.config) != "last":  # blocks that run on every token
            causal_mask = create_causal_mask(
                config=self.classifier.config,
                inputs_embeds=hidden_states,
                attention_mask=None,  # None + restarting position_ids: the packed-sequence mask
                past_key_values=None,
                position_ids=position_ids,
            )
            for block in blocks[:-1]:
                hidden_states = block(
                    hidden_states, None, causal_mask, None, use_cache=False, position_ids=position_ids
                )
        pooling = pooling_of(self.classifier.config)
        if pooling != "last":  # every token's logits are read: the final block runs on every token too
            if blocks:
                hidden_states = blocks[-1](
                    hidden_states, None, causal_mask, None, use_cache=False, position_ids=position_ids
                )
            hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])
            if self.apply_ln_f:
                hidden_states = transformer.ln_f(hidden_states)
            return SequenceClassifierOutput(
                logits=pool_packed(self.classifier.score(hidden_states), packed_ends, pooling)
            )
        if blocks:
            hidden_states = last_block_at_ends(blocks[-1], hidden_states, packed_ends)
        else:
            hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])[packed_ends]
        if self.apply_ln_f:
            hidden_states = transformer.ln_f(hidden_states)
        return SequenceClassifierOutput(logits=self.classifier.score(hidden_states))


class DecoderTail(nn.Module):
    """The trainable tail of any other decoder classifier: layers `n_frozen:`, the final norm, `score`.

    The tail is the model's own base forward (`base_view`) fed the cached states as `inputs_embeds`, on packed
    rows: with `position_ids` restarting per message and no attention mask, Transformers builds the
    block-diagonal causal (and sliding-window) masks itself, and rotary positions restart with each message,
    exactly as in a right-padded batch. The final layer, whose output is read at each message's last token
    only, runs there only (`last_layer_at_ends`). It shares its parameters with `classifier`, which is what
    gets saved.
    """

    returns_pooled_logits = True  # `SpamTrainer` takes `logits` as they are, instead of pooling

    def __init__(self, classifier: PreTrainedModel, n_frozen: int):
        super().__init__()
        self.classifier = classifier
        self.n_frozen = n_frozen
        self.apply_norm = not trunk_includes_norm(classifier, n_frozen)

    @property
    def config(self):
        return self.classifier.config

    def forward(self, hidden_states, position_ids, packed_ends, labels=None, **kwargs) -> SequenceClassifierOutput:
        parts = decoder_parts(self.classifier)
        n_layers = len(parts.layers)
        pooling = pooling_of(self.classifier.config)
        if pooling != "last":  # every token's logits are read: every layer runs on every token
            if self.n_frozen < n_layers:
                rest = base_view(self.classifier, slice(self.n_frozen, None), keep_norm=self.apply_norm)
                hidden_states = rest(inputs_embeds=hidden_states, position_ids=position_ids, use_cache=False)[0]
            elif self.apply_norm:
                hidden_states = parts.norm(hidden_states)
            token_logits = self.classifier.score(hidden_states.reshape(-1, hidden_states.shape[-1]))
            return SequenceClassifierOutput(logits=pool_packed(token_logits, packed_ends, pooling))
        if self.n_frozen < n_layers - 1:  # the layers before the final one: every token's output is read
            before = base_view(self.classifier, slice(self.n_frozen, n_layers - 1), keep_norm=False)
            hidden_states = before(inputs_embeds=hidden_states, position_ids=position_ids, use_cache=False)[0]
        if self.n_frozen < n_layers:
            final = base_view(self.classifier, slice(n_layers - 1, None), keep_norm=self.apply_norm)
            last = last_layer_at_ends(self.classifier, final, hidden_states, position_ids, packed_ends)
        else:
            last = hidden_states.reshape(-1, hidden_states.shape[-1])[packed_ends]
            last = parts.norm(last) if self.apply_norm else last
        return SequenceClassifierOutput(logits=self.classifier.score(last))


class _KeysCaptured(Exception):
    """Ends the first pass of `last_layer_at_ends` once the final layer's keys and values exist."""


class _LastTokens:
    """What `_last_token_attention` needs between the two passes of `last_layer_at_ends`."""

    def __init__(self, ends: torch.Tensor):
        self.ends, self.keys, self.values = ends, None, None
        self.starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])


def _last_token_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An attention function (Transformers' `AttentionInterface`) for the final layer of a packed row.

    First pass (every token): keep the keys and values the layer computed (after its norms and rotary
    positions) and stop. Second pass (one token per message): attend from each message's last token to its
    own message's keys, within the sliding window if the layer has one; the mask the model built is not used.
    """
    state = _LAST_TOKENS[-1]
    if state.keys is None:
        state.keys, state.values = key, value
        raise _KeysCaptured
    keys, values = state.keys, state.values  # [1, kv_heads, tokens, head_dim]
    groups = query.shape[1] // keys.shape[1]  # grouped-query attention: each kv head serves `groups` heads
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale  # [1, heads, messages, tokens]
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    token = torch.arange(keys.shape[2], device=keys.device)
    allowed = (token >= state.starts[:, None]) & (token <= state.ends[:, None])
    if kwargs.get("sliding_window") is not None:
        allowed &= state.ends[:, None] - token < kwargs["sliding_window"]
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, values).transpose(1, 2).contiguous(), None


_LAST_TOKENS: list[_LastTokens] = []  # the pass under way (a stack: one entry while the tail runs)
AttentionInterface.register("hf_spam_last_tokens", _last_token_attention)


def last_layer_at_ends(
    model: PreTrainedModel, final: nn.Module, hidden_states: torch.Tensor, position_ids, ends: torch.Tensor
) -> torch.Tensor:
    """The final layer (and norm) of a packed row, at each message's last token only: `[messages, hidden]`.

    The loss reads the last token only, and in the final layer a token's output depends on the others only
    through their keys and values. So the layer runs twice, through the model's own code: once over every
    token, stopped as soon as its attention has the keys and values; then over the last tokens alone (their
    residual stream, query, attention and MLP), attending to those keys. The MLP and the output projection,
    most of a layer's arithmetic, run on one token per message. The same as the whole layer followed by
    picking the last tokens, up to rounding; generic because only the attention function is swapped.
    """
    config = model.config
    implementation = config._attn_implementation
    _LAST_TOKENS.append(_LastTokens(ends))
    config._attn_implementation = "hf_spam_last_tokens"  # what every attention module reads at call time
    try:
        try:
            final(inputs_embeds=hidden_states, position_ids=position_ids, use_cache=False)
        except _KeysCaptured:
            pass
        at_ends = hidden_states.reshape(-1, hidden_states.shape[-1])[ends].unsqueeze(0)
        positions = position_ids.reshape(-1)[ends].unsqueeze(0)
        return final(inputs_embeds=at_ends, position_ids=positions, use_cache=False)[0][0]
    finally:
        config._attn_implementation = implementation
        _LAST_TOKENS.pop()


def tail_for(model: PreTrainedModel, n_frozen: int) -> nn.Module:
    """GPT-2's last-token tail, or the generic one for every other decoder."""
    return FrozenTrunkTail(model, n_frozen) if is_gpt2(model) else DecoderTail(model, n_frozen)

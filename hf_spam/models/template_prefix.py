"""The message template's opening, read once: the keys and values every message starts from.

A tokenizer with a `message_template` writes the same ids before every message (SmolLM2's recommended template:
`<|im_start|>user\\nIs this SMS message spam?\\n`, 10 ids). In a causal decoder nothing those tokens compute
depends on what follows them, so their keys and values in every layer are the same for every message.
`template_prefix` computes them once; `pooled_logits` then runs the layers on the rest of each row only, with
the opening as the model's own `DynamicCache`, and reads the same logits as the full forward, up to rounding.
The layers' work shrinks by the opening's share of the tokens: on the recommended 8-layer model, 9 of a median
message's 34 (docs/deploy.md, "Deploy: ONNX and int8").

The last opening id stays with the rest of the row, so that every row keeps at least one token of its own to
read the logits at (a template with nothing after the message, an empty message). GPT-2 keeps its own fast
path, another `pooling` reads the opening's tokens too, bidirectional attention (`causal_mask: false`) lets
them see the message, and a sliding window shorter than the opening keeps only part of it: none of those takes
this path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from hf_spam.models.parts import is_gpt2
from hf_spam.models.pooling import pooling_of


@dataclass(frozen=True)
class TemplatePrefix:
    """The opening `ids` (`[n]`) and, per layer, their keys and values (`[1, kv heads, n, head dim]` each)."""

    ids: torch.Tensor
    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def cache(self, rows: int, config) -> DynamicCache:
        """A fresh cache holding the opening for `rows` rows (the model appends each row's own keys to it)."""
        return DynamicCache(
            ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in self.keys_values],
            config=config,
        )

    def begins(self, input_ids: torch.Tensor) -> bool:
        """Whether every row starts with the opening (right padding, as the tokenizer wrote it)."""
        n = len(self.ids)
        return input_ids.shape[1] > n and bool((input_ids[:, :n] == self.ids.to(input_ids.device)).all())


def opening_ids(model: PreTrainedModel, tokenizer) -> list[int]:
    """The ids `pooled_logits` takes from a `TemplatePrefix` for this model and tokenizer: the ones the
    tokenizer's post-processor writes before every message, less the last; [] where the path does not apply."""
    config = model.config
    if is_gpt2(model) or pooling_of(config) != "last" or not getattr(config, "is_causal", True):
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    processor = json.loads(backend.to_str()).get("post_processor") if backend is not None else None
    if not processor or processor.get("type") != "TemplateProcessing":
        return []
    ids = []
    for piece in processor["single"]:
        if "SpecialToken" not in piece:
            break
        ids += processor["special_tokens"][piece["SpecialToken"]["id"]]["ids"]
    return ids[:-1]


@torch.no_grad()
def template_prefix(model: PreTrainedModel, tokenizer) -> TemplatePrefix | None:
    """The opening's keys and values through `model` (on its device, in the dtype it computes in now: call it
    under the same autocast as the forward that will use it), or None where the path does not apply."""
    ids = opening_ids(model, tokenizer)
    if not ids:
        return None
    ids = torch.tensor(ids, device=model.device)
    cache = DynamicCache(config=model.config)
    model.base_model(input_ids=ids[None], past_key_values=cache, use_cache=True)
    if any(layer.keys.shape[-2] != len(ids) for layer in cache.layers):
        return None  # a sliding-window layer kept only the window's end of the opening
    return TemplatePrefix(ids, tuple((layer.keys, layer.values) for layer in cache.layers))

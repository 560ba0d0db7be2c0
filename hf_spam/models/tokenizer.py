"""The tokenizer a classifier reads with: right padding, a pad token that is not text, and the
message template or EOS that the tokenizer's post-processor adds (saved with it, so `pipeline()` adds
it too)."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

from transformers import (
    AutoTokenizer,
    GPT2Tokenizer,
)

from hf_spam.models.loading import _hub_id, _unreachable
from hf_spam.models.parts import ModelConfigError

logger = logging.getLogger(__name__)


def bundled_tokenizer() -> GPT2Tokenizer:
    """The original GPT-2 BPE (shared by all four gpt2 sizes), from the files shipped with hf_spam."""
    folder = resources.files("hf_spam") / "assets" / "gpt2-tokenizer"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split()) for line in (folder / "merges.txt").read_text(encoding="utf-8").split("\n")[1:] if line
    ]
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=1024, split_special_tokens=True)


def load_tokenizer(
    name_or_path: str | None = None,
    use_bundled: bool = False,
    append_eos: bool = False,
    message_template: str | None = None,
):
    """The model's tokenizer configured for classification: right padding, a pad token no text can produce.

    `append_eos=True` makes the tokenizer's post-processor end every message with its EOS token. The setting is
    saved in `tokenizer.json`, so `pipeline()` appends it too, and the last real token (the one the loss and the
    model's own pooling read) is the same learned end-of-message token after every text, as in the original GPT
    fine-tuning. The pad token then moves to another special token (`pad_token_for`).

    `message_template` (text around a `{message}` placeholder, special tokens written as in the model's chat
    template) wraps every message the same way, also through the post-processor and so also in `pipeline()`:
    an instruction-tuned decoder's states at the template's last token read the message as a question asked.

    `split_special_tokens=True` is stored in the tokenizer config, so that every later user of the saved
    tokenizer, `pipeline()` included, tokenizes a literal special-token string in a message ("<|endoftext|>",
    "<|im_end|>") as text. The pad id then only ever means padding, whichever special token it is: GPT-2 has
    none and pads with `<|endoftext|>`, SmolLM2 pads with its EOS `<|im_end|>`, Gemma has `<pad>`. The BOS or
    EOS tokens a tokenizer adds itself (Gemma adds a BOS) stay as the model expects them.
    """
    if use_bundled or name_or_path is None:
        tokenizer = bundled_tokenizer()
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                _hub_id(name_or_path), split_special_tokens=True, trust_remote_code=False
            )
        except OSError as err:
            if Path(name_or_path).exists():
                raise
            raise _unreachable("tokenizer", name_or_path, err) from err
    tokenizer.split_special_tokens = True
    if append_eos:
        if tokenizer.eos_token is None or not hasattr(type(tokenizer), "add_eos_token"):
            raise ModelConfigError(f"append_eos: tokenizer {tokenizer.name_or_path} has no EOS token to append")
        tokenizer.add_eos_token = True
    if message_template is not None:
        if append_eos:
            raise ModelConfigError("message_template and append_eos: give one (the template says what ends a message)")
        wrap_messages(tokenizer, message_template)
    try:
        tokenizer.pad_token = pad_token_for(tokenizer)
    except ValueError as err:
        if not (append_eos or message_template):
            raise
        raise ModelConfigError(
            f"append_eos: tokenizer {tokenizer.name_or_path or 'gpt2'} has no special token besides its EOS "
            f"({tokenizer.eos_token}) to pad with; leave append_eos off for it"
        ) from err
    tokenizer.padding_side = "right"
    return tokenizer


def wrap_messages(tokenizer, template: str) -> None:
    """Make the tokenizer's post-processor put every message inside `template`, around what it added before
    (a BOS it puts first, an EOS it puts last)."""
    from tokenizers import processors

    if template.count("{message}") != 1:
        raise ModelConfigError(f"message_template must hold {{message}} once, got {template!r}")
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ModelConfigError(f"message_template: tokenizer {tokenizer.name_or_path} has no post-processor to set")
    probe = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    at = next(i for i in range(len(full) - len(probe) + 1) if full[i : i + len(probe)] == probe)
    before, after = template.split("{message}")
    # The template's own special tokens are meant as such: tokenize it with special tokens recognized.
    prefix = full[:at] + tokenizer(before, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    suffix = (
        tokenizer(after, add_special_tokens=False, split_special_tokens=False)["input_ids"] + full[at + len(probe) :]
    )
    parts = {"hf_spam_before": prefix, "hf_spam_after": suffix}
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join([*(["hf_spam_before"] if prefix else []), "$A", *(["hf_spam_after"] if suffix else [])]),
        pair=" ".join([*(["hf_spam_before"] if prefix else []), "$A", "$B:1", *(["hf_spam_after"] if suffix else [])]),
        special_tokens=[
            {"id": name, "ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids)}
            for name, ids in parts.items()
            if ids
        ],
    )


def pad_token_for(tokenizer) -> str:
    """The tokenizer's own pad token, else its EOS, else another special token: the first that tokenizing
    never produces. A probe made of every special-token string as text, plus what the tokenizer adds itself,
    must not contain it: the model's own pooling (and `pipeline()`) reads the last non-pad id as the last token.
    """
    special = list(tokenizer.all_special_tokens)
    probe = set(tokenizer(" ".join([*special, "Hello world"]), split_special_tokens=True)["input_ids"])
    for token in dict.fromkeys([tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token, *special]):
        if token is not None and tokenizer.convert_tokens_to_ids(token) not in probe:
            return token
    raise ValueError(
        f"tokenizer {tokenizer.name_or_path}: every special token ({', '.join(special) or 'none'}) can come out of "
        "tokenizing a message, so none can mark padding; add a pad token to the tokenizer"
    )

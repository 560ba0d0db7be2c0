"""Load a decoder (GPT-2 by default) and its tokenizer as a 2-class spam classifier; choose what trains."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2Tokenizer,
    PreTrainedModel,
)
from transformers.activations import GELUTanh
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from hf_spam.pooling import CONFIG_KEY as POOLING_KEY
from hf_spam.pooling import POOLINGS

logger = logging.getLogger(__name__)

ID2LABEL = {0: "ham", 1: "spam"}


# Short names resolve to the canonical Hub repositories. Their shapes are listed so that `init: random`
# builds the same architecture with no download at all.
HUB_IDS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
SHAPES = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}
TRAINABLE_CHOICES = ("last_block", "last_layer", "last_two_blocks", "all", "lora")


class HubUnreachableError(OSError):
    """The model or tokenizer is neither cached nor downloadable."""


class UnsafeModelError(ValueError):
    """A model hf_spam refuses to load: pickled weights only, or custom code."""


class UnsupportedModelError(ValueError):
    """Not a decoder-only model with a last-token classifier (an encoder, an encoder-decoder, ...)."""


SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def check_local_model_dir(path: str | Path) -> None:
    """Refuse a local model directory whose weights are pickles only, or whose config asks for custom code.

    Unpickling can run arbitrary code, so hf_spam loads safetensors only; and `auto_map` in a config
    points at Python files that `trust_remote_code` would execute.
    """
    path = Path(path)
    if not path.is_dir():
        return
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        pickles = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
        found = f"it has only {', '.join(pickles)}" if pickles else "it has no weights file"
        raise UnsafeModelError(
            f"{path}: no model.safetensors ({found}). hf_spam loads safetensors only, because unpickling a "
            "file can run code. If you trust the checkpoint, convert it once with "
            "`GPT2ForSequenceClassification.from_pretrained(dir, use_safetensors=False).save_pretrained(new_dir)`."
        )
    config = path / "config.json"
    if config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8")):
        raise UnsafeModelError(f"{config}: has an `auto_map` (custom code); hf_spam never runs remote code")


def missing_local_path(name_or_path: str) -> bool:
    """Not on disk, and written as a path (absolute, `./`, `~`, or more than one `/`), so not a Hub id either
    (`name` or `user/name`): worth saying so before Hugging Face reports an invalid repository id."""
    path = Path(name_or_path)
    if path.exists():
        return False
    return path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1


def _hub_id(name_or_path: str) -> str:
    return HUB_IDS.get(name_or_path, name_or_path)


def _unreachable(what: str, name: str, err: Exception) -> HubUnreachableError:
    return HubUnreachableError(
        f"Could not load the {what} '{name}': it is not in the local Hugging Face cache and the Hub could not "
        f"be reached ({type(err).__name__}: {err}). Point model_name_or_path at a local directory that holds "
        "a saved checkpoint (config.json + model.safetensors), or set `init: random` to train the same "
        "architecture from random weights without any download."
    )


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


def parse_config_overrides(overrides: str | None) -> dict:
    """`"n_layer=2,n_embd=64"` -> `{"n_layer": 2, "n_embd": 64}`, values typed as JSON where they parse.

    Booleans may be written either way (`true` or Python's `True`): config fields are strictly typed.
    """
    result = {}
    for item in filter(None, (s.strip() for s in (overrides or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config_overrides: expected key=value, got {item!r}")
        value = value.strip()
        if value.lower() in ("true", "false"):
            value = value.lower()
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


def load_model(
    model_name_or_path: str,
    tokenizer,
    init: str = "pretrained",
    dropout: float = 0.0,
    config_overrides: str | None = None,
    revision: str = "main",
    torch_dtype: torch.dtype = torch.float32,
    classes: list[str] | None = None,
    pooling: str = "last",
    causal_mask: bool = True,
) -> PreTrainedModel:
    """A decoder's `*ForSequenceClassification` with a new `score` head, one output per class of `classes`
    (default ham, spam), labels named for `pipeline()`. A `pooling` other than `last` and `causal_mask=False`
    are written into its config (`hf_spam_pooling`, `is_causal`), so that they are saved with it.

    GPT-2 by default; any decoder-only model that `AutoModelForSequenceClassification` supports (Llama,
    Qwen2/3, Gemma 3, Mistral, ...). `init="pretrained"` loads the weights (safetensors only, never remote
    code); `init="random"` builds the same architecture from its config (for the gpt2 names, with no download).
    """
    overrides = parse_config_overrides(config_overrides)
    id2label = dict(enumerate(classes)) if classes else ID2LABEL
    settings = {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {label: i for i, label in id2label.items()},
        "problem_type": "single_label_classification",
        # The pad id must live in the saved config: the model's own pooling (used by `pipeline()`) finds
        # the last real token as the rightmost non-pad id.
        "pad_token_id": int(tokenizer.pad_token_id),
        # `dropout` sets every rate the family has; a rate named in config_overrides wins.
        **{name: dropout for name in DROPOUT_FIELDS},
        **({POOLING_KEY: pooling} if pooling != "last" else {}),
        # Transformers builds a bidirectional mask for a decoder whose config says is_causal: false.
        **({"is_causal": False} if not causal_mask else {}),
        **overrides,
    }
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if init not in ("pretrained", "random"):
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    if init == "random" and model_name_or_path in SHAPES:
        config = _configured(GPT2Config(**SHAPES[model_name_or_path], vocab_size=len(tokenizer)), settings)
        check_decoder(config, model_name_or_path)
        return use_fused_gelu(_built(config, model_name_or_path))
    if init == "pretrained":
        check_local_model_dir(model_name_or_path)
    try:
        config = _configured(
            AutoConfig.from_pretrained(_hub_id(model_name_or_path), revision=revision, trust_remote_code=False),
            settings,
        )
        check_decoder(config, model_name_or_path)
        if init == "random":
            return use_fused_gelu(_built(config, model_name_or_path))
        with _without_load_report():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                _hub_id(model_name_or_path),
                config=config,
                revision=revision,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch_dtype,
                output_loading_info=True,
            )
    except OSError as err:
        if Path(model_name_or_path).exists():
            raise
        raise _unreachable("model", model_name_or_path, err) from err
    report_unexpected_weights(model_name_or_path, info)
    return use_fused_gelu(model)


class _without_load_report:
    """Hold back Transformers' LOAD REPORT table and its "Loading weights" bar while a base model loads: a new
    `score` head missing from a language-model checkpoint (and the unused `lm_head`) is the point of
    fine-tuning, not news. `report_unexpected_weights` says what else differed, if anything."""

    def __enter__(self):
        self.logger = transformers.utils.logging.get_logger("transformers.modeling_utils")
        self.logger.addFilter(self._drop)
        self.bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()

    def __exit__(self, *exc):
        self.logger.removeFilter(self._drop)
        if self.bars:
            transformers.utils.logging.enable_progress_bar()

    @staticmethod
    def _drop(record) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def report_unexpected_weights(name: str, info: dict) -> None:
    """One warning for the checkpoint weights that did not fit, beyond the new head and the unused LM head."""
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("score.")]
    unused = [k for k in info.get("unexpected_keys", ()) if not k.startswith("lm_head.")]
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", ())]
    if missing or unused or mismatched:
        logger.warning(
            "%s: %s",
            name,
            "; ".join(
                f"{what}: {', '.join(sorted(keys)[:8])}{' ...' if len(keys) > 8 else ''}"
                for what, keys in (
                    ("weights not in the checkpoint (randomly initialized)", missing),
                    ("checkpoint weights not used", unused),
                    ("shapes that differ (randomly initialized)", mismatched),
                )
                if keys
            ),
        )


class ModelConfigError(ValueError):
    """config_overrides that the model's config refuses, or that describe no working model."""


def _configured(config, settings: dict):
    # Only the dropout rates this family has: another would be saved into its config.json for nothing.
    for name, value in settings.items():
        if name not in DROPOUT_FIELDS or hasattr(config, name):
            try:
                setattr(config, name, value)
            except (TypeError, ValueError, StrictDataclassError) as err:  # strictly typed config fields
                cause = err.__cause__ or err
                raise ModelConfigError(f"config_overrides: {name}={value!r}: {cause}") from None
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if heads and hidden and getattr(config, "head_dim", None) is None and hidden % heads:
        raise ModelConfigError(f"config_overrides: the hidden size {hidden} must be a multiple of the {heads} heads")
    return config


def _built(config, name: str) -> PreTrainedModel:
    model = AutoModelForSequenceClassification.from_config(config)
    logger.info("Built %s with random weights (%s parameters)", name, f"{model.num_parameters():,}")
    return model


# Dropout rates by config field, for the families that have them (GPT-2's four; most others have one).
DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout")


def check_decoder(config, name: str) -> None:
    """Refuse custom code, and any model that is not a decoder whose classifier reads the last token."""
    if getattr(config, "auto_map", None):
        raise UnsafeModelError(f"{name}: its config has an `auto_map` (custom code); hf_spam never runs remote code")
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{name}: {kind} is an encoder-decoder model; hf_spam fine-tunes decoder-only models, whose last "
            "token has read the whole message (GPT-2, Llama, Qwen, Gemma, Mistral, ...)"
        )
    if kind not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UnsupportedModelError(f"{name}: Transformers has no sequence classifier for model_type {kind!r}")
    with torch.device("meta"):  # the structure alone: no memory, no weights
        probe = AutoModelForSequenceClassification.from_config(config)
    if not isinstance(getattr(probe, "score", None), nn.Module):
        raise UnsupportedModelError(
            f"{name}: {kind} is an encoder ({type(probe).__name__} classifies a first-token or pooled "
            "representation); hf_spam fine-tunes decoder-only models, whose causal last token has read the whole "
            "message (GPT-2, Llama, Qwen, Gemma, Mistral, ...)"
        )
    try:
        decoder_parts(probe)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"{name}: hf_spam does not support {kind} yet: {err}") from None


@dataclass
class DecoderParts:
    """A decoder classifier by role: its base model, the list of decoder layers, the final norm, the head.

    Found from the model's own structure, for every family alike: `base_model` holds one `ModuleList` of
    `num_hidden_layers` layers, after which exactly one child with parameters (the final norm) is registered;
    the head is `score`, the last-token classifier every decoder `*ForSequenceClassification` has.
    """

    base: nn.Module = field(repr=False)
    layers_name: str
    norm_name: str

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.base, self.layers_name)

    @property
    def norm(self) -> nn.Module:
        return getattr(self.base, self.norm_name)


def decoder_parts(model: PreTrainedModel) -> DecoderParts:
    base = model.base_model
    children = list(base.named_children())
    n_layers = model.config.num_hidden_layers
    lists = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(lists) != 1:
        raise UnsupportedModelError(f"{type(base).__name__} holds no single list of its {n_layers} decoder layers")
    after = [name for name, m in children[lists[0] + 1 :] if any(True for _ in m.parameters())]
    if len(after) != 1:
        raise UnsupportedModelError(f"{type(base).__name__} has no single final norm after its layers ({after})")
    return DecoderParts(base, children[lists[0]][0], after[0])


def keep_layers(model: PreTrainedModel, k: int) -> PreTrainedModel:
    """Keep the first `k` decoder layers, then the final norm and the head: the layers above `k` are dropped.

    The result is an ordinary, shallower `*ForSequenceClassification` (`num_hidden_layers` / `n_layer` = `k`,
    per-layer settings such as `layer_types` cut to match) that saves and reloads as one, `pipeline()` included.
    """
    parts = decoder_parts(model)
    n = len(parts.layers)
    if not 1 <= k <= n:
        raise ModelConfigError(f"keep_layers: {model.config.model_type} has {n} layers; give a number from 1 to {n}")
    if k == n:
        return model
    setattr(parts.base, parts.layers_name, nn.ModuleList(list(parts.layers)[:k]))
    model.config.num_hidden_layers = k
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:k]
    logger.info("Kept the first %d of %d decoder layers", k, n)
    return model


def is_gpt2(model: PreTrainedModel) -> bool:
    """GPT-2 keeps its fast paths (last-token final block, fused GELU); every other decoder takes the generic."""
    return isinstance(model, GPT2ForSequenceClassification)


def model_context(config) -> int:
    """Tokens the model reads at most (`n_positions` for GPT-2, whose config maps it to this name)."""
    return int(config.max_position_embeddings)


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware (AVX-512 BF16, AMX or Arm BF16), from the flags
    Linux reports in `/proc/cpuinfo` (True where it reports none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    words = set(cpuinfo.split())
    if not words & {"flags", "Features"}:
        return True
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def warn_if_bfloat16_is_emulated(device: torch.device | str, what: str) -> None:
    """bfloat16 is a speed option; on a CPU without bfloat16 instructions torch emulates it, and gpt2-small's
    prediction ran 60x slower than in float32 (AMD EPYC, AVX2 only). Say so instead of letting it crawl."""
    if torch.device(device).type == "cpu" and not cpu_has_bfloat16():
        logger.warning(
            "%s in bfloat16: this CPU has no bfloat16 instructions (AVX-512 BF16, AMX or Arm BF16), so torch "
            "emulates them, many times slower than float32 (60x for gpt2-small's prediction on an AVX2 CPU); "
            "use float32 here",
            what,
        )


def use_fused_gelu(model: PreTrainedModel) -> PreTrainedModel:
    """Compute GPT-2's `gelu_new` with PyTorch's fused kernel, `gelu(x, approximate="tanh")`.

    The same function (equal up to float rounding), but `gelu_new` is written as five elementwise tensor
    ops: about a fifth of a forward pass on CPU. The config keeps saying `gelu_new`, so the saved model is
    still GPT-2's and loads anywhere as before. Other decoders are left as they are.
    """
    if is_gpt2(model) and model.config.activation_function == "gelu_new":
        for block in model.transformer.h:
            block.mlp.act = GELUTanh()
    return model


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the state dict in name order: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trainable_modules(model: PreTrainedModel, trainable: str) -> list[nn.Module]:
    """The modules that train for each `trainable` option, by role, for every decoder family."""
    if trainable == "all":
        return [model]
    blocks = {"last_layer": 0, "last_block": 1, "last_two_blocks": 2}.get(trainable)
    if blocks is None:
        raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")
    parts = decoder_parts(model)
    if blocks > len(parts.layers):
        raise ValueError(f"trainable: {trainable} needs {blocks} layers; the model has {len(parts.layers)}")
    tail = [*parts.layers[len(parts.layers) - blocks :], parts.norm] if blocks else []
    return [*tail, model.score]


def add_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
):
    """`trainable: lora`: peft's LoRA adapters on `target_modules` (default every linear layer of the decoder,
    as the book does), everything else frozen except the new head, which trains whole and is saved with the
    adapters (`modules_to_save`). Returns the `PeftModel`; `merge_lora` turns it back into a plain model."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = target_modules or ["all-linear"]
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        modules_to_save=["score"],
        fan_in_fan_out=is_gpt2(model),  # GPT-2's Conv1D layers store their weights transposed
    )
    try:
        with warnings.catch_warnings():  # peft calls a Transformers property deprecated in 5.x; nothing to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        linear = (nn.Linear, Conv1D)
        names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, linear)})
        raise LoraTargetError(
            f"lora_target_modules {' '.join(targets)}: {str(err).splitlines()[0]} (its linear layers: "
            f"{' '.join(names)}; or all-linear)"
        ) from None
    n_trainable, n_total = peft_model.get_nb_trainable_parameters()
    logger.info("Trainable parameters (lora r=%d, alpha=%g): %s of %s", r, alpha, f"{n_trainable:,}", f"{n_total:,}")
    return peft_model


class LoraTargetError(ValueError):
    """`lora_target_modules` names no layer of the model."""


def is_lora(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge_lora(model) -> PreTrainedModel:
    """The adapters added into the weights they adapt, and the trained head in place: an ordinary
    `*ForSequenceClassification` that a plain `pipeline()` loads, computing what the adapted model computes."""
    return model.merge_and_unload()


def freeze(model: PreTrainedModel, trainable: str = "last_block") -> list[str]:
    """Freeze everything except what `trainable` names (the book: the last block, the final norm, the head).

    Returns the names of the trainable parameters.
    """
    keep = {id(p) for module in trainable_modules(model, trainable) for p in module.parameters()}
    names = []
    for name, param in model.named_parameters():
        param.requires_grad = id(param) in keep
        if param.requires_grad:
            names.append(name)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters (%s): %s of %s", trainable, f"{n_trainable:,}", f"{n_total:,}")
    return names


def trunk_includes_norm(model: PreTrainedModel, n_frozen: int) -> bool:
    parts = decoder_parts(model)
    return n_frozen == len(parts.layers) and not any(p.requires_grad for p in parts.norm.parameters())


def base_view(model: PreTrainedModel, layers: slice, keep_norm: bool) -> nn.Module:
    """The model's base (GPT-2's `transformer`, Llama's `model`, ...) running only `layers`, sharing weights.

    It is the model's own forward (embeddings, positions, masks, per-layer attention types), with the other
    layers left out and the final norm replaced by the identity unless `keep_norm`. Its config is a copy that
    counts only these layers, with their slice of `layer_types` (sliding-window and full-attention layers).
    """
    parts = decoder_parts(model)
    view = copy.copy(parts.base)
    view._modules = dict(view._modules)  # a shallow copy would share (and let us edit) the original's dict
    kept = list(parts.layers)[layers]
    view._modules[parts.layers_name] = nn.ModuleList(kept)
    if not keep_norm:
        view._modules[parts.norm_name] = nn.Identity()
    view.config = copy.copy(view.config)
    view.config.num_hidden_layers = len(kept)
    if getattr(view.config, "layer_types", None) is not None:
        view.config.layer_types = list(view.config.layer_types)[layers]
    return view


def trunk_module(model: PreTrainedModel, n_frozen: int) -> nn.Module:
    """The first `n_frozen` layers of the model's base, and the final norm only if it is frozen too."""
    return base_view(model, slice(0, n_frozen), keep_norm=trunk_includes_norm(model, n_frozen))

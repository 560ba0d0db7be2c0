"""A decoder classifier by role (base, layers, final norm, head), found from its own structure, and what
is done to those parts: cut to K layers, frozen but for the last ones, LoRA, views that run a slice of
the layers."""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (
    GPT2ForSequenceClassification,
    PreTrainedModel,
)
from transformers.pytorch_utils import Conv1D

logger = logging.getLogger(__name__)

TRAINABLE_CHOICES = ("last_block", "last_layer", "last_two_blocks", "all", "lora")


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


class UnsupportedModelError(ValueError):
    """Not a decoder-only model with a last-token classifier (an encoder, an encoder-decoder, ...)."""


class ModelConfigError(ValueError):
    """config_overrides that the model's config refuses, or that describe no working model."""


def is_gpt2(model: PreTrainedModel) -> bool:
    """GPT-2 keeps its fast paths (last-token final block, fused GELU); every other decoder takes the generic."""
    return isinstance(model, GPT2ForSequenceClassification)

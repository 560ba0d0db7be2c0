"""The model card (README.md) of a trained classifier: a dataclass filled during training, rendered from a template.

In `training/run.py`:

    card = SpamModelCardData.from_run(model_args, data_args, training_args, report, model, max_length=..., trunk_cache=...)
    trainer = SpamTrainer(..., callbacks=[ModelCardCallback(card)])
    ...
    card.metrics = results
    write_model_card(training_args.output_dir, card)

The template is `hf_spam/templates/model_card.md` (Jinja2); its front matter is huggingface_hub's `ModelCardData`.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from huggingface_hub import EvalResult, ModelCardData
from transformers import TrainerCallback

from hf_spam.data.collection import SHA256
from hf_spam.models.loading import HUB_IDS

if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainingArguments

    from hf_spam.data.arguments import DataArguments
    from hf_spam.data.collection import DataReport
    from hf_spam.training.arguments import ModelArguments

logger = logging.getLogger(__name__)

TEMPLATE_PATH = resources.files("hf_spam") / "templates" / "model_card.md"
DATASET_ID = "ucirvine/sms_spam"
METRICS = {"accuracy": "Accuracy", "precision": "Precision", "recall": "Recall", "f1": "F1"}
TAGS = ["text-classification", "spam-detection", "sms", "hf_spam"]
BOOK_EXAMPLE = "You are a winner you have been specially selected to receive $1000 cash or a $2000 award."
POOLING_WORDS = {
    "last": "the last real token",
    "first": "the first token",
    "mean": "the average over the real tokens",
    "last_mean": "the average of the last real token and the mean over the real tokens",
}
FAMILY_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "gemma3_text": "Gemma 3", "qwen2": "Qwen2", "qwen3": "Qwen3"}


@dataclass
class SpamModelCardData:
    """What the model card says about a training run.

    `data` is `DataReport.to_dict()`; `metrics` maps each split to the dict `training.evaluate.evaluate_split` builds
    (accuracy, precision, recall, f1, examples, confusion_matrix `[[tn, fp], [fn, tp]]`; for a multi-class
    model macro averages, a K x K matrix and `per_class`);
    `epoch_history` is filled by `ModelCardCallback`. `model_id` is the Hub repository the card is written for
    (`None` for a local directory, which the usage snippet then names by `output_dir`).
    """

    base_model: str
    init: str
    trainable: str
    trainable_parameters: int
    total_parameters: int
    hyperparameters: dict[str, Any]
    data: dict[str, Any]
    padding: str
    max_length: int
    trunk_cache: bool
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    epoch_history: list[dict[str, Any]] = field(default_factory=list)
    model_id: str | None = None
    output_dir: str = "."
    architecture: str = "GPT2ForSequenceClassification"
    model_type: str = "gpt2"
    pad_token: str = "<|endoftext|>"
    # Where pretrained weights came from when they were not a Hub checkpoint: `pretrained.read_source` (the
    # package, its version, the GGUF file, its sha256 and quantization, the license).
    weights_source: dict[str, Any] | None = None
    pooling: str = "last"
    causal_mask: bool = True
    lora: dict[str, Any] | None = None
    # What the tokenizer adds to every message (`message_template`, `append_eos`), which pipeline() does too.
    message_template: str | None = None
    append_eos: bool = False
    # `keep_layers`: the decoder layers kept, and how many the base model has.
    kept_layers: int | None = None
    base_layers: int | None = None
    # `keep_layers: auto`: the per-layer probe figures the depth was chosen from.
    depth_probe: dict[str, Any] | None = None
    # The run's plots beside the card (file -> caption), embedded so that they render on the Hub page.
    figures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(
        cls,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        report: DataReport,
        model: PreTrainedModel,
        *,
        max_length: int,
        trunk_cache: bool,
        tokenizer=None,
        weights_source: dict | None = None,
        base_layers: int | None = None,
        depth_probe: dict | None = None,
    ) -> SpamModelCardData:
        """Everything known before training starts; `metrics` are set after the final evaluation.

        Call it after `freeze(model, ...)`, with the model itself (not the frozen-trunk wrapper), so that the
        parameter counts say what trained.
        """
        name = model_args.model_name_or_path
        if model_args.init == "pretrained":
            base_model = (weights_source or {}).get("base_model") or HUB_IDS.get(name, name)
        else:
            overrides = f" ({model_args.config_overrides})" if model_args.config_overrides else ""
            base_model = f"{name} architecture{overrides}, random init"
        return cls(
            base_model=base_model,
            init=model_args.init,
            trainable=model_args.trainable,
            trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
            total_parameters=sum(p.numel() for p in model.parameters()),
            hyperparameters=hyperparameters(training_args),
            data=report.to_dict(),
            padding=data_args.padding,
            max_length=max_length,
            trunk_cache=trunk_cache,
            model_id=training_args.hub_model_id,
            output_dir=training_args.output_dir,
            architecture=type(getattr(model, "get_base_model", lambda: model)()).__name__,  # a LoRA run's base
            model_type=model.config.model_type,
            pooling=model_args.pooling,
            causal_mask=model_args.causal_mask,
            lora={"r": model_args.lora_r, "alpha": model_args.lora_alpha, "targets": model_args.lora_target_modules}
            if model_args.trainable == "lora"
            else None,
            pad_token=tokenizer.pad_token if tokenizer is not None else "<|endoftext|>",
            weights_source=weights_source,
            kept_layers=model.config.num_hidden_layers if model_args.keep_layers is not None else None,
            message_template=model_args.message_template,
            append_eos=model_args.append_eos,
            base_layers=base_layers,
            depth_probe=depth_probe,
        )

    @property
    def name(self) -> str:
        return (self.model_id or Path(self.output_dir).resolve().name).split("/")[-1]

    @property
    def base_model_id(self) -> str | None:
        """The Hub id for the `base_model` metadata: pretrained weights only, and never a local checkpoint path."""
        if self.init != "pretrained" or Path(self.base_model).exists():
            return None
        return self.base_model

    @property
    def family(self) -> str:
        return FAMILY_NAMES.get(self.model_type, self.model_type)

    @property
    def license(self) -> str | None:
        """The base model's license as a Hub identifier, where hf_spam knows it."""
        if self.weights_source and self.weights_source.get("license"):
            return self.weights_source["license"]
        return "mit" if self.model_type == "gpt2" else None

    @property
    def classes(self) -> list[str]:
        """The model's labels by id: ham and spam, or the classes of a multi-class source."""
        return self.data.get("classes", ["ham", "spam"])

    @property
    def is_binary(self) -> bool:
        return self.classes == ["ham", "spam"]

    @property
    def is_sms_spam_collection(self) -> bool:
        """Whether the data is the SMS Spam Collection itself rather than a `data_file` of one's own."""
        return self.data.get("sha256") == SHA256


def hyperparameters(args: TrainingArguments) -> dict[str, Any]:
    """The training settings a reader needs to reproduce the run, by their `TrainingArguments` names."""
    batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {
        "learning_rate": args.learning_rate,
        "num_train_epochs": args.num_train_epochs,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "world_size": args.world_size,
        "total_train_batch_size": batch_size,
        "optimizer": f"{_plain(args.optim)} (betas=({args.adam_beta1}, {args.adam_beta2}), epsilon={args.adam_epsilon})",
        "weight_decay": args.weight_decay,
        "lr_scheduler_type": _plain(args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "seed": args.seed,
    }


def _plain(value: Any) -> Any:
    # TrainingArguments turns `optim` and `lr_scheduler_type` into str enums whose str() is "OptimizerNames.X".
    return getattr(value, "value", value)


class ModelCardCallback(TrainerCallback):
    """Records the validation metrics of each evaluation during training into `card.epoch_history`.

    Works from the log entries, which carry the epoch and, for evaluations, the `eval_*` metrics. On resume the
    epochs before the checkpoint are only in the restored `state.log_history`, so training starts by replaying it.
    Evaluations outside `train()` (the final per-split ones) are not part of the history.
    """

    def __init__(self, card: SpamModelCardData):
        self.card = card
        self._training = False
        self._last_loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self.card.epoch_history = []
        for logs in state.log_history:
            self._record(logs, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._training and logs:
            self._record(logs, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def _record(self, logs: dict[str, float], step: int) -> None:
        if "loss" in logs:
            self._last_loss = logs["loss"]
        if "eval_loss" in logs:
            self.card.epoch_history.append(
                {
                    "epoch": round(logs.get("epoch", 0.0), 2),
                    "step": logs.get("step", step),
                    # As in Transformers' own cards: the training loss last logged before this evaluation.
                    "training_loss": self._last_loss,
                    "validation_loss": logs["eval_loss"],
                    "validation_accuracy": logs.get("eval_accuracy"),
                    "validation_f1": logs.get("eval_f1"),
                }
            )
            self._last_loss = None


def card_metadata(data: SpamModelCardData) -> ModelCardData:
    """The YAML front matter: what the Hub indexes (task, base model, dataset, license, test results)."""
    eval_results = None
    if data.is_sms_spam_collection and "test" in data.metrics:
        eval_results = [
            EvalResult(
                task_type="text-classification",
                task_name="Text Classification",
                dataset_type=DATASET_ID,
                # Our test split is a seeded 20% of the collection (the Hub dataset has a single split).
                dataset_name="SMS Spam Collection (hf_spam test split)",
                metric_type=metric,
                metric_name=name,
                metric_value=round(float(data.metrics["test"][metric]), 4),
            )
            for metric, name in METRICS.items()
        ]
    return ModelCardData(
        language="en",
        license=data.license,
        library_name="transformers",
        pipeline_tag="text-classification",
        # spam-detection for a ham/spam model, sms for the SMS collection: a 3-class model of one's own is neither.
        tags=[
            TAGS[0],
            *(["spam-detection"] if data.is_binary else []),
            *(["sms"] if data.is_sms_spam_collection else []),
            data.model_type,
            TAGS[3],
        ],  # fmt: skip
        base_model=data.base_model_id,
        datasets=[DATASET_ID] if data.is_sms_spam_collection else None,
        metrics=list(METRICS),
        model_name=data.name,
        eval_results=eval_results,
    )


def natural_precision(data: SpamModelCardData) -> float | None:
    """Test precision re-weighted to the collection's own spam share: what precision would be in real traffic.

    From the natural-rate evaluation when the run made one (`metrics.at_spam_rate`: the false-positive rate
    over all unseen ham); else from the test split alone. Recall and the false-positive rate do not depend
    on the class mix, so precision at spam share p is recall * p / (recall * p + fpr * (1 - p)).
    """
    if "natural_rate" in data.metrics:
        return data.metrics["natural_rate"]["precision"]
    if not data.is_binary:
        return None
    labels = data.data["labels"]
    matrix = data.metrics.get("test", {}).get("confusion_matrix")
    if matrix is None:
        return None
    (tn, fp), (fn, tp) = matrix
    share = labels["spam"] / sum(labels.values())
    recall, fpr = tp / max(tp + fn, 1), fp / max(fp + tn, 1)
    flagged = recall * share + fpr * (1 - share)
    return recall * share / flagged if flagged else None


def markdown_label(name: object) -> str:
    """A label name as card text: its HTML escaped (the Hub renders raw HTML in a card), a `|` that would split a
    table cell and a line break that would end one made harmless."""
    return html.escape(" ".join(str(name).split()), quote=True).replace("|", "&#124;").replace("`", "&#96;")


def render_model_card(data: SpamModelCardData) -> str:
    """README.md for the Hub: YAML metadata and the card body, from `hf_spam/templates/model_card.md`."""
    # StrictUndefined: a field the template names but the data lacks is an error, not a silently blank cell.
    environment = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["label"] = markdown_label
    template = environment.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))
    labels = data.data["labels"]
    return template.render(
        card_data=card_metadata(data).to_yaml(),
        card=data,
        dataset_id=DATASET_ID,
        spam_share=data.metrics["natural_rate"]["spam_rate"]
        if "natural_rate" in data.metrics
        else labels.get("spam", 0) / max(sum(labels.values()), 1),
        natural_precision=natural_precision(data),
        # The repo id once pushed; else the directory's name, never a local absolute path.
        model_path=data.model_id or Path(data.output_dir).name,
        data_files=", ".join(
            f"{part.split(': ', 1)[0]}: {Path(part.split(': ', 1)[-1]).name}" for part in data.data["path"].split(", ")
        ),
        balanced_away={name: count for name, count in data.data.get("held_out", {}).items() if count},
        example=BOOK_EXAMPLE if data.is_binary else "Your message here",
        splits=[split for split in ("train", "validation", "test") if split in data.metrics],
        POOLING_WORDS=POOLING_WORDS,
    )


def write_model_card(output_dir: str | Path, data: SpamModelCardData) -> Path:
    """Render the card into `output_dir/README.md` and return its path."""
    path = Path(output_dir) / "README.md"
    path.write_text(render_model_card(data), encoding="utf-8")
    logger.debug("Model card written to %s", path)  # into staging: "saved to" names where it lands
    return path

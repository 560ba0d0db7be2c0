"""Fine-tune a pretrained decoder (GPT-2 by default) into a spam classifier:
parse -> base model -> data -> model -> trainer -> evaluate -> save/push.

accelerate launch hf_spam/train.py --config configs/gpt2-small.yaml
python -m hf_spam.train --config configs/tiny.yaml --output_dir outputs/tiny
hf-spam train --config configs/gpt2-small.yaml --num_train_epochs 1
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from functools import partial
from pathlib import Path

import torch
import transformers
from datasets import Dataset, DatasetDict
from transformers import DataCollatorWithPadding, set_seed

from hf_spam.data.collection import DataFormatError, DataIntegrityError, DownloadError, default_cache_dir
from hf_spam.data.external import EvaluationSet, evaluation_set, present_files
from hf_spam.data.sources import SourceError
from hf_spam.data.splits import SplitError, load_splits
from hf_spam.data.tokenize import tokenize_splits
from hf_spam.deploy.classifier import classifier
from hf_spam.deploy.hub import push_output_dir
from hf_spam.deploy.spam_classifier import BOOK_EXAMPLES
from hf_spam.evaluation.metrics import compute_metrics
from hf_spam.evaluation.model_card import ModelCardCallback, SpamModelCardData, write_model_card
from hf_spam.evaluation.plots import plot_accuracy, plot_confusion_matrix, plot_loss
from hf_spam.malloc import keep_freed_memory
from hf_spam.models.loading import (
    SHAPES,
    HubUnreachableError,
    UnsafeModelError,
    load_model,
    model_context,
    warn_if_bfloat16_is_emulated,
)
from hf_spam.models.parts import (
    LoraTargetError,
    ModelConfigError,
    UnsupportedModelError,
    add_lora,
    freeze,
    is_lora,
    keep_layers,
    merge_lora,
    weights_fingerprint,
)
from hf_spam.models.tokenizer import load_tokenizer
from hf_spam.training.arguments import ConfigError, parse_args
from hf_spam.training.base_model import OfflineFallback, resolve_base_model, without_config
from hf_spam.training.checkpoints import (
    STAGING,
    CheckpointError,
    StopOnSigterm,
    prepare_output_dir,
    publish,
    resolve_resume,
    run_settings,
)
from hf_spam.training.evaluate import (
    class_weights,
    evaluate_run,
    length_order,
    metrics_table,
    ranking_figures,
    write_predictions,
)
from hf_spam.training.launch import check_launch, configure_logging, quiet_progress_bars, use_the_cores
from hf_spam.training.layer_probe import auto_depth
from hf_spam.training.output_lock import lock_output_dir, releases_output_dir
from hf_spam.training.trainer import SpamTrainer
from hf_spam.training.trunk_cache import collate_trunk_states, frozen_prefix, trunk_features
from hf_spam.training.trunk_tails import tail_for

logger = logging.getLogger("hf_spam")

# Input or environment problems whose message says what to fix; anything else keeps its traceback.
USER_ERRORS = (
    CheckpointError,
    HubUnreachableError,
    DataFormatError,
    DataIntegrityError,
    DownloadError,
    SourceError,
    SplitError,
    ConfigError,
    UnsafeModelError,
    UnsupportedModelError,
    LoraTargetError,
    ModelConfigError,
    OSError,  # a full disk while saving (CheckpointSaveError), an unreadable model directory
)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, training_args = parse_args(argv)
    try:
        return train(model_args, data_args, training_args)
    except OfflineFallback as fallback:  # the Hub is out of reach: the recipe the config names for that case
        return train(*parse_args(["--config", fallback.config, *without_config(argv)]))


@releases_output_dir
def train(model_args, data_args, training_args, data: tuple | None = None) -> dict:
    """The run itself, from parsed arguments: data -> model -> trainer -> evaluate -> save/push. `data`: splits
    already made (`(DatasetDict, DataReport)`, as `hf-spam cv` makes each fold's) instead of the data stage."""
    push_to_hub, hub_token = set_up(model_args, data_args, training_args)
    model_path, weights_source = resolve_base_model(model_args, training_args, data_args.data_cache_dir)
    resume = claim_output_dir(model_args, data_args, training_args)
    set_seed(training_args.seed)

    # ---- data ----
    tokenizer = tokenizer_stage(model_args, model_path)
    splits, held_out, report, external = data_stage(data_args, training_args, data)

    # ---- model ----
    model, tokenized, max_length, depth_probe = model_stage(
        model_args, data_args, training_args, model_path, tokenizer, splits, report
    )
    features, train_model, collator, n_frozen = trunk_stage(model, tokenizer, tokenized, data_args, training_args)
    eval_features, orders = in_length_order(features, n_frozen)
    card = SpamModelCardData.from_run(
        model_args, data_args, training_args, report, model, max_length=max_length, trunk_cache=n_frozen > 0,
        tokenizer=tokenizer, weights_source=weights_source, base_layers=depth_probe["base_layers"],
        depth_probe=depth_probe["figures"],
    )  # fmt: skip
    if push_to_hub:  # the card names the repository it is pushed to
        card.model_id = training_args.hub_model_id or Path(training_args.output_dir).name

    # ---- trainer ----
    sigterm = StopOnSigterm()
    trainer = SpamTrainer(
        model=train_model, args=training_args, train_dataset=features["train"],
        eval_dataset=eval_features["validation"], processing_class=tokenizer, data_collator=collator,
        compute_metrics=partial(compute_metrics, classes=report.classes),
        class_weights=class_weights(training_args.class_weights, report.split_labels["train"]),
        callbacks=[sigterm, ModelCardCallback(card)],
    )  # fmt: skip
    train_result = trainer.train(resume_from_checkpoint=resume)
    if sigterm.stopped_at is not None:
        logger.warning(
            "Stopped by SIGTERM at step %d with a checkpoint saved in %s; continue with --resume_from_checkpoint "
            "auto", sigterm.stopped_at, training_args.output_dir,
        )  # fmt: skip
        return {"interrupted_at_step": sigterm.stopped_at}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if is_lora(model):
        model = merged_into_trainer(trainer, model, model_args.save_adapter)

    # ---- evaluate ----
    results, scores = evaluate_run(
        trainer, model, tokenizer, eval_features, orders, splits, held_out, report, external
    )
    base_model = {"name": model_args.model_name_or_path, "loaded_from": model_path, "source": weights_source}
    summary = run_summary(base_model, data_args, training_args, report, results, train_result, model, depth_probe)

    # ---- save / push ----
    save_run(trainer, model, tokenizer, card, summary, scores, splits, report, external)
    if push_to_hub and trainer.is_world_process_zero():
        push_stage(training_args, card.model_id, hub_token)
    return summary


def push_stage(training_args, repo_id: str, hub_token: str | None) -> None:
    """The finished output directory to the Hub, once (Trainer's own push is switched off in `set_up`)."""
    url = push_output_dir(training_args.output_dir, repo_id, private=training_args.hub_private_repo, token=hub_token)
    logger.info("Pushed %s to %s", training_args.output_dir, url)


def tokenizer_stage(model_args, model_path: str):
    """The base model's tokenizer (GPT-2's bundled one for a random GPT-2 shape), with the configured
    end-of-message token or message template in its post-processor."""
    return load_tokenizer(
        model_args.tokenizer_name_or_path or model_path,
        use_bundled=model_args.init == "random" and model_path in SHAPES and model_args.tokenizer_name_or_path is None,
        append_eos=model_args.append_eos,
        message_template=model_args.message_template,
    )


def in_length_order(features: dict, n_frozen: int) -> tuple[dict, dict]:
    """Each split in token-length order, for evaluation: padded batches are then formed of similar lengths, with
    less padding and the same metrics (packed trunk states have no padding to save). The orders map the
    predictions back to the splits' own order; None where a split keeps its order."""
    orders = {split: length_order(features[split]) if not n_frozen else None for split in features}
    return {
        split: features[split].select(orders[split]) if orders[split] else features[split] for split in features
    }, orders


def run_summary(base_model, data_args, training_args, report, results, train_result, model, depth_probe) -> dict:
    """What `metrics.json` records of the run."""
    return {
        "base_model": base_model,
        "data": report.to_dict(),
        # With the seed, what rebuilds these exact splits (`hf-spam export` verifies on the test split).
        "data_arguments": dataclasses.asdict(data_args),
        "seed": training_args.seed,
        "metrics": results,
        "train": train_result.metrics,
        "world_size": training_args.world_size,
        "weights_sha256": weights_fingerprint(model),
        **({"keep_layers_auto": depth_probe["figures"]} if depth_probe["figures"] is not None else {}),
    }


def set_up(model_args, data_args, training_args) -> tuple[bool, str | None]:
    """Logging, threads and the checks no stage can make; takes the Hub push out of the Trainer's hands."""
    keep_freed_memory()
    # hf_spam reports what it does (data source, cache, parameter counts) at INFO on the main process;
    # Transformers keeps its own level unless --log_level asks for another.
    configure_logging()
    quiet_progress_bars(training_args)
    log_level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(log_level)
    logger.setLevel(logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level)
    # The full argument dumps (a hundred lines) at DEBUG, shown by `--log_level debug`: not before every error line.
    logger.debug("Model arguments: %s", model_args)
    logger.debug("Data arguments: %s", data_args)
    logger.debug("Training arguments: %s", training_args)
    use_the_cores(training_args.device.type)
    logger.info(
        "Device %s, world size %d, torch threads %d",
        training_args.device,
        training_args.world_size,
        torch.get_num_threads(),
    )
    check_launch(training_args.world_size)
    if Path(training_args.output_dir).exists() and not Path(training_args.output_dir).is_dir():
        raise ConfigError(
            f"output_dir {training_args.output_dir} is a file; give a directory (it is created if missing)"
        )
    if training_args.device.type == "cpu" and (training_args.fp16 or training_args.bf16):
        raise ConfigError("fp16/bf16 mixed precision is for accelerators; leave both off on the CPU")
    if training_args.device.type == "cpu":
        # Pinned memory only speeds up copies to an accelerator; on the CPU torch warns at every DataLoader.
        training_args.dataloader_pin_memory = False
    # Trainer's own push would create the repo at start, upload every checkpoint (optimizer state and pickles
    # included) and replace our model card; we push the finished output directory once, at the end. The token
    # is taken out of the arguments so that no saved file (training_args.bin) can carry it.
    push_to_hub, hub_token = training_args.push_to_hub, training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None
    return push_to_hub, hub_token


def claim_output_dir(model_args, data_args, training_args) -> str | None:
    """Make output_dir this run's (or refuse another run's in one line); the checkpoint to resume, if any."""
    if training_args.should_save:  # the process that writes; the others of a launch only read
        lock_output_dir(training_args.output_dir)
    prepare_output_dir(
        training_args.output_dir,
        run_settings(model_args, data_args, training_args),
        resume=training_args.resume_from_checkpoint not in (None, "", "false", "False"),
        overwrite=training_args.overwrite_output_dir,
        write=training_args.should_save,
    )
    return resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)


def data_stage(data_args, training_args, data: tuple | None):
    """The splits (train/validation/test), the held-out messages balancing left out, the data report, and the
    external messages (`external_stage`), if any."""
    if data is None:
        with training_args.main_process_first(desc="preparing the data"):
            data = load_splits(data_args, training_args.seed)
    splits, report = data
    splits = DatasetDict(splits)  # popping held_out below leaves the caller's splits whole
    held_out = splits.pop("held_out", None)
    if not report.is_binary and training_args.max_fpr is not None:
        raise ConfigError(
            f"max_fpr sets a spam threshold, for ham/spam data; this data has {len(report.classes)} classes "
            f"({', '.join(report.classes)}): leave max_fpr out"
        )
    return splits, held_out, report, external_stage(data_args, training_args.seed, splits, held_out, report)


def external_stage(data_args, seed: int, splits, held_out, report) -> EvaluationSet | None:
    """The external files' messages (evaluation only), added to `splits` as `external` so that they are
    tokenized and, under the trunk cache, passed through the frozen trunk once with the others; None where
    none are configured or they are not on this machine. Never trained on: the Trainer reads `train` only."""
    paths = present_files(data_args.external_files) if data_args.external_files else None
    if paths is None:
        return None
    if not report.is_binary:
        raise ConfigError("external_files: cross-corpus figures are for ham/spam models; leave them out for this data")
    seen = [text for split in splits.values() for text in split["text"]]
    seen += list(held_out["text"]) if held_out is not None else []
    external = evaluation_set(paths, report.classes, data_args.external_max_ham, seed, exclude=seen)
    logger.info("External evaluation set: %s", external.describe(report.classes))
    splits["external"] = Dataset.from_dict(
        {"text": external.texts, "label": external.labels.tolist()}, features=splits["test"].features
    )
    return external


def model_stage(model_args, data_args, training_args, model_path, tokenizer, splits, report):
    """The classifier, cut to its depth and frozen as the recipe says, and the tokenized splits."""
    model = load_model(
        model_path,
        tokenizer,
        init=model_args.init,
        dropout=model_args.dropout,
        config_overrides=model_args.config_overrides,
        revision=model_args.model_revision,
        classes=report.classes,
        pooling=model_args.pooling,
        causal_mask=model_args.causal_mask,
    )
    max_length = min(data_args.max_length or model_context(model.config), model_context(model.config))
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_splits(splits, tokenizer, max_length, data_args.padding, data_args.data_cache_dir)
    depth, depth_probe = model_args.keep_layers, {"base_layers": model.config.num_hidden_layers, "figures": None}
    if depth == "auto":  # chosen on this run's own splits (each fold's, under `hf-spam cv`)
        model.to(training_args.device)
        depth, depth_probe["figures"] = auto_depth(model, tokenized, tokenizer.pad_token_id, training_args.seed)
    if depth is not None:
        model = keep_layers(model, depth)
    if model_args.trainable == "lora":
        model = add_lora(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
        )
    else:
        freeze(model, model_args.trainable)
    return model, tokenized, max_length, depth_probe


def trunk_stage(model, tokenizer, tokenized, data_args, training_args):
    """What the Trainer trains on: cached trunk states and the tail that reads them, where the trunk cache
    applies; the tokenized splits and the whole model otherwise."""
    probe = tokenized["train"]["input_ids"][:4]  # the generic cached path is checked against the model's forward
    if not training_args.trunk_cache:
        n_frozen, why_not = 0, "trunk_cache is false"
    elif is_lora(model):
        n_frozen, why_not = 0, "LoRA adapts every layer"
    else:
        n_frozen, why_not = frozen_prefix(model, probe)
    if not n_frozen:
        logger.info("Frozen-trunk cache off: %s", why_not)
        return tokenized, model, DataCollatorWithPadding(tokenizer), 0
    logger.info(
        "Frozen-trunk cache on: blocks 0-%d run once per message, training starts at block %d", n_frozen - 1, n_frozen
    )
    model.to(training_args.device)
    if training_args.trunk_dtype == "bfloat16":
        warn_if_bfloat16_is_emulated(training_args.device, "The frozen-trunk pass")
    with training_args.main_process_first(desc="frozen trunk pass"):
        features = trunk_features(
            model,
            n_frozen,
            tokenized,
            cache_dir=data_args.data_cache_dir or default_cache_dir(),
            batch_size=training_args.trunk_batch_size,
            device=training_args.device,
            dtype=getattr(torch, training_args.trunk_dtype),
        )
    return features, tail_for(model, n_frozen), collate_trunk_states, n_frozen


def save_run(trainer, model, tokenizer, card, summary: dict, probabilities, splits, report, external) -> None:
    """Write the model (safetensors, loadable by a plain pipeline()), its card, plots, metrics and test (and
    external) predictions through a staging directory (`publish`), then print the table and the book's examples."""
    training_args, results = trainer.args, summary["metrics"]
    output_dir = Path(training_args.output_dir)
    staging = output_dir / STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # what a run killed while saving left
    trainer.save_model(str(staging))  # model + tokenizer (processing_class)
    trainer.save_state()
    if not trainer.is_world_process_zero():
        return
    examples_per_step = training_args.train_batch_size * training_args.gradient_accumulation_steps
    plot_loss(trainer.state.log_history, examples_per_step * training_args.world_size, staging / "loss.png")
    plot_accuracy(trainer.state.log_history, staging / "accuracy.png", "spam" if report.is_binary else "macro")
    plot_confusion_matrix(results["test"]["confusion_matrix"], staging / "confusion_matrix.png", report.classes)
    card.metrics, card.figures = results, FIGURES | ranking_figures(staging, probabilities, external, model.config)
    write_model_card(staging, card)
    summary["model_card"] = dataclasses.asdict(card)  # lets `hf-spam push` re-render it for a repo id
    summary["examples"] = examples = example_messages(splits["test"], report)  # the serve page offers them
    (staging / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_predictions(staging / "test_predictions.csv", splits["test"], probabilities["test"], model.config)
    if external is not None:
        write_predictions(
            staging / "external_predictions.csv", splits["external"], probabilities["external"], model.config,
            files=[external.files[k] for k in external.source],
        )  # fmt: skip
    publish(staging, output_dir)
    print(metrics_table(results, report.classes))
    # The trained model in memory, not a reload of output_dir: a second copy would be the run's peak memory.
    for text, prediction in zip(examples, classifier(model, tokenizer)(examples), strict=True):
        print(f"{prediction['label']:>4} {prediction['score']:.3f}  {text}")
    print(f'saved to {output_dir}; try: hf-spam predict --model {output_dir} "{examples[0][:40]}"')


def example_messages(test_split, report) -> list[str]:
    """What the run ends by classifying: the book's two examples for ham/spam data, else the first test
    message of each class (the book's examples mean nothing to another model's labels)."""
    if report.is_binary:
        return BOOK_EXAMPLES
    first = {}
    for text, label in zip(test_split["text"], test_split["label"], strict=True):
        first.setdefault(label, text)
    return [first[label] for label in sorted(first)]


# The plots every run writes beside its model card, which embeds them.
FIGURES = {
    "loss.png": "Training and validation loss",
    "accuracy.png": "Training and validation accuracy",
    "confusion_matrix.png": "Confusion matrix on the test split",
}


def merged_into_trainer(trainer, model, save_adapter: bool):
    """A LoRA run's adapters merged into the weights: what is evaluated and saved is the plain classifier a
    `pipeline()` loads. With `save_adapter`, peft's adapter (and trained head) is kept in OUTPUT_DIR/adapter."""
    if save_adapter and trainer.is_world_process_zero():
        model.save_pretrained(Path(trainer.args.output_dir) / "adapter")
    merged = merge_lora(model)
    trainer.model = trainer.model_wrapped = merged
    return merged


def run(argv: list[str] | None = None) -> int:
    """`main` as a command: a problem with the user's input or environment is one clear line and exit code 2,
    not a traceback; a run stopped by SIGTERM (checkpoint saved) exits with 143, the shell's code for it."""
    configure_logging()  # before parsing: an error in the flags themselves is logged like any other
    try:
        summary = main(argv)
    except USER_ERRORS as err:
        logger.error("%s: %s", type(err).__name__, err)
        return 2
    return 143 if "interrupted_at_step" in summary else 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))

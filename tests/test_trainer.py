import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import DataCollatorWithPadding

from hf_spam.evaluation.metrics import compute_metrics
from hf_spam.models.parts import freeze
from hf_spam.models.pooling import last_token_index
from hf_spam.training.arguments import SpamTrainingArguments
from hf_spam.training.trainer import SpamTrainer

MESSAGES = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts",
    "Ok lar... Joking wif u oni...",
    "WINNER!! As a valued network customer you have been selected to receive a prize reward!",
    "I'm gonna be home soon and i don't want to talk about this stuff anymore tonight",
    "Had your mobile 11 months or more? U R entitled to Update to the latest colour mobiles",
    "Even my brother is not like to speak with me.",
    "URGENT! You have won a 1 week FREE membership in our prize Jackpot!",
    "Is that seriously how you spell his name?",
] * 3  # 24 rows: uneven windows for batch 8 vs 2 x 4 with 20 of them


def _dataset(tokenizer, n=24, skewed=False):
    """`skewed`: 3 of 4 rows spam, so that a tiny random model's gradients don't cancel out across a batch."""
    texts = MESSAGES[:n]
    enc = tokenizer(texts, truncation=True, max_length=64)
    labels = [int(i % 4 != 0) if skewed else i % 2 for i in range(n)]
    return Dataset.from_dict({**enc, "label": labels})


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-2,
        num_train_epochs=1,
        use_cpu=True,
    )
    return SpamTrainingArguments(**{**defaults, **overrides})


def _trainer(model, tokenizer, tmp_path, dataset, **overrides):
    return SpamTrainer(
        model=model,
        args=_args(tmp_path, **overrides),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )


def _loss(trainer, model, batch):
    model.eval()
    with torch.no_grad():
        return trainer.compute_loss(model, dict(batch))


def test_last_token_index_comes_from_the_mask():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 3]


def test_loss_is_cross_entropy_on_the_last_position_for_unpadded_inputs(tiny_model, tokenizer, tmp_path):
    trainer = _trainer(tiny_model, tokenizer, tmp_path, _dataset(tokenizer))
    ids = torch.tensor([tokenizer("You have won a prize, call now")["input_ids"]] * 2)
    ids[1, 0] = 1000  # two different rows of the same length: no padding at all
    labels = torch.tensor([1, 0])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    tiny_model.eval()
    with torch.no_grad():
        book_logits = tiny_model.score(tiny_model.transformer(ids).last_hidden_state)[:, -1, :]
        expected = F.cross_entropy(book_logits, labels)
    assert torch.allclose(_loss(trainer, tiny_model, batch), expected, atol=1e-6)


def test_loss_does_not_change_when_the_batch_is_padded_further(tiny_model, tokenizer, tmp_path):
    trainer = _trainer(tiny_model, tokenizer, tmp_path, _dataset(tokenizer))
    collate = DataCollatorWithPadding(tokenizer)
    rows = [{**tokenizer(t), "label": i % 2} for i, t in enumerate(MESSAGES[:4])]
    batch = collate(rows)
    wider = collate(rows)
    extra = 37
    wider["input_ids"] = F.pad(wider["input_ids"], (0, extra), value=tokenizer.pad_token_id)
    wider["attention_mask"] = F.pad(wider["attention_mask"], (0, extra), value=0)
    assert torch.allclose(_loss(trainer, tiny_model, batch), _loss(trainer, tiny_model, wider), atol=1e-6)


def test_message_ending_in_literal_endoftext_is_pooled_at_its_own_last_token(tiny_model, tokenizer, tmp_path):
    trainer = _trainer(tiny_model, tokenizer, tmp_path, _dataset(tokenizer))
    text = "Claim your prize now <|endoftext|>"
    ids = tokenizer(text)["input_ids"]
    assert 50256 not in ids
    collate = DataCollatorWithPadding(tokenizer)
    batch = collate([{**tokenizer(text), "label": 1}, {**tokenizer(MESSAGES[2]), "label": 1}])
    tiny_model.eval()
    with torch.no_grad():
        _, outputs = trainer.compute_loss(tiny_model, dict(batch), return_outputs=True)
        alone = tiny_model.score(tiny_model.transformer(torch.tensor([ids])).last_hidden_state)[0, -1]
    assert torch.allclose(outputs.logits[0], alone, atol=1e-5)


def test_frozen_parameters_do_not_change_and_trainable_ones_do(tiny_model, tokenizer, tmp_path):
    trainable = set(freeze(tiny_model, "last_block"))
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    _trainer(tiny_model, tokenizer, tmp_path, _dataset(tokenizer), per_device_train_batch_size=8).train()
    for name, param in tiny_model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} did not train"
        else:
            assert torch.equal(param, before[name]), f"{name} is frozen but changed"


# 20 examples: the last window holds 4, not 8. SGD because Adam's update barely notices a wrongly scaled loss.
@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
@pytest.mark.parametrize("n_examples", [24, 20])
def test_gradient_accumulation_2x4_equals_batch_8(tokenizer, tmp_path, n_examples, optim):
    from hf_spam.models.loading import load_model

    results = []
    for batch, accumulation in [(8, 1), (4, 2)]:
        torch.manual_seed(0)
        model = load_model("gpt2", tokenizer, init="random", config_overrides="n_layer=2,n_head=2,n_embd=16")
        freeze(model, "last_block")
        trainer = _trainer(
            model,
            tokenizer,
            tmp_path / f"{batch}x{accumulation}",
            _dataset(tokenizer, n_examples, skewed=True),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            learning_rate=1e-1 if optim == "sgd" else 1e-3,
            optim=optim,
        )
        trainer.train()
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, weight in results[0].items():
        assert torch.allclose(weight, results[1][name], atol=1e-6), name


def test_evaluation_returns_one_prediction_per_example(tiny_model, tokenizer, tmp_path):
    dataset = _dataset(tokenizer, 21)  # not a multiple of the eval batch size
    trainer = _trainer(tiny_model, tokenizer, tmp_path, dataset, per_device_eval_batch_size=8)
    output = trainer.predict(dataset)
    assert output.predictions.shape == (21, 2)
    assert output.metrics["test_examples"] == 21
    assert (
        output.metrics["test_tn"] + output.metrics["test_fp"] + output.metrics["test_fn"] + output.metrics["test_tp"]
        == 21
    )


def test_class_weights_scale_the_loss_per_class(tiny_model, tokenizer, tmp_path):
    dataset = _dataset(tokenizer, 8)
    batch = DataCollatorWithPadding(tokenizer)([dict(r) for r in dataset])
    plain = _trainer(tiny_model, tokenizer, tmp_path, dataset)
    weighted = _trainer(tiny_model, tokenizer, tmp_path, dataset)
    weighted.class_weights = torch.tensor([1.0, 3.0])
    tiny_model.eval()
    with torch.no_grad():
        _, out = plain.compute_loss(tiny_model, dict(batch), return_outputs=True)
        per_example = F.cross_entropy(out.logits, batch["labels"], reduction="none")
    expected = (per_example * torch.tensor([1.0, 3.0])[batch["labels"]]).sum() / len(per_example)
    assert torch.allclose(_loss(weighted, tiny_model, batch), expected, atol=1e-6)


def test_label_smoothing_factor_smooths_the_pooled_loss(tiny_model, tokenizer, tmp_path):
    dataset = _dataset(tokenizer, 8)
    batch = DataCollatorWithPadding(tokenizer)([dict(r) for r in dataset])
    plain = _trainer(tiny_model, tokenizer, tmp_path, dataset)
    smoothed = _trainer(tiny_model, tokenizer, tmp_path, dataset, label_smoothing_factor=0.1)
    tiny_model.eval()
    with torch.no_grad():
        _, out = plain.compute_loss(tiny_model, dict(batch), return_outputs=True)
        expected = F.cross_entropy(out.logits, batch["labels"], label_smoothing=0.1)
    assert not torch.allclose(_loss(plain, tiny_model, batch), expected)
    assert torch.allclose(_loss(smoothed, tiny_model, batch), expected, atol=1e-6)

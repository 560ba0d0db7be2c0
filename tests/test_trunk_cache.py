import pytest
import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, GPT2ForSequenceClassification
from transformers.masking_utils import create_causal_mask

from hf_spam.models.gpt2_last_block import last_block_at_ends
from hf_spam.models.loading import load_model
from hf_spam.models.parts import freeze
from hf_spam.training import trunk_cache
from hf_spam.training.arguments import SpamTrainingArguments
from hf_spam.training.trainer import SpamTrainer
from hf_spam.training.trunk_cache import (
    TrunkStates,
    cached_trunk_states,
    collate_trunk_states,
    frozen_prefix,
    trunk_pass,
)
from hf_spam.training.trunk_tails import FrozenTrunkTail

from .conftest import TINY_OVERRIDES
from .test_trainer import MESSAGES


def _states(model, n_frozen, input_ids, **kwargs) -> list[torch.Tensor]:
    """`trunk_pass`, one `[len_i, n_embd]` tensor per message."""
    input_ids = list(input_ids)
    return list(trunk_pass(model, n_frozen, input_ids, **kwargs).split([len(ids) for ids in input_ids]))


def _tokenized(tokenizer, n=20):
    texts = [m + " " + "x" * (i % 7) for i, m in enumerate((MESSAGES * 2)[:n])]
    return Dataset.from_dict({**tokenizer(texts), "label": [int(i % 4 != 0) for i in range(n)]})


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        num_train_epochs=2,
    )
    return SpamTrainingArguments(**{**defaults, **overrides})


@pytest.mark.parametrize(
    "trainable, n_frozen", [("last_layer", 3), ("last_block", 2), ("last_two_blocks", 1), ("all", 0)]
)
def test_cache_covers_exactly_the_frozen_leading_blocks(tiny_model, trainable, n_frozen):
    freeze(tiny_model, trainable)
    found, reason = frozen_prefix(tiny_model)
    assert found == n_frozen
    assert (reason is None) == (n_frozen > 0)


def test_cache_is_off_when_frozen_blocks_have_dropout(tokenizer):
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, dropout=0.1)
    freeze(model, "last_block")
    n_frozen, reason = frozen_prefix(model)
    assert n_frozen == 0 and "dropout" in reason


def test_cache_is_off_when_a_middle_block_trains(tiny_model):
    freeze(tiny_model, "last_block")
    for p in tiny_model.transformer.h[0].parameters():
        p.requires_grad = True
    n_frozen, reason = frozen_prefix(tiny_model)
    assert n_frozen == 0 and "not the last" in reason


@pytest.mark.parametrize("trainable", ["last_layer", "last_block", "last_two_blocks"])
def test_cached_path_gives_the_full_forward_logits_and_loss(tiny_model, tokenizer, tmp_path, trainable):
    freeze(tiny_model, trainable)
    n_frozen, _ = frozen_prefix(tiny_model)
    data = _tokenized(tokenizer, 8)
    tiny_model.eval()
    full_batch = DataCollatorWithPadding(tokenizer)([dict(r) for r in data])
    states = _states(tiny_model, n_frozen, data["input_ids"], batch_size=3)
    tail_batch = collate_trunk_states(list(TrunkStates(states, data["label"])))
    trainer = SpamTrainer(model=tiny_model, args=_args(tmp_path))
    with torch.no_grad():
        full_loss, full_out = trainer.compute_loss(tiny_model, dict(full_batch), return_outputs=True)
        tail = FrozenTrunkTail(tiny_model, n_frozen)
        tail_loss, tail_out = trainer.compute_loss(tail, dict(tail_batch), return_outputs=True)
    assert torch.allclose(full_out.logits, tail_out.logits, atol=1e-5)
    assert torch.allclose(full_loss, tail_loss, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    ["", "scale_attn_by_inverse_layer_idx=True", "scale_attn_weights=False", "reorder_and_upcast_attn=True"],
)
@pytest.mark.parametrize("input_needs_grad", [False, True], ids=["cached-input", "input-with-grad"])
def test_final_block_at_message_ends_equals_the_whole_block(tokenizer, overrides, input_needs_grad):
    config_overrides = TINY_OVERRIDES + ("," + overrides if overrides else "")
    torch.manual_seed(0)
    model = load_model("gpt2", tokenizer, init="random", config_overrides=config_overrides)
    block = model.transformer.h[-1]
    with torch.no_grad():  # a trained ln_1, not the initial gamma = 1, beta = 0 that hides terms of its gradient
        block.ln_1.weight.normal_()
        block.ln_1.bias.normal_()
    lengths = [5, 1, 9, 2]  # a one-token message too: it attends to itself only
    packed = collate_trunk_states(
        [{"hidden_states": torch.randn(n, model.config.n_embd), "labels": 0} for n in lengths]
    )
    hidden = packed["hidden_states"].requires_grad_(input_needs_grad)
    ends = packed["packed_ends"]
    wrt = [hidden, *block.parameters()] if input_needs_grad else list(block.parameters())

    fast = last_block_at_ends(block, hidden, ends)
    fast_grads = torch.autograd.grad(fast.square().sum(), wrt)

    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=hidden,
        attention_mask=None,
        past_key_values=None,
        position_ids=packed["position_ids"],
    )
    whole = block(hidden, None, mask, None, use_cache=False, position_ids=packed["position_ids"])[0, ends]
    whole_grads = torch.autograd.grad(whole.square().sum(), wrt)

    assert fast.shape == (len(lengths), model.config.n_embd)
    assert torch.allclose(fast, whole, atol=1e-5)
    for a, b in zip(fast_grads, whole_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_from_the_cache_matches_training_without_it(tokenizer, tmp_path):
    data = _tokenized(tokenizer, 20)
    trained = {}
    for use_cache in (False, True):
        torch.manual_seed(0)
        model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)
        freeze(model, "last_block")
        if use_cache:
            n_frozen, _ = frozen_prefix(model)
            states = _states(model, n_frozen, data["input_ids"])
            train_model, features, collator = (
                FrozenTrunkTail(model, n_frozen),
                TrunkStates(states, data["label"]),
                collate_trunk_states,
            )
        else:
            train_model, features, collator = model, data, DataCollatorWithPadding(tokenizer)
        trainer = SpamTrainer(
            model=train_model,
            args=_args(tmp_path / str(use_cache)),
            train_dataset=features,
            data_collator=collator,
            processing_class=tokenizer,
        )
        trainer.train()
        assert trainer.state.global_step == 10
        predictions = trainer.predict(features).predictions
        trained[use_cache] = ({n: p.detach().clone() for n, p in model.named_parameters()}, predictions)
    (plain_weights, plain_pred), (cached_weights, cached_pred) = trained[False], trained[True]
    # AdamW divides each gradient by its own running magnitude, so a rounding-level difference in a near-zero
    # gradient can move that weight by a fraction of the learning rate (1e-3 here): 1.25e-6 was seen on an
    # Intel Xeon here for transformer.h.2.attn.c_attn.bias, with the code of main. 1e-5 is 1% of one step.
    for name, weight in plain_weights.items():
        assert torch.allclose(weight, cached_weights[name], atol=1e-5), (
            name,
            (weight - cached_weights[name]).abs().max(),
        )
    assert (plain_pred.argmax(-1) == cached_pred.argmax(-1)).all()
    assert torch.allclose(torch.as_tensor(plain_pred), torch.as_tensor(cached_pred), atol=1e-5)


def test_states_are_cached_on_disk_and_reused(tiny_model, tokenizer, tmp_path, monkeypatch):
    freeze(tiny_model, "last_block")
    data = _tokenized(tokenizer, 6)
    first = cached_trunk_states(tiny_model, 2, {"train": data}, cache_dir=tmp_path)["train"]
    assert len(list((tmp_path / "trunk").glob("*.offsets.npy"))) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("the trunk ran again although its states were cached")

    monkeypatch.setattr(trunk_cache, "trunk_pass", must_not_run)
    second = cached_trunk_states(tiny_model, 2, {"train": data}, cache_dir=tmp_path)["train"]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert [len(s) for s in first] == [len(ids) for ids in data["input_ids"]]

    monkeypatch.undo()
    direct = _states(tiny_model, 2, list(data["input_ids"]))
    assert all(torch.equal(a, b) for a, b in zip(first, direct, strict=True))
    with torch.no_grad():
        tiny_model.transformer.h[0].mlp.c_fc.weight.add_(0.01)  # other trunk weights: another cache entry
    cached_trunk_states(tiny_model, 2, {"train": data}, cache_dir=tmp_path)
    assert len(list((tmp_path / "trunk").glob("*.offsets.npy"))) == 2


def test_missing_splits_share_one_trunk_pass(tiny_model, tokenizer, tmp_path, monkeypatch):
    freeze(tiny_model, "last_block")
    data = _tokenized(tokenizer, 20)
    splits = {
        "train": data.select(range(12)),
        "validation": data.select(range(12, 15)),
        "test": data.select(range(15, 20)),
    }
    cached_trunk_states(tiny_model, 2, {"validation": splits["validation"]}, cache_dir=tmp_path)
    passes = []
    trunk_pass = trunk_cache.trunk_pass
    monkeypatch.setattr(
        trunk_cache, "trunk_pass", lambda m, n, ids, *a, **k: passes.append(len(ids)) or trunk_pass(m, n, ids, *a, **k)
    )

    stores = cached_trunk_states(tiny_model, 2, splits, cache_dir=tmp_path, batch_size=4)

    assert passes == [12 + 5]  # train and test together; validation came from the cache
    for name, split in splits.items():
        alone = _states(tiny_model, 2, list(split["input_ids"]), batch_size=3)
        assert len(stores[name]) == len(split)
        for a, b in zip(stores[name], alone, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_splits_cut_again_from_messages_seen_before_need_no_trunk_pass(tiny_model, tokenizer, tmp_path, monkeypatch):
    """`hf-spam cv`'s folds: every fold holds the same messages, cut into other splits."""
    freeze(tiny_model, "last_block")
    data = _tokenized(tokenizer, 20)
    first = {"train": data.select(range(15)), "test": data.select(range(15, 20))}
    cached_trunk_states(tiny_model, 2, first, cache_dir=tmp_path)
    passes = []
    trunk_pass = trunk_cache.trunk_pass
    monkeypatch.setattr(
        trunk_cache, "trunk_pass", lambda m, n, ids, *a, **k: passes.append(len(ids)) or trunk_pass(m, n, ids, *a, **k)
    )
    again = {"train": data.select(range(5, 20)), "test": data.select(range(5))}
    stores = cached_trunk_states(tiny_model, 2, again, cache_dir=tmp_path)
    assert passes == []
    more = _tokenized(tokenizer, 24).select(range(20, 24))  # four new messages: only they run
    cached_trunk_states(tiny_model, 2, {"new": more}, cache_dir=tmp_path)
    assert passes == [len({tuple(ids) for ids in more["input_ids"]})]
    for name, split in again.items():
        alone = _states(tiny_model, 2, list(split["input_ids"]), batch_size=3)
        for a, b in zip(stores[name], alone, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_saving_a_tail_saves_the_whole_classifier(tiny_model, tokenizer, tmp_path):
    freeze(tiny_model, "last_block")
    tail = FrozenTrunkTail(tiny_model, 2)
    trainer = SpamTrainer(model=tail, args=_args(tmp_path), processing_class=tokenizer)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = GPT2ForSequenceClassification.from_pretrained(tmp_path / "saved", use_safetensors=True)
    for name, weight in tiny_model.state_dict().items():
        assert torch.equal(weight, reloaded.state_dict()[name]), name


def test_bfloat16_trunk_is_close_and_leaves_the_model_as_it_was(tiny_model, tokenizer):
    freeze(tiny_model, "last_block")
    tiny_model.train()
    before = {name: p.detach().clone() for name, p in tiny_model.state_dict().items()}
    ids = list(_tokenized(tokenizer, 8)["input_ids"])
    exact = _states(tiny_model, 2, ids)
    fast = _states(tiny_model, 2, ids, dtype=torch.bfloat16)
    assert all(f.dtype == torch.float32 and f.shape == e.shape for f, e in zip(fast, exact, strict=True))
    assert all(torch.allclose(f, e, atol=0.05, rtol=0.02) for f, e in zip(fast, exact, strict=True))
    assert any(not torch.equal(f, e) for f, e in zip(fast, exact, strict=True))
    assert tiny_model.training and all(m.training for m in tiny_model.modules())
    for name, weight in tiny_model.state_dict().items():
        assert weight.dtype == before[name].dtype and torch.equal(weight, before[name]), name

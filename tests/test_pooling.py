"""`pooling` and `causal_mask`: the same positions read in training (cached or not), predict, export and a reload."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from hf_spam.deploy.classifier import load_classifier
from hf_spam.models.loading import load_model
from hf_spam.models.parts import freeze
from hf_spam.models.pooled_forward import pooled_logits
from hf_spam.models.pooling import POOLINGS, pool_packed, pool_padded, pooling_of
from hf_spam.training.trunk_cache import collate_trunk_states, frozen_prefix, trunk_pass
from hf_spam.training.trunk_tails import tail_for

from .conftest import TINY_OVERRIDES
from .test_decoders import TEXTS, tiny_config


def _by_hand(token_logits, mask, pooling):
    rows = []
    for logits, row_mask in zip(token_logits, mask, strict=True):
        real = logits[row_mask.bool()]
        rows.append(
            {"first": real[0], "last": real[-1], "mean": real.mean(0), "last_mean": (real[-1] + real.mean(0)) / 2}[
                pooling
            ]
        )
    return torch.stack(rows)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padded_and_packed_pooling_read_the_positions_named(pooling):
    torch.manual_seed(0)
    lengths = [3, 1, 5]
    token_logits = torch.randn(3, 5, 2)
    right = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    expected = _by_hand(token_logits, right, pooling)
    assert torch.allclose(pool_padded(token_logits, right, pooling), expected)
    left_logits = torch.stack([torch.roll(row, 5 - n, dims=0) for row, n in zip(token_logits, lengths, strict=True)])
    assert torch.allclose(pool_padded(left_logits, right.flip(-1), pooling), expected)  # left padding alike
    packed = torch.cat([token_logits[i, :n] for i, n in enumerate(lengths)])
    ends = torch.tensor(lengths).cumsum(0) - 1
    assert torch.allclose(pool_packed(packed, ends, pooling), expected)


def test_pooling_is_saved_in_the_config_and_a_default_model_says_nothing(tokenizer, tmp_path):
    plain = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)
    assert "hf_spam_pooling" not in plain.config.to_dict() and pooling_of(plain.config) == "last"
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, pooling="mean")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["hf_spam_pooling"] == "mean"
    with pytest.raises(ValueError, match="pooling must be one of"):
        load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, pooling="max")


def _gpt2(tokenizer, pooling):
    torch.manual_seed(0)
    return load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, pooling=pooling)


def _llama(tokenizer, pooling):
    torch.manual_seed(0)
    config = tiny_config("llama", tokenizer)
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.hf_spam_pooling = pooling
    return model


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("pooling", ["first", "mean", "last_mean"])
@pytest.mark.parametrize("trainable", ["last_layer", "last_block", "last_two_blocks"])
def test_the_trunk_cache_pools_like_the_full_forward(build, pooling, trainable, tokenizer):
    model = build(tokenizer, pooling).eval()
    freeze(model, trainable)
    ids = tokenizer(TEXTS)["input_ids"]
    n_frozen, why_not = frozen_prefix(model, ids)
    assert n_frozen > 0, why_not  # the probe compares with the pooled plain forward: it must pass
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    token_logits = model.score(model.base_model(**batch)[0])
    expected = _by_hand(token_logits, batch["attention_mask"], pooling)
    states = trunk_pass(model, n_frozen, ids)
    packed = collate_trunk_states([{"hidden_states": s, "labels": 0} for s in states.split([len(i) for i in ids])])
    assert torch.allclose(tail_for(model, n_frozen)(**packed).logits, expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(pooled_logits(model, **batch), expected, atol=1e-5)
    last = _by_hand(token_logits, batch["attention_mask"], "last")
    assert not torch.allclose(expected, last, atol=1e-3)  # the pooling changes the answer


def test_without_causal_mask_early_tokens_see_late_ones_and_the_cache_is_off(tokenizer, tmp_path):
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, causal_mask=False)
    freeze(model, "last_block")
    a, b = tokenizer(["free prize now"], return_tensors="pt"), tokenizer(["free prize later"], return_tensors="pt")
    first = [model.base_model(**x)[0][0, 0] for x in (a, b)]
    assert not torch.allclose(*first)  # the first token's state depends on the last token
    n_frozen, why_not = frozen_prefix(model)
    assert n_frozen == 0 and "bidirectional" in why_not
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["is_causal"] is False
    # A plain pipeline() follows is_causal from the config: it gives hf-spam predict's answers.
    texts = TEXTS[:4]
    ours = load_classifier(str(tmp_path))(texts)
    theirs = pipeline("text-classification", model=str(tmp_path), device="cpu")(texts)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert max(abs(p["score"] - q["score"]) for p, q in zip(ours, theirs, strict=True)) < 1e-5


def test_padding_to_the_longest_message_changes_nothing_the_cache_trains_on(tokenizer, tmp_path):
    from datasets import Dataset, DatasetDict

    from hf_spam.data.tokenize import tokenize_splits
    from hf_spam.training.trunk_cache import trunk_features

    model = _gpt2(tokenizer, "last").eval()
    freeze(model, "last_block")
    texts = [*TEXTS, "ok"]
    splits = DatasetDict({"train": Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(len(texts))]})})
    features = {
        padding: trunk_features(model, 2, tokenize_splits(splits, tokenizer, 64, padding, tmp_path), tmp_path)["train"]
        for padding in ("longest", "max_length")
    }
    for i in range(len(texts)):
        unpadded, padded = features["longest"][i]["hidden_states"], features["max_length"][i]["hidden_states"]
        assert padded.shape == unpadded.shape  # the pads are not states the tail attends to
        assert torch.allclose(padded, unpadded, atol=1e-5)

"""`keep_layers`: a decoder cut to its first K layers is an ordinary, shallower classifier, for every family."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from hf_spam.inference import load_classifier
from hf_spam.modeling import ModelConfigError, decoder_parts, freeze, keep_layers, load_model

from .conftest import TINY_OVERRIDES
from .test_decoders import FAMILIES, TEXTS, tiny_config


@pytest.fixture(params=["gpt2", *sorted(FAMILIES)])
def full_model(request, tokenizer, tmp_path):
    """GPT-2 (its own fast paths) and a saved random checkpoint of every other family."""
    if request.param == "gpt2":
        return load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config(request.param, tokenizer)).save_pretrained(
        tmp_path / "base"
    )
    tokenizer.save_pretrained(tmp_path / "base")
    return load_model(str(tmp_path / "base"), tokenizer)


def test_the_kept_layers_compute_what_the_full_model_computes_up_to_them(full_model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = full_model.base_model(**batch, output_hidden_states=True).hidden_states
        parts = decoder_parts(full_model)
        expected = parts.norm(states[2])
        short = keep_layers(full_model, 2)
        got = short.base_model(**batch).last_hidden_state
    assert short.config.num_hidden_layers == 2 and len(decoder_parts(short).layers) == 2
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_last_block_trains_the_new_top_layer(full_model):
    short = keep_layers(full_model, 2)
    freeze(short, "last_block")
    parts = decoder_parts(short)
    trainable = {id(p) for p in short.parameters() if p.requires_grad}
    assert {id(p) for p in parts.layers[1].parameters()} <= trainable
    assert not {id(p) for p in parts.layers[0].parameters()} & trainable


def test_a_shallow_model_saves_and_a_plain_pipeline_gives_predicts_scores(full_model, tokenizer, tmp_path):
    short = keep_layers(full_model, 2).eval()
    short.save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "short")
    assert reloaded.config.num_hidden_layers == 2
    scores = pipeline("text-classification", model=str(tmp_path / "short"), top_k=None)(TEXTS)
    ours = load_classifier(str(tmp_path / "short")).probabilities(TEXTS)
    for row, p in zip(scores, ours, strict=True):
        by_label = {item["label"]: item["score"] for item in row}
        assert by_label["spam"] == pytest.approx(float(p[1]), abs=1e-5)


def test_more_layers_than_the_model_has_is_one_error(full_model):
    with pytest.raises(ModelConfigError, match="has 3 layers; give a number from 1 to 3|has 4 layers; give a"):
        keep_layers(full_model, 9)

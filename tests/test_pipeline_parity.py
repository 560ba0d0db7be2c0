"""The recommended recipe's form (last-token pooling after an EOS the tokenizer appends, a shallower decoder)
answers the same through a plain `pipeline()`, `hf-spam predict` and `hf-spam serve`, on a tiny model of its
shape."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from hf_spam.deploy.classifier import load_classifier
from hf_spam.models.loading import load_model
from hf_spam.models.parts import ModelConfigError, keep_layers
from hf_spam.models.tokenizer import bundled_tokenizer, load_tokenizer

from .test_decoders import TEXTS, tiny_config

MESSAGES = [*TEXTS, "<|endoftext|> is text here", "x" * 300]


TEMPLATE = "<|endoftext|>Is this message spam?\n{message}\nAnswer:<|endoftext|>"


@pytest.fixture(scope="module", params=["append_eos", "message_template"])
def recommended_shape(tmp_path_factory, request):
    """A tiny Llama (SmolLM2's family) cut to 3 of its 4 layers, whose tokenizer appends its EOS (or wraps each
    message in a template ending in it) and pads with another special token, saved as `hf-spam train` saves."""
    path = tmp_path_factory.mktemp("recommended")
    base = bundled_tokenizer()
    base.add_special_tokens({"additional_special_tokens": ["<|pad|>"]})
    base.save_pretrained(path / "base")
    if request.param == "append_eos":
        tokenizer = load_tokenizer(str(path / "base"), append_eos=True)
    else:
        tokenizer = load_tokenizer(str(path / "base"), message_template=TEMPLATE)
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config("llama", tokenizer)).save_pretrained(path / "base")
    model = keep_layers(load_model(str(path / "base"), tokenizer), 3)
    torch.nn.init.normal_(model.score.weight, std=2.0)  # scores spread across (0, 1)
    model.save_pretrained(path / "model")
    tokenizer.save_pretrained(path / "model")
    return str(path / "model"), tokenizer


def test_the_saved_tokenizer_appends_its_eos_and_pads_with_another_token(recommended_shape):
    model_dir, tokenizer = recommended_shape
    plain = pipeline("text-classification", model=model_dir).tokenizer
    ids = plain("hello there")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    # a literal EOS string in a message is text: the tokenizer's own are the only EOS ids
    assert plain("<|endoftext|> is text")["input_ids"].count(tokenizer.eos_token_id) == ids.count(
        tokenizer.eos_token_id
    )
    if ids.count(tokenizer.eos_token_id) == 2:  # the template, whole, around the message
        wrapped = tokenizer.decode(ids)
        assert wrapped == TEMPLATE.format(message="hello there")
        assert len(plain("a " * 500, truncation=True, max_length=40)["input_ids"]) == 40


def test_a_template_without_its_placeholder_is_one_error():
    with pytest.raises(ModelConfigError, match="must hold {message} once"):
        load_tokenizer(None, use_bundled=True, message_template="Is this spam?")


def test_pipeline_predict_and_serve_give_the_same_labels_and_scores(recommended_shape):
    pytest.importorskip("fastapi")
    from hf_spam.deploy.serve import create_app

    from .test_serve import Server, post

    model_dir, _ = recommended_shape
    ours = load_classifier(model_dir)
    expected = ours(MESSAGES)
    spam = ours.probabilities(MESSAGES)[:, 1]
    assert max(spam) - min(spam) > 0.1  # not a model that says the same of everything
    plain = pipeline("text-classification", model=model_dir)
    for answers in (plain(MESSAGES), plain(MESSAGES, batch_size=4), [plain(m)[0] for m in MESSAGES]):
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        for a, e in zip(answers, expected, strict=True):
            assert a["score"] == pytest.approx(e["score"], abs=1e-4)
    with Server(create_app(model_dir)) as server:
        status, body = post(server.url + "/", json.dumps({"inputs": MESSAGES}).encode())
    assert status == 200
    for answer, e in zip(body, expected, strict=True):
        assert answer[0]["label"] == e["label"] and answer[0]["score"] == pytest.approx(e["score"], abs=1e-4)


def test_append_eos_on_a_tokenizer_with_no_other_special_token_is_one_error():
    with pytest.raises(ModelConfigError, match="has no special token besides its EOS"):
        load_tokenizer(None, use_bundled=True, append_eos=True)

"""`keep_layers`: a decoder cut to its first K layers is an ordinary, shallower classifier, for every family."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from hf_spam.deploy.classifier import load_classifier
from hf_spam.models.loading import load_model
from hf_spam.models.parts import ModelConfigError, decoder_parts, freeze, keep_layers

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


def test_the_probe_reads_what_each_cut_model_hands_its_head(full_model, tokenizer):
    """`keep_layers: auto`'s features for layer k are exactly the pooled, normed states a model cut to k layers
    gives its head, for every family."""
    import copy

    from hf_spam.training.layer_probe import layer_features

    ids = tokenizer(TEXTS)["input_ids"]
    features = layer_features(full_model, ids, tokenizer.pad_token_id, batch_size=2)
    assert len(features) == full_model.config.num_hidden_layers and features[0].shape[0] == len(TEXTS)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    last = batch["attention_mask"].sum(-1) - 1
    for k in (1, 2):
        short = keep_layers(copy.deepcopy(full_model), k).eval()
        with torch.no_grad():
            states = short.base_model(**batch).last_hidden_state[torch.arange(len(TEXTS)), last]
        torch.testing.assert_close(torch.from_numpy(features[k - 1]), states, rtol=1e-5, atol=1e-5)


def test_auto_keeps_the_shallowest_layer_within_the_tolerance_of_the_best():
    from hf_spam.training.layer_probe import choose_depth

    assert choose_depth([0.90, 0.9875, 0.99, 0.988]) == 2
    assert choose_depth([0.90, 0.985, 0.99, 0.988]) == 3
    assert choose_depth([0.99, 0.95]) == 1
    assert choose_depth([0.5, 0.6, 0.7], tolerance=0.0) == 3


def test_a_run_with_keep_layers_auto_saves_the_depth_it_chose_and_says_why(tmp_path):
    import json

    from hf_spam.training.run import run

    from .conftest import ROOT

    out = tmp_path / "auto"
    flags = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--config_overrides", "n_layer=4,n_head=2,n_embd=16",
             "--keep_layers", "auto", "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
             "--disable_tqdm", "true", "--evaluate_held_out", "false", "--output_dir", str(out)]  # fmt: skip
    assert run(flags) == 0
    probe = json.loads((out / "metrics.json").read_text())["keep_layers_auto"]
    assert len(probe["scores"]) == 4 and probe["metric"] == "validation average precision"
    kept = probe["kept"]
    assert max(probe["scores"]) - probe["scores"][kept - 1] <= probe["tolerance"]
    assert all(max(probe["scores"]) - s > probe["tolerance"] for s in probe["scores"][: kept - 1])
    assert json.loads((out / "config.json").read_text())["n_layer"] == kept
    card = (out / "README.md").read_text()
    assert ("Chosen by `keep_layers: auto`" in card) == (kept < 4)  # the Depth line shows only when cut


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("3", 3), (3, 3)])
def test_keep_layers_takes_a_number_or_auto(value, expected):
    from hf_spam.training.arguments import ModelArguments

    assert ModelArguments(keep_layers=value).keep_layers == expected


@pytest.mark.parametrize("value", ["deep", "0", True, 2.5])
def test_keep_layers_refuses_anything_else(value):
    from hf_spam.training.arguments import ModelArguments

    with pytest.raises(ValueError, match="keep_layers"):
        ModelArguments(keep_layers=value)

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from hf_spam.models.loading import SHAPES, HubUnreachableError, load_model, parse_config_overrides
from hf_spam.models.parts import freeze


def test_tokenizer_pads_right_with_eos_and_splits_special_tokens(tokenizer):
    assert tokenizer.pad_token_id == 50256 == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert 50256 not in tokenizer("win cash <|endoftext|>")["input_ids"]


def test_model_config_is_wired_for_pipeline(tiny_model):
    config = tiny_model.config
    assert config.num_labels == 2
    assert config.id2label == {0: "ham", 1: "spam"}
    assert config.label2id == {"ham": 0, "spam": 1}
    assert config.problem_type == "single_label_classification"
    assert config.pad_token_id == 50256 and isinstance(config.pad_token_id, int)
    assert config.resid_pdrop == config.attn_pdrop == config.embd_pdrop == 0.0


@pytest.mark.parametrize(
    "trainable, expected_prefixes",
    [
        ("last_layer", ["score."]),
        ("last_block", ["transformer.h.2.", "transformer.ln_f.", "score."]),
        ("last_two_blocks", ["transformer.h.1.", "transformer.h.2.", "transformer.ln_f.", "score."]),
        ("all", [""]),
    ],
)
def test_freeze_leaves_exactly_the_named_parameters_trainable(tiny_model, trainable, expected_prefixes):
    names = freeze(tiny_model, trainable)
    expected = {n for n, _ in tiny_model.named_parameters() if n.startswith(tuple(expected_prefixes))}
    assert set(names) == expected
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} == expected


def test_gpt2_small_last_block_trains_7_090_944_of_124_441_344_parameters():
    config = GPT2Config(**SHAPES["gpt2"], vocab_size=50257, num_labels=2, pad_token_id=50256)
    with torch.device("meta"):
        model = GPT2ForSequenceClassification(config)
    freeze(model, "last_block")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7_090_944
    assert sum(p.numel() for p in model.parameters()) == 124_441_344


def test_unknown_trainable_option_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="trainable must be one of"):
        freeze(tiny_model, "last_three_blocks")


def test_config_overrides_are_typed():
    assert parse_config_overrides("n_layer=2, n_embd=64,activation_function=gelu") == {
        "n_layer": 2,
        "n_embd": 64,
        "activation_function": "gelu",
    }
    assert parse_config_overrides("scale_attn_weights=False,reorder_and_upcast_attn=true") == {
        "scale_attn_weights": False,
        "reorder_and_upcast_attn": True,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("n_layer")


def test_pretrained_model_offline_fails_fast_with_a_way_out(tokenizer):
    with pytest.raises(HubUnreachableError, match="init: random"):
        load_model("gpt2", tokenizer, init="pretrained")


def test_config_with_auto_map_is_refused(tmp_path, tokenizer, tiny_model):
    tiny_model.config.auto_map = {"AutoModelForSequenceClassification": "evil.Model"}
    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="auto_map"):
        load_model(str(tmp_path), tokenizer, init="pretrained")


def test_local_checkpoint_loads_with_its_weights(tmp_path, tokenizer, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    reloaded = load_model(str(tmp_path), tokenizer, init="pretrained")
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_gelu_runs_fused_and_the_saved_model_is_still_gpt2(tiny_model, tokenizer, tmp_path):
    from transformers.activations import GELUTanh, NewGELUActivation

    assert tiny_model.config.activation_function == "gelu_new"
    assert all(isinstance(block.mlp.act, GELUTanh) for block in tiny_model.transformer.h)
    tiny_model.save_pretrained(tmp_path)
    plain = GPT2ForSequenceClassification.from_pretrained(tmp_path, use_safetensors=True)
    assert all(isinstance(block.mlp.act, NewGELUActivation) for block in plain.transformer.h)
    batch = tokenizer(["Win a free cruise now", "see you at 6"], padding=True, return_tensors="pt")
    with torch.no_grad():
        fused, reference = tiny_model.eval()(**batch).logits, plain.eval()(**batch).logits
    assert torch.allclose(fused, reference, atol=1e-5)


def test_pad_is_never_a_token_the_tokenizer_adds_itself():
    """A tokenizer that puts its EOS in front of every message (as a BOS) cannot pad with it: the model's own
    pooling would stop at that token. Its own pad token is taken instead; with none, the error says so."""
    from tokenizers.processors import TemplateProcessing

    from hf_spam.models.tokenizer import bundled_tokenizer, pad_token_for

    tokenizer = bundled_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 50256)]
    )
    assert tokenizer("Hello world")["input_ids"] == [50256, 15496, 995]
    with pytest.raises(ValueError, match="none can mark padding"):
        pad_token_for(tokenizer)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert pad_token_for(tokenizer) == "<pad>"

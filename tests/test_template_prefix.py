"""A message template's opening, read once: the same logits as the full forward for every decoder family, fewer
tokens through the layers, and the full forward wherever the opening's keys would not be the same."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, pipeline

from hf_spam.deploy.classifier import classifier, load_classifier
from hf_spam.models.loading import load_model
from hf_spam.models.parts import decoder_parts
from hf_spam.models.pooled_forward import pooled_logits
from hf_spam.models.template_prefix import opening_ids, template_prefix
from hf_spam.models.tokenizer import load_tokenizer

from .conftest import TINY_OVERRIDES
from .test_decoders import FAMILIES, TEXTS, tiny_config

# "S", "MS", ":", " " before each message: 3 ids cached (the last stays with the row), within the tiny
# families' 4-token sliding windows.
TEMPLATE = "SMS: {message} Spam?"
LONG_OPENING = "Is this SMS message spam? Message: {message}"


@pytest.fixture(scope="module")
def templated():
    return load_tokenizer(None, use_bundled=True, message_template=TEMPLATE)


def _tiny(family, tokenizer, **config):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, tokenizer)).eval()
    for name, value in config.items():
        setattr(model.config, name, value)
    return model


def _tokens_through_first_layer(model, run):
    """How many tokens a row carries into the first decoder layer while `run()` executes."""
    seen = []
    hook = (
        decoder_parts(model)
        .layers[0]
        .register_forward_pre_hook(
            lambda _, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
            with_kwargs=True,
        )
    )
    try:
        result = run()
    finally:
        hook.remove()
    return result, seen


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_reads_the_opening_once_with_the_full_forwards_logits(family, templated):
    model = _tiny(family, templated)
    prefix = template_prefix(model, templated)
    assert prefix is not None and prefix.ids.tolist() == templated("x")["input_ids"][:3]
    batch = templated(TEXTS, padding=True, return_tensors="pt")
    assert prefix.begins(batch["input_ids"])
    with torch.no_grad():
        full, widths = _tokens_through_first_layer(model, lambda: pooled_logits(model, **batch))
        cut, cut_widths = _tokens_through_first_layer(model, lambda: pooled_logits(model, **batch, prefix=prefix))
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)
    assert cut_widths == [widths[0] - 3]  # the opening's 3 tokens no longer go through the layers
    with torch.no_grad():  # the shortest row: the opening, one token of its own, the template's end
        short = templated([""], return_tensors="pt")
        torch.testing.assert_close(pooled_logits(model, **short, prefix=prefix), pooled_logits(model, **short))


def test_no_opening_where_its_keys_would_differ_or_gpt2_has_its_own_path(templated, tokenizer):
    llama = _tiny("llama", templated)
    assert opening_ids(llama, templated) == templated("x")["input_ids"][:3]
    assert opening_ids(llama, tokenizer) == []  # no template: nothing before a message
    assert opening_ids(_tiny("llama", templated, hf_spam_pooling="mean"), templated) == []
    assert opening_ids(_tiny("llama", templated, is_causal=False), templated) == []
    gpt2 = load_model("gpt2", templated, init="random", config_overrides=TINY_OVERRIDES)
    assert opening_ids(gpt2, templated) == [] and template_prefix(gpt2, templated) is None
    # A sliding window (4 tokens in the tiny Mistral) shorter than the opening keeps only its end.
    long_opening = load_tokenizer(None, use_bundled=True, message_template=LONG_OPENING)
    mistral = _tiny("mistral", long_opening)
    assert len(opening_ids(mistral, long_opening)) > mistral.config.sliding_window
    assert template_prefix(mistral, long_opening) is None
    assert template_prefix(_tiny("llama", long_opening), long_opening) is not None  # no window, no limit


def test_rows_that_do_not_begin_with_the_opening_are_not_cut(templated):
    model = _tiny("llama", templated)
    prefix = template_prefix(model, templated)
    right = templated(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    left = templated(TEXTS, padding=True, padding_side="left", return_tensors="pt")["input_ids"]
    assert prefix.begins(right) and not prefix.begins(left)
    assert not prefix.begins(right[:, :3])  # nothing of its own after the opening


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_predict_gives_pipelines_scores_through_the_opening(templated, tmp_path, dtype):
    model = _tiny("gemma3_text", templated)  # sliding and full layers
    model.save_pretrained(tmp_path)
    templated.save_pretrained(tmp_path)
    reference = pipeline("text-classification", model=str(tmp_path), top_k=None)(TEXTS)
    expected = torch.tensor([[s["score"] for s in sorted(row, key=lambda s: s["label"])] for row in reference])
    predict = classifier(model, templated, batch_size=4, dtype=dtype)
    got, widths = _tokens_through_first_layer(model, lambda: torch.from_numpy(predict.predict_proba(TEXTS)))
    longest = max(len(ids) for ids in templated(TEXTS)["input_ids"])
    assert max(widths) == longest - 3
    # bfloat16 rounds every product to 8 bits of mantissa: the same model, not the same digits
    torch.testing.assert_close(got, expected, atol=1e-5 if dtype == "float32" else 0.05, rtol=0)
    # as `hf-spam predict` loads it, on the CPU as `model` is (a GPU's bfloat16 rounds otherwise)
    loaded = load_classifier(str(tmp_path), batch_size=4, dtype=dtype, device="cpu")
    torch.testing.assert_close(torch.from_numpy(loaded.predict_proba(TEXTS)), got)


def test_the_onnx_graph_holds_the_opening_as_constants_and_answers_like_pipeline(templated, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from hf_spam.deploy.export import export_graph
    from hf_spam.deploy.onnx_runtime import onnx_probabilities

    model = _tiny("qwen3", templated)  # grouped-query attention with q/k norms
    model.save_pretrained(tmp_path)
    templated.save_pretrained(tmp_path)
    assert export_graph(model, templated, tmp_path / "model.onnx") == 3
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    constants = {tuple(t.dims) for t in graph.initializer}
    kv_heads, head_dim = model.config.num_key_value_heads, model.config.head_dim
    assert (1, kv_heads, 3, head_dim) in constants  # the opening's keys and values, not recomputed
    reference = pipeline("text-classification", model=str(tmp_path), top_k=None)([*TEXTS, ""])
    expected = [[s["score"] for s in sorted(row, key=lambda s: s["label"])] for row in reference]
    for batch_size in (1, 4):
        got = onnx_probabilities(tmp_path / "model.onnx", templated, model.config, batch_size)([*TEXTS, ""])
        torch.testing.assert_close(torch.from_numpy(got), torch.tensor(expected), atol=1e-5, rtol=0)

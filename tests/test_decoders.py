"""Every decoder family, not only GPT-2: tiny random configs built here, saved and loaded like a checkpoint.

Each family gets what GPT-2 has: freezing by role, the frozen-trunk cache exact (logits, loss, gradients,
weights after several optimizer steps, predictions), and a saved directory that a plain `pipeline()` loads.
Sliding windows are 4 tokens, shorter than the test messages, so the window masks are exercised.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    TrainingArguments,
    pipeline,
)

from hf_spam.deploy.classifier import load_classifier
from hf_spam.models.loading import check_decoder, load_model
from hf_spam.models.parts import UnsupportedModelError, decoder_parts, freeze
from hf_spam.training.trainer import SpamTrainer
from hf_spam.training.trunk_cache import TrunkStates, collate_trunk_states, frozen_prefix, trunk_pass
from hf_spam.training.trunk_tails import DecoderTail, tail_for

FAMILIES = {
    "llama": {},
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
    "qwen3": {"head_dim": 8},  # q/k norms
    "gemma3_text": {"head_dim": 8, "sliding_window": 4, "query_pre_attn_scalar": 8},  # sliding + full layers
    "mistral": {"sliding_window": 4},
}
TEXTS = [
    "Hello there my friend, how are you doing today?",
    "WINNER!! You have been selected to receive a $1000 prize. Call 09061701461 now",
    "ok",
    "a b c d e f g h i j k l m n o p q r s t",
    "Are we still on for dinner tonight? Let me know",
    "Free entry in 2 a wkly comp to win FA Cup final tkts",
]


def tiny_config(family: str, tokenizer, n_layers: int = 4):
    return AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        **FAMILIES[family],
    )


@pytest.fixture(params=sorted(FAMILIES))
def family_dir(request, tokenizer, tmp_path):
    """A saved random checkpoint of the family (model + tokenizer), as a user's local directory would be."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(request.param, tokenizer))
    path = tmp_path / request.param
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _load(family_dir, tokenizer, trainable="last_block"):
    model = load_model(str(family_dir), tokenizer)
    freeze(model, trainable)
    return model


def _batch(tokenizer, texts=TEXTS, labels=None):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor(labels if labels is not None else [i % 2 for i in range(len(texts))])
    return batch


def test_window_is_shorter_than_the_messages(tokenizer):
    assert min(len(ids) for ids in tokenizer(TEXTS[:2] + TEXTS[3:])["input_ids"]) > 4


@pytest.mark.parametrize("trainable, layers", [("last_layer", []), ("last_block", [3]), ("last_two_blocks", [2, 3])])
def test_trainable_means_the_same_role_in_every_family(family_dir, tokenizer, trainable, layers):
    model = _load(family_dir, tokenizer, trainable)
    parts = decoder_parts(model)
    expected = {id(p) for p in model.score.parameters()}
    for i in layers:
        expected |= {id(p) for p in parts.layers[i].parameters()}
    if layers:
        expected |= {id(p) for p in parts.norm.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert frozen_prefix(model, tokenizer(TEXTS)["input_ids"]) == (4 - len(layers), None)


def test_the_saved_config_is_wired_for_pipeline(family_dir, tokenizer):
    model = _load(family_dir, tokenizer)
    assert model.config.id2label == {0: "ham", 1: "spam"}
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert (
        type(model).__name__.endswith("ForSequenceClassification")
        and type(model).__name__ != "GPT2ForSequenceClassification"
    )


def test_cached_logits_loss_and_gradients_equal_the_full_forward(family_dir, tokenizer):
    model = _load(family_dir, tokenizer)
    batch = _batch(tokenizer)
    n_frozen, _ = frozen_prefix(model)
    ids = [row[: int(n)].tolist() for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(-1), strict=True)]

    # The model's own pooling (the rightmost non-pad id, what pipeline() reads) is the mask's last token here.
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    states = trunk_pass(model, n_frozen, ids)
    packed = collate_trunk_states([{"hidden_states": s, "labels": 0} for s in states.split([len(i) for i in ids])])
    cached = DecoderTail(model, n_frozen)(**packed).logits
    assert torch.allclose(cached, plain, atol=1e-5)

    grads, losses = [], []
    for logits in (plain, cached):
        model.zero_grad()
        loss = F.cross_entropy(logits, batch["labels"])
        loss.backward(retain_graph=True)
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert abs(losses[0] - losses[1]) < 1e-5
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


def test_training_from_the_cache_matches_training_without_it(family_dir, tokenizer, tmp_path):
    texts = TEXTS * 3
    labels = [int(any(w in t.lower() for w in ("win", "free", "prize"))) for t in texts]
    data = [dict(tokenizer(t), labels=label) for t, label in zip(texts, labels, strict=True)]
    ids = [d["input_ids"] for d in data]
    trained = {}
    for use_cache in (False, True):
        model = _load(family_dir, tokenizer)
        if use_cache:
            n_frozen, why = frozen_prefix(model, ids[:4])
            assert why is None
            states = trunk_pass(model, n_frozen, ids)
            train_model = tail_for(model, n_frozen)
            features = TrunkStates(list(states.split([len(i) for i in ids])), labels)
            collator = collate_trunk_states
        else:
            train_model, features, collator = model, data, DataCollatorWithPadding(tokenizer)
        args = TrainingArguments(
            output_dir=str(tmp_path / str(use_cache)),
            per_device_train_batch_size=4,
            max_steps=8,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = SpamTrainer(
            model=train_model, args=args, train_dataset=features, data_collator=collator, processing_class=tokenizer
        )
        trainer.train()
        predictions = trainer.predict(features).predictions
        trained[use_cache] = ({n: p.detach().clone() for n, p in model.named_parameters()}, predictions)
    (plain_weights, plain_pred), (cached_weights, cached_pred) = trained[False], trained[True]
    changed = [n for n, w in plain_weights.items() if not torch.equal(w, _load(family_dir, tokenizer).state_dict()[n])]
    assert changed and all(n.startswith(("model.layers.3.", "model.norm.", "score.")) for n in changed)
    for name, weight in plain_weights.items():
        # A key bias adds q.b to all of a query's scores, which the softmax ignores: its gradient is zero but
        # for rounding, which differs between the two paths (and thread counts) and which Adam scales up to
        # steps of the learning rate. Qwen2 has key biases.
        if name.endswith("k_proj.bias"):
            continue
        assert torch.allclose(weight, cached_weights[name], atol=1e-5), name
    assert torch.allclose(torch.as_tensor(plain_pred), torch.as_tensor(cached_pred), atol=1e-5)


def test_saved_model_loads_in_a_plain_pipeline_and_predict_agrees(family_dir, tokenizer, tmp_path):
    model = _load(family_dir, tokenizer)
    out = tmp_path / "out"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    classifier = pipeline("text-classification", model=str(out), device="cpu")
    one_by_one = [classifier(text)[0] for text in TEXTS]
    batched = classifier(TEXTS, batch_size=4)
    assert [p["label"] for p in one_by_one] == [p["label"] for p in batched]
    assert {p["label"] for p in batched} <= {"spam", "ham"}
    for a, b in zip(one_by_one, batched, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4
    ours = load_classifier(str(out), batch_size=4)(TEXTS)
    assert [p["label"] for p in ours] == [p["label"] for p in one_by_one]
    for a, b in zip(ours, one_by_one, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4


def test_the_probe_catches_a_tail_that_is_not_exact(tiny_model, tokenizer):
    """The generic tail feeds cached states as inputs_embeds; GPT-2's forward would add its positions again.
    Comparing against the plain forward catches that, so a family like it runs without the cache."""
    freeze(tiny_model, "last_block")
    ids = tokenizer(TEXTS[:3])["input_ids"]
    states = trunk_pass(tiny_model, 2, ids)
    packed = collate_trunk_states([{"hidden_states": s, "labels": 0} for s in states.split([len(i) for i in ids])])
    wrong = DecoderTail(tiny_model, 2)(**packed).logits
    right = torch.stack([tiny_model(input_ids=torch.tensor([i])).logits[0] for i in ids])
    assert (wrong - right).abs().max() > 1e-3


def test_frozen_prefix_turns_the_cache_off_when_the_probe_differs(family_dir, tokenizer, monkeypatch):
    from hf_spam.training import trunk_cache

    model = _load(family_dir, tokenizer)
    monkeypatch.setattr(trunk_cache, "tail_error", lambda *args: 0.5)
    n_frozen, why = frozen_prefix(model, tokenizer(TEXTS)["input_ids"])
    assert n_frozen == 0 and "differs" in why


def test_a_sliding_window_changes_the_answer(tokenizer):
    """The exactness tests above would pass with any mask if the window never mattered."""
    ids = torch.tensor([tokenizer(TEXTS[3])["input_ids"]])
    logits = []
    for window in (4, 200):
        torch.manual_seed(0)
        config = tiny_config("mistral", tokenizer)
        config.sliding_window = window
        logits.append(AutoModelForSequenceClassification.from_config(config)(input_ids=ids).logits)
    assert (logits[0] - logits[1]).abs().max() > 1e-4


@pytest.mark.parametrize("family, kind", [("bert", "encoder"), ("roberta", "encoder"), ("t5", "encoder-decoder")])
def test_encoders_are_refused_with_the_reason(family, kind):
    with pytest.raises(UnsupportedModelError, match=f"is an {kind}.*decoder-only"):
        check_decoder(AutoConfig.for_model(family), family)

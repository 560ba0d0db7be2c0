import pytest

from hf_spam.inference import load_classifier


@pytest.fixture
def saved(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_prediction_does_not_depend_on_padding(saved):
    predict = load_classifier(saved, batch_size=8)
    message = "Congratulations! You have won a free cruise, reply YES"
    long_message = "Hi, about tomorrow: " + "we could meet at the station and then walk to the cafe. " * 40
    alone = predict([message])[0]
    beside_long = predict([long_message, message, "ok"])[1]
    assert alone["label"] == beside_long["label"]
    assert alone["score"] == pytest.approx(beside_long["score"], abs=1e-5)


def test_predictions_come_back_in_input_order(saved):
    predict = load_classifier(saved, batch_size=2)
    texts = ["a much longer message than the others " * 5, "hi", "win a prize now", "x" * 50]
    batched = predict(texts)
    assert batched == [predict([t])[0] for t in texts] or all(
        b["label"] == s["label"] and b["score"] == pytest.approx(s["score"], abs=1e-5)
        for b, s in zip(batched, [predict([t])[0] for t in texts], strict=True)
    )


def test_texts_longer_than_the_context_are_truncated(saved, tiny_model):
    predict = load_classifier(saved)
    n_positions = tiny_model.config.n_positions
    answer = predict(["spam " * (n_positions * 3)])[0]
    assert answer["label"] in {"spam", "ham"}


TEXTS = [
    "Congratulations! You have won a free cruise, reply YES",
    "ok",
    "Are we still meeting at 6? I'll bring the notes from class.",
    "Congratulations! You have won a free cruise, reply YES",  # a repeat: answered like the first
    "URGENT your mobile number has been awarded a 2000 prize GUARANTEED call 09061701461 " * 3,
    "hi",
]


def test_answers_are_those_of_a_plain_pipeline(saved):
    from transformers import pipeline

    reference = pipeline("text-classification", model=saved)
    expected = [reference(text)[0] for text in TEXTS]
    got = load_classifier(saved, batch_size=4)(TEXTS)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert set(got[0]) == {"label", "score"}


def test_repeated_texts_are_computed_once(saved, monkeypatch):
    from hf_spam import inference

    rows = []
    real = inference.last_token_logits
    monkeypatch.setattr(
        inference,
        "last_token_logits",
        lambda model, **batch: rows.append(len(batch["input_ids"])) or real(model, **batch),
    )
    got = load_classifier(saved, batch_size=64)(TEXTS)
    assert sum(rows) == len(set(TEXTS)) == len(TEXTS) - 1
    assert got[0] == got[3]


def test_bfloat16_is_close_to_float32_but_not_exact(saved):
    exact = load_classifier(saved)(TEXTS)
    fast = load_classifier(saved, dtype="bfloat16")(TEXTS)
    exact_spam = [a["score"] if a["label"] == "spam" else 1 - a["score"] for a in exact]
    fast_spam = [a["score"] if a["label"] == "spam" else 1 - a["score"] for a in fast]
    assert fast_spam == pytest.approx(exact_spam, abs=0.05)
    assert fast_spam != exact_spam  # the matrix products really ran in bfloat16


def test_unknown_dtype_is_refused(saved):
    with pytest.raises(ValueError, match="dtype"):
        load_classifier(saved, dtype="float16")

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

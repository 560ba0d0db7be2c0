import pytest

from hf_spam.deploy.classifier import load_classifier


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
    from hf_spam.deploy import classifier as inference

    rows = []
    real = inference.pooled_logits
    monkeypatch.setattr(
        inference,
        "pooled_logits",
        lambda model, input_ids, *args, **kwargs: (
            rows.append(len(input_ids)) or real(model, input_ids, *args, **kwargs)
        ),
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


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_that_would_emulate_it_says_so(saved, native, monkeypatch, caplog):
    from hf_spam.models import loading as modeling

    monkeypatch.setattr(modeling, "cpu_has_bfloat16", lambda: native)
    with caplog.at_level("WARNING", logger="hf_spam.models.loading"):
        load_classifier(saved, dtype="bfloat16", device="cpu")  # the CPU's warning: pinned there on a GPU host too
        load_classifier(saved, device="cpu")  # float32 never warns
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == (0 if native else 1)
    assert native or "no bfloat16 instructions" in warnings[0] and warnings[0].startswith("Prediction in bfloat16")


def test_unknown_dtype_is_refused(saved):
    with pytest.raises(ValueError, match="dtype"):
        load_classifier(saved, dtype="float16")


THRESHOLD_TEXTS = ["Congratulations! You have won a free cruise, reply YES", "see you at 5", "URGENT call now", "ok"]


def _p_spam(answer):
    return answer["score"] if answer["label"] == "spam" else 1.0 - answer["score"]


def test_a_threshold_decides_on_the_spam_probability(saved):
    argmax = load_classifier(saved)(THRESHOLD_TEXTS)
    p_spam = [_p_spam(a) for a in argmax]
    middle = sorted(p_spam)[1] + 1e-6  # between the two lowest spam probabilities: one ham, the rest spam
    answers = load_classifier(saved, threshold=middle)(THRESHOLD_TEXTS)
    assert [a["label"] for a in answers] == ["spam" if p >= middle else "ham" for p in p_spam]
    assert sum(a["label"] == "ham" for a in answers) == 2
    for answer, p in zip(answers, p_spam, strict=True):  # the score is the probability of the label given
        assert abs(answer["score"] - (p if answer["label"] == "spam" else 1 - p)) < 1e-6
    assert {a["label"] for a in load_classifier(saved, threshold=0.0)(THRESHOLD_TEXTS)} == {"spam"}


def test_the_threshold_saved_in_the_config_is_applied_and_can_be_overridden(saved):
    import json
    from pathlib import Path

    config_path = Path(saved) / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "spam_threshold": 0.0}))
    assert {a["label"] for a in load_classifier(saved)(THRESHOLD_TEXTS)} == {"spam"}
    assert [a["label"] for a in load_classifier(saved, threshold=0.5)(THRESHOLD_TEXTS)] == [
        "spam" if _p_spam(a) >= 0.5 else "ham" for a in load_classifier(saved, threshold=0.5)(THRESHOLD_TEXTS)
    ]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_a_threshold_outside_0_1_is_refused(saved, threshold):
    with pytest.raises(ValueError, match="threshold"):
        load_classifier(saved, threshold=threshold)


def test_decision_threshold_keeps_validation_false_positives_within_max_fpr(tiny_model, tokenizer):
    from datasets import Dataset

    from hf_spam.deploy.classifier import classifier
    from hf_spam.training.evaluate import decision_threshold

    texts = [f"message number {i} " + "win " * (i % 7) for i in range(40)]
    labels = [i % 2 for i in range(40)]
    split = Dataset.from_dict({"text": texts, "label": labels})
    threshold, report = decision_threshold(tiny_model, tokenizer, split, split, max_fpr=0.1)
    p_spam = [_p_spam(a) for a in classifier(tiny_model, tokenizer)(texts)]
    ham = sorted((p for p, y in zip(p_spam, labels, strict=True) if y == 0), reverse=True)
    flagged = sum(p >= threshold for p in ham)
    assert flagged == report["validation_false_positives"] <= int(0.1 * len(ham)) == 2
    assert threshold <= ham[2] + 1e-6  # the lowest such threshold: just above the third-highest ham score
    assert report["test"]["examples"] == 40

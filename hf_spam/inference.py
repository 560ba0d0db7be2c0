"""Prediction with a saved classifier through `pipeline("text-classification")`."""

from __future__ import annotations

from collections.abc import Callable

from transformers import AutoConfig, pipeline

from hf_spam.modeling import check_local_model_dir

# The two messages chapter 6 of the book classifies after training.
BOOK_EXAMPLES = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
]


def load_classifier(
    model_dir: str, batch_size: int = 32, device: str | int | None = None
) -> Callable[[list[str]], list[dict]]:
    """A function `texts -> [{"label": "spam"|"ham", "score": float}, ...]` backed by `pipeline()`.

    The saved tokenizer pads on the right with the EOS id and splits special tokens, so the model's own
    pooling (rightmost non-pad id) reads the same last real token that training used. Texts are sent in
    length order so that each batch pads little, and answered in input order. Texts longer than the model
    context are truncated to it. Only safetensors weights are loaded; no remote code runs.
    """
    check_local_model_dir(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    classifier = pipeline(
        "text-classification",
        model=model_dir,
        device=device,
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True},
    )
    max_length = config.n_positions

    def predict(texts: list[str]) -> list[dict]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[dict] = [{}] * len(texts)
        outputs = classifier([texts[i] for i in order], batch_size=batch_size, truncation=True, max_length=max_length)
        for i, output in zip(order, outputs, strict=True):
            results[i] = {"label": output["label"], "score": float(output["score"])}
        return results

    return predict

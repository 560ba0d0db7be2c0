"""`keep_layers: auto`: how deep the classifier needs to be, read from a frozen probe of every layer.

One forward pass of the whole pretrained model over the training and validation messages keeps, for each
decoder layer k, what a model cut to its first k layers would hand its head: layer k's output, put through
the final norm, pooled as the model pools (`last`: the last real token). A logistic regression fitted on the
training messages scores each layer on the validation split (average precision of spam; accuracy for more
than two classes). The depth chosen is the shallowest layer within `tolerance` of the best one: the layers
above it cost time and buy nothing the validation split can see.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from transformers import PreTrainedModel

from hf_spam.models.parts import decoder_parts
from hf_spam.models.pooling import pool_padded, pooling_of

logger = logging.getLogger(__name__)

# Of the layers within this much validation average precision of the best, the shallowest is kept.
TOLERANCE = 0.003


@torch.inference_mode()
def layer_features(model: PreTrainedModel, input_ids: list[list[int]], pad_id: int, batch_size: int = 32) -> list:
    """`[layers][messages, hidden]` float32 numpy arrays: each layer's normed, pooled output for each message."""
    parts = decoder_parts(model)
    pooling = pooling_of(model.config)
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in parts.layers
    ]
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    rows: list[list[np.ndarray]] = [[] for _ in parts.layers]
    try:
        model.eval()
        for start in range(0, len(order), batch_size):
            batch = [input_ids[i] for i in order[start : start + batch_size]]
            longest = max(len(ids) for ids in batch)
            ids = torch.tensor([row + [pad_id] * (longest - len(row)) for row in batch], device=model.device)
            mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in batch], device=model.device)
            outputs.clear()
            model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            for k, hidden in enumerate(outputs):
                rows[k].append(pool_padded(parts.norm(hidden), mask, pooling).float().cpu().numpy())
    finally:
        for hook in hooks:
            hook.remove()
    inverse = np.argsort(order)
    return [np.concatenate(layer)[inverse] for layer in rows]


def probe_scores(features: list, train_labels, validation_features: list, validation_labels, seed: int) -> list:
    """The validation score of a logistic regression fitted on each layer's training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    binary = len(set(train_labels)) <= 2
    scores = []
    for train_x, validation_x in zip(features, validation_features, strict=True):
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
        ).fit(train_x, train_labels)
        if binary:
            scores.append(float(average_precision_score(validation_labels, probe.predict_proba(validation_x)[:, 1])))
        else:
            scores.append(float(accuracy_score(validation_labels, probe.predict(validation_x))))
    return scores


def choose_depth(scores: list[float], tolerance: float = TOLERANCE) -> int:
    """The shallowest depth (1-based) whose score is within `tolerance` of the best."""
    best = max(scores)
    return next(k for k, score in enumerate(scores, start=1) if score >= best - tolerance)


def auto_depth(model: PreTrainedModel, tokenized, pad_id: int, seed: int, batch_size: int = 32) -> tuple[int, dict]:
    """The depth `keep_layers: auto` keeps, and the per-layer figures it chose from (logged as a table)."""
    started = time.perf_counter()
    train, validation = tokenized["train"], tokenized["validation"]

    def real_tokens(split) -> list[list[int]]:  # `padding: max_length` splits come padded already
        return [ids[: sum(mask)] for ids, mask in zip(split["input_ids"], split["attention_mask"], strict=True)]

    features = layer_features(model, real_tokens(train), pad_id, batch_size)
    validation_features = layer_features(model, real_tokens(validation), pad_id, batch_size)
    scores = probe_scores(features, list(train["label"]), validation_features, list(validation["label"]), seed)
    depth, seconds = choose_depth(scores), time.perf_counter() - started
    metric = "average precision" if len(set(train["label"])) <= 2 else "accuracy"
    lines = [f"keep_layers auto: a linear probe of each layer, validation {metric}:"]
    lines += [f"  layer {k:>2}: {score:.4f}{'  <- kept' if k == depth else ''}" for k, score in enumerate(scores, 1)]
    lines.append(
        f"  kept {depth} of {len(scores)} layers: the shallowest within {TOLERANCE} of the best "
        f"({max(scores):.4f}, layer {int(np.argmax(scores)) + 1}); {seconds:.0f} s"
    )
    logger.info("\n".join(lines))
    figures = {
        "metric": f"validation {metric}",
        "scores": [round(s, 6) for s in scores],
        "kept": depth,
        "tolerance": TOLERANCE,
        "seconds": round(seconds, 1),
    }
    return depth, figures

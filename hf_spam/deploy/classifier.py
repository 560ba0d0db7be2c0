"""Prediction with a saved classifier: the answers of `pipeline("text-classification")`, computed faster.

A saved output directory is a plain `*ForSequenceClassification` (GPT-2, Llama, Gemma 3, ...) that `pipeline()`
loads without hf_spam. `hf-spam predict` gives the same labels and scores (up to float rounding) for less work:
it classifies each distinct text once and batches texts of similar token length together; for GPT-2 it also
runs the final block only at the last real token, the one whose logits are read
(`models.pooled_forward.pooled_logits`), and computes GELU with PyTorch's fused kernel (`models.loading.use_fused_gelu`).
Other decoders with a message template compute the template's opening once (`models.template_prefix`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from hf_spam.deploy.onnx_runtime import onnx_classifier
from hf_spam.deploy.spam_classifier import SpamClassifier, batched, check_model_location
from hf_spam.models.loading import (
    check_decoder,
    check_local_model_dir,
    model_context,
    use_fused_gelu,
    warn_if_bfloat16_is_emulated,
)
from hf_spam.models.pooled_forward import pooled_logits
from hf_spam.models.template_prefix import template_prefix

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_classifier(
    model_dir: str,
    batch_size: int = 64,
    device: str | int | None = None,
    dtype: str = "float32",
    threshold: float | None = None,
    backend: str = "torch",
) -> SpamClassifier:
    """The `SpamClassifier` of a trained directory: `classifier(texts)` answers
    `[{"label": "spam"|"ham", "score": float}, ...]` in input order, `predict_proba` gives the probabilities.

    The label is the argmax, as in `pipeline()`, unless there is a decision threshold: `threshold`, else the
    `spam_threshold` saved in the model's config (`--max_fpr` at training). Then a message is spam when its
    spam probability is at least the threshold, and `score` is the probability of the label given.

    Texts longer than the model context are truncated to it. Only safetensors weights are loaded; no remote
    code runs. `dtype="bfloat16"` computes the matrix products in bfloat16 (autocast): about twice as fast on
    CPUs with AVX-512 BF16 or AMX and on recent GPUs, but not exact: a score can move in its second decimal,
    and a message near 0.5 can change label.

    `backend="onnxruntime"` runs `hf-spam export`'s graph instead: `onnx/model.onnx` (float32, exact) or, with
    `dtype="int8"`, `onnx/model_quantized.onnx`, on the CPU, with the same batching and answers.
    """
    if backend == "onnxruntime":
        if device not in (None, "cpu"):
            raise ValueError(f"device: the onnxruntime backend runs on the CPU, got {device!r}")
        return onnx_classifier(model_dir, batch_size, dtype, threshold)
    if backend != "torch":
        raise ValueError(f"backend: torch or onnxruntime, got {backend!r}")
    _torch_dtype(dtype)  # before loading: an unknown dtype fails at once
    model, tokenizer = load_model_dir(model_dir, resolve_device(device))
    return classifier(model, tokenizer, batch_size, dtype, threshold)


def load_model_dir(model_dir: str, device: str | int | None = "cpu") -> tuple[PreTrainedModel, object]:
    """The model (eval mode, fused GELU for GPT-2, on `device`; None: cuda if available) and tokenizer of a
    trained directory or Hub id: safetensors only, never remote code."""
    check_model_location(model_dir)
    check_local_model_dir(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)  # first: a broken one fails clearly
    check_decoder(config, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, config=config, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, config=config, trust_remote_code=False, use_safetensors=True
    ).eval()
    use_fused_gelu(model)
    model.to(resolve_device(device))
    return model, tokenizer


def resolve_device(device: str | int | torch.device | None) -> torch.device:
    """`device` as torch names it (None: cuda where a GPU is visible, else the CPU), refused at once, with a
    `ValueError` naming it, where this machine has no such device (torch would fail at the first batch)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except RuntimeError as err:
        raise ValueError(f"device: expected cpu, cuda, cuda:N or mps, got {device!r} ({err})") from None
    if resolved.type == "cuda" and not (
        torch.cuda.is_available() and (resolved.index or 0) < torch.cuda.device_count()
    ):
        raise ValueError(f"device {resolved}: torch {torch.__version__} sees {torch.cuda.device_count()} CUDA GPU(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {resolved}: this torch has no MPS device (Apple silicon)")
    return resolved


def classifier(
    model: PreTrainedModel,
    tokenizer,
    batch_size: int = 64,
    dtype: str = "float32",
    threshold: float | None = None,
) -> SpamClassifier:
    """`load_classifier`'s classifier for a model already in memory (put in eval mode), on its device."""
    torch_dtype = _torch_dtype(dtype)
    model.eval()
    if torch_dtype == torch.bfloat16:
        warn_if_bfloat16_is_emulated(model.device, "Prediction")

    def autocast():
        return torch.autocast(model.device.type, dtype=torch_dtype, enabled=torch_dtype != torch.float32)

    with torch.inference_mode(), autocast():
        prefix = template_prefix(model, tokenizer)

    def forward(batch: dict[str, torch.Tensor]) -> np.ndarray:
        input_ids, attention_mask = (batch[k].to(model.device) for k in ("input_ids", "attention_mask"))
        opening = prefix if prefix is not None and prefix.begins(input_ids) else None
        with torch.inference_mode(), autocast():
            logits = pooled_logits(model, input_ids, attention_mask, prefix=opening)
        return logits.float().softmax(-1).cpu().numpy()

    probabilities = batched(forward, tokenizer, model_context(model.config), batch_size, "pt")
    return SpamClassifier(probabilities, model.config, tokenizer, threshold)


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        hint = (
            " (int8 runs on --backend onnxruntime, after `hf-spam export --quantize int8`)" if dtype == "int8" else ""
        )
        raise ValueError(f"dtype: torch runs {' or '.join(DTYPES)}, got {dtype!r}{hint}")
    return DTYPES[dtype]

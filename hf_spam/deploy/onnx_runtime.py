"""ONNX Runtime prediction: a session over `hf-spam export`'s graph, the same batching and `SpamClassifier` as
the torch backend, and the binding of an export to the files it was made from (a stale one is refused)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hf_spam.data.collection import sha256_of
from hf_spam.deploy.spam_classifier import SpamClassifier, batched, check_model_location
from hf_spam.models.loading import model_context

ONNX_FILES = {"float32": "model.onnx", "int8": "model_quantized.onnx"}


MISSING_EXTRA = "ONNX export needs the onnx extra: `pip install onnx onnxscript onnxruntime` (make install adds them)"


class OnnxMissingError(RuntimeError):
    """The optional onnx packages are not installed."""


def require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise OnnxMissingError(f"{MISSING_EXTRA} ({err.name} is missing)") from None


def session(path: Path):
    """An ONNX Runtime CPU session with all graph optimizations, one intra-op thread per core we may use."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_probabilities(path: Path, tokenizer, config, batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """`spam_classifier.batched` over an ONNX Runtime session of `path`: the probabilities `hf-spam predict` uses."""

    run = session(path).run

    def forward(batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
        logits = run(["logits"], feeds)[0].astype(np.float32)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return exp / exp.sum(-1, keepdims=True)

    return batched(forward, tokenizer, model_context(config), batch_size, "np")


def exported_graph(model_dir: str, dtype: str) -> Path:
    """`MODEL_DIR/onnx/model.onnx` (or `model_quantized.onnx` for int8), or one line saying how to make it."""
    path = Path(model_dir) / "onnx" / ONNX_FILES[dtype]
    if not path.is_file():
        how = " --quantize int8" if dtype == "int8" else ""
        raise FileNotFoundError(f"{model_dir}: no onnx/{path.name}; run `hf-spam export {model_dir}{how}` first")
    return path


def onnx_classifier(
    model_dir: str, batch_size: int = 64, dtype: str = "float32", threshold: float | None = None
) -> SpamClassifier:
    """`hf-spam predict --backend onnxruntime`: `MODEL_DIR/onnx/model.onnx`, or `model_quantized.onnx` for
    `dtype="int8"`, with the tokenizer and labels (and any `spam_threshold`) of `MODEL_DIR`."""
    from transformers import AutoConfig, AutoTokenizer

    check_model_location(model_dir)
    if dtype not in ONNX_FILES:
        raise ValueError(f"dtype: the onnxruntime backend runs {' or '.join(ONNX_FILES)}, got {dtype!r}")
    require_onnx()
    path = exported_graph(model_dir, dtype)
    check_export_is_current(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    return SpamClassifier(onnx_probabilities(path, tokenizer, config, batch_size), config, tokenizer, threshold)


# What an ONNX graph answers from: the weights, the tokenizer (its post-processor wraps each message) and the
# config (labels, pooling, threshold). An export is bound to the digests of all of them.
SOURCE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")


class StaleExportError(ValueError):
    """`onnx/` was exported from other weights, tokenizer or config than the model directory now holds."""


def source_digests(model_dir: str | Path) -> dict[str, str | None]:

    return {
        name: sha256_of(Path(model_dir) / name) if (Path(model_dir) / name).is_file() else None
        for name in SOURCE_FILES
    }


def check_export_is_current(model_dir: str | Path) -> None:
    """Refuse an `onnx/` that does not answer for this directory's model: one exported from files that have
    changed since (a later training run into the same directory), or one that does not say what it was
    exported from."""
    report_path = Path(model_dir) / "onnx" / "verification.json"
    recorded = json.loads(report_path.read_text()).get("exported_from") if report_path.is_file() else None
    if recorded is None:
        raise StaleExportError(
            f"{model_dir}/onnx does not record the weights it was exported from; run `hf-spam export {model_dir}` again"
        )
    changed = [name for name, digest in source_digests(model_dir).items() if recorded.get(name) != digest]
    if changed:
        raise StaleExportError(
            f"{model_dir}/onnx was exported from another model ({', '.join(changed)} changed since); run "
            f"`hf-spam export {model_dir}` again"
        )

"""`hf-spam export MODEL_DIR`: the trained classifier as ONNX, checked against torch before it is kept.

    hf-spam export outputs/smollm2-135m                    # onnx/model.onnx (float32)
    hf-spam export outputs/smollm2-135m --quantize int8    # + onnx/model_quantized.onnx (int8 weights)
    hf-spam predict --model outputs/smollm2-135m --backend onnxruntime --dtype int8 < messages.txt

The files sit in `MODEL_DIR/onnx/`, where Transformers.js and optimum look for them. The graph takes
`input_ids` and `attention_mask` (int64, dynamic batch and length, right-padded) and returns `logits`
`[batch, labels]` at the last real token of each row, found from the attention mask (or pooled as the model's
`pooling` says), for every decoder hf_spam trains. The default opset, 23, writes attention as ONNX's own
`Attention` op and GELU as one `Gelu` (ONNX Runtime >= 1.23 runs both as single kernels); `--opset 18` writes
them as primitive ops, for older runtimes. Before anything replaces `onnx/`, the float32 graph must give the
torch model's scores on the test split (max difference 1e-4, equal labels), and int8 must stay within `max_accuracy_drop` points of
float32's test accuracy; `onnx/verification.json` keeps the figures. A failed check leaves `MODEL_DIR` as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_spam.deploy.classifier import classifier, load_model_dir
from hf_spam.deploy.onnx_runtime import ONNX_FILES, onnx_probabilities, require_onnx, source_digests
from hf_spam.deploy.spam_classifier import read_run_summary
from hf_spam.models.gpt2_last_block import split_c_attn
from hf_spam.models.loading import use_fused_gelu
from hf_spam.models.parts import is_gpt2
from hf_spam.models.pooled_forward import pooled_logits
from hf_spam.models.pooling import pooling_of
from hf_spam.models.template_prefix import TemplatePrefix, template_prefix
from hf_spam.progress import progress_bar

logger = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-4
MAX_OPSET = 23  # the newest opset onnx 1.23 and ONNX Runtime 1.32 both implement
# Opset 23 has `Attention` and opset 20 `Gelu`: each layer's attention (mask, scale, softmax, NaN guard) and
# GELU become one kernel instead of a dozen primitive ops; on an AVX2 CPU, ONNX Runtime float32 went from
# 15.6 to 18.2 messages/s on gpt2-small (opset 20: 16.6), with the same scores to 5e-6.
DEFAULT_OPSET = 23
# ONNX protobuf files cannot exceed 2 GiB; larger models keep their weights in `<file>_data` beside it.
INLINE_LIMIT = 1_800_000_000


class ExportError(RuntimeError):
    """The exported graph does not do what the torch model does (or int8 costs too much accuracy)."""


C_ATTN_PARTS = ("query_weight", "query_bias", "key_value_weight", "key_value_bias")


class PooledLogits(nn.Module):
    """The classifier as ONNX sees it: keyword inputs, `pooled_logits` (predict's own forward).

    GPT-2's final `c_attn` is held as four constants of its own: int8 quantization converts a weight that is
    a constant, not a slice taken at run time. A template's opening (`template_prefix`) is held as constant
    keys and values: the graph then expects rows that begin with its ids, as the model's tokenizer writes them.
    """

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.gpt2_last = pooling_of(model.config) == "last" and is_gpt2(model)
        if self.gpt2_last:
            for name, part in zip(C_ATTN_PARTS, split_c_attn(model.transformer.h[-1]), strict=True):
                self.register_buffer(name, part.detach().clone(), persistent=False)
        prefix = template_prefix(model, tokenizer)
        self.prefix_ids = prefix.ids if prefix is not None else None
        self.n_prefix_layers = len(prefix.keys_values) if prefix is not None else 0
        for i in range(self.n_prefix_layers):
            self.register_buffer(f"prefix_keys_{i}", prefix.keys_values[i][0].clone(), persistent=False)
            self.register_buffer(f"prefix_values_{i}", prefix.keys_values[i][1].clone(), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        c_attn = tuple(getattr(self, name) for name in C_ATTN_PARTS) if self.gpt2_last else None
        prefix = None
        if self.n_prefix_layers:
            keys_values = tuple(
                (getattr(self, f"prefix_keys_{i}"), getattr(self, f"prefix_values_{i}"))
                for i in range(self.n_prefix_layers)
            )
            prefix = TemplatePrefix(self.prefix_ids, keys_values)
        return pooled_logits(self.model, input_ids, attention_mask, c_attn, prefix)


def export(
    model_dir: str,
    quantize: str | None = None,
    test_file: str | None = None,
    max_accuracy_drop: float = 0.5,
    opset: int | None = None,
    disable_tqdm: bool = False,
) -> dict:
    """Export, verify, then move `onnx/` into `model_dir`; returns what `onnx/verification.json` holds.
    `opset`: None for `DEFAULT_OPSET`. A bar names each step on a terminal, unless `disable_tqdm`."""
    require_onnx()
    opset = DEFAULT_OPSET if opset is None else opset
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize: only int8 is supported, got {quantize!r}")
    if not 18 <= opset <= MAX_OPSET:
        # torch's exporter writes opset 18 or later; below, it would silently write 18 anyway.
        raise ValueError(f"opset: the exporter writes ONNX opsets 18 to {MAX_OPSET}, got {opset}")
    if not 0 <= max_accuracy_drop <= 100:
        raise ValueError(f"max_accuracy_drop: points of test accuracy in [0, 100], got {max_accuracy_drop}")
    model, tokenizer = load_model_dir(model_dir)
    texts, labels, split = verification_split(model_dir, model.config, test_file)
    work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=model_dir))
    work.chmod(0o755)  # mkdtemp's 0700 would hide the files from a server running as another user
    bar = progress_bar(4 if quantize else 3, "Exporting the graph", "step", disable_tqdm)
    try:
        started = time.perf_counter()
        float_path = work / ONNX_FILES["float32"]
        opening = export_graph(model, tokenizer, float_path, opset)
        bar.update()
        report = {"model_dir": str(model_dir), "opset": opset, "verified_on": split, "messages": len(texts)}
        report["template_opening_tokens"] = opening
        report["export_seconds"] = round(time.perf_counter() - started, 1)

        bar.set_description(f"Scoring the {split} with torch")
        reference = classifier(model, tokenizer).predict_proba(texts)
        bar.update()
        bar.set_description(f"Scoring the {split} with the ONNX graph")
        exported = onnx_probabilities(float_path, tokenizer, model.config)(texts)
        bar.update()
        difference = float(np.abs(exported - reference).max()) if len(texts) else 0.0
        disagree = int((exported.argmax(-1) != reference.argmax(-1)).sum())
        report["float32"] = {
            "file": float_path.name,
            "bytes": _size(float_path),
            "max_score_difference": difference,
            "labels_differing_from_torch": disagree,
            "accuracy": _accuracy(exported, labels),
        }
        report["torch_accuracy"] = _accuracy(reference, labels)
        if difference > SCORE_TOLERANCE or disagree:
            raise ExportError(
                f"{model_dir}: the float32 ONNX graph differs from the torch model on the {split}: max score "
                f"difference {difference:.3g} (allowed {SCORE_TOLERANCE:g}), {disagree} labels differ"
            )
        if quantize == "int8":
            bar.set_description("Quantizing to int8 and scoring")
            report["int8"] = verify_int8(work, tokenizer, model.config, texts, labels, exported, max_accuracy_drop)
            if report["int8"]["accuracy_drop_points"] > max_accuracy_drop:
                raise ExportError(
                    f"{model_dir}: int8 loses {report['int8']['accuracy_drop_points']:.2f} points of test accuracy on "
                    f"the {split} ({report['float32']['accuracy']:.4f} -> {report['int8']['accuracy']:.4f}), more "
                    f"than max_accuracy_drop {max_accuracy_drop}; keep float32, or allow more with --max_accuracy_drop"
                )
        report["exported_from"] = source_digests(model_dir)
        (work / "verification.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_onnx_dir(work, Path(model_dir) / "onnx")
        bar.update(bar.total - bar.n)
        return report
    finally:
        bar.close()
        if work.exists():
            shutil.rmtree(work)


def verify_int8(work: Path, tokenizer, config, texts, labels, exported, max_accuracy_drop: float) -> dict:
    """Quantize the float32 graph in `work` to int8 and compare it with float32 on the verification texts."""
    float_path, int8_path = work / ONNX_FILES["float32"], work / ONNX_FILES["int8"]
    blockwise = mlp_output_projections(float_path, config)
    quantize_int8(float_path, int8_path, blockwise)
    quantized = onnx_probabilities(int8_path, tokenizer, config)(texts)
    drop = 100 * (_accuracy(exported, labels) - _accuracy(quantized, labels))
    return {
        "file": int8_path.name,
        "bytes": _size(int8_path),
        "max_score_difference": float(np.abs(quantized - exported).max()) if len(texts) else 0.0,
        "label_agreement_with_float32": float((quantized.argmax(-1) == exported.argmax(-1)).mean()),
        "accuracy": _accuracy(quantized, labels),
        "accuracy_drop_points": round(drop, 4),
        "blockwise_int8_nodes": len(blockwise),
        "max_accuracy_drop": max_accuracy_drop,
    }


def replace_onnx_dir(work: Path, target: Path) -> None:
    """Put the verified `work` directory in place of `target` by renames: a reader sees the old export or the
    new one, never a mix."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".onnx-old-", dir=target.parent))
        target.rename(old / "onnx")
        work.rename(target)
        shutil.rmtree(old)
    else:
        work.rename(target)


def export_graph(model, tokenizer, path: Path, opset: int = DEFAULT_OPSET) -> int:
    """`torch.onnx.export` (the dynamo exporter) of `PooledLogits(model)` with dynamic batch and length; returns
    how many opening tokens of the template the graph holds as constants (0: none)."""
    model.eval()
    use_fused_gelu(model)  # GPT-2's `gelu_new` is five elementwise ops; the fused form exports as one `Gelu`
    # Two rows of different lengths: the example has padding, so no shape is specialized to a single row.
    example = tokenizer(["an example message to trace", "a shorter one"], padding=True, return_tensors="pt")
    wrapper = PooledLogits(model, tokenizer)
    # A graph that cuts off the template's opening reads rows at least one token longer than it.
    opening = len(wrapper.prefix_ids) if wrapper.prefix_ids is not None else 0
    shortest = {"min": opening + 1} if opening else {}
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence_length", **shortest)
    inline = sum(p.numel() * p.element_size() for p in model.parameters()) < INLINE_LIMIT
    with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
        # The exporter warns about internals (deprecated helpers, torchvision ops it skips) a user can't act on.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (),
            kwargs={"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]},
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path), external_data=not inline)
    return opening


def quantize_int8(source: Path, target: Path, blockwise: list[str] | tuple[str, ...] = ()) -> None:
    """Dynamic quantization: int8 weights for MatMul/Gemm (and the embeddings' Gather), activations quantized
    per batch at run time. The nodes named in `blockwise` get int8 weights and activations in blocks of
    `BLOCKWISE_INT8` inner values instead (ONNX Runtime's `MatMulNBits`, int8 compute), so that a few very large
    activations coarsen their own block only, not the whole tensor. Attention stays float32: left to its
    defaults, ONNX Runtime's quantizer takes ONNX's own `Attention` (opset 23) for its `com.microsoft` one and
    writes a `QAttention` that cannot load."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = (source.parent / f"{source.name}.data").exists()
    # dynamic quantization first rewrites each Gemm as MatMul (+ Add) named after it
    names = [*blockwise, *(f"{name}_MatMul" for name in blockwise)]
    dynamic = target.with_name(f"{target.stem}.dynamic.onnx") if blockwise else target
    with _quiet("onnxruntime", "root"):
        quantize_dynamic(
            str(source),
            str(dynamic),
            op_types_to_quantize=["MatMul", "Gemm", "Gather"],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=names,
            use_external_data_format=external,
        )
    if blockwise:
        try:
            quantize_blockwise(dynamic, target, names, external)
        finally:
            for path in (dynamic, dynamic.with_name(f"{dynamic.name}.data")):
                path.unlink(missing_ok=True)


# Inner values a block of `MatMulNBits` shares one scale over. On the 8-layer SmolLM2 (1,035 test messages,
# AMD Zen 4, two passes): blocks of 32, 64 and 128 all kept float32's accuracy; 128 was the fastest, 1.23x and
# 1.13x the messages/s of the graph with these projections in float32 (docs/deploy.md, "Deploy: ONNX and int8").
BLOCKWISE_INT8 = 128


def quantize_blockwise(source: Path, target: Path, names: list[str], external: bool) -> None:
    """The MatMuls of `source` named in `names` as `MatMulNBits`: 8-bit symmetric weights in blocks of
    `BLOCKWISE_INT8`, and `accuracy_level` 4, which quantizes the activations in the same blocks and multiplies
    in int8."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet("onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer", "root"):
        quantizer = MatMulNBitsQuantizer(
            str(source), bits=8, block_size=BLOCKWISE_INT8, is_symmetric=True, accuracy_level=4, nodes_to_include=names
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=external)


def mlp_output_projections(path: Path, config) -> list[str]:
    """The MatMul/Gemm nodes of `path` whose weight takes the MLP's inner width back to the hidden width
    (`down_proj`, GPT-2's `mlp.c_proj`), found from the weights' shapes. Their input is the MLP's activation,
    whose few very large values leave the rest of a per-tensor uint8 quantization only a handful of levels:
    per-tensor int8 there costs decoders most of the accuracy they lose, int8 in blocks does not (docs/deploy.md,
    "Deploy: ONNX and int8")."""
    import onnx

    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {tensor.name: list(tensor.dims) for tensor in graph.initializer}

    def weight_shape(node) -> list[int] | None:
        shape = shapes.get(node.input[1]) if len(node.input) > 1 else None
        transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        return shape[::-1] if shape and transposed else shape

    return [
        node.name
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and weight_shape(node) == [inner, hidden]
    ]


def verification_split(model_dir: str, config, test_file: str | None) -> tuple[list[str], np.ndarray, str]:
    """Texts and label ids to check the export on: `test_file` (any format `--train_file` takes, with the
    model's labels), else the test split the model was trained with (rebuilt from `metrics.json`)."""
    from hf_spam.data.sources import SourceError, read_user_data
    from hf_spam.data.splits import splits_of_run

    if test_file is not None:
        rows = read_user_data(train_file=test_file)
        unknown = sorted(set(rows.classes) - set(config.label2id))
        if unknown:
            raise SourceError(
                f"{test_file}: labels {', '.join(unknown)} are not the model's ({', '.join(config.label2id)})"
            )
        texts, ids = rows.splits["train"]
        return texts, np.array([config.label2id[rows.classes[i]] for i in ids]), f"{test_file}"
    splits = splits_of_run(read_run_summary(model_dir), model_dir, "give the messages to check on with --test_file")
    test = splits["test"]
    return list(test["text"]), np.array(test["label"]), "test split"


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(-1) == labels).mean()) if len(labels) else 0.0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*"))


class _quiet:
    """Raise the named loggers to ERROR for the duration."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(name) for name in names]

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels, strict=True):
            lg.setLevel(level)

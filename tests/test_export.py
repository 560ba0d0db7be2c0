"""ONNX export: exact float32 for every decoder, int8 within its accuracy budget, nothing kept when a check
fails, and `predict --backend onnxruntime` giving torch's answers."""

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_spam.cli import main as cli_main
from hf_spam.data.splits import load_sms_spam
from hf_spam.deploy import export as export_module
from hf_spam.deploy.classifier import classifier, load_classifier
from hf_spam.deploy.export import ExportError, export, export_graph
from hf_spam.deploy.onnx_runtime import onnx_probabilities

from .conftest import ROOT
from .test_decoders import FAMILIES, TEXTS, tiny_config

pytest.importorskip("onnxruntime")

# Lengths 1 to ~60 tokens in one batch, and batches with no padding at all.
MESSAGES = [*TEXTS, "hi", "Call 09061701461 to claim your prize " * 3, "ok", "ok"]


@pytest.fixture
def saved(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def test_csv(tmp_path):
    """60 labelled SMS messages of the collection, as a user's own test file."""
    splits, _ = load_sms_spam()
    path = tmp_path / "test.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in zip(splits["test"]["text"][:60], splits["test"]["label"][:60], strict=True):
            writer.writerow([text, ["ham", "spam"][label]])
    return str(path)


@pytest.mark.parametrize(
    "family",
    [f if f == "gemma3_text" else pytest.param(f, marks=pytest.mark.slow) for f in sorted(FAMILIES)],
)
def test_every_decoder_exports_exactly_with_dynamic_batch_and_length(family, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config(family, tokenizer)).eval()
    export_graph(model, tokenizer, tmp_path / "model.onnx")
    reference = classifier(model, tokenizer, batch_size=4).probabilities(MESSAGES)
    for batch_size in (1, 3, 64):  # one row, ragged batches, everything at once
        got = onnx_probabilities(tmp_path / "model.onnx", tokenizer, model.config, batch_size)(MESSAGES)
        np.testing.assert_allclose(got, reference, atol=1e-5)


def test_opset_23_runs_attention_and_gelu_as_one_op_each_and_opset_18_as_primitives(tiny_model, tokenizer, tmp_path):
    import onnx

    from hf_spam.deploy.export import quantize_int8

    tiny_model.eval()
    reference = classifier(tiny_model, tokenizer, batch_size=4).probabilities(MESSAGES)
    layers = tiny_model.config.n_layer
    for opset, fused in ((23, layers), (18, 0)):
        path = tmp_path / f"opset{opset}.onnx"
        export_graph(tiny_model, tokenizer, path, opset)
        ops = [node.op_type for node in onnx.load(str(path)).graph.node]
        assert ops.count("Attention") == ops.count("Gelu") == fused, opset
        assert ("Softmax" in ops) == (opset == 18)
        np.testing.assert_allclose(
            onnx_probabilities(path, tokenizer, tiny_model.config, 3)(MESSAGES), reference, atol=1e-5
        )
        # int8 leaves attention in float32 (ONNX Runtime's quantizer would write a QAttention that cannot load).
        quantize_int8(path, tmp_path / f"opset{opset}_int8.onnx")
        int8 = onnx_probabilities(tmp_path / f"opset{opset}_int8.onnx", tokenizer, tiny_model.config, 3)(MESSAGES)
        assert int8.shape == reference.shape and np.isfinite(int8).all()


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_int8_quantizes_the_mlp_output_projections_in_blocks_and_the_rest_per_tensor(
    family, tokenizer, tmp_path, request
):
    import onnx

    from hf_spam.deploy.export import BLOCKWISE_INT8, mlp_output_projections, quantize_int8

    torch.manual_seed(0)
    if family == "gpt2":
        model = request.getfixturevalue("tiny_model").eval()
    else:
        model = AutoModelForSequenceClassification.from_config(tiny_config(family, tokenizer)).eval()
    export_graph(model, tokenizer, tmp_path / "model.onnx")
    blockwise = mlp_output_projections(tmp_path / "model.onnx", model.config)
    assert len(blockwise) == model.config.num_hidden_layers  # one down projection a block, nothing else
    quantize_int8(tmp_path / "model.onnx", tmp_path / "int8.onnx", blockwise)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx", "model.onnx"]  # no step's file left
    nodes = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    assert not [node.name for node in nodes if node.op_type in ("MatMul", "Gemm")]  # no float32 product left
    nbits = [node for node in nodes if node.op_type == "MatMulNBits"]
    assert len(nbits) == len(blockwise)
    inner_to_hidden = {"gpt2": (64, 16), "gemma3_text": (64, 32)}[family]  # the tiny models' MLP widths, back
    for node in nbits:
        attributes = {a.name: a.i for a in node.attribute}
        assert (attributes["bits"], attributes["block_size"], attributes["accuracy_level"]) == (8, BLOCKWISE_INT8, 4)
        assert (attributes["K"], attributes["N"]) == inner_to_hidden
    assert sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in nodes) > len(blockwise)
    exported = onnx_probabilities(tmp_path / "model.onnx", tokenizer, model.config, 3)(MESSAGES)
    int8 = onnx_probabilities(tmp_path / "int8.onnx", tokenizer, model.config, 3)(MESSAGES)
    assert int8.shape == (len(MESSAGES), 2) and np.isfinite(int8).all()
    np.testing.assert_allclose(int8, exported, atol=0.05)  # int8's rounding, not another model


def test_int8_of_a_graph_with_external_weights_writes_its_own_pair_and_nothing_else(tokenizer, tmp_path, monkeypatch):
    """Models over 1.8 GB keep their weights beside the graph (`model.onnx.data`); int8 in two steps must read
    them, write `int8.onnx` with its own data file, and leave no intermediate file behind."""
    from hf_spam.deploy.export import mlp_output_projections, quantize_int8

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(tiny_config("llama", tokenizer)).eval()
    monkeypatch.setattr(export_module, "INLINE_LIMIT", 0)  # as if the model were too large to inline
    export_graph(model, tokenizer, tmp_path / "model.onnx")
    quantize_int8(
        tmp_path / "model.onnx", tmp_path / "int8.onnx", mlp_output_projections(tmp_path / "model.onnx", model.config)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "int8.onnx",
        "int8.onnx.data",
        "model.onnx",
        "model.onnx.data",
    ]
    exported = onnx_probabilities(tmp_path / "model.onnx", tokenizer, model.config)(MESSAGES)
    int8 = onnx_probabilities(tmp_path / "int8.onnx", tokenizer, model.config)(MESSAGES)
    np.testing.assert_allclose(int8, exported, atol=0.05)


def test_gpt2_export_writes_the_transformers_js_layout_and_predict_runs_it(saved, test_csv, capsys):
    # A random 3-block model scores near 0.5, where int8's rounding can flip one label of 60 (1.67 points):
    # the accuracy budget has its own test below, so this one allows any drop.
    args = ["export", str(saved), "--quantize", "int8", "--test_file", test_csv, "--max_accuracy_drop", "100"]
    assert cli_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in (saved / "onnx").iterdir()) == [
        "model.onnx",
        "model_quantized.onnx",
        "verification.json",
    ]
    assert json.loads((saved / "onnx" / "verification.json").read_text()) == report
    assert report["messages"] == 60 and report["float32"]["labels_differing_from_torch"] == 0
    assert report["float32"]["max_score_difference"] <= 1e-4
    assert report["int8"]["bytes"] < report["float32"]["bytes"] / 2  # int8 weights
    assert not list(saved.glob(".onnx-*"))

    torch_answers = load_classifier(str(saved), device="cpu")(MESSAGES)  # as export checks: CPU beside CPU
    onnx_answers = load_classifier(str(saved), backend="onnxruntime")(MESSAGES)
    assert [a["label"] for a in onnx_answers] == [a["label"] for a in torch_answers]
    assert [a["score"] for a in onnx_answers] == pytest.approx([a["score"] for a in torch_answers], abs=1e-5)
    int8 = load_classifier(str(saved), backend="onnxruntime", dtype="int8")(MESSAGES)
    assert len(int8) == len(MESSAGES) and int8[-1] == int8[-2]  # a repeated text is answered once, the same


@pytest.mark.slow  # over 15 s on 2 cores: `make test-all`
def test_a_graph_that_differs_from_torch_is_not_kept(saved, test_csv, monkeypatch):
    assert cli_main(["export", str(saved), "--test_file", test_csv]) == 0
    before = {p.name: p.read_bytes() for p in (saved / "onnx").iterdir()}
    monkeypatch.setattr(export_module, "SCORE_TOLERANCE", -1.0)  # no graph can pass
    with pytest.raises(ExportError, match="differs from the torch model"):
        export(str(saved), test_file=test_csv)
    assert {p.name: p.read_bytes() for p in (saved / "onnx").iterdir()} == before  # the earlier export stays
    assert not list(saved.glob(".onnx-*"))


@pytest.mark.slow  # over 15 s on 2 cores: `make test-all`
def test_int8_that_costs_accuracy_fails_and_leaves_nothing(saved, test_csv, tokenizer, monkeypatch, capsys):
    flipped = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    with torch.no_grad():
        flipped.score.weight.neg_()  # every label the other way round: accuracy 1 - float32's

    monkeypatch.setattr(
        export_module, "quantize_int8", lambda source, target, keep=(): export_graph(flipped, tokenizer, target)
    )
    float_accuracy = np.mean(
        [
            a["label"] == row["label"]
            for a, row in zip(load_classifier(str(saved))(_texts(test_csv)), _rows(test_csv), strict=True)
        ]
    )
    assert float_accuracy != 0.5  # otherwise the flipped graph would lose nothing
    code = cli_main(["export", str(saved), "--quantize", "int8", "--test_file", test_csv, "--max_accuracy_drop", "0"])
    assert code == (1 if float_accuracy > 0.5 else 0)
    if code:
        assert "int8 loses" in capsys.readouterr().err
        assert not (saved / "onnx").exists() and not list(saved.glob(".onnx-*"))


@pytest.mark.slow  # over 15 s on 2 cores: `make test-all`
def test_the_default_check_is_the_test_split_the_model_was_trained_with(tmp_path):
    from hf_spam.training.run import main

    out = tmp_path / "out"
    summary = main(
        ["--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(out), "--num_train_epochs", "1",
         "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    )  # fmt: skip
    report = export(str(out), quantize="int8")
    assert report["verified_on"] == "test split" and report["messages"] == summary["metrics"]["test"]["examples"]
    assert report["torch_accuracy"] == pytest.approx(summary["metrics"]["test"]["accuracy"])
    assert report["int8"]["accuracy_drop_points"] <= 0.5


def test_an_export_of_other_weights_is_refused_until_exported_again(saved, test_csv, tiny_model, capsys):
    """Training into a directory again changes its weights: the old graph would answer for the old model."""
    args = ["export", str(saved), "--test_file", test_csv]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(saved), "--backend", "onnxruntime", "ok"]) == 0
    with torch.no_grad():
        tiny_model.score.weight.add_(1.0)
    tiny_model.save_pretrained(saved)  # what a second training run into the same directory leaves
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(saved), "--backend", "onnxruntime", "ok"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors changed since" in err[0] and f"hf-spam export {saved}" in err[0]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(["predict", "--model", str(saved), "--backend", "onnxruntime", "ok"]) == 0


def test_export_checks_on_data_named_locally_only(saved, tmp_path, capsys, monkeypatch):
    """A downloaded model's metrics.json must not make export fetch anything."""
    import urllib.request

    from hf_spam.data import collection as data

    fetched = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: fetched.append(a) or 1 / 0)
    monkeypatch.setattr(data, "_offline", lambda: False)
    metrics = {"seed": 1, "data_arguments": {"data_urls": ["http://127.0.0.1:9/evil.zip"]}}
    (saved / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv("HF_SPAM_CACHE", str(tmp_path / "empty-cache"))
    assert cli_main(["export", str(saved), "--max_accuracy_drop", "100"]) == 0  # the bundled copy, no download
    assert fetched == []
    metrics["data_arguments"] = {"dataset_name": "someone/data"}
    (saved / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert cli_main(["export", str(saved)]) == 2
    assert "which is not downloaded here; give the messages to check on with --test_file" in capsys.readouterr().err


def test_clear_errors_without_an_export_or_without_the_extra(saved, monkeypatch, capsys):
    assert cli_main(["predict", "--model", str(saved), "--backend", "onnxruntime", "hello"]) == 2
    assert f"no onnx/model.onnx; run `hf-spam export {saved}` first" in capsys.readouterr().err
    assert cli_main(["export", str(saved)]) == 2  # no metrics.json: which messages to check on?
    assert "give the messages to check on with --test_file" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert cli_main(["export", str(saved)]) == 2
    assert "needs the onnx extra" in capsys.readouterr().err
    assert cli_main(["predict", "--model", str(saved), "--backend", "onnxruntime", "hello"]) == 2
    assert "needs the onnx extra" in capsys.readouterr().err


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _texts(path):
    return [row["text"] for row in _rows(path)]


@pytest.mark.parametrize(
    "pooling, causal_mask",
    [("mean", True), ("last", False), pytest.param("first", False, marks=pytest.mark.slow)],
)
def test_the_graph_pools_and_masks_as_the_saved_model_says(pooling, causal_mask, tokenizer, tmp_path):
    from hf_spam.models.loading import load_model

    from .conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    kwargs = {"pooling": pooling, "causal_mask": causal_mask}
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES, **kwargs).eval()
    export_graph(model, tokenizer, tmp_path / "model.onnx")
    reference = classifier(model, tokenizer, batch_size=4).probabilities(MESSAGES)
    got = onnx_probabilities(tmp_path / "model.onnx", tokenizer, model.config, 3)(MESSAGES)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    model.config.hf_spam_pooling, model.config.is_causal = ("mean" if pooling == "last" else "last"), True
    assert not np.allclose(classifier(model, tokenizer, batch_size=4).probabilities(MESSAGES), reference, atol=1e-4)


def test_gpt2_graph_runs_its_final_block_at_the_last_token_only(tokenizer):
    from hf_spam.deploy.export import PooledLogits
    from hf_spam.models.loading import load_model

    from .conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES).eval()
    seen = []
    model.transformer.h[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    model.transformer.h[0].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    batch = tokenizer(MESSAGES[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = PooledLogits(model, tokenizer)(batch["input_ids"], batch["attention_mask"])
        full = model(**batch).logits
    np.testing.assert_allclose(logits.numpy(), full.numpy(), atol=1e-5)
    # The exported forward first: the first block on every token, the final block's MLP on one per row.
    assert seen[:2] == [(3, batch["input_ids"].shape[1], model.config.n_embd), (3, model.config.n_embd)]

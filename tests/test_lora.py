"""`trainable: lora`: adapters through peft, the head trained whole, a merged plain model saved, exact resume."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, set_seed

from hf_spam import train
from hf_spam.deploy.classifier import load_classifier
from hf_spam.models.loading import load_model
from hf_spam.models.parts import LoraTargetError, add_lora

from .conftest import ROOT, TINY_OVERRIDES
from .test_decoders import TEXTS, tiny_config
from .test_end_to_end import PLAIN_PIPELINE

TINY = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--evaluate_held_out", "false", "--trainable", "lora"]


def test_adapters_on_every_linear_layer_and_the_whole_head_train(tokenizer):
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)
    lora = add_lora(model, r=4, alpha=8)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or ".score." in name for name in trainable)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable if "lora_" in name}
    assert adapted == {"c_attn", "c_proj", "c_fc"}  # GPT-2's Conv1D layers: attention and MLP
    assert any(".score." in name for name in trainable)
    # r x (in + out) per adapted layer, plus the whole head.
    n_embd, layers = 16, 3
    per_block = (
        4 * (n_embd + 3 * n_embd) + 4 * (n_embd + n_embd) + 4 * (n_embd + 4 * n_embd) + 4 * (4 * n_embd + n_embd)
    )
    assert lora.get_nb_trainable_parameters()[0] == layers * per_block + 2 * n_embd


def test_other_families_get_adapters_on_their_own_linear_layers(tokenizer):
    model = AutoModelForSequenceClassification.from_config(tiny_config("llama", tokenizer))
    lora = add_lora(model, r=2, target_modules=["q_proj", "v_proj"])
    adapted = {
        name.split(".lora_")[0].rsplit(".", 1)[-1]
        for name, p in lora.named_parameters()
        if p.requires_grad and "lora_" in name
    }
    assert adapted == {"q_proj", "v_proj"}


def test_a_target_the_model_lacks_names_its_linear_layers(tokenizer):
    model = load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)
    with pytest.raises(LoraTargetError, match="q_proj.*its linear layers: c_attn c_fc c_proj"):
        add_lora(model, target_modules=["q_proj"])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "model"
    flags = ["--num_train_epochs", "2", "--save_total_limit", "2", "--save_adapter", "true"]
    summary = train.main([*TINY, "--output_dir", str(out), *flags])
    return out, summary


def test_the_output_is_a_merged_plain_model_that_a_pipeline_loads(lora_run):
    out, summary = lora_run
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16
    texts = TEXTS
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_PIPELINE, str(out), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = json.loads(result.stdout)["top"]
    ours = load_classifier(str(out))(texts)
    assert [p["label"] for p in ours] == [p["label"] for p in theirs]
    assert max(abs(p["score"] - q["score"]) for p, q in zip(ours, theirs, strict=True)) < 1e-5
    # The reported test accuracy is the saved model's.
    card = (out / "README.md").read_text()
    assert "LoRA:** rank 16, alpha 16" in card
    assert summary["metrics"]["test"]["accuracy"] > 0.5


def test_weights_without_adapters_stay_as_initialized(lora_run, tokenizer):
    out, _ = lora_run
    set_seed(123)  # what train.main does before building the model
    initial = load_model(
        "gpt2", tokenizer, init="random", config_overrides="n_layer=2,n_head=2,n_embd=32"
    ).state_dict()
    saved = load_file(out / "model.safetensors")
    unchanged = [name for name in saved if torch.equal(saved[name], initial[name])]
    changed = sorted(set(saved) - set(unchanged))
    assert "transformer.wte.weight" in unchanged and "transformer.h.0.ln_1.weight" in unchanged
    # Merged adapters changed the adapted weights (the biases are not adapted), and the head trained.
    assert {n for n in changed if not n.endswith("bias")} == {
        "score.weight",
        *(
            f"transformer.h.{i}.{m}.weight"
            for i in range(2)
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ),
    }


def test_a_resumed_lora_run_ends_with_the_same_weights(lora_run, tmp_path):
    out, _ = lora_run
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints and (checkpoints[0] / "adapter_model.safetensors").is_file()
    resumed = tmp_path / "resumed"
    shutil.copytree(checkpoints[0].parent, resumed, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))
    first = int(checkpoints[0].name.split("-")[1])
    assert first == 29  # the end of epoch 1 of 2 (914 messages / 32)
    shutil.copytree(out / f"checkpoint-{first}", resumed / f"checkpoint-{first}")
    train.main([*TINY, "--output_dir", str(resumed), "--num_train_epochs", "2", "--resume_from_checkpoint", "auto"])
    a, b = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_settings_out_of_range_are_one_error(tmp_path):
    code = train.run([*TINY, "--output_dir", str(tmp_path / "x"), "--lora_r", "0"])
    assert code == 2
    code = train.run([*TINY, "--output_dir", str(tmp_path / "x"), "--lora_target_modules", "q_proj"])
    assert code == 2 and not (tmp_path / "x" / "model.safetensors").exists()

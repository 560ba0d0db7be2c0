"""Hostile files: pickles that would run code, pickled-only weights, custom code, garbage configs.

Each payload, if it ever ran, would create a canary file; the tests that use one check that it does not exist,
and `test_the_payloads_are_live` shows that the same payloads do create it when unpickled unsafely.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from hf_spam.cli import main as cli_main
from hf_spam.training.checkpoints import CheckpointError, check_checkpoint, resolve_resume

from .conftest import EVERY_STEP, error_lines, run_train, weights


class RunsShell:
    """Unpickles as `os.system("touch <canary>")`."""

    def __init__(self, canary: pathlib.Path):
        self.canary = canary

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.canary))}",)


class TouchesFile:
    """Unpickles as `pathlib.Path(<canary>).touch()`."""

    def __init__(self, canary: pathlib.Path):
        self.canary = canary

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.canary),)


PAYLOADS = {"os.system": RunsShell, "Path.touch": TouchesFile}


def write_payload(path: pathlib.Path, canary: pathlib.Path, payload: str, fmt: str) -> None:
    obj = PAYLOADS[payload](canary)
    if fmt == "pickle":
        path.write_bytes(pickle.dumps({"state": {}, "param_groups": [], "payload": obj}, protocol=2))  # as torch.save
    else:  # what a tampered torch.save file looks like: a valid zip archive around the pickle
        torch.save({"state": {}, "param_groups": [], "payload": obj}, path)


def predict(capsys, model_dir, *texts: str) -> tuple[int, str, str]:
    """`hf-spam predict` in-process (an exception escaping `main` is what would print a traceback)."""
    code = cli_main(["predict", "--model", str(model_dir), *texts])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_refusal(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert any(all(w in line for w in words) for line in result.stderr.splitlines()), result.stderr[-3000:]


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_the_payloads_are_live(tmp_path, payload, fmt):
    canary = tmp_path / "canary"
    write_payload(tmp_path / "payload", canary, payload, fmt)
    if fmt == "pickle":
        pickle.loads((tmp_path / "payload").read_bytes())
    else:
        torch.load(tmp_path / "payload", weights_only=False)
    assert canary.exists()


# ---- a checkpoint whose pickles carry code ----

PICKLED_CHECKPOINT_FILES = ["optimizer.pt", "rng_state.pth", "scheduler.pt"]


@pytest.fixture
def hostile_run(tiny_checkpoints, tmp_path):
    """A copy of the tiny run's checkpoints; the tests put a payload into checkpoint-3."""
    source, _ = tiny_checkpoints
    out = tmp_path / "run"
    for step in (1, 2, 3):
        shutil.copytree(source / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out


@pytest.mark.parametrize("fmt", ["pickle", "torch.save"])
@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("name", PICKLED_CHECKPOINT_FILES)
def test_a_checkpoint_with_code_in_a_pickle_is_refused_without_running_it(hostile_run, tmp_path, name, payload, fmt):
    canary = tmp_path / "canary"
    checkpoint = hostile_run / "checkpoint-3"
    write_payload(checkpoint / name, canary, payload, fmt)
    with pytest.raises(CheckpointError, match=rf"checkpoint-3/{name.replace('.', '[.]')} does not load"):
        check_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="resume_from_checkpoint"):
        resolve_resume(str(checkpoint), hostile_run)
    assert resolve_resume("auto", hostile_run) == str(hostile_run / "checkpoint-2")
    assert not canary.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "payload", "fmt"),
    [("optimizer.pt", "os.system", "torch.save"), ("rng_state.pth", "Path.touch", "pickle"),
     ("scheduler.pt", "os.system", "pickle")],
)  # fmt: skip
def test_resuming_from_a_hostile_checkpoint_fails_with_a_clear_message(
    hostile_run, tmp_path, shared_cache, name, payload, fmt
):
    canary = tmp_path / "canary"
    write_payload(hostile_run / "checkpoint-3" / name, canary, payload, fmt)
    result = run_train(
        hostile_run, *EVERY_STEP, "--max_steps", "4", "--resume_from_checkpoint", hostile_run / "checkpoint-3",
        cache_dir=shared_cache,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = error_lines(result.stderr)
    assert "CheckpointError" in error and f"checkpoint-3/{name}" in error and "does not load" in error
    assert not (hostile_run / "checkpoint-4").exists() and not (hostile_run / "model.safetensors").exists()
    assert not canary.exists()


@pytest.mark.slow
def test_a_hostile_training_args_bin_is_never_unpickled(hostile_run, tmp_path, shared_cache):
    # Trainer pickles its arguments into every checkpoint but never reads them back; keep it that way.
    canary = tmp_path / "canary"
    write_payload(hostile_run / "checkpoint-3" / "training_args.bin", canary, "os.system", "torch.save")
    result = run_train(
        hostile_run, *EVERY_STEP, "--max_steps", "4", "--resume_from_checkpoint", "auto", cache_dir=shared_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (hostile_run / "checkpoint-4").is_dir() and weights(hostile_run)
    assert not canary.exists()


# ---- model directories: pickled weights only, custom code, garbage ----


@pytest.fixture
def pickled_model_dir(tiny_model_dir, tmp_path):
    """The model with its weights in a `pytorch_model.bin` that also carries a payload, and no safetensors."""
    path = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, path)
    state_dict = weights(path)
    (path / "model.safetensors").unlink()
    torch.save({**state_dict, "payload": RunsShell(tmp_path / "canary")}, path / "pytorch_model.bin")
    return path


@pytest.fixture
def custom_code_model_dir(tiny_model_dir, tmp_path):
    """The model, with a config whose `auto_map` points at a module that would create the canary on import."""
    path = tmp_path / "custom_code"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "evil.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'canary')!r}).touch()\n")
    return path


def test_the_clean_model_dir_predicts(tiny_model_dir, capsys):
    # The refusals below are about what was spoiled, not about a directory that never worked.
    code, out, _ = predict(capsys, tiny_model_dir, "WINNER! Claim your free prize now")
    assert code == 0 and json.loads(out)["label"] in {"spam", "ham"}


def test_predict_refuses_pickled_weights_and_says_safetensors(pickled_model_dir, tmp_path, capsys):
    code, out, err = predict(capsys, pickled_model_dir, "hello")
    assert code == 2 and out == ""
    [message] = [line for line in err.splitlines() if line.startswith("hf-spam predict: ")]
    assert "safetensors" in message and str(pickled_model_dir) in message
    assert not (tmp_path / "canary").exists()


@pytest.mark.slow
def test_training_refuses_pickled_weights_and_says_safetensors(pickled_model_dir, tmp_path, shared_cache):
    result = run_train(
        tmp_path / "out", "--model_name_or_path", pickled_model_dir, "--init", "pretrained", "--max_steps", "1",
        cache_dir=shared_cache,
    )  # fmt: skip
    assert_one_line_refusal(result, "safetensors")
    assert "UnsafeModelError" in error_lines(result.stderr)[0]
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "canary").exists()


def test_predict_refuses_a_config_with_auto_map(custom_code_model_dir, tmp_path, capsys):
    code, out, err = predict(capsys, custom_code_model_dir, "hello")
    assert code == 2 and out == ""
    [message] = [line for line in err.splitlines() if line.startswith("hf-spam predict: ")]
    assert "auto_map" in message and str(custom_code_model_dir) in message
    assert not (tmp_path / "canary").exists() and "evil" not in sys.modules


@pytest.mark.slow
@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_training_refuses_a_config_with_auto_map(custom_code_model_dir, tmp_path, shared_cache, init):
    result = run_train(
        tmp_path / "out", "--model_name_or_path", custom_code_model_dir, "--init", init, "--max_steps", "1",
        cache_dir=shared_cache,
    )  # fmt: skip
    assert_one_line_refusal(result, "auto_map")
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "canary").exists()


@pytest.mark.slow
def test_training_on_a_model_dir_with_a_garbage_config_is_a_clean_error(tiny_model_dir, tmp_path, shared_cache):
    path = tmp_path / "spoiled"
    shutil.copytree(tiny_model_dir, path)
    (path / "config.json").write_text("{not json")
    result = run_train(
        tmp_path / "out", "--model_name_or_path", path, "--init", "pretrained", "--max_steps", "1",
        cache_dir=shared_cache,
    )  # fmt: skip
    assert_one_line_refusal(result, str(path / "config.json"))


@pytest.mark.parametrize(
    ("spoil", "content"),
    [("config.json", b"{not json"), ("config.json", b"[1, 2, 3]"), ("model.safetensors", b"\xff" * 64)],
    ids=["config-not-json", "config-a-list", "safetensors-garbage"],
)
def test_predict_on_a_garbage_model_file_is_a_clean_error(tiny_model_dir, tmp_path, capsys, spoil, content):
    path = tmp_path / "spoiled"
    shutil.copytree(tiny_model_dir, path)
    (path / spoil).write_bytes(content)
    code, out, err = predict(capsys, path, "hello")
    assert code == 2 and out == ""
    [message] = [line for line in err.splitlines() if line.startswith("hf-spam predict: ")]
    assert str(path) in message  # which model could not be loaded

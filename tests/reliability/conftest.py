"""Helpers for the reliability suite: drive `hf-spam train` in subprocesses, compare what runs leave behind.

Every training run here is `configs/tiny.yaml` shrunk to 2 blocks of 16 dimensions with evaluation off: a step
takes milliseconds, so a run costs little more than the interpreter start-up. Figures worth quoting (kill
points, peak memory) are collected in `FIGURES` and printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_spam.models.loading import load_model

from ..conftest import ROOT, TINY_OVERRIDES

TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
FAST_FLAGS = (
    "--config_overrides", "n_layer=2,n_head=2,n_embd=16",
    "--eval_strategy", "no",
    "--disable_tqdm", "true",
    "--report_to", "none",
)  # fmt: skip
# Save (and log) every step, keep every checkpoint: each step of a run can be compared with a reference.
EVERY_STEP = ("--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "0")
# The bundled data after dedupe and undersampling: 914 training messages, 29 batches of 32 an epoch.
STEPS_PER_EPOCH = 29

FIGURES: dict[str, list[str]] = {}


def record_figure(section: str, line: str) -> None:
    """Keep a line for the end-of-session summary (and print it, for `-s`)."""
    FIGURES.setdefault(section, []).append(line)
    print(f"[{section}] {line}")


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("hf_spam reliability figures")
    for section, lines in FIGURES.items():
        for line in lines:
            terminalreporter.write_line(f"{section}: {line}")


def train_argv(output_dir: str | os.PathLike, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "hf_spam.cli", "train", "--config", str(TINY_CONFIG),
        "--output_dir", str(output_dir), *FAST_FLAGS, *map(str, flags),
    ]  # fmt: skip


def train_env(cache_dir: str | os.PathLike, **extra: str) -> dict[str, str]:
    """An offline environment with its own data/tokenization/trunk cache; unbuffered, so output streams."""
    env = {**os.environ, "HF_SPAM_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def run_train(output_dir, *flags, cache_dir, env: dict | None = None, timeout: float = 600, **kwargs):
    return subprocess.run(
        train_argv(output_dir, *flags),
        env=env or train_env(cache_dir),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines hf_spam logs at ERROR (`... ERROR hf_spam: Type: message`)."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


def weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    return load_file(path / "model.safetensors" if path.is_dir() else path)


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def step_logs(output_or_checkpoint: str | os.PathLike) -> dict[int, dict]:
    """Per-step training logs (`loss`, `grad_norm`, `learning_rate`, `epoch`) from trainer_state.json, by step."""
    state = json.loads((Path(output_or_checkpoint) / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One data/tokenization cache for runs that only need it warm (it is keyed by content, never stale)."""
    return tmp_path_factory.mktemp("hf_spam_cache")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, shared_cache):
    """A real 3-step run with `--resume_from_checkpoint auto` on an empty output_dir: checkpoint-1..3.

    Tests copy these and damage the copies; never modify them in place.
    """
    out = tmp_path_factory.mktemp("tiny_checkpoints") / "run"
    result = run_train(
        out, *EVERY_STEP, "--max_steps", "3", "--resume_from_checkpoint", "auto", cache_dir=shared_cache
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """The `tiny_model` of tests/conftest.py saved with its tokenizer: a complete model directory. Read-only."""
    path = tmp_path_factory.mktemp("tiny_model")
    load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""SIGTERM (a preempted or cancelled job): finish the step, save a checkpoint, exit 143; resume loses nothing."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from hf_spam.training.checkpoints import check_checkpoint

from ..conftest import ROOT
from .conftest import (
    bit_identical,
    max_weight_difference,
    record_figure,
    run_train,
    step_logs,
    train_argv,
    train_env,
    weights,
)

# tiny.yaml saves once an epoch (and keeps one checkpoint): the checkpoint SIGTERM leaves is the only one.
FLAGS = ("--num_train_epochs", "1", "--logging_steps", "1", "--resume_from_checkpoint", "auto")
STEP_LOG = re.compile(r"^\{.*'loss'")  # PrinterCallback's line for each logged step (disable_tqdm: true)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_cache):
    """The same run, uninterrupted."""
    out = tmp_path_factory.mktemp("sigterm") / "reference"
    result = run_train(out, *FLAGS, cache_dir=shared_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("after_steps", [3, 17])
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_bit_identical(
    tmp_path, shared_cache, reference, after_steps
):
    cache = shared_cache
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        train_argv(out, *FLAGS), env=train_env(cache), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    seen = 0
    try:
        for line in proc.stdout:
            seen += bool(STEP_LOG.match(line))
            if seen == after_steps:
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert seen == after_steps, stderr[-3000:]
    assert proc.returncode == 143, stderr[-3000:]

    [stopped_line] = [line for line in stderr.splitlines() if "Stopped by SIGTERM" in line]
    stopped_at = int(re.search(r"at step (\d+)", stopped_line).group(1))
    assert stopped_at >= after_steps  # the steps already logged are in the checkpoint
    assert "--resume_from_checkpoint auto" in stopped_line and str(out) in stopped_line
    check_checkpoint(out / f"checkpoint-{stopped_at}")
    assert max(step_logs(out / f"checkpoint-{stopped_at}")) == stopped_at
    assert not (out / "model.safetensors").exists()  # a stopped run does not look like a finished one

    resumed = run_train(out, *FLAGS, cache_dir=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{stopped_at}" in resumed.stderr  # "Resuming from ..."
    difference = max_weight_difference(weights(out), weights(reference))
    record_figure(
        "SIGTERM",
        f"signal after {after_steps} logged steps: exit {proc.returncode}, checkpoint-{stopped_at} complete, "
        f"resumed to the end: max weight diff {difference:.3g}, "
        f"per-step logs {'equal' if step_logs(out) == step_logs(reference) else 'DIFFERENT'}",
    )
    assert bit_identical(weights(out), weights(reference))
    assert step_logs(out) == step_logs(reference)

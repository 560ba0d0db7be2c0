"""Resume after a crash: `auto` takes the newest complete checkpoint, and a resumed run ends bit-identical.

The slow tests kill real training runs with SIGKILL, sometimes while a checkpoint is being written, resume
them with `--resume_from_checkpoint auto` until they finish, and compare every checkpoint, the final weights
and the per-step losses with an uninterrupted run of the same command.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_spam.training.checkpoints import CheckpointError, check_checkpoint, checkpoints_newest_first, resolve_resume

from ..conftest import ROOT
from .conftest import (
    EVERY_STEP,
    STEPS_PER_EPOCH,
    bit_identical,
    error_lines,
    max_weight_difference,
    record_figure,
    run_train,
    step_logs,
    train_argv,
    train_env,
    weights,
)


def copy_run(tiny_checkpoints, tmp_path) -> Path:
    """The three checkpoints of the session's tiny run, in a fresh output_dir of our own."""
    source, _ = tiny_checkpoints
    out = tmp_path / "run"
    out.mkdir()
    for step in (1, 2, 3):
        shutil.copytree(source / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return out


def truncate_safetensors(checkpoint: Path) -> None:
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty_trainer_state(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").write_bytes(b"")


def half_trainer_state(checkpoint: Path) -> None:
    path = checkpoint / "trainer_state.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def no_optimizer(checkpoint: Path) -> None:
    (checkpoint / "optimizer.pt").unlink()


def truncate_optimizer(checkpoint: Path) -> None:
    # What a copy cut short (or a crash without fsync) leaves: a non-empty optimizer.pt that does not load.
    path = checkpoint / "optimizer.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def no_rng_state(checkpoint: Path) -> None:
    (checkpoint / "rng_state.pth").unlink()


DAMAGE = {
    "truncated model.safetensors": (truncate_safetensors, "model.safetensors"),
    "empty trainer_state.json": (empty_trainer_state, "trainer_state.json"),
    "half a trainer_state.json": (half_trainer_state, "trainer_state.json"),
    "no optimizer.pt": (no_optimizer, "optimizer.pt"),
    "truncated optimizer.pt": (truncate_optimizer, "optimizer.pt"),
    "no rng_state.pth": (no_rng_state, "rng_state.pth"),
}


def test_a_fresh_output_dir_with_auto_starts_from_scratch(tiny_checkpoints):
    out, result = tiny_checkpoints
    assert "no complete checkpoint" in result.stderr and "starting from scratch" in result.stderr
    assert sorted(p.name for p in checkpoints_newest_first(out)) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert sorted(step_logs(out)) == [1, 2, 3]
    for step in (1, 2, 3):
        check_checkpoint(out / f"checkpoint-{step}")


def test_auto_with_no_checkpoints_returns_none(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "checkpoint-notanumber").mkdir()
    with caplog.at_level(logging.INFO, logger="hf_spam"):
        assert resolve_resume("auto", tmp_path / "empty") is None
        assert resolve_resume("auto", tmp_path / "does-not-exist") is None
    assert "starting from scratch" in caplog.text


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_auto_skips_a_damaged_newest_checkpoint_and_names_it(tiny_checkpoints, tmp_path, caplog, damage):
    out = copy_run(tiny_checkpoints, tmp_path)
    corrupt, file_named = DAMAGE[damage]
    corrupt(out / "checkpoint-3")
    with pytest.raises(CheckpointError, match=file_named.replace(".", r"\.")):
        check_checkpoint(out / "checkpoint-3")
    with caplog.at_level(logging.INFO, logger="hf_spam"):
        assert resolve_resume("auto", out) == str(out / "checkpoint-2")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(out / "checkpoint-3") in warning.getMessage() and file_named in warning.getMessage()


def test_auto_goes_back_past_several_damaged_checkpoints(tiny_checkpoints, tmp_path, caplog):
    out = copy_run(tiny_checkpoints, tmp_path)
    truncate_safetensors(out / "checkpoint-3")
    no_optimizer(out / "checkpoint-2")
    with caplog.at_level(logging.WARNING, logger="hf_spam"):
        assert resolve_resume("auto", out) == str(out / "checkpoint-1")
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(skipped) == 2 and "checkpoint-3" in skipped[0] and "checkpoint-2" in skipped[1]
    no_rng_state(out / "checkpoint-1")
    assert resolve_resume("auto", out) is None


def test_a_checkpoint_that_claims_another_step_is_not_resumed(tiny_checkpoints, tmp_path):
    out = copy_run(tiny_checkpoints, tmp_path)
    shutil.rmtree(out / "checkpoint-3")
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")  # e.g. a directory renamed by hand
    with pytest.raises(CheckpointError, match="step 2"):
        check_checkpoint(out / "checkpoint-3")
    assert resolve_resume("auto", out) == str(out / "checkpoint-2")


def test_an_explicit_damaged_checkpoint_is_an_error_not_a_fallback(tiny_checkpoints, tmp_path):
    out = copy_run(tiny_checkpoints, tmp_path)
    truncate_safetensors(out / "checkpoint-3")
    with pytest.raises(CheckpointError, match=r"resume_from_checkpoint: .*checkpoint-3.*model\.safetensors"):
        resolve_resume(str(out / "checkpoint-3"), out)
    assert resolve_resume(str(out / "checkpoint-2"), out) == str(out / "checkpoint-2")


@pytest.mark.slow
def test_resume_from_a_missing_directory_is_one_line_and_exit_code_2(tmp_path):
    result = run_train(
        tmp_path / "out", "--max_steps", "1", "--resume_from_checkpoint", "/no/such/dir", cache_dir=tmp_path / "cache"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [error] = error_lines(result.stderr)
    assert "CheckpointError" in error and "/no/such/dir" in error
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL
# ---------------------------------------------------------------------------------------------------------------

CASES = {
    "within an epoch": ("--num_train_epochs", "1"),
    "across an epoch boundary": ("--num_train_epochs", "2"),
    "frozen-trunk cache": ("--num_train_epochs", "1", "--trainable", "last_block"),
    "gradient accumulation 2": ("--num_train_epochs", "1", "--gradient_accumulation_steps", "2"),
}
TOTAL_STEPS = {
    "within an epoch": STEPS_PER_EPOCH,
    "across an epoch boundary": 2 * STEPS_PER_EPOCH,
    "frozen-trunk cache": STEPS_PER_EPOCH,
    "gradient accumulation 2": (STEPS_PER_EPOCH + 1) // 2,
}
KILLS_PER_RUN = 5
# When to kill, once checkpoint-<target> is being written: as soon as its directory appears (before any file),
# once optimizer.pt appears (weights written, optimizer state and trainer_state.json not yet), or once
# trainer_state.json, the last file, appears (the run is then usually past the save).
MODES = ("mid-save", "late-save", "after-save")
SEED = int(os.environ.get("HF_SPAM_KILL_SEED", random.SystemRandom().randrange(2**32)))


@dataclass
class Kill:
    target: int
    mode: str  # one of MODES, or "pinned": later checkpoints are then deleted, as if killed right after <target>
    resumed_from: int  # the step `auto` resumes from afterwards (0: from scratch)
    skipped_partial: bool  # the newest checkpoint directory was incomplete, and `auto` skipped it


def kill_at(argv, env, out: Path, target: int, mode: str, log: Path) -> None:
    checkpoint = out / f"checkpoint-{target}"
    # Checkpoints are written one after the other: once checkpoint-<target + 1> appears, <target> is complete.
    marker = {
        "mid-save": checkpoint,
        "late-save": checkpoint / "optimizer.pt",
        "after-save": checkpoint / "trainer_state.json",
        "pinned": out / f"checkpoint-{target + 1}",
    }[mode]
    with open(log, "ab") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while not marker.exists():
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before {marker} appeared"
            assert time.monotonic() < deadline, f"{marker} did not appear in 300 s"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op if already dead
        proc.wait()


def plan_targets(rng: random.Random, first: int, last: int, k: int) -> list[int]:
    """Up to `k` steps in [first, last], at random, at least 2 apart (each resumed run must get somewhere)."""
    k = min(k, (last - first) // 2 + 1)
    offsets = sorted(rng.choices(range(last - first - 2 * (k - 1) + 1), k=k))
    return [first + offset + 2 * i for i, offset in enumerate(offsets)]


def newest_step(out: Path) -> int:
    found = checkpoints_newest_first(out)
    return int(found[0].name.split("-")[1]) if found else 0


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_runs_resume_bit_identical(case, tmp_path):
    rng = random.Random(f"{SEED}-{case}")
    total = TOTAL_STEPS[case]
    flags = (*CASES[case], *EVERY_STEP, "--resume_from_checkpoint", "auto")
    cache = tmp_path / "cache"
    env = train_env(cache)

    reference = tmp_path / "reference"
    result = run_train(reference, *flags, cache_dir=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_logs(reference).keys() == set(range(1, total + 1))
    # The case trains the way it says: from cached trunk states, or through the whole model.
    cache_on = case == "frozen-trunk cache"
    assert ("Frozen-trunk cache on" in result.stderr) is cache_on, result.stderr[-3000:]

    out, log = tmp_path / "killed", tmp_path / "killed.log"
    argv = train_argv(out, *flags)
    kills: list[Kill] = []
    # Every mode at least once, then at random. Across epochs, the first kill is pinned to the last step of
    # epoch 1 (that resume starts exactly at the boundary), and the others fall in epoch 2.
    modes = [*rng.sample(MODES, len(MODES)), *(rng.choice(MODES) for _ in range(KILLS_PER_RUN - len(MODES)))]
    first = STEPS_PER_EPOCH + 2 if case == "across an epoch boundary" else 2
    targets = plan_targets(rng, first, total - 1, KILLS_PER_RUN)
    plan = list(zip(targets, modes[: len(targets)], strict=True))
    if case == "across an epoch boundary":
        plan.insert(0, (STEPS_PER_EPOCH, "pinned"))
    for target, mode in plan:
        resumed = kills[-1].resumed_from if kills else 0
        target = max(target, resumed + 2)  # an "after-save" kill can land a step or two past its target
        if target > total - 1:
            break
        kill_at(argv, env, out, target, mode, log)
        if mode == "pinned":
            for later in checkpoints_newest_first(out):
                if int(later.name.split("-")[1]) > target:
                    shutil.rmtree(later)
        newest = newest_step(out)
        try:
            check_checkpoint(out / f"checkpoint-{newest}")
            partial = False
        except CheckpointError:
            partial = True
        chosen = resolve_resume("auto", out)
        kills.append(Kill(target, mode, int(Path(chosen).name.split("-")[1]) if chosen else 0, partial))
        assert mode != "pinned" or kills[-1].resumed_from == target

    with open(log, "ab") as sink:
        final = subprocess.run(argv, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, timeout=600)
    assert final.returncode == 0, log.read_text()[-3000:]

    # Every checkpoint each run left (those after its resume point) and the final weights, against the reference.
    bounds = [k.resumed_from for k in kills] + [total]
    identical, differences = [], []
    for i, kill in enumerate(kills):
        steps = range(kill.resumed_from + 1, bounds[i + 1] + 1)
        diffs = [max_weight_difference(weights(out / f"checkpoint-{s}"), weights(reference / f"checkpoint-{s}"))
                 for s in steps]  # fmt: skip
        if i == len(kills) - 1:
            diffs.append(max_weight_difference(weights(out), weights(reference)))
        differences.append(max(diffs))
        identical.append(all(d == 0.0 for d in diffs))
    largest = max(differences, default=0.0)
    description = ", ".join(
        f"kill at {k.target} ({k.mode}{', partial skipped' if k.skipped_partial else ''}) -> resumed "
        f"from {k.resumed_from}: {'identical' if same else f'max diff {d:.3g}'}"
        for k, same, d in zip(kills, identical, differences, strict=True)
    )
    record_figure(
        "kill/resume",
        f"{case}: {len(kills)} kill points, {sum(identical)} resumed bit-identical, max weight diff {largest:.3g} "
        f"[seed {SEED}] {description}",
    )
    assert kills, "no kill point was tried"
    assert bit_identical(weights(out), weights(reference)), description
    assert all(identical), description
    # The losses logged after each resume point (and before: they are restored from the checkpoint) are the same.
    assert step_logs(out) == step_logs(reference)

"""A reused output_dir: another run's model is never overwritten silently, and `--resume_from_checkpoint auto`
never continues a checkpoint of other settings."""

import json

from hf_spam.training.checkpoints import RUN_RECORD
from hf_spam.training.run import run

from ..conftest import ROOT

TINY = [
    "--config", str(ROOT / "configs" / "tiny.yaml"), "--config_overrides", "n_layer=2,n_head=2,n_embd=16",
    "--eval_strategy", "no", "--disable_tqdm", "true", "--max_steps", "4", "--save_strategy", "steps",
    "--save_steps", "2", "--evaluate_held_out", "false",
]  # fmt: skip


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_another_runs_directory_stops_the_run_unless_overwrite(tmp_path, caplog):
    out = tmp_path / "out"
    assert run([*TINY, "--output_dir", str(out)]) == 0
    before = (out / "model.safetensors").read_bytes()
    caplog.clear()
    assert run([*TINY, "--output_dir", str(out), "--seed", "7", "--learning_rate", "1.0e-2"]) == 2
    (line,) = errors(caplog)
    assert f"output_dir {out} holds another run" in line and "--overwrite_output_dir true" in line
    assert (out / "model.safetensors").read_bytes() == before  # nothing lost
    (out / "onnx").mkdir()  # an export of the old weights
    assert run([*TINY, "--output_dir", str(out), "--seed", "7", "--overwrite_output_dir", "true"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert not (out / "onnx").exists()
    assert json.loads((out / RUN_RECORD).read_text())["training"]["seed"] == 7


def test_auto_resume_of_a_checkpoint_with_other_settings_says_what_differs(tmp_path, caplog):
    out = tmp_path / "out"
    assert run([*TINY, "--output_dir", str(out)]) == 0
    assert (out / "checkpoint-4").is_dir()
    caplog.clear()
    other = [*TINY, "--output_dir", str(out), "--resume_from_checkpoint", "auto", "--learning_rate", "1.0e-2"]
    assert run(other) == 2
    (line,) = errors(caplog)
    assert "holds a run with other settings (training.learning_rate differ)" in line
    # the same settings resume (here: nothing left to train, the run's own figures)
    assert run([*TINY, "--output_dir", str(out), "--resume_from_checkpoint", "auto"]) == 0


def test_a_fresh_or_empty_directory_needs_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    assert run([*TINY, "--output_dir", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "notes.txt").read_text() == "mine"


def test_a_run_killed_while_saving_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    """The final files are written beside output_dir, then each moved in by one rename, metrics.json last: a
    run that dies while saving leaves the previous run's files as they were, and the next run cleans up."""
    import pytest

    import hf_spam.training.checkpoints
    import hf_spam.training.run

    out = tmp_path / "out"
    assert run([*TINY, "--output_dir", str(out)]) == 0
    before = {name: (out / name).read_bytes() for name in ("model.safetensors", "metrics.json", "config.json")}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill would stop it: after the weights, before the last files

    monkeypatch.setattr(hf_spam.training.run, "write_predictions", killed)
    with pytest.raises(KeyboardInterrupt):
        run([*TINY, "--output_dir", str(out), "--seed", "7", "--overwrite_output_dir", "true"])
    assert (
        out / hf_spam.training.checkpoints.STAGING / "model.safetensors"
    ).is_file()  # the new weights, not yet moved in
    assert {name: (out / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    assert run([*TINY, "--output_dir", str(out), "--seed", "7", "--overwrite_output_dir", "true"]) == 0
    assert (out / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert json.loads((out / "metrics.json").read_text())["seed"] == 7
    assert not (out / hf_spam.training.checkpoints.STAGING).exists()


def test_a_kill_in_the_middle_of_the_swap_is_refused_by_loaders_then_undone(tmp_path, monkeypatch):
    """Killed between the renames of the final swap: loaders refuse the directory in one line, and the next run
    into it puts the previous run's files back (checked on their bytes) before anything else."""
    import pathlib

    import pytest

    from hf_spam.deploy.classifier import load_classifier
    from hf_spam.training.checkpoints import recover_interrupted_save

    out = tmp_path / "out"
    assert run([*TINY, "--output_dir", str(out)]) == 0
    names = ("model.safetensors", "metrics.json", "config.json", "README.md")
    before = {name: (out / name).read_bytes() for name in names}
    real_replace, calls = pathlib.Path.replace, []

    def killed_on_the_fourth_rename_into_out(self, target):
        if pathlib.Path(target).parent == out:
            calls.append(target)
            if len(calls) == 4:
                raise KeyboardInterrupt
        return real_replace(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", killed_on_the_fourth_rename_into_out)
    with pytest.raises(KeyboardInterrupt):
        run([*TINY, "--output_dir", str(out), "--seed", "7", "--overwrite_output_dir", "true"])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="a save was interrupted"):
        load_classifier(str(out))
    recover_interrupted_save(out)
    assert {name: (out / name).read_bytes() for name in names} == before
    assert not (out / ".replaced").exists() and not (out / ".saving").exists()
    assert load_classifier(str(out))(["hi"])[0]["label"] in {"ham", "spam"}


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_first(tmp_path, caplog):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hf_spam.training.output_lock import lock_output_dir; "
         f"lock_output_dir({str(out)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run([*TINY, "--output_dir", str(out)]) == 2
        (line,) = errors(caplog)
        assert f"output_dir {out} is in use by another run (pid {holder.pid} on " in line
        assert not (out / "model.safetensors").exists() and not (out / RUN_RECORD).exists()
    finally:
        holder.kill()
        holder.wait()
    caplog.clear()
    # The killed run's lock file stays, but the kernel released its lock: the next run takes it over.
    assert (out / ".hf_spam.lock").read_text()
    assert run([*TINY, "--output_dir", str(out)]) == 0
    assert any(f"took over the lock a stopped run left (pid {holder.pid}" in r.getMessage() for r in caplog.records)

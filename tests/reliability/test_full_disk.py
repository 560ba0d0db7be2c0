"""A disk that fills up while a checkpoint is written: a clear error, the previous checkpoint intact, `auto`
skips the partial one, and a resume once there is room again loses nothing.

The full disk is a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) set for the resumed run only: its
writes past the limit fail with EFBIG, as writes to a full disk fail with ENOSPC. safetensors then raises
`SafetensorError(... File too large (os error 27))` and removes its partial file; torch.save (optimizer.pt)
raises `RuntimeError: [enforce fail at inline_container.cc] . unexpected pos N vs M`, which names no cause, and
leaves a truncated file.
"""

from __future__ import annotations

import logging
import resource
import shutil
import signal

import pytest

from hf_spam.training.checkpoints import RUN_RECORD, CheckpointError, check_checkpoint, resolve_resume

from .conftest import EVERY_STEP, bit_identical, error_lines, run_train, weights

# model.safetensors is ~3.3 MB (nearly all the 50,257 x 16 embedding) and optimizer.pt ~6.6 MB (two Adam moments):
# the first limit stops the weights, the second lets them (and the ~2 MB tokenizer.json) through and stops the
# optimizer state.
LIMITS = {"model.safetensors": 1024 * 1024, "optimizer.pt": 5 * 1024 * 1024}


def file_size_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
@pytest.mark.parametrize("failing_file", list(LIMITS))
def test_a_full_disk_while_saving_fails_clearly_and_keeps_the_previous_checkpoint(
    tmp_path, shared_cache, caplog, failing_file
):
    out = tmp_path / "run"
    first = run_train(out, *EVERY_STEP, "--max_steps", "4", cache_dir=shared_cache)
    assert first.returncode == 0, first.stderr[-3000:]
    uninterrupted = weights(out)
    # As if killed right after checkpoint-2. (A resume must keep every setting, max_steps included, so the
    # run to resume is this 4-step one, not a 2-step one.)
    for path in out.iterdir():
        if path.is_dir() and path.name not in ("checkpoint-1", "checkpoint-2"):
            shutil.rmtree(path)
        elif path.is_file() and path.name != RUN_RECORD:
            path.unlink()
    sizes = {name: (out / "checkpoint-2" / name).stat().st_size for name in ("model.safetensors", "optimizer.pt")}
    assert sizes["model.safetensors"] > LIMITS["model.safetensors"]
    assert sizes["model.safetensors"] < LIMITS["optimizer.pt"] < sizes["optimizer.pt"]

    full = run_train(
        out, *EVERY_STEP, "--max_steps", "4", "--resume_from_checkpoint", "auto",
        cache_dir=shared_cache, preexec_fn=file_size_limit(LIMITS[failing_file]),
    )  # fmt: skip
    assert full.returncode != 0, full.stderr[-3000:]
    assert not (out / "checkpoint-4").exists()
    partial = out / "checkpoint-3"  # begun, never finished: trainer_state.json is written last
    assert partial.is_dir() and not (partial / "trainer_state.json").exists()

    check_checkpoint(out / "checkpoint-2")
    with pytest.raises(CheckpointError):
        check_checkpoint(partial)
    with caplog.at_level(logging.WARNING, logger="hf_spam"):
        assert resolve_resume("auto", out) == str(out / "checkpoint-2")
    assert str(partial) in caplog.text

    # With room again, `auto` resumes from checkpoint-2 and ends where an uninterrupted 4-step run ends.
    resumed = run_train(
        out, *EVERY_STEP, "--max_steps", "4", "--resume_from_checkpoint", "auto", cache_dir=shared_cache
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_checkpoint(partial)
    assert bit_identical(weights(out), uninterrupted)

    # Last, the message: one line that names the checkpoint and the cause, rather than a traceback.
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    [error] = error_lines(full.stderr)
    assert any(words in error for words in ("File too large", "No space left", "disk")), error
    assert str(partial) in error, error

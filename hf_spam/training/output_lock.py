"""One run per output directory: a lock held for the run's lifetime, so that two runs into the same
`output_dir` cannot leave one's weights beside the other's metrics.

The lock is `flock` on `OUTPUT_DIR/.hf_spam.lock`: the kernel releases it when its process ends, however it
ends, so a lock file left by a killed run holds no lock and the next run takes it over. The file names the
process that holds it, for the refusal's message.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger("hf_spam")

LOCK_FILE = ".hf_spam.lock"
_held: dict[str, int] = {}  # output dir (resolved) -> the open lock file's descriptor


class OutputDirInUse(OSError):
    """Another run is writing into the same output directory."""


def lock_output_dir(output_dir: str | Path) -> None:
    """Take `output_dir`'s lock for this process, or raise `OutputDirInUse` naming the run that holds it."""
    directory = Path(output_dir).resolve()
    if str(directory) in _held:
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise OutputDirInUse(
            f"output_dir {output_dir} is in use by another run ({holder}); wait for it to finish or give another "
            "output_dir"
        ) from None
    left = _read_holder(fd)
    if left != "unknown":
        logger.info("%s: took over the lock a stopped run left (%s)", output_dir, left)
    os.ftruncate(fd, 0)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[str(directory)] = fd


def unlock_output_dir(output_dir: str | Path) -> None:
    """Release this process's lock on `output_dir` (a no-op where it holds none); the file stays, unlocked."""
    fd = _held.pop(str(Path(output_dir).resolve()), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (ValueError, TypeError, KeyError):
        return "unknown"


def releases_output_dir(run):
    """`run(model_args, data_args, training_args, ...)`, releasing the lock on `training_args.output_dir` that it
    took, however it ends (a `hf-spam cv` process runs one fold after another)."""

    @functools.wraps(run)
    def wrapper(model_args, data_args, training_args, *args, **kwargs):
        try:
            return run(model_args, data_args, training_args, *args, **kwargs)
        finally:
            unlock_output_dir(training_args.output_dir)

    return wrapper

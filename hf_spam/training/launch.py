"""The process a run is launched as: launcher checks (a process group where several processes were started),
the cores each process may use, and the log lines a run prints."""

from __future__ import annotations

import logging
import os
import sys

import torch

from hf_spam.progress import quiet_library_bars
from hf_spam.training.arguments import ConfigError

logger = logging.getLogger("hf_spam")

# What a process started by MPI, torchrun or accelerate's multi-process launchers finds in its environment.
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def check_launch(world_size: int) -> None:
    """Refuse launches that would not train as asked: processes that formed no process group (each would
    train alone on all the data and write output_dir), and `accelerate launch --cpu --num_processes N`,
    whose --cpu launcher starts one process for any N without MPI."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world_size == 1:
        raise ConfigError(
            f"launched as {launched} processes, but they formed no process group; on a machine without GPUs, "
            "pass --use_cpu true so that they train together over gloo"
        )
    # accelerate's one-process launcher sets MASTER_PORT only when asked for several processes.
    one_of_several = "MASTER_PORT" in os.environ and not any(v in os.environ for v in WORLD_SIZE_VARIABLES)
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and one_of_several:
        raise ConfigError(
            "accelerate launch --cpu with --num_processes above 1 starts a single process (without MPI); for "
            "several CPU processes run `accelerate launch --multi_gpu --num_processes N hf_spam/train.py ... "
            "--use_cpu true` (gloo), or leave --num_processes out for one"
        )


def use_the_cores(device_type: str) -> None:
    """`accelerate launch` without `--cpu` gives each process one torch thread (OMP_NUM_THREADS=1, its
    `--num_cpu_threads_per_process` default): on a 16-core machine, a sixteenth of it, and nobody is told. A
    launched CPU process left with one thread takes its share of the cores it may run on (`taskset` and
    cgroups limit them) instead, and says so."""
    if device_type != "cpu" or "ACCELERATE_DYNAMO_BACKEND" not in os.environ or torch.get_num_threads() != 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, cores // processes)
    if share > 1:
        torch.set_num_threads(share)
        logger.info(
            "accelerate launch gave this process 1 torch thread (OMP_NUM_THREADS=1); using %d: %d cores / %d "
            "process(es). To use fewer cores, run under taskset",
            share,
            cores,
            processes,
        )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted: a redirect (`hf-spam experiments` sends
    each row to its log file) or a test's capture then gets the records, not a stream bound at start-up."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure_logging() -> None:
    """hf_spam's records (and other libraries' warnings) to stderr, once per process."""
    root = logging.getLogger()
    if not any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)


def quiet_progress_bars(training_args) -> None:
    """Progress bars on a terminal only: written to a file or a pipe, tqdm's carriage returns leave hundreds of
    fragments in the log. `--disable_tqdm true` turns them off on a terminal too."""
    training_args.disable_tqdm = quiet_library_bars(training_args.disable_tqdm)

"""Two processes on the CPU (gloo), launched with torchrun.

accelerate 1.15 starts multi-CPU jobs only through mpirun (`--mpirun_hostfile`); with no MPI here,
`accelerate launch --cpu --num_processes 2` runs a single process. torchrun is what accelerate itself uses
for multi-GPU jobs, and Trainer/accelerate read its environment (RANK, WORLD_SIZE, MASTER_ADDR) the same way.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT

# last_block: the frozen-trunk cache is on, so DDP trains the tail; rank 1 logs at INFO too.
FLAGS = [
    "--config", str(ROOT / "configs" / "tiny.yaml"), "--trainable", "last_block", "--num_train_epochs", "2",
    "--disable_tqdm", "true", "--log_level_replica", "info", "--use_cpu", "true",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(ROOT / "tests" / "distributed_worker.py"), str(tmp), *FLAGS, "--output_dir", str(tmp / "model"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
    return tmp, ranks, result


def test_both_ranks_finish_with_identical_weights(two_ranks):
    _, ranks, _ = two_ranks
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]


def test_processes_without_a_process_group_are_an_error(tmp_path):
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "hf_spam.train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "ConfigError: launched as 2 processes" in result.stderr and "--use_cpu true" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_world_size_two_is_logged(two_ranks):
    _, _, result = two_ranks
    assert "world size 2" in result.stderr


def test_evaluation_counts_every_example_once(two_ranks):
    _, ranks, _ = two_ranks
    for rank in ranks:
        for split, n in {"train": 914, "validation": 130, "test": 262}.items():
            assert rank["metrics"][split]["examples"] == n
            assert sum(map(sum, rank["metrics"][split]["confusion_matrix"])) == n
    scores = ("loss", "accuracy", "precision", "recall", "f1", "confusion_matrix")  # not the per-rank timings
    for split in ("train", "validation", "test"):
        assert {k: ranks[0]["metrics"][split][k] for k in scores} == {k: ranks[1]["metrics"][split][k] for k in scores}


def test_one_output_directory_is_written_by_the_main_process(two_ranks):
    tmp, _, result = two_ranks
    assert sorted(p.name for p in tmp.iterdir() if p.is_dir()) == ["cache", "model"]
    model_dir = tmp / "model"
    for name in ("model.safetensors", "config.json", "metrics.json", "README.md", "loss.png"):
        assert (model_dir / name).is_file(), name
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # The trunk pass ran once for the machine: the main process computed and cached each split, and the
    # other process, let through after it (main_process_first), loaded them.
    for split in ("train", "validation", "test"):
        assert result.stderr.count(f"Frozen trunk states for {split} cached at") == 1
        assert result.stderr.count(f"Frozen trunk states for {split} loaded from") == 1

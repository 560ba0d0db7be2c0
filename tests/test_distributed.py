"""Two processes on the CPU (gloo), launched as the README says: `accelerate launch` with the multi-process
launcher and `--use_cpu true` (accelerate's own `--cpu` launcher starts one process without MPI, which hf_spam
refuses with what to run instead). torchrun, which that launcher wraps, works the same way.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_spam.deploy.loadtest import free_port

from .conftest import ROOT

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))

# last_block: the frozen-trunk cache is on, so DDP trains the tail; rank 1 logs at INFO too.
FLAGS = [
    "--config", str(ROOT / "configs" / "tiny.yaml"), "--trainable", "last_block", "--num_train_epochs", "2",
    "--disable_tqdm", "true", "--log_level_replica", "info", "--use_cpu", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    command = [
        ACCELERATE, "launch", "--config_file", str(ROOT / "configs" / "accelerate" / "multi_cpu.yaml"),
        "--main_process_port", str(free_port()),
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


@pytest.mark.slow  # over 15 s on 2 cores: `make test-all`
def test_processes_without_a_process_group_are_an_error(tmp_path):
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "hf_spam.train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "ConfigError: launched as 2 processes" in result.stderr and "--use_cpu true" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_world_size_two_is_logged_and_accelerate_prints_no_defaults_notice(two_ranks):
    _, _, result = two_ranks
    assert "world size 2" in result.stderr
    assert "had defaults used instead" not in result.stderr


@pytest.mark.slow
def test_the_readme_command_line_runs_two_processes_too(tmp_path):
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [
        ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
        str(ROOT / "tests" / "distributed_worker.py"), str(tmp_path), *FLAGS, "--num_train_epochs", "1",
        "--output_dir", str(tmp_path / "model"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["world_size"] for r in (0, 1)] == [2, 2]


def test_accelerate_cpu_launcher_with_several_processes_says_what_to_run(tmp_path):
    env = {**os.environ, "HF_SPAM_CACHE": str(tmp_path / "cache")}
    command = [
        ACCELERATE, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--quiet", "-m", "hf_spam.train", "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    assert "starts a single process" in result.stderr and "--multi_gpu --num_processes N" in result.stderr
    assert not (tmp_path / "out").exists()


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


def test_use_the_cores_gives_a_launched_cpu_process_its_share(monkeypatch):
    import torch

    from hf_spam.training.launch import use_the_cores

    before = torch.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    try:
        torch.set_num_threads(1)
        use_the_cores("cpu")  # not launched by accelerate: a user's one thread is theirs
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        use_the_cores("cuda")
        assert torch.get_num_threads() == 1
        use_the_cores("cpu")
        assert torch.get_num_threads() == 4  # 8 cores / 2 processes
        torch.set_num_threads(3)
        use_the_cores("cpu")  # a thread count asked for (--num_cpu_threads_per_process 3) stays
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to show more than 1 thread")
def test_bare_accelerate_launch_uses_every_core_for_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["HF_SPAM_CACHE"] = str(tmp_path / "cache")
    env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU launch: with a GPU visible, accelerate leaves OMP_NUM_THREADS unset
    command = [
        ACCELERATE, "launch", str(ROOT / "hf_spam" / "train.py"), "--config", str(ROOT / "configs" / "tiny.yaml"),
        "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
        "--evaluate_held_out", "false", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    cores = len(os.sched_getaffinity(0))
    assert f"accelerate launch gave this process 1 torch thread (OMP_NUM_THREADS=1); using {cores}" in result.stderr
    assert f"torch threads {cores}" in result.stderr

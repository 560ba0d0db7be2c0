"""The `hf-spam` command itself: its version, a help that answers at once, and no abbreviated flags."""

import subprocess
import sys
import time

from hf_spam.cli import main
from hf_spam.training.run import run as train_run

from .conftest import ROOT


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"hf-spam {version('hf_spam')}"


def test_help_answers_without_importing_the_heavy_libraries():
    code = "import sys, time; t = time.perf_counter(); from hf_spam.cli import build_parser; build_parser()"
    code += "; print(time.perf_counter() - t, *sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1:] == []  # none of torch, transformers, datasets
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hf_spam.cli", "--help"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 0 and "usage: hf-spam" in result.stdout
    print(f"hf-spam --help took {seconds:.3f} s in a subprocess (parser alone {float(out[0]):.3f} s)")


def test_an_abbreviated_training_flag_is_an_error(tmp_path, capsys):
    argv = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epoch", "1"]
    assert train_run([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert "unrecognized arguments: --num_train_epoch 1" in capsys.readouterr().err


def test_training_into_a_pipe_writes_no_carriage_returns_and_says_where_it_saved(tmp_path):
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1", "--output_dir", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "train", *argv], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout and "\r" not in result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"saved to {out}; try: hf-spam predict --model {out} ")

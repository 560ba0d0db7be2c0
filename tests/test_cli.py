"""The `hf-spam` command itself: its version, a help that answers at once, and no abbreviated flags."""

import io
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


def test_train_device_flag_means_what_it_says(monkeypatch):
    import torch

    from hf_spam.training.arguments import ConfigError, parse_args

    tiny = ["--config", str(ROOT / "configs" / "tiny.yaml")]
    assert parse_args([*tiny, "--device", "cpu"])[2].device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in [
        ("cuda", "--device cuda: torch"),
        ("cuda:1", "pick one with CUDA_VISIBLE_DEVICES=1"),
        ("tpu", "--device: cpu, cuda or mps, got 'tpu'"),
    ]:
        try:
            parse_args([*tiny, "--device", device])
        except ConfigError as err:
            assert message in str(err)
        else:
            raise AssertionError(f"--device {device} was accepted on a machine without it")


def test_predict_and_serve_refuse_a_device_this_machine_lacks_in_one_line(tmp_path, tiny_model, tokenizer, capsys):
    import torch

    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "model"), "--device", missing, "hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"device {missing}: torch" in err
    assert main(["serve", "--model", str(tmp_path / "model"), "--device", missing, "--port", "1"]) == 2
    assert f"device {missing}: torch" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "model"), "--backend", "onnxruntime", "--device", "cuda"]) == 2
    assert "the onnxruntime backend runs on the CPU" in capsys.readouterr().err


def stderr_on_a_terminal(argv: list[str], stdin: str) -> tuple[int, str, str]:
    """Run `hf-spam ARGV` with its stderr on a pseudo-terminal (as in a shell) and stdout in a pipe."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    import threading

    leader, follower = pty.openpty()
    # 24 x 120, as a terminal window: a new pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    seen = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the follower closed: the process has ended
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", *argv], input=stdin, stdout=subprocess.PIPE, stderr=follower,
        text=True, timeout=300,
    )  # fmt: skip
    os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    return process.returncode, process.stdout, seen.decode("utf-8", "replace")


def test_predict_shows_progress_on_a_terminal_only(tmp_path, tiny_model, tokenizer, capsys, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    lines = "".join(f"message number {i} for you\n" for i in range(300)) + "message number 1 for you\n"
    argv = ["predict", "--model", str(tmp_path / "model"), "--batch_size", "16"]
    code, out, terminal = stderr_on_a_terminal(argv, lines)
    assert code == 0 and len(out.splitlines()) == 301
    assert "Classifying" in terminal and "301msg" in terminal.replace(" ", "")  # every line counted, repeats too
    capsys.readouterr()
    for extra, terminal in (([], False), (["--disable_tqdm"], True)):  # a pipe; a terminal, told not to
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines.encode())))
        monkeypatch.setattr(sys.stderr, "isatty", lambda terminal=terminal: terminal)
        assert main([*argv, *extra]) == 0
        printed = capsys.readouterr()
        assert len(printed.out.splitlines()) == 301 and "Classifying" not in printed.err and "\r" not in printed.err

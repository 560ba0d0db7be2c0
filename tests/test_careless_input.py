"""What a careless user types, command by command: one line saying what is wrong, exit code 2, nothing written.

One test per class of input (wrong types, out-of-range numbers, paths that are missing or the wrong kind,
data with too little in it, model settings that describe no model), each over the commands it applies to.
"""

import pytest

from hf_spam.cli import main as cli_main

from .conftest import ROOT

TINY = ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1"]


@pytest.fixture
def model_dir(tmp_path, tiny_model, tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def run(argv, capsys, caplog) -> tuple[int, list[str]]:
    """Exit code and the lines on stderr (where train logs its error too)."""
    try:
        code = cli_main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_line(code, lines, *words):
    assert code == 2, lines
    assert not any("Traceback" in line for line in lines)
    # Progress lines before it (INFO logging, "[bench] ...") may come first; the error itself is one line.
    error_lines = [line for line in lines if "error" in line.lower() or line.startswith("hf-spam")]
    assert len(error_lines) == 1, lines
    for word in words:
        assert word in error_lines[0], error_lines[0]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--num_train_epochs", "abc"], ["--num_train_epochs", "abc"]),
        (["--trainable", "everything"], ["--trainable", "everything"]),
        (["--pooling", "max"], ["--pooling"]),
        (["--no_such_flag", "1"], ["--no_such_flag"]),
    ],
)
def test_train_flags_of_the_wrong_type_or_unknown_are_one_line_without_the_usage(
    flags, words, tmp_path, capsys, caplog
):
    code, lines = run([*TINY, "--output_dir", str(tmp_path / "out"), *flags], capsys, caplog)
    assert_one_line(code, lines, *words)
    assert not any(len(line) > 2000 for line in lines)  # no hundred-flag usage text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", "-1"], ["seed"]),
        (["--dropout", "1.5"], ["dropout"]),
        (["--lora_r", "0"], ["lora_r"]),
        (["--max_length", "0"], ["max_length"]),
        (["--max_length", "-5"], ["max_length"]),
        (["--trunk_batch_size", "0"], ["trunk_batch_size"]),
        (["--download_timeout", "0"], ["download_timeout"]),
        (["--split_ratios", "-0.1", "0.6", "0.5"], ["split_ratios"]),
        (["--learning_rate", "-1"], ["learning_rate"]),
        (["--per_device_train_batch_size", "0"], ["per_device_train_batch_size"]),
        # NaN and infinity pass `x < 0`-style checks: refused wherever a number is read
        (["--class_weights", "nan,1"], ["class_weights"]),
        (["--weight_decay", "nan"], ["weight_decay", "finite"]),
        (["--split_ratios", "nan", "0.1", "0.2"], ["split_ratios", "finite"]),
        (["--download_timeout", "inf"], ["download_timeout", "finite"]),
        (["--lora_alpha", "inf"], ["lora_alpha", "finite"]),
    ],
)
def test_train_numbers_out_of_range_are_refused_before_anything_runs(flags, words, tmp_path, capsys, caplog):
    code, lines = run([*TINY, "--output_dir", str(tmp_path / "out"), *flags], capsys, caplog)
    assert_one_line(code, lines, *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["predict", "--model", "{model}", "--batch_size", "0", "hi"], ["--batch_size", "at least 1"]),
        (["predict", "--model", "{model}", "--chunk_size", "-3", "hi"], ["--chunk_size"]),
        (["serve", "--model", "{model}", "--port", "70000"], ["--port", "65535"]),
        (["serve", "--model", "{model}", "--max_texts", "0"], ["--max_texts"]),
        (["loadtest", "--model", "{model}", "--clients", "0"], ["--clients"]),
        (["loadtest", "--model", "{model}", "--seconds", "-1"], ["--seconds"]),
        (["bench", "--predict", "{model}", "--messages", "0"], ["--messages"]),
        (["data", "--download_timeout", "-1"], ["--download_timeout"]),
        (["export", "{model}", "--opset", "5"], ["opset", "18"]),
        (["experiments", "--quick", "--rows", "0"], ["--rows"]),
        (["serve", "--model", "{model}", "--batch_wait_ms", "inf"], ["--batch_wait_ms", "finite"]),
        (["serve", "--model", "{model}", "--batch_wait_ms", "nan"], ["--batch_wait_ms", "finite"]),
        (["export", "{model}", "--max_accuracy_drop", "nan"], ["--max_accuracy_drop", "finite"]),
        (["predict", "--model", "{model}", "--threshold", "nan", "hi"], ["--threshold", "finite"]),
        (["data", "--split_ratios", "nan", "0.5", "0.5"], ["--split_ratios", "finite"]),
    ],
)
def test_other_commands_refuse_out_of_range_numbers(argv, words, model_dir, capsys, caplog):
    code, lines = run([a.format(model=model_dir) for a in argv], capsys, caplog)
    assert_one_line(code, lines, *words)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["predict", "--model", "/no/such/model", "hi"], ["/no/such/model", "no such directory"]),
        (["predict", "--model", "{file}", "hi"], ["is a file"]),
        (["export", "/no/such/model"], ["no such directory"]),
        (["bench", "--predict", "/no/such/model"], ["no such directory"]),
        (["serve", "--model", "./missing-model"], ["no such directory"]),
        (["push", "/no/such/model", "--repo-id", "user/name"], ["not a directory"]),
        (
            ["experiments", "--rows", "1", "--model", "/no/such/model", "--output_dir", "{tmp}/exp"],
            ["no such directory"],
        ),
    ],
)
def test_model_paths_that_are_missing_or_files_are_named(argv, words, tmp_path, capsys, caplog):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(file=tmp_path / "afile", tmp=tmp_path) for a in argv]
    code, lines = run(argv, capsys, caplog)
    assert_one_line(code, lines, *words)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--config", "{tmp}"], ["is a directory"]),
        (["--model_name_or_path", "/no/such/model", "--init", "pretrained"], ["no such directory"]),
        (["--model_name_or_path", "{tmp}/afile", "--init", "pretrained"], ["is a file"]),
        (["--output_dir", "{tmp}/afile"], ["output_dir", "is a file"]),
        (["--train_file", "{tmp}"], ["is a directory"]),
        (["--train_file", "{tmp}/empty.csv"], ["empty.csv", "empty"]),
        (["--train_file", "{tmp}/header.csv"], ["header.csv", "no messages"]),
        (["--train_file", "{tmp}/one_label.csv"], ["one_label.csv", "1 label"]),
        (["--train_file", "{tmp}/six.csv"], ["validation split holds no"]),
        (["--resume_from_checkpoint", "{tmp}/nothing"], ["resume_from_checkpoint"]),
    ],
)
def test_train_paths_and_data_that_cannot_work(flags, words, tmp_path, capsys, caplog):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    (tmp_path / "one_label.csv").write_text("text,label\n" + "".join(f"message {i},ham\n" for i in range(50)))
    (tmp_path / "six.csv").write_text(
        "text,label\n" + "".join(f"message {i},{['ham', 'spam'][i % 2]}\n" for i in range(6))
    )
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = [*TINY, *(["--output_dir", str(tmp_path / "out")] if "--output_dir" not in flags else []), *flags]
    if "--config" in flags:
        argv = ["train", *flags]
    code, lines = run(argv, capsys, caplog)
    assert_one_line(code, lines, *words)
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "overrides, words",
    [
        ("n_layer=abc,n_head=2,n_embd=32", ["n_layer", "abc"]),
        ("n_layer=2,n_head=3,n_embd=32", ["multiple of the 3 heads"]),
    ],
)
def test_config_overrides_that_describe_no_model(overrides, words, tmp_path, capsys, caplog):
    code, lines = run([*TINY, "--output_dir", str(tmp_path / "out"), "--config_overrides", overrides], capsys, caplog)
    assert_one_line(code, lines, *words)


def test_bench_latency_without_an_export_is_one_line(model_dir, capsys, caplog):
    code, lines = run(["bench", "--latency", model_dir], capsys, caplog)
    assert_one_line(code, lines, "no onnx/model.onnx", "hf-spam export")

"""`hf-spam experiments --quick`: each row a training run with its one setting changed, the table beside the book's."""

import json

import pytest

from hf_spam.cli import main as cli_main
from hf_spam.reports.experiments import ROWS, parse_rows, row_flags


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments")
    code = cli_main(["experiments", "--quick", "--rows", "1,2,11,6,13", "--output_dir", str(out)])
    return out, code, json.loads((out / "experiments.json").read_text())


def test_rows_run_and_the_table_lists_them_by_number(table, capsys):
    out, code, report = table
    assert code == 0
    rows = {r["number"]: r for r in report["rows"]}
    assert list(rows) == [1, 2, 6, 11, 13]
    assert [rows[n]["status"] for n in rows] == ["ran", "ran", "not_run", "ran", "same_as"]
    assert rows[13]["same_as"] == 1 and "last real token" in rows[13]["reason"]
    assert "--model gpt2" in rows[6]["reason"]
    for n in (1, 2, 11):
        r = rows[n]
        assert 0 <= r["test"] <= 1 and r["seconds"] > 0 and r["book"]["test"] == ROWS[n - 1].book[2]
        metrics = json.loads((out / f"row-{n}" / "metrics.json").read_text())["metrics"]
        assert r["test"] == metrics["test"]["accuracy"] and r["train"] == metrics["train"]["accuracy"]


def test_each_row_changes_only_its_setting(table):
    out, _, _ = table
    config = {n: json.loads((out / f"row-{n}" / "config.json").read_text()) for n in (1, 2, 11)}
    assert config[2]["hf_spam_pooling"] == "first" and "hf_spam_pooling" not in config[1]
    assert not (out / "row-11" / "adapter_config.json").exists()  # LoRA: merged into a plain model
    card = {n: json.loads((out / f"row-{n}" / "metrics.json").read_text())["model_card"] for n in (1, 11)}
    assert card[1]["trainable"] == "last_block" and card[11]["trainable"] == "lora"
    assert card[1]["padding"] == "max_length"
    flags, _ = row_flags(ROWS[14], "smollm2-135m", quick=False, dedupe=False)
    assert flags[-4:] == ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "8"]
    assert flags[flags.index("--dedupe") + 1] == "false"


def test_the_markdown_states_the_differences_from_the_book(table):
    out, _, _ = table
    text = (out / "experiments.md").read_text()
    assert "Base weights" in text and "duplicate messages are dropped" in text
    assert "| 13 | padded to the model context | = row 1 |" in text
    assert "| 6 | gpt2-medium, last_block | not run |" in text and "84.67" in text


@pytest.mark.parametrize("rows", ["0", "1,x", "20", ""])
def test_bad_row_lists_are_refused(rows):
    with pytest.raises(ValueError, match="--rows"):
        parse_rows(rows or ",")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["experiments", "--quick", "--rows", rows or ","])
    assert exit_info.value.code == 2

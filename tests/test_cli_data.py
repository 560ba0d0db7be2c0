"""`hf-spam data`: one JSON report on stdout, errors as `path:line: reason` with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from hf_spam.cli import main
from hf_spam.data.collection import SHA256

REPORT_KEYS = {"source", "sha256", "rows", "labels", "duplicates_removed", "splits", "split_labels"}


def run_data(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["data", "--data_urls", *args])  # no URL: never download
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_spam.cli", "data", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


@pytest.fixture
def malformed_file(tmp_path):
    lines = [f"ham\tham message {i}" for i in range(20)] + [f"spam\tspam message {i}" for i in range(20)]
    lines.insert(5, "ham this line has no tab")
    path = tmp_path / "malformed.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_data_prints_one_json_report(capsys, tmp_path):
    code = main(["data", "--cache_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)  # fails if stdout holds anything but one JSON document
    assert isinstance(report, dict)
    assert REPORT_KEYS <= set(report)
    assert report["source"] == "bundled"
    assert report["sha256"] == SHA256
    assert report["rows"] == 5574
    assert report["labels"] == {"ham": 4827, "spam": 747}
    assert report["duplicates_removed"] == 403
    assert report["splits"] == {"train": 914, "validation": 130, "test": 262}
    for name, size in report["splits"].items():
        assert sum(report["split_labels"][name].values()) == size


def test_no_dedupe_gives_the_books_sizes(capsys, tmp_path):
    code, report, _ = run_data(capsys, "--cache_dir", str(tmp_path), "--no-dedupe")
    assert code == 0
    assert report["duplicates_removed"] == 0
    assert report["labels"] == {"ham": 4827, "spam": 747}
    assert report["splits"] == {"train": 1045, "validation": 149, "test": 300}


def test_balance_none_keeps_all_deduplicated_rows(capsys, tmp_path):
    code, report, _ = run_data(capsys, "--cache_dir", str(tmp_path), "--balance", "none")
    assert code == 0
    assert report["balance"] == "none"
    assert report["duplicates_removed"] == 403
    assert sum(report["splits"].values()) == 5171
    for name, size in report["splits"].items():
        counts = report["split_labels"][name]
        assert counts["ham"] + counts["spam"] == size
        assert counts["ham"] > 4 * counts["spam"]  # not undersampled: ham stays the large majority


def test_malformed_data_file_exits_2_with_path_and_line(capsys, malformed_file):
    code, _, captured = run_data(capsys, "--data_file", str(malformed_file))
    assert code == 2
    assert captured.out == ""
    assert f"{malformed_file}:6: no tab" in captured.err


def test_lenient_run_succeeds_and_reports_skipped_lines(capsys, malformed_file):
    code, report, _ = run_data(capsys, "--data_file", str(malformed_file), "--lenient")
    assert code == 0
    assert report["source"] == "data_file"
    assert report["skipped"] == {"no_tab": 1}
    assert report["rows"] == 40
    assert report["labels"] == {"ham": 20, "spam": 20}


def test_missing_data_file_exits_2_naming_it(capsys, tmp_path):
    missing = tmp_path / "missing.tsv"
    code, _, captured = run_data(capsys, "--data_file", str(missing))
    assert code == 2
    assert str(missing) in captured.err


def test_subprocess_prints_only_the_json_report_on_stdout(tmp_path):
    result = run_cli("--cache_dir", str(tmp_path), "--data_urls", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report)
    assert report["labels"] == {"ham": 4827, "spam": 747}
    assert report["duplicates_removed"] == 403
    assert report["splits"] == {"train": 914, "validation": 130, "test": 262}


def test_subprocess_exit_code_is_2_for_a_malformed_file(tmp_path, malformed_file):
    result = run_cli("--data_file", str(malformed_file), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{malformed_file}:6: no tab" in result.stderr


def test_tfidf_baseline_scores_every_split_of_the_same_data(canonical_file):
    from hf_spam.data.splits import load_sms_spam
    from hf_spam.evaluation.baseline import tfidf_baseline

    splits, report = load_sms_spam(data_file=str(canonical_file))
    results = tfidf_baseline(splits)
    for name, size in report.splits.items():
        assert results[name]["examples"] == size == sum(map(sum, results[name]["confusion_matrix"]))
    assert results["test"]["accuracy"] > 0.9  # a strong baseline: character n-grams catch most spam

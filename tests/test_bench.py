"""`hf-spam bench --quick`: every variant runs, and the report's ratios are computed from what it measured."""

import statistics

import pytest

from hf_spam.bench import bench

pytestmark = pytest.mark.slow  # about a minute and a half: five trainings and three prediction passes


def test_quick_bench_reports_what_it_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = bench(quick=True, workdir=tmp_path, repeats=2)

    assert set(report["variants"]) == {"a_book", "b_dynamic", "c_hf_spam", "d_floor"}
    pairs = report["c_over_d_pairs"]
    assert len(pairs) == 2
    assert pairs[0]["c_seconds"] == report["variants"]["c_hf_spam"]["seconds"]
    assert pairs[0]["d_seconds"] == report["variants"]["d_floor"]["seconds"]
    for pair in pairs:
        assert pair["c_over_d"] == round(pair["c_seconds"] / pair["d_seconds"], 2)
    assert report["ratios"]["c_over_d"] == round(statistics.median(p["c_over_d"] for p in pairs), 2)
    a_seconds = report["variants"]["a_book"]["seconds"]
    median_c = statistics.median(p["c_seconds"] for p in pairs)
    assert report["ratios"]["a_over_c"] == round(a_seconds / median_c, 2)
    # (b) and (c) train the same model on the same batches: the same answers on the test split.
    assert report["b_vs_c"]["identical_labels"] == report["b_vs_c"]["test_messages"]
    predict = report["predict"]
    assert predict["messages"] == 300
    assert set(predict["rows"]) == {
        "torch_float32", "torch_bfloat16", "onnxruntime_float32", "onnxruntime_int8",
        "pipeline_one_at_a_time", "pipeline_batch_64",
    }  # fmt: skip
    rows = predict["rows"]
    assert rows["torch_float32"]["same_label_as_torch_float32"] == 300
    # Exact backends: the same labels as torch float32, hence the same test accuracy.
    for name in ("onnxruntime_float32", "pipeline_one_at_a_time", "pipeline_batch_64"):
        assert rows[name]["same_label_as_torch_float32"] == 300, name
        assert rows[name]["test_accuracy"] == rows["torch_float32"]["test_accuracy"], name
    assert predict["onnx_verification"]["float32"]["max_score_difference"] <= 1e-4
    assert rows["pipeline_one_at_a_time"]["speedup_over_pipeline_one_at_a_time"] == 1.0

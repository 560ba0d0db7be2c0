"""`hf-spam bench --quick`: every variant runs, and the report's ratios are computed from what it measured."""

import statistics

import pytest

from hf_spam.models.loading import cpu_has_bfloat16
from hf_spam.reports.bench import bench
from hf_spam.reports.bench_predict import NO_NATIVE_BFLOAT16, PREDICTION_BACKENDS

from .conftest import ROOT


@pytest.mark.slow  # about a minute and a half: five trainings and the prediction rows
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
    # Every row, but bfloat16 only where the CPU has bfloat16 instructions (and the report says why not).
    expected = [name for name in PREDICTION_BACKENDS if name != "torch_bfloat16" or cpu_has_bfloat16()]
    assert list(predict["rows"]) == expected
    assert predict["skipped"] == ({} if cpu_has_bfloat16() else {"torch_bfloat16": NO_NATIVE_BFLOAT16})
    rates = predict["matmul_rates"]
    assert rates["onnxruntime_int8_gops"] > 0 and rates["torch_float32_gflops"] > 0
    rows = predict["rows"]
    assert rows["torch_float32"]["same_label_as_torch_float32"] == 300
    # Exact backends: the same labels as torch float32, hence the same test accuracy.
    for name in ("onnxruntime_float32", "pipeline_one_at_a_time", "pipeline_batch_64"):
        assert rows[name]["same_label_as_torch_float32"] == 300, name
        assert rows[name]["test_accuracy"] == rows["torch_float32"]["test_accuracy"], name
    assert predict["onnx_verification"]["float32"]["max_score_difference"] <= 1e-4
    assert rows["pipeline_one_at_a_time"]["speedup_over_pipeline_one_at_a_time"] == 1.0


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n", False),  # AVX2 only (AMD EPYC Zen 1 here)
        ("flags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n", True),
        ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm
        ("Features\t: fp asimd\n", False),
        ("", True),  # nothing reported: run the row and let it show
    ],
)
def test_bfloat16_row_runs_only_where_the_cpu_has_bfloat16_instructions(cpuinfo, native):
    assert cpu_has_bfloat16(cpuinfo) is native


def test_matmul_rates_compare_float32_and_int8_on_one_product():
    from hf_spam.reports.bench_predict import matmul_rates

    pytest.importorskip("onnxruntime")
    rates = matmul_rates(rows=64, inner=32, columns=48, repeats=2)
    assert rates["shape"] == [64, 32, 48]
    assert min(rates["torch_float32_gflops"], rates["onnxruntime_float32_gflops"], rates["onnxruntime_int8_gops"]) > 0
    assert rates["int8_over_float32"] == round(rates["onnxruntime_int8_gops"] / rates["onnxruntime_float32_gflops"], 2)


def test_an_unknown_prediction_row_is_one_line_and_exit_2(capsys):
    from hf_spam.reports.bench import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--predict", "outputs/x", "--backends", "torch_float32,tensorrt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "tensorrt" in err and "onnxruntime_int8" in err


def test_without_the_onnx_extra_the_prediction_bench_says_so_before_any_row(tmp_path, monkeypatch, capsys):
    import sys

    from hf_spam.reports.bench import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["--predict", str(tmp_path), "--backends", "torch_float32"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "needs the onnx extra" in err


@pytest.mark.slow  # a training, an export and three prediction passes
def test_prediction_rows_asked_for_run_and_the_others_are_said_skipped(tmp_path):
    from hf_spam.reports.bench_predict import prediction_backends
    from hf_spam.training.run import main

    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    main(
        ["--config", str(ROOT / "configs" / "tiny.yaml"), "--output_dir", str(out), "--num_train_epochs", "1",
         "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    )  # fmt: skip
    report = prediction_backends(str(out), 30, ["pipeline_one_at_a_time", "onnxruntime_int8"])
    assert list(report["rows"]) == ["onnxruntime_int8", "pipeline_one_at_a_time"]  # the table's own order
    assert report["messages"] == 30 and report["onnx_verification"]["int8"]["file"] == "model_quantized.onnx"
    assert report["rows"]["pipeline_one_at_a_time"]["speedup_over_pipeline_one_at_a_time"] == 1.0
    # No torch float32 row: nothing to agree with.
    assert all("same_label_as_torch_float32" not in row for row in report["rows"].values())
    assert set(report["skipped"]) == {"torch_float32", "torch_bfloat16", "onnxruntime_float32", "pipeline_batch_64"}
    assert report["skipped"]["torch_float32"] == "not asked for"


@pytest.mark.slow  # a training, a reference training and servers started
def test_a_reference_model_and_latency_rows_are_measured_in_the_same_run(tmp_path):
    """`--reference`: the full-depth model's pipeline() row runs beside a shallow model's rows, and speedups are
    over it; `--latency`: p50 <= p99 for the API and both server settings."""
    from hf_spam.reports.bench_predict import latency, prediction_backends
    from hf_spam.training.run import main

    flags = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--num_train_epochs", "1", "--save_strategy", "no",
             "--report_to", "none", "--disable_tqdm", "true", "--evaluate_held_out", "false"]  # fmt: skip
    main([*flags, "--output_dir", str(tmp_path / "full")])
    main([*flags, "--output_dir", str(tmp_path / "short"), "--keep_layers", "1"])
    report = prediction_backends(str(tmp_path / "short"), 20, ["torch_float32"], reference=str(tmp_path / "full"))
    assert list(report["rows"]) == ["reference_pipeline_one_at_a_time", "reference_torch_float32", "torch_float32"]
    assert report["rows"]["reference_pipeline_one_at_a_time"]["speedup_over_pipeline_one_at_a_time"] == 1.0
    assert report["speedups_over"].startswith("reference_pipeline_one_at_a_time")
    timed = latency(str(tmp_path / "short"), requests=5, backends=("torch_float32",))
    for row in timed["rows"]["torch_float32"].values():
        assert 0 < row["p50"] <= row["p99"]

"""`hf-spam score` on a local Ray instance: the same probabilities as `SpamClassifier` in-process, refused rows
kept and counted, and a second run that skips the shards already written."""

import json

import numpy as np
import pytest

pytest.importorskip("ray")
pd = pytest.importorskip("pandas")

from hf_spam.deploy.batch_score import main as score_main  # noqa: E402
from hf_spam.deploy.classifier import load_classifier  # noqa: E402

from .test_serve import saved  # noqa: E402, F401  (a fixture)


@pytest.fixture
def inputs(tmp_path, canonical_file):
    texts = [line.split("\t", 1)[1] for line in canonical_file.read_text(encoding="utf-8").splitlines()[:260]]
    folder = tmp_path / "in"
    folder.mkdir()
    frame = pd.DataFrame({"msg_id": [f"m{i}" for i in range(len(texts))], "text": texts})
    frame.iloc[:120].to_parquet(folder / "a.parquet")
    bad = frame.iloc[120:200].astype(object).reset_index(drop=True)
    bad.loc[3, "text"], bad.loc[4, "text"], bad.loc[5, "text"] = None, "   ", "x" * 1500
    bad.to_parquet(folder / "b.parquet")
    frame.iloc[200:].to_csv(folder / "c.csv", index=False)
    return folder, frame, bad


def test_score_gives_the_classifiers_probabilities_refuses_bad_rows_and_resumes(saved, inputs, tmp_path):  # noqa: F811
    folder, frame, bad = inputs
    out = tmp_path / "out"
    args = ["--model", saved, "--input", str(folder), "--output", str(out), "--id_column", "msg_id",
            "--max_text_chars", "1000", "--num_cpus", "2", "--block_rows", "50"]  # fmt: skip
    assert score_main(args) == 0
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["rows"] == 260 and summary["shards_written"] == 3
    assert summary["refused"] == {"no text": 1, "empty text": 1, "over 1,000 characters": 1}

    classifier = load_classifier(saved, device="cpu")  # score runs on the CPU unless --device cuda
    for shard, rows in (("a.parquet", frame.iloc[:120]), ("b.parquet", bad), ("c.csv", frame.iloc[200:])):
        got = pd.read_parquet(out / f"{shard}.parquet")
        assert got["row"].tolist() == list(range(len(rows))) and got["id"].tolist() == rows["msg_id"].tolist()
        scored = got["refused"].isna().to_numpy()
        expected = classifier.predict_proba([t for t, ok in zip(rows["text"], scored, strict=True) if ok])
        np.testing.assert_allclose(got.loc[scored, ["p_ham", "p_spam"]].to_numpy(), expected, rtol=0, atol=1e-6)
        assert got.loc[scored, "label"].tolist() == classifier.predict(
            [t for t, ok in zip(rows["text"], scored, strict=True) if ok]
        )
        assert got.loc[~scored, "label"].isna().all() and got.loc[~scored, "p_spam"].isna().all()
    assert pd.read_parquet(out / "b.parquet.parquet")["refused"].iloc[3:6].tolist() == [
        "no text", "empty text", "over 1,000 characters"
    ]  # fmt: skip

    # Killed while c.csv was being written: its shard is a .partial; the others are left as they are.
    kept = (out / "a.parquet.parquet").stat().st_mtime_ns
    (out / "c.csv.parquet").rename(out / "c.csv.parquet.partial")
    assert score_main(args) == 0
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["shards_skipped"] == 2 and summary["shards_written"] == 1 and summary["rows"] == 60
    assert (out / "a.parquet.parquet").stat().st_mtime_ns == kept and not (out / "c.csv.parquet.partial").exists()


def test_score_names_a_missing_input_in_one_line(saved, tmp_path, capsys):  # noqa: F811
    assert (
        score_main(["--model", saved, "--input", str(tmp_path / "nothing*.parquet"), "--output", str(tmp_path)]) == 2
    )
    assert "no .parquet, .csv or .jsonl file there" in capsys.readouterr().err


def test_score_refuses_gpus_its_ray_cluster_lacks_instead_of_waiting(saved, inputs, tmp_path, capsys):  # noqa: F811
    import torch

    actors = torch.cuda.device_count() + 1  # one GPU more than this machine has
    argv = ["--model", saved, "--input", str(inputs[0]), "--output", str(tmp_path / "out"), "--num_cpus", "2"]
    assert score_main([*argv, "--device", "cuda", "--actors", str(actors)]) == 2
    assert f"{actors} actor(s) need a GPU each; the Ray cluster has" in capsys.readouterr().err
    assert score_main([*argv, "--device", "cuda", "--backend", "onnxruntime"]) == 2
    assert "the onnxruntime backend runs on the CPU" in capsys.readouterr().err

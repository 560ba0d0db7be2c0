"""`push_output_dir` against a fake Hub on 127.0.0.1: what is uploaded, the token, and the round trip back."""

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_spam.deploy.hub import files_to_push, push_output_dir
from hf_spam.deploy.spam_classifier import BOOK_EXAMPLES
from hf_spam.evaluation.model_card import render_model_card
from hf_spam.models.loading import load_model

from .conftest import TINY_OVERRIDES
from .fake_hub import FakeHub
from .test_model_card import gpt2_small_card

CANARY = f"hf_canary_{secrets.token_hex(16)}"
LOCAL_DATA = "/home/someone/projects/secret-carrier/train.csv"
REPO_ID = "someone/tiny-sms-spam"
PUSHED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
          "metrics.json", "loss.png"}  # fmt: skip
DECOYS = ["training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
          "all_results.json", "checkpoint-1/model.safetensors", "checkpoint-1/config.json", "checkpoint-1/loss.png",
          "runs/events.out.tfevents"]  # fmt: skip

# Each runs in a fresh interpreter whose huggingface_hub reads HF_ENDPOINT, HF_TOKEN and HF_HOME at import,
# with every logger at DEBUG (and HF_DEBUG's curl lines) so that the token would show if anything logged it.
PUSH = """
import logging, sys
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
from hf_spam.deploy.hub import push_output_dir
print(push_output_dir(sys.argv[1], sys.argv[2], private=True))
"""
DOWNLOAD = """
import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], local_dir=sys.argv[2]))
"""


def hub_env(hub: FakeHub, home, token: str | None = CANARY, **extra: str) -> dict[str, str]:
    """The environment of a client of `hub`: none of the caller's HF_* settings, no saved token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_HUB_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_DEBUG="1", **extra)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run(script: str, *args, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, tokenizer):
    """What `hf-spam train` leaves behind: the model files, and training leftovers that must stay local."""
    out = tmp_path_factory.mktemp("output")
    load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # A run on a file of one's own, saved under a home directory: where it lay must stay on this machine.
    card = dataclasses.replace(gpt2_small_card(), model_id=None, output_dir=str(out))
    (out / "README.md").write_text(render_model_card(card) + f"\nTrained on {LOCAL_DATA}.\n")
    metrics = {"metrics": card.metrics, "data": {"path": f"train: {LOCAL_DATA}"}, "model_card": {"output_dir": str(out)},
               "base_model": {"loaded_from": "/home/someone/.cache/hf_spam/gguf/b179c95", "url": "https://x.example/a/b"}}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for name in DECOYS:
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(b"not for the Hub")
    # TrainingArguments pickles `hub_token` into training_args.bin: one more reason it must never be pushed.
    (out / "training_args.bin").write_bytes(f"hub_token={CANARY}".encode())
    return out


@pytest.fixture(scope="module")
def pushed(output_dir, tmp_path_factory):
    with FakeHub(tokens={CANARY}) as hub:
        result = run(PUSH, output_dir, REPO_ID, env=hub_env(hub, tmp_path_factory.mktemp("home")))
        yield hub, result


def test_files_to_push_are_the_model_files_only(output_dir):
    assert set(files_to_push(output_dir)) == PUSHED


def test_push_uploads_exactly_the_model_files_to_a_private_repo(pushed, output_dir):
    hub, result = pushed
    assert result.returncode == 0, result.stderr[-3000:]
    repo = hub.repos[REPO_ID]
    assert set(repo.files) == PUSHED and len(repo.commits) == 1 and repo.private
    for name, content in repo.files.items():
        if name not in ("README.md", "metrics.json"):
            assert content == (output_dir / name).read_bytes(), name
    assert result.stdout.strip() == f"{hub.endpoint}/{REPO_ID}/commit/{repo.head}"
    log = [line for line in result.stderr.splitlines() if line.startswith("INFO hf_spam.deploy.hub: Pushing 7 files")]
    assert len(log) == 1 and REPO_ID in log[0] and all(name in log[0] for name in PUSHED)
    assert ModelCard(repo.files["README.md"].decode()).data.base_model == "openai-community/gpt2"


def test_nothing_pushed_names_a_local_path(pushed, output_dir):
    hub, result = pushed
    files = hub.repos[REPO_ID].files
    for name in ("README.md", "metrics.json"):
        text = files[name].decode()
        assert "/home/someone" not in text and str(output_dir) not in text and str(output_dir.parent) not in text
    metrics = json.loads(files["metrics.json"])
    assert metrics["data"]["path"] == "train: train.csv" and metrics["model_card"]["output_dir"] == output_dir.name
    assert metrics["base_model"] == {"loaded_from": "b179c95", "url": "https://x.example/a/b"}
    assert (
        f'model="{REPO_ID}"' in files["README.md"].decode() and "Trained on train.csv." in files["README.md"].decode()
    )
    assert metrics["metrics"] == json.loads((output_dir / "metrics.json").read_text())["metrics"]
    assert LOCAL_DATA in (output_dir / "metrics.json").read_text()  # the local copy keeps it, for `hf-spam eval`


def test_push_authenticates_with_the_token_and_never_shows_or_uploads_it(pushed):
    hub, result = pushed
    # huggingface_hub also fetches a public registry for its user agent, without the token: so much the better.
    private = [r for r in hub.requests if r.path != "/api/agent-harnesses"]
    assert private and all(r.authorization == f"Bearer {CANARY}" for r in private)
    assert all(r.authorization is None for r in hub.requests if r not in private)
    assert "curl" in result.stderr and "<TOKEN>" in result.stderr  # HF_DEBUG's request lines, token redacted
    assert CANARY not in result.stdout and CANARY not in result.stderr
    assert all(CANARY.encode() not in content for content in hub.repos[REPO_ID].files.values())
    assert all(CANARY.encode() not in r.body for r in hub.requests)


def test_pushed_model_downloads_and_predicts_as_the_original(pushed, output_dir, tmp_path):
    hub, _ = pushed
    result = run(DOWNLOAD, REPO_ID, tmp_path / "download", env=hub_env(hub, tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    downloaded = tmp_path / "download"
    assert {p.name for p in downloaded.iterdir() if p.is_file()} == PUSHED

    texts = [*BOOK_EXAMPLES, "ok", "URGENT! You have won a 1 week FREE membership in our prize Jackpot!"]
    original = pipeline("text-classification", model=str(output_dir))(texts, top_k=None)
    copy = pipeline("text-classification", model=str(downloaded))(texts, top_k=None)
    for before, after in zip(original, copy, strict=True):
        assert [s["label"] for s in after] == [s["label"] for s in before]
        assert [s["score"] for s in after] == pytest.approx([s["score"] for s in before], abs=1e-6)


def test_push_without_xet_uploads_the_same_files(output_dir, tmp_path):
    # Without hf_xet, upload_folder takes its single-commit path (create_commit) instead of the pipelined one.
    with FakeHub(tokens={CANARY}) as hub:
        result = run(PUSH, output_dir, REPO_ID, env=hub_env(hub, tmp_path, HF_HUB_DISABLE_XET="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(hub.repos[REPO_ID].files) == PUSHED
    assert CANARY not in result.stdout + result.stderr


@pytest.mark.parametrize("token", [None, f"hf_wrong_{secrets.token_hex(8)}"], ids=["missing", "rejected"])
def test_push_without_a_valid_token_fails_with_a_way_out(output_dir, tmp_path, token):
    with FakeHub(tokens={CANARY}) as hub:
        result = run(PUSH, output_dir, REPO_ID, env=hub_env(hub, tmp_path, token=token))
    assert result.returncode != 0 and not hub.repos
    [error] = [line for line in result.stderr.splitlines() if line.startswith("PermissionError: ")]
    assert "HF_TOKEN" in error and "hf auth login" in error
    if token is None:
        assert "No Hugging Face token" in error and not hub.requests  # nothing was sent
    else:
        assert "HTTP 401" in error and token not in result.stdout + result.stderr


def test_push_refuses_a_directory_without_safetensors_weights(output_dir, tmp_path):
    # In-process: conftest keeps huggingface_hub offline, so this also shows nothing is sent before the check.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(output_dir / "config.json", legacy)
    (legacy / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"missing model\.safetensors.*pytorch_model\.bin.*save_pretrained"):
        push_output_dir(legacy, REPO_ID, token=CANARY)
    (legacy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing config\.json, model\.safetensors"):
        push_output_dir(legacy, REPO_ID, token=CANARY)

"""The Hub token reaches the Hub and nothing else: no log line, no saved file, no uploaded file."""

from __future__ import annotations

import os
import secrets

import pytest

from hf_spam.data.collection import bundled_data_file

from ..fake_hub import FakeHub
from .conftest import run_train

REPO_ID = "user/tiny"


def files_holding(root, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_TOKEN", "--hub_token"])
def test_the_token_appears_in_no_output_file_or_upload(tmp_path, how):
    canary = f"hf_canary_{secrets.token_hex(16)}"
    out, cache, home = tmp_path / "out", tmp_path / "cache", tmp_path / "home"
    with FakeHub(tokens={canary}) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_HUB_"))}
        env.update(
            HF_ENDPOINT=hub.endpoint, HF_HOME=str(home), HF_SPAM_CACHE=str(cache), HF_HUB_OFFLINE="0",
            HF_DATASETS_OFFLINE="1", HF_DEBUG="1", PYTHONUNBUFFERED="1",
        )  # fmt: skip
        flags = ["--hub_token", canary] if how == "--hub_token" else []
        if how == "HF_TOKEN":
            env["HF_TOKEN"] = canary
        result = run_train(
            out, "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
            "--push_to_hub", "true", "--hub_model_id", REPO_ID, "--hub_private_repo", "true",
            "--data_file", bundled_data_file(), "--log_level", "debug", *flags,
            cache_dir=cache, env=env,
        )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    # The push happened, authenticated with the token: the canary was live in the process.
    repo = hub.repos[REPO_ID]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(repo.files)
    assert repo.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    authenticated = [r for r in hub.requests if r.path != "/api/agent-harnesses"]
    assert authenticated and all(r.authorization == f"Bearer {canary}" for r in authenticated)
    assert (out / "training_args.bin").is_file() and (out / "checkpoint-3" / "training_args.bin").is_file()

    leaks = [line for line in (result.stdout + result.stderr).splitlines() if canary in line]
    assert not leaks
    needle = canary.encode()
    assert not files_holding(out, needle) and not files_holding(cache, needle) and not files_holding(home, needle)
    assert not [name for name, content in repo.files.items() if needle in content]
    assert not [r.path for r in hub.requests if needle in r.body]

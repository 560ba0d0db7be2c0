"""Push a trained output directory to the Hugging Face Hub: the model, its tokenizer, card and metrics, nothing else.

    push_output_dir("outputs/gpt2-small", "your-name/gpt2-small-sms-spam")

The token comes from `token=`, else from huggingface_hub's usual places (`HF_TOKEN`, `hf auth login`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

logger = logging.getLogger(__name__)

# What a plain `pipeline("text-classification", model=repo_id)` needs, plus the card, the metrics and plots.
# Checkpoints, `training_args.bin` and optimizer/scheduler/RNG state are never pushed: they are pickles
# (unsafe to load from someone else's repository) and describe the training run, not the model.
PUSH_PATTERNS = [
    "config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "README.md",
    "metrics.json",
    "*.png",
]
# huggingface_hub's `*` also matches across "/", so "*.png" alone would reach into checkpoint-*/; everything
# pushed lives at the top level.
PUSH_IGNORE = ["*/*"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def files_to_push(output_dir: str | os.PathLike) -> list[str]:
    """The files of `output_dir` that `push_output_dir` uploads, as paths relative to it."""
    output_dir = Path(output_dir)
    files = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file())
    return list(filter_repo_objects(files, allow_patterns=PUSH_PATTERNS, ignore_patterns=PUSH_IGNORE))


def push_output_dir(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload an SMS spam classifier trained with hf_spam",
) -> str:
    """Create `repo_id` (a model repository) if needed and upload the model files of `output_dir` in one commit.

    Args:
        output_dir: a directory written by `hf-spam train` (config.json, model.safetensors, tokenizer, README.md).
        repo_id: `"name"` (under the token's user) or `"namespace/name"`.
        private: visibility of a new repository; `None` leaves it to the Hub (public unless the organization's
            default is private). An existing repository keeps its visibility.
        token: a Hub token with write access; `None` uses `HF_TOKEN` or the one saved by `hf auth login`.

    Returns:
        The URL of the commit.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a directory; expected the output_dir of `hf-spam train`")
    files = files_to_push(output_dir)
    _check_model_files(output_dir, files)
    if token is None and get_token() is None:
        raise PermissionError(
            f"No Hugging Face token to push {output_dir} to {repo_id}: set HF_TOKEN to a token with write access, "
            "or run `hf auth login`."
        )

    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        logger.info("Pushing %d files from %s to %s: %s", len(files), output_dir, repo_url.repo_id, ", ".join(files))
        operations = [
            CommitOperationAdd(name, public_copy(output_dir, name, repo_url.repo_id) or output_dir / name)
            for name in files
        ]
        commit = api.create_commit(
            repo_id=repo_url.repo_id, repo_type="model", operations=operations, commit_message=commit_message
        )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            problem = "did not accept the token" if status == 401 else "did not let the token write there"
            raise PermissionError(
                f"Pushing to {repo_id}: the Hub {problem} (HTTP {status}). Set HF_TOKEN to a token with write "
                f"access to the namespace of {repo_id!r}, run `hf auth login`, or pass token=."
            ) from err
        raise
    logger.info("Pushed %s to %s", output_dir, commit.commit_url)
    return commit.commit_url


# A local filesystem path inside a text: absolute, home- or dot-relative, not part of a URL or a word ("ham/spam").
LOCAL_PATH = re.compile(r"(?<![\w:/.\\])(?:~|\.{1,2})?(?:/[^\s/,;\"'`()\[\]<>]+)+/?")


def without_local_paths(text: str) -> str:
    """`text` with every local path cut to its last part: a card or metrics file says which file, not where on
    the machine that trained it (a user name, a mount, a project layout)."""
    return LOCAL_PATH.sub(lambda match: Path(match.group(0).rstrip("/")).name, text)


def public_copy(output_dir: Path, name: str, repo_id: str) -> bytes | None:
    """What is pushed for README.md and metrics.json: the local file without local paths (the local copy keeps
    them: `hf-spam eval` finds the training data by them). None for every other file, pushed as it is."""
    if name == "README.md":
        text = (output_dir / name).read_text(encoding="utf-8")
        # "How to use" names the model by its directory when the run had no Hub id: the repo's id now.
        for local in {str(output_dir), str(output_dir.resolve()), output_dir.resolve().name}:
            text = text.replace(f'model="{local}"', f'model="{repo_id}"')
        return without_local_paths(text).encode("utf-8")
    if name == "metrics.json":
        metrics = json.loads((output_dir / name).read_text(encoding="utf-8"))
        return (json.dumps(_public(metrics), indent=2) + "\n").encode("utf-8")
    return None


def _public(value):
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return without_local_paths(value) if isinstance(value, str) else value


def _check_model_files(output_dir: Path, files: list[str]) -> None:
    missing = [name for name in ("config.json", "model.safetensors") if name not in files]
    if "model.safetensors.index.json" in files:  # sharded weights
        missing = [name for name in missing if name != "model.safetensors"]
    if missing:
        found = sorted(p.name for p in output_dir.iterdir())
        hint = ""
        if "model.safetensors" in missing and any(name.startswith("pytorch_model") for name in found):
            hint = (
                " Weights saved as a pickle (pytorch_model.bin) are never pushed; load the model and save it again "
                "with `model.save_pretrained(output_dir)`, which writes model.safetensors."
            )
        raise FileNotFoundError(
            f"{output_dir} is missing {', '.join(missing)}: hf_spam pushes a config.json with safetensors weights "
            f"(found: {', '.join(found) or 'nothing'}).{hint} `hf-spam train --output_dir DIR` writes such a directory."
        )
    if not any(name in files for name in TOKENIZER_FILES):
        logger.warning("%s has no tokenizer files: pipeline() will not be able to load the pushed model", output_dir)

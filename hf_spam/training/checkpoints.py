"""Which checkpoint to resume from: the newest one that is complete and loads.

A run killed while saving leaves a `checkpoint-N` directory with some files missing, empty or truncated.
Resuming from it would fail, or worse, resume from a half-written model; we skip it with a warning that
names it and take the newest checkpoint before it that passes every check. The pickled files (optimizer,
scheduler, RNG state) must load as Trainer loads them, `weights_only`: a truncated file, or one that holds
anything but tensors and plain values (a pickle that would run code), fails the check before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import signal
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import TrainerCallback
from transformers.trainer_pt_utils import safe_globals

from hf_spam.data.collection import current_umask, write_atomically
from hf_spam.models.loading import REPLACED

logger = logging.getLogger(__name__)

# Every file Trainer.train(resume_from_checkpoint=...) reads back for an exact resume on one process.
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
# The model: a whole classifier, or (`trainable: lora`) peft's adapter with the trained head.
MODEL_FILES = {"model.safetensors": "config.json", "adapter_model.safetensors": "adapter_config.json"}
RNG_FILES = ("rng_state.pth", "rng_state_0.pth")
PICKLED_FILES = ("optimizer.pt", "scheduler.pt", *RNG_FILES)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, or a resume request that names none."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk, a file-size limit)."""


def check_checkpoint(path: str | Path) -> None:
    """Raise `CheckpointError` saying what is wrong with `path`, or return if a resume can use it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    weights = next((name for name in MODEL_FILES if (path / name).is_file()), "model.safetensors")
    missing = [name for name in (MODEL_FILES[weights], weights, *REQUIRED_FILES) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in RNG_FILES):
        missing.append("rng_state.pth")
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    empty = [p.name for p in path.iterdir() if p.is_file() and p.stat().st_size == 0]
    if empty:
        raise CheckpointError(f"{path} has empty files: {', '.join(sorted(empty))}")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        step = state["global_step"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}/trainer_state.json is not a complete trainer state ({err})") from err
    if CHECKPOINT_PATTERN.match(path.name) and int(path.name.split("-")[1]) != step:
        raise CheckpointError(f"{path}/trainer_state.json says step {step}, the directory says otherwise")
    try:
        # Reading every tensor proves the file is whole: a truncated safetensors file fails here.
        with safe_open(path / weights, framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path}/{weights} does not load ({err})") from err
    for name in PICKLED_FILES:
        if (path / name).is_file():
            _check_pickle(path / name)


def _check_pickle(path: Path) -> None:
    """Load `path` as Trainer does (weights_only, numpy allowed for the RNG state), or raise `CheckpointError`."""
    try:
        with safe_globals():
            # mmap reads no tensor data (an optimizer state can be large); it needs the zip format torch.save writes.
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # UnpicklingError for a forbidden object, RuntimeError for a cut-off archive, ...
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        # weights_only names the forbidden object on a later line; its first line only advises weights_only=False.
        reason = next((line for line in lines if "GLOBAL" in line), lines[0])
        raise CheckpointError(
            f"{path} does not load as plain tensors and values ({type(err).__name__}: {reason})"
        ) from err


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resolve_resume(resume_from_checkpoint: str | None, output_dir: str | Path) -> str | None:
    """Turn the `resume_from_checkpoint` argument into a checkpoint path for `Trainer.train`, or None.

    `auto`: the newest complete checkpoint in `output_dir` (None, and a fresh start, if there is none).
    A path: that checkpoint, which must be complete; anything wrong with it is a `CheckpointError`.
    """
    if resume_from_checkpoint in (None, "", "false", "False"):
        return None
    if resume_from_checkpoint != "auto":
        try:
            check_checkpoint(resume_from_checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"resume_from_checkpoint: {err}") from err
        return str(resume_from_checkpoint)
    for candidate in checkpoints_newest_first(output_dir):
        try:
            check_checkpoint(candidate)
        except CheckpointError as err:
            logger.warning("Skipping unusable checkpoint: %s", err)
            continue
        logger.info("Resuming from %s", candidate)
        return str(candidate)
    logger.info("resume_from_checkpoint=auto: no complete checkpoint in %s, starting from scratch", output_dir)
    return None


class StopOnSigterm(TrainerCallback):
    """On SIGTERM (a preempted or cancelled job), finish the current step, save a checkpoint and stop.

    Every process must stop at the same step, or the others wait forever in the next collective; the flag is
    therefore all-reduced across processes at each step end (one tiny collective, negligible beside a step).
    """

    def __init__(self):
        self.received = False
        self.stopped_at: int | None = None
        self._previous = None

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self.received = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.received
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(int(stop), device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


# What a run writes first into its output_dir: the settings its checkpoints and model were made with.
RUN_RECORD = "hf_spam_run.json"
# The training arguments that change what a run computes (logging, saving and Hub options do not).
TRAINING_KEYS = (
    "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "optim", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "class_weights", "trunk_cache", "trunk_dtype", "max_fpr",
)  # fmt: skip
# Data arguments that only say where things are cached or downloaded from, and model arguments that only say
# what else is saved.
DATA_KEYS_IGNORED = ("data_cache_dir", "data_urls", "download_timeout")
MODEL_KEYS_IGNORED = ("save_adapter",)


def run_settings(model_args, data_args, training_args) -> dict:
    """What decides a run's result, as plain JSON values: the model arguments (`save_adapter` aside), the data
    arguments (where things are cached aside) and the training arguments of `TRAINING_KEYS`."""
    data = {k: v for k, v in dataclasses.asdict(data_args).items() if k not in DATA_KEYS_IGNORED}
    training = {k: getattr(training_args, k, None) for k in TRAINING_KEYS}
    model = {k: v for k, v in dataclasses.asdict(model_args).items() if k not in MODEL_KEYS_IGNORED}
    settings = {"model": model, "data": data, "training": training}
    return json.loads(json.dumps(settings, default=str))


def differences(before: dict, now: dict) -> list[str]:
    """Every setting that differs between two records of settings: `group.key` inside groups of settings,
    `name` for a value of its own."""
    found = []
    for group in sorted(before.keys() | now.keys()):
        old, new = before.get(group), now.get(group)
        if isinstance(old, dict) and isinstance(new, dict):
            found += [f"{group}.{key}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
        elif old != new:
            found.append(group)
    return found


def prepare_output_dir(
    output_dir: str | Path, settings: dict, resume: bool, overwrite: bool, write: bool = True
) -> None:
    """Make `output_dir` this run's, or refuse in one line.

    A directory that holds another run's model or checkpoints is refused unless `overwrite` (its checkpoints
    and ONNX export, both made from the old weights, are then removed) or `resume` (then the run's recorded
    settings must equal this run's: resuming another recipe's checkpoint would report its figures as this
    one's). The settings are recorded for the next run to compare. Every process checks; only the one that
    `write`s (the main process) removes and records.
    """
    output_dir = Path(output_dir)
    if write and output_dir.is_dir():
        recover_interrupted_save(output_dir)
    record = output_dir / RUN_RECORD
    before = json.loads(record.read_text()) if resume and record.is_file() else None
    held = [name for name in ("config.json", "model.safetensors", "metrics.json") if (output_dir / name).exists()]
    held += [p.name for p in checkpoints_newest_first(output_dir)] if output_dir.is_dir() else []
    if held and resume and before is not None and before != settings and not overwrite:
        raise CheckpointError(
            f"resume_from_checkpoint auto: {output_dir} holds a run with other settings "
            f"({', '.join(differences(before, settings))} differ); resume it with those settings, or give another "
            "output_dir (or --overwrite_output_dir true to replace it)"
        )
    if held and not resume and not overwrite:
        raise CheckpointError(
            f"output_dir {output_dir} holds another run ({', '.join(held[:4])}); give --overwrite_output_dir true "
            "to replace it, --resume_from_checkpoint auto to continue it, or another output_dir"
        )
    if not write:
        return
    if overwrite:
        for path in [*checkpoints_newest_first(output_dir), output_dir / "onnx"] if output_dir.is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path)
                logger.info("overwrite_output_dir: removed %s (made from the replaced run)", path)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Beside it, then renamed: the other processes of a launch may be reading it (resume) at this moment.
    write_atomically(json.dumps(settings, indent=2).encode() + b"\n", record)


# The final model and its reports are written into STAGING first, then swapped in (`publish`); the files they
# replace wait in REPLACED until the swap is done.
STAGING = ".saving"
MANIFEST = "manifest.json"


def publish(staging: Path, output_dir: Path) -> None:
    """Swap the files of `staging` into `output_dir`: the files they replace are moved aside into `.replaced/`
    first, then the new ones moved in (`metrics.json` last), then `.replaced/` removed.

    Every step is a rename: no data is written, so a full disk cannot stop it, and a run killed at any moment
    leaves the old set or the new one whole. Until `recover_interrupted_save` (the next run into the
    directory) puts the old files back, loaders refuse a directory with `.replaced/` in one line.
    """
    aside = output_dir / REPLACED
    aside.mkdir(exist_ok=True)
    names = sorted((p.name for p in staging.iterdir()), key=lambda name: name == "metrics.json")
    write_atomically(json.dumps(names).encode(), aside / MANIFEST)
    for name in names:
        if (output_dir / name).exists():
            (output_dir / name).replace(aside / name)
    mode = 0o666 & ~current_umask()  # Transformers writes model.safetensors 0600; the rest of a run is 0644
    for name in names:
        if (staging / name).is_file():
            (staging / name).chmod(mode)
        (staging / name).replace(output_dir / name)
    staging.rmdir()  # the new set is whole from here on
    shutil.rmtree(aside)


def recover_interrupted_save(output_dir: Path) -> None:
    """Undo what a killed `publish` left: the old files back in place while the new set was not whole yet,
    and whatever the swap left aside or unfinished removed."""
    aside, staging = output_dir / REPLACED, output_dir / STAGING
    if aside.is_dir() and staging.is_dir() and (aside / MANIFEST).is_file():
        for name in json.loads((aside / MANIFEST).read_text()):
            if (aside / name).exists():
                (aside / name).replace(output_dir / name)
            elif (output_dir / name).exists() and not (staging / name).exists():
                (output_dir / name).unlink()  # a new file that had no old one: not part of the old set
        logger.warning("%s: a save was interrupted; put the previous run's files back", output_dir)
    for leftover in (aside, staging):
        shutil.rmtree(leftover, ignore_errors=True)

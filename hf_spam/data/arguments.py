"""`DataArguments`: where the messages come from and how they are split (the `data` section of a config,
the flags of `hf-spam data` and `hf-spam train`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from hf_spam.data.collection import URLS


@dataclass
class DataArguments:
    """Its checks raise ValueError with a message that starts with the field's name, which `hf-spam data`
    turns into the flag's name."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset of one's own messages (e.g. ucirvine/sms_spam), via load_dataset."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    dataset_revision: str | None = field(default=None, metadata={"help": "The Hub dataset's revision."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Messages of one's own: .csv, .tsv, .json, .jsonl or .parquet. Split 70/10/20 unless "
            "validation_file / test_file are given."
        },
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation messages (same formats)."})
    test_file: str | None = field(default=None, metadata={"help": "Test messages (same formats)."})
    text_column: str | None = field(
        default=None, metadata={"help": "The column of the message text (default: found among text, sms, body, ...)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "The column of the label (default: found among label, is_spam, class, ...)."}
    )
    spam_label: str | None = field(
        default=None,
        metadata={"help": "Which label is spam, where the data's two labels do not say (e.g. junk, positive)."},
    )
    data_file: str | None = field(
        default=None,
        metadata={"help": "A local `label<TAB>text` file to use instead of the SMS Spam Collection download."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where downloads and tokenized splits are cached (default: $HF_SPAM_CACHE or ~/.cache/hf_spam)."
        },
    )
    data_urls: list[str] = field(
        default_factory=lambda: list(URLS),
        metadata={"help": "Zip archives to try, in order, when nothing is cached."},
    )
    download_timeout: float = field(default=30.0, metadata={"help": "Seconds allowed for each download."})
    lenient: bool = field(
        default=False,
        metadata={"help": "Skip malformed lines of the data file (and report them) instead of failing."},
    )
    dedupe: bool = field(
        default=True,
        metadata={"help": "Drop exact duplicate texts before splitting, so no message is in two splits."},
    )
    balance: str = field(
        default="undersample",
        metadata={
            "help": "undersample: all spam + as many ham drawn with the seed (the book). none: natural ratio "
            "(pair with class_weights: balanced).",
            "choices": ["undersample", "none"],
        },
    )
    evaluate_held_out: bool = field(
        default=True,
        metadata={
            "help": "Also score the final model on the messages balancing left out (on the SMS data, 3,865 ham): "
            "the false-positive rate and precision at the data's own spam rate."
        },
    )
    external_files: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Labelled files of messages unlike the training data (e.g. the SpamHunter and NUS corpora), scored "
            "after training for evaluation only: never a training or validation split. Texts also in the "
            "training data are left out. Missing files: skipped with one line."
        },
    )
    external_max_ham: int | None = field(
        default=None,
        metadata={"help": "Score every external message that is not ham but only this many ham, drawn with the seed."},
    )
    split_ratios: list[float] = field(
        default_factory=lambda: [0.7, 0.1, 0.2], metadata={"help": "train/validation/test fractions."}
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate messages to this many tokens (default: the model context)."}
    )
    padding: str = field(
        default="longest",
        metadata={
            "help": "longest: pad each batch to its longest message. max_length: the book's, every message "
            "padded to the longest training message.",
            "choices": ["longest", "max_length"],
        },
    )

    def __post_init__(self):
        if self.external_max_ham is not None and self.external_max_ham < 1:
            raise ValueError(f"external_max_ham must be at least 1 (or left out for all), got {self.external_max_ham}")
        given = {self.data_file, self.train_file, self.validation_file, self.test_file} - {None}
        trained_on = {str(Path(p).resolve()) for p in given}
        for path in self.external_files:
            if str(Path(path).resolve()) in trained_on:
                raise ValueError(
                    f"external_files: {path} is also a training data file; external files are for evaluation only"
                )
        if not self.download_timeout > 0:
            raise ValueError(f"download_timeout must be a positive number of seconds, got {self.download_timeout}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(
                f"max_length must be at least 1 token (or left out for the model context), got {self.max_length}"
            )
        if len(self.split_ratios) != 3 or abs(sum(self.split_ratios) - 1.0) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError(
                f"split_ratios must be three non-negative fractions summing to 1, got {self.split_ratios}"
            )


def check_finite(arguments) -> None:
    """NaN and infinity pass most range checks (`nan < 0` is false) and then poison a run: refuse them in every
    number of an arguments dataclass, YAML's `.nan` / `.inf` included."""
    for f in dataclasses.fields(arguments):
        value = getattr(arguments, f.name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")

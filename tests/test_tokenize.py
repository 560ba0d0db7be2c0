"""Tokenization of the splits: special-token safety, truncation, both padding modes, and the Arrow cache."""

import os

import pytest
from datasets import Dataset, DatasetDict
from transformers import DataCollatorWithPadding

from hf_spam.data.collection import FEATURES
from hf_spam.data.splits import SPLITS, load_sms_spam
from hf_spam.data.tokenize import tokenize_splits

EOT = 50256  # <|endoftext|>, also the pad token


def make_splits(train: list[str], validation: list[str] | None = None, test: list[str] | None = None) -> DatasetDict:
    texts = {"train": train, "validation": validation or train[:1], "test": test or train[:1]}
    return DatasetDict(
        {
            name: Dataset.from_dict({"text": t, "label": [i % 2 for i in range(len(t))]}, features=FEATURES)
            for name, t in texts.items()
        }
    )


def reference_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, split_special_tokens=True)["input_ids"]


class CountingTokenizer:
    """Forwards to the real tokenizer and counts the calls that tokenize text."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_gpt2_tokenizer_facts(tokenizer):
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.convert_ids_to_tokens(EOT) == "<|endoftext|>"
    assert tokenizer.pad_token_id == EOT
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_literal_endoftext_in_a_message_never_becomes_the_pad_id(tokenizer, tmp_path, padding):
    text = "WIN NOW <|endoftext|> claim<|endoftext|>your prize"
    # Without split_special_tokens the tokenizer would turn the literal into the pad/EOS id.
    assert EOT in tokenizer(text, split_special_tokens=False)["input_ids"]
    splits = make_splits([text, "short"], validation=[text], test=["<|endoftext|>"])
    tokenized = tokenize_splits(splits, tokenizer, max_length=64, padding=padding, cache_dir=tmp_path)
    for name in SPLITS:
        for ids, mask in zip(tokenized[name]["input_ids"], tokenized[name]["attention_mask"], strict=True):
            real = [i for i, m in zip(ids, mask, strict=True) if m]
            assert real
            assert EOT not in real
    assert tokenized["validation"][0]["input_ids"][: len(reference_ids(tokenizer, text))] == reference_ids(
        tokenizer, text
    )


def test_a_very_long_message_is_truncated_to_max_length(tokenizer, tmp_path):
    text = "hello " * 5000
    full = reference_ids(tokenizer, text)
    assert len(full) > 4000
    tokenized = tokenize_splits(make_splits([text, "hi"]), tokenizer, max_length=1024, cache_dir=tmp_path)
    row = tokenized["train"][0]
    assert len(row["input_ids"]) == 1024
    assert row["input_ids"] == full[:1024]
    assert row["attention_mask"] == [1] * 1024


def test_longest_padding_leaves_rows_unpadded_for_the_collator(tokenizer, tmp_path):
    texts = ["Hello world", "Free entry in 2 a wkly comp to win FA Cup final tkts", "ok"]
    tokenized = tokenize_splits(make_splits(texts), tokenizer, max_length=1024, padding="longest", cache_dir=tmp_path)
    rows = tokenized["train"]
    lengths = [len(ids) for ids in rows["input_ids"]]
    assert lengths == [len(reference_ids(tokenizer, t)) for t in texts]
    assert len(set(lengths)) == 3
    assert all(EOT not in ids for ids in rows["input_ids"])
    assert all(mask == [1] * len(mask) for mask in rows["attention_mask"])

    collator = DataCollatorWithPadding(tokenizer)
    batch = collator([{k: row[k] for k in ("input_ids", "attention_mask", "label")} for row in rows])
    longest = max(lengths)
    assert tuple(batch["input_ids"].shape) == (3, longest)
    assert batch["labels"].tolist() == rows["label"]
    for i, n in enumerate(lengths):
        assert batch["input_ids"][i].tolist() == rows[i]["input_ids"] + [EOT] * (longest - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (longest - n)


def test_max_length_padding_pads_every_split_to_the_longest_training_row(tokenizer, tmp_path):
    train = ["Hello world", "Free entry in 2 a wkly comp to win FA Cup final tkts", "ok"]
    validation = ["ok then", "This validation message is much longer than any training message, " * 3]
    test = ["Free entry in 2 a wkly comp to win FA Cup final tkts"]
    tokenized = tokenize_splits(
        make_splits(train, validation, test), tokenizer, max_length=1024, padding="max_length", cache_dir=tmp_path
    )
    length = max(len(reference_ids(tokenizer, t)) for t in train)
    for name, texts in (("train", train), ("validation", validation), ("test", test)):
        for text, row in zip(texts, tokenized[name], strict=True):
            ids = reference_ids(tokenizer, text)[:length]
            n_pad = length - len(ids)
            assert row["input_ids"] == ids + [EOT] * n_pad
            assert row["attention_mask"] == [1] * len(ids) + [0] * n_pad
    # The long validation row is cut to the training length, not to max_length.
    assert len(reference_ids(tokenizer, validation[1])) > length
    assert tokenized["validation"][1]["attention_mask"] == [1] * length


def test_max_length_padding_on_the_real_splits_is_the_books(tokenizer, tmp_path):
    splits, _ = load_sms_spam(cache_dir=str(tmp_path))
    tokenized = tokenize_splits(splits, tokenizer, max_length=1024, padding="max_length", cache_dir=tmp_path)
    length = max(len(reference_ids(tokenizer, t)) for t in splits["train"]["text"])
    for name in SPLITS:
        assert tokenized[name]["label"] == splits[name]["label"]
        for text, ids, mask in zip(
            splits[name]["text"], tokenized[name]["input_ids"], tokenized[name]["attention_mask"], strict=True
        ):
            real = reference_ids(tokenizer, text)[:length]
            assert ids == real + [EOT] * (length - len(real))
            assert mask == [1] * len(real) + [0] * (length - len(real))


def test_second_identical_call_loads_from_the_arrow_cache(tokenizer, tmp_path):
    splits = make_splits(["Hello world", "Free entry now", "ok"], ["see you"], ["call me"])
    first_tokenizer = CountingTokenizer(tokenizer)
    first = tokenize_splits(splits, first_tokenizer, max_length=32, cache_dir=tmp_path)
    assert first_tokenizer.calls > 0
    files = {name: first[name].cache_files[0]["filename"] for name in SPLITS}
    mtimes = {name: os.stat(path).st_mtime_ns for name, path in files.items()}
    assert all(path.startswith(str(tmp_path / "tokenized")) for path in files.values())

    second_tokenizer = CountingTokenizer(tokenizer)
    second = tokenize_splits(splits, second_tokenizer, max_length=32, cache_dir=tmp_path)
    assert second_tokenizer.calls == 0
    for name in SPLITS:
        assert second[name].cache_files[0]["filename"] == files[name]
        assert os.stat(files[name]).st_mtime_ns == mtimes[name]
        assert second[name].to_dict() == first[name].to_dict()


def test_cache_key_ignores_how_the_tokenizer_was_last_called(tokenizer, tmp_path):
    # A fast tokenizer's backend keeps the truncation/padding settings of its last call.
    splits = make_splits(["Hello world", "Free entry now", "ok"])
    tokenizer("no truncation here")
    first = tokenize_splits(splits, tokenizer, max_length=32, cache_dir=tmp_path)
    tokenizer("something else", truncation=True, max_length=7, padding="max_length")
    counting = CountingTokenizer(tokenizer)
    second = tokenize_splits(splits, counting, max_length=32, cache_dir=tmp_path)
    assert counting.calls == 0
    assert second["train"].cache_files[0]["filename"] == first["train"].cache_files[0]["filename"]


def test_changing_max_length_uses_a_different_cache_file(tokenizer, tmp_path):
    splits = make_splits(["Hello world, this is a longer message", "ok"])
    short = tokenize_splits(splits, tokenizer, max_length=4, cache_dir=tmp_path)
    long = tokenize_splits(splits, tokenizer, max_length=32, cache_dir=tmp_path)
    assert short["train"].cache_files[0]["filename"] != long["train"].cache_files[0]["filename"]
    assert len(short["train"][0]["input_ids"]) == 4
    assert len(long["train"][0]["input_ids"]) > 4


def test_different_texts_never_load_another_datasets_cache(tokenizer, tmp_path):
    first = tokenize_splits(make_splits(["Hello world", "ok"]), tokenizer, max_length=32, cache_dir=tmp_path)
    second = tokenize_splits(make_splits(["Goodbye world", "ok"]), tokenizer, max_length=32, cache_dir=tmp_path)
    assert first["train"].cache_files[0]["filename"] != second["train"].cache_files[0]["filename"]
    assert second["train"][0]["input_ids"] == reference_ids(tokenizer, "Goodbye world")


def test_padded_splits_are_cached_too(tokenizer, tmp_path):
    splits = make_splits(["Hello world", "Free entry now", "ok"])
    first = tokenize_splits(splits, tokenizer, max_length=32, padding="max_length", cache_dir=tmp_path)
    counting = CountingTokenizer(tokenizer)
    second = tokenize_splits(splits, counting, max_length=32, padding="max_length", cache_dir=tmp_path)
    assert counting.calls == 0
    assert second["train"].cache_files[0]["filename"] == first["train"].cache_files[0]["filename"]
    assert second["train"].to_dict() == first["train"].to_dict()


def test_tokenizer_without_pad_token_or_with_left_padding_is_rejected(tokenizer, tmp_path):
    splits = make_splits(["Hello world", "ok"])
    with pytest.raises(ValueError, match="padding"):
        tokenize_splits(splits, tokenizer, max_length=32, padding="do_not_pad", cache_dir=tmp_path)
    left = CountingTokenizer(tokenizer)
    left.padding_side = "left"
    with pytest.raises(ValueError, match="right padding"):
        tokenize_splits(splits, left, max_length=32, cache_dir=tmp_path)
    no_pad = CountingTokenizer(tokenizer)
    no_pad.pad_token_id = None
    with pytest.raises(ValueError, match="pad token"):
        tokenize_splits(splits, no_pad, max_length=32, cache_dir=tmp_path)

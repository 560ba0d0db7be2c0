"""Never recompute what is frozen: run the frozen trunk of GPT-2 once per message, train only the tail.

With `trainable: last_block`, 11 of gpt2-small's 12 blocks are frozen and, with dropout 0, map a message to
the same hidden states in every epoch. We run them once (no grad, eval mode, length-sorted batches), keep
the hidden states that enter the first trainable block, one unpadded array per message, and train the tail
(trainable blocks, `ln_f`, `score`) from them. Right padding plus the causal mask make this exact: a real
token never attends to a pad, so its hidden states do not depend on how its batch was padded.

The states are cached on disk (one flat `.npy` array + offsets per split, read memory-mapped) under a key made
of the trunk's weights, the tokenized split's fingerprint and the settings, so a second run reuses them.
Since the loss reads only the last token of each message, the final block runs its query, attention and MLP
for that token alone; only its keys and values are computed for every token. (With another `pooling`, which
reads every token, the tail runs on every token.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from hf_spam.models.loading import DROPOUT_FIELDS
from hf_spam.models.parts import decoder_parts, is_gpt2, trunk_includes_norm, trunk_module
from hf_spam.models.pooling import CONFIG_KEY, pool_padded, pooling_of
from hf_spam.training.trunk_tails import tail_for

logger = logging.getLogger(__name__)


def frozen_prefix(model: PreTrainedModel, probe: list[list[int]] | None = None) -> tuple[int, str | None]:
    """How many leading layers the trunk cache can take over, and why not if it can't (0, reason).

    The cache is exact when every trainable parameter sits in the last layers, the final norm or `score`,
    and the frozen part has no active dropout (dropout would make its output differ from one epoch to the
    next). For a decoder other than GPT-2, the tail runs the model's own layers on the cached states; with
    `probe` (a few tokenized messages) its logits are compared with the model's plain forward, so that a
    family whose forward adds anything the cache leaves out (absolute positions, say) is never trained wrong.
    """
    parts = decoder_parts(model)
    in_layers = {id(p) for p in parts.layers.parameters()} | {id(p) for p in parts.norm.parameters()}
    if any(p.requires_grad for p in parts.base.parameters() if id(p) not in in_layers):
        return 0, "the embeddings are trainable"
    layers = list(parts.layers)
    trainable = [i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())]
    n_frozen = trainable[0] if trainable else len(layers)
    if trainable != list(range(n_frozen, len(layers))):
        return 0, f"the trainable layers {trainable} are not the last ones"
    if n_frozen == 0:
        return 0, "every layer is trainable"
    if not getattr(model.config, "is_causal", True):
        return 0, "the attention is bidirectional (causal_mask: false); the cache's packed rows need a causal mask"
    config = model.config
    active = {name: getattr(config, name) for name in DROPOUT_FIELDS if getattr(config, name, 0)}
    active.pop("summary_first_dropout", None)  # GPT-2's head-side dropout, after the trunk
    trunk = trunk_module(model, n_frozen)
    active |= {name: m.p for name, m in trunk.named_modules() if isinstance(m, nn.Dropout) and m.p > 0}
    if active:
        return 0, f"the frozen layers have active dropout {active}"
    if probe and not is_gpt2(model):
        error = tail_error(model, n_frozen, probe)
        if not error <= 1e-4:
            return 0, f"the cached path differs from {type(model).__name__}'s forward by {error:.2e} on a probe"
    return n_frozen, None


@torch.no_grad()
def tail_error(model: PreTrainedModel, n_frozen: int, input_ids: list[list[int]]) -> float:
    """Largest logit difference between the cached path (trunk, then tail on packed states) and the plain
    forward of the model on `input_ids`, in eval mode."""
    was_training = model.training
    model.eval()
    states = trunk_pass(model, n_frozen, input_ids, desc="Probe")
    batch = collate_trunk_states([{"hidden_states": s, "labels": 0} for s in _split_states(states, input_ids)])
    cached = tail_for(model, n_frozen)(**batch).logits
    pooling = pooling_of(model.config)

    def plain_forward(ids: list[int]) -> torch.Tensor:
        row = torch.tensor([ids])
        token_logits = model.score(model.base_model(input_ids=row, use_cache=False)[0])
        return pool_padded(token_logits, torch.ones_like(row), pooling)[0]

    plain = torch.stack([plain_forward(ids) for ids in input_ids])
    model.train(was_training)
    return float((cached - plain).abs().max())


def _split_states(states: torch.Tensor, input_ids: list[list[int]]) -> list[torch.Tensor]:
    return list(states.split([len(ids) for ids in input_ids]))


def _trunk_fingerprint(model: PreTrainedModel, n_frozen: int, dtype: torch.dtype) -> str:
    digest = hashlib.sha256(f"{n_frozen}|{dtype}|{trunk_includes_norm(model, n_frozen)}".encode())
    # Pooling acts after the trunk: the rows of the experiment table that differ only in it share one cache.
    config = {k: v for k, v in model.config.to_dict().items() if k != CONFIG_KEY}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in trunk_module(model, n_frozen).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def trunk_pass(
    model: PreTrainedModel,
    n_frozen: int,
    input_ids: list[list[int]],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    desc: str = "Frozen trunk",
) -> torch.Tensor:
    """The hidden states entering block `n_frozen`, message after message in input order: `[tokens, n_embd]`.

    Batches are sorted by length so that little is padded; `dtype=torch.bfloat16` runs the trunk's matrix
    products in bfloat16 (faster where the device supports it, not exact). The result is allocated before the
    first batch: thousands of small long-lived per-message copies would sit in the holes that the batches'
    large activations leave when freed, keep them from merging, and make the heap grow batch after batch.
    """
    view = trunk = trunk_module(model, n_frozen)
    was_training = view.training
    view.eval()
    if dtype != torch.float32:
        # Autocast casts a frozen weight again at every use (its cache keeps only trainable ones): cast the
        # matrix weights of a copy once instead. Layer norms and the residual stream stay in float32.
        trunk = copy.deepcopy(trunk)
        for module in trunk.modules():
            if isinstance(module, (Conv1D, nn.Linear)):
                module.weight.data = module.weight.data.to(dtype)
    lengths = [len(ids) for ids in input_ids]
    order = sorted(range(len(input_ids)), key=lengths.__getitem__)
    states = torch.empty(sum(lengths), model.config.hidden_size)
    starts = np.cumsum([0] + lengths).tolist()
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for start in tqdm(
        range(0, len(order), batch_size),
        desc=desc,
        disable=not (logger.isEnabledFor(logging.INFO) and sys.stderr.isatty()),
    ):
        index = order[start : start + batch_size]
        width = max(lengths[i] for i in index)
        ids = torch.zeros(len(index), width, dtype=torch.long)
        mask = torch.zeros(len(index), width, dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, : lengths[i]] = torch.tensor(input_ids[i])
            mask[row, : lengths[i]] = 1
        with autocast:
            hidden = trunk(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
        hidden = hidden.float().cpu()
        for row, i in enumerate(index):
            states[starts[i] : starts[i + 1]] = hidden[row, : lengths[i]]
    view.train(was_training)
    return states


def cached_trunk_states(
    model: PreTrainedModel,
    n_frozen: int,
    splits: Mapping,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    trunk_fingerprint: str | None = None,
) -> dict[str, TrunkStateStore]:
    """`trunk_pass` for each tokenized `datasets` split in `splits`, through the on-disk cache.

    Each split's states are stored as one flat `[tokens, n_embd]` float32 array (`.npy`) plus offsets, and
    read back memory-mapped, so a split larger than RAM trains from the page cache. The splits missing from
    the cache are computed together, in one length-sorted pass, so that no split's longest messages sit in
    a half-empty or widely padded batch of their own.
    """
    trunk_fingerprint = trunk_fingerprint or _trunk_fingerprint(model, n_frozen, dtype)
    paths = {}
    for name, split in splits.items():
        key = hashlib.sha256(f"{trunk_fingerprint}|{split._fingerprint}".encode()).hexdigest()
        path = Path(cache_dir) / "trunk" / f"{key[:24]}.npy"
        paths[name] = (path, path.with_suffix(".offsets.npy"))
    missing = [name for name, (path, offsets_path) in paths.items() if not (path.is_file() and offsets_path.is_file())]
    for name in paths.keys() - set(missing):
        logger.info("Frozen trunk states for %s loaded from %s", name, paths[name][0])
    if missing:
        input_ids = {name: _real_tokens(splits[name]) for name in missing}
        messages = MessageStates(Path(cache_dir) / "trunk" / f"{trunk_fingerprint}-messages")
        new = list({tuple(ids): None for name in missing for ids in input_ids[name] if tuple(ids) not in messages})
        if new:
            states = trunk_pass(
                model, n_frozen, [list(ids) for ids in new], batch_size, device, dtype,
                desc=f"Frozen trunk ({', '.join(missing)}: {len(new)} messages not computed before)",
            )  # fmt: skip
            messages.add(new, states)
        for name in missing:
            lengths = [len(ids) for ids in input_ids[name]]
            _write_states(torch.cat([messages[tuple(ids)] for ids in input_ids[name]]), lengths, *paths[name])
            logger.info("Frozen trunk states for %s cached at %s", name, paths[name][0])
    return {name: TrunkStateStore(*paths[name]) for name in splits}


class MessageStates:
    """Every message's trunk states that one trunk has computed, found by its token ids: a split made of
    messages seen before (another fold of `hf-spam cv`, another seed's split) needs no trunk pass for them.

    On disk, a folder of chunks: states (`.npy`), offsets and, written last as the mark of a complete chunk,
    the keys of its messages (a hash of their ids).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict[bytes, tuple[int, int]] = {}
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        for keys_path in sorted(folder.glob("*.keys.npy")) if folder.is_dir() else []:
            stem = str(keys_path)[: -len(".keys.npy")]
            self._open(np.load(keys_path), Path(f"{stem}.npy"), Path(f"{stem}.offsets.npy"))

    @staticmethod
    def key(ids) -> bytes:
        return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=16).digest()

    def _open(self, keys: np.ndarray, states_path: Path, offsets_path: Path) -> None:
        self.chunks.append((np.load(states_path, mmap_mode="r"), np.load(offsets_path)))
        for i, key in enumerate(keys):
            self.index[key.tobytes()] = (len(self.chunks) - 1, i)

    def __contains__(self, ids) -> bool:
        return self.key(ids) in self.index

    def __getitem__(self, ids) -> torch.Tensor:
        chunk, i = self.index[self.key(ids)]
        states, offsets = self.chunks[chunk]
        return torch.from_numpy(np.array(states[offsets[i] : offsets[i + 1]]))

    def add(self, messages: list[tuple[int, ...]], states: torch.Tensor) -> None:
        """Store `states` (`trunk_pass` of `messages`, in order) as a new chunk."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".chunk")
        os.close(fd)
        stem = Path(name).with_suffix("")
        try:
            states_path, offsets_path = Path(f"{stem}.npy"), Path(f"{stem}.offsets.npy")
            _write_states(states, [len(ids) for ids in messages], states_path, offsets_path)
            keys = np.frombuffer(b"".join(self.key(ids) for ids in messages), dtype="V16")
            _write_array(Path(f"{stem}.keys.npy"), keys)
        finally:
            Path(name).unlink(missing_ok=True)
        self._open(keys, states_path, offsets_path)


def _real_tokens(split) -> list[list[int]]:
    """Each message's ids without its padding (`padding: max_length` pads every message on the right): the
    trunk states of real tokens only, as the padded forward computes them, pads masked."""
    if "attention_mask" not in split.column_names:
        return list(split["input_ids"])
    return [ids[: sum(mask)] for ids, mask in zip(split["input_ids"], split["attention_mask"], strict=True)]


def _write_states(states: torch.Tensor, lengths: list[int], path: Path, offsets_path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Offsets first, states last: the states file is what marks an entry complete, and each is written beside
    # its target and renamed, so a killed run never leaves a partial file that a later run trusts.
    _write_array(offsets_path, np.cumsum([0] + lengths))
    _write_array(path, states.numpy())


def _write_array(target: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def trunk_features(
    model: PreTrainedModel,
    n_frozen: int,
    tokenized,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, TrunkStates]:
    """The training inputs of the tail for every split of a tokenized `DatasetDict`: cached states + labels."""
    stores = cached_trunk_states(model, n_frozen, tokenized, cache_dir, batch_size, device, dtype)
    return {name: TrunkStates(stores[name], list(split["label"])) for name, split in tokenized.items()}


class TrunkStateStore:
    """Read-only, memory-mapped per-message trunk states: `store[i]` is a `[len_i, n_embd]` tensor."""

    def __init__(self, path: str | os.PathLike, offsets_path: str | os.PathLike):
        self.array = np.load(path, mmap_mode="r")
        self.offsets = np.load(offsets_path)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"trunk state {i} of {len(self)}")
        return torch.from_numpy(np.array(self.array[self.offsets[i] : self.offsets[i + 1]]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class TrunkStates(torch.utils.data.Dataset):
    """Cached trunk states and labels, one message per item."""

    def __init__(self, states: TrunkStateStore | list[torch.Tensor], labels: list[int]):
        if len(states) != len(labels):
            raise ValueError(f"{len(states)} trunk states for {len(labels)} labels")
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"hidden_states": self.states[i], "labels": self.labels[i]}


def collate_trunk_states(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pack a batch of messages into one row, without padding.

    `position_ids` restart at 0 for each message; from them Transformers' mask utilities build a
    block-diagonal causal mask, so a token attends only to the earlier tokens of its own message, exactly as
    in a padded batch, while every matrix product runs on real tokens only. `packed_ends` is where each
    message's last token sits in the row.
    """
    lengths = torch.tensor([len(f["hidden_states"]) for f in features])
    return {
        "hidden_states": torch.cat([f["hidden_states"] for f in features]).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
        "packed_ends": lengths.cumsum(0) - 1,
        "labels": torch.tensor([f["labels"] for f in features]),
    }

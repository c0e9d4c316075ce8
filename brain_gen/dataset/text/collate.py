"""Batches of signal text: TextCollate tokenizes samples into ids, attention mask and the channel of
every token; TextDataLoader is a DataLoader that uses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from brain_gen.config.errors import ConfigError, DataError
from brain_gen.config.schema import TextOptions
from brain_gen.dataset.datasets import IGNORE_INDEX
from brain_gen.dataset.text.tokenizer import open_tokenizer

# The channel id of separators and padding.
NO_CHANNEL = -1


class TextCollate:
    """Turns ChannelGroups samples into ``((input_ids, attention_mask, channel_ids), targets)``.

    All samples are tokenized in one ``encode_batch`` call. Each token's channel comes
    from arithmetic on token ids, not from per-token offsets: BPE never merges across
    the spaces between words, so a row's tokens spell its channel words in order, and
    the running count of characters (each token id has a fixed length) says which
    word, hence which channel, a token starts in. No Python loop touches single tokens.
    """

    def __init__(self, options: TextOptions | None = None, **keywords: Any):
        """``options``, or its keys as keywords (``tokenizer_path=...``); defaults are TextOptions'."""
        self.options = TextOptions.take(options, keywords)
        if keywords:
            raise TypeError(f"TextCollate got unknown arguments: {', '.join(keywords)}")
        if self.options.tokenizer_path is None:
            raise ConfigError("dataloader.tokenizer_path is required by TextDataLoader; train one with brain-gen tokenizer-text")
        use_separator = self.options.use_separator
        self._tokenizer = None
        tokenizer, self.special_tokens = open_tokenizer(self.options.tokenizer_path)
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id = self._token_id(tokenizer, "pad_token")
        if use_separator:
            for role in ("sep_token", "bos_token"):
                self._token_id(tokenizer, role)
        # Characters each token id spells: 0 for separators and padding; an unknown
        # character becomes one [UNK] token, so [UNK] spells one.
        self.token_chars = np.zeros(self.vocab_size, dtype=np.int64)
        for token, token_id in tokenizer.get_vocab().items():
            if token_id < self.vocab_size:
                self.token_chars[token_id] = len(token)
        for role, token in self.special_tokens.items():
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                self.token_chars[token_id] = 1 if role == "unk_token" else 0
        self._tokenizer = tokenizer

    def _token_id(self, tokenizer, role: str) -> int:
        token = self.special_tokens[role]
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ConfigError(f"dataloader.tokenizer_path: the tokenizer has no {role} {token!r}; retrain it with brain-gen tokenizer-text")
        return token_id

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # reopened in worker processes
            self._tokenizer, _ = open_tokenizer(self.options.tokenizer_path)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    def render(self, sample: list[list[str]]) -> tuple[str, np.ndarray, np.ndarray]:
        """The text of one sample, with the length and channel of each channel word in order."""
        channels = getattr(sample, "channels", None) or list(range(len(sample[0])))
        sep, bos = self.special_tokens["sep_token"], self.special_tokens["bos_token"]
        if self.options.use_separator:
            text = " ".join(f"{bos} " + f" {sep} ".join(group) for group in sample)
        else:
            text = " ".join(" ".join(group) for group in sample)
        lengths = np.array([len(group[0]) for group in sample], dtype=np.int64).repeat(len(channels))
        owners = np.tile(np.asarray(channels, dtype=np.int64), len(sample))
        return text, lengths, owners

    def _channel_ids(self, ids: np.ndarray, word_lengths: np.ndarray, word_owners: np.ndarray) -> np.ndarray:
        """The layout channel of each token of one row (-1 for separators and padding)."""
        spelled = self.token_chars[ids]
        first_char = np.cumsum(spelled) - spelled
        word_starts = np.cumsum(word_lengths) - word_lengths
        word = np.searchsorted(word_starts, first_char, side="right") - 1
        return np.where(spelled > 0, word_owners[np.clip(word, 0, len(word_owners) - 1)], NO_CHANNEL)

    def tokenize(self, sample: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and channel ids ``[T]`` of one whole sample (no cut, no padding)."""
        text, lengths, owners = self.render(sample)
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        return ids, self._channel_ids(ids, lengths, owners)

    def __call__(self, samples: list[Any]):
        """A batch of bare channel groups (targets: the next tokens) or of ``(groups, target)``
        pairs (targets: the samples' own, through ``default_collate``, e.g. a class per sample)."""
        split = [_groups_and_target(sample) for sample in samples]
        with_targets = [target is not _NO_TARGET for _, target in split]
        if any(with_targets) and not all(with_targets):
            raise DataError("TextDataLoader: a batch mixes bare channel groups with (groups, target) pairs; a dataset must yield one form")
        inputs, next_tokens = self._collate_groups([groups for groups, _ in split])
        if with_targets and with_targets[0]:
            return inputs, default_collate([target for _, target in split])
        return inputs, next_tokens

    def _collate_groups(self, samples: list[list[list[str]]]):
        rendered = [self.render(sample) for sample in samples]
        encodings = self.tokenizer.encode_batch([text for text, _, _ in rendered], add_special_tokens=False)
        rows = [encoding.ids for encoding in encodings]
        width = max(len(row) for row in rows)
        if self.options.max_length is not None:
            width = min(width, self.options.max_length + 1)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        channel_ids = np.full((len(rows), width), NO_CHANNEL, dtype=np.int64)
        for index, (row, (_, word_lengths, word_owners)) in enumerate(zip(rows, rendered)):
            row = np.asarray(row[:width], dtype=np.int64)
            ids[index, : len(row)] = row
            channel_ids[index, : len(row)] = self._channel_ids(row, word_lengths, word_owners)
        lengths = np.array([min(len(row), width) for row in rows])
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        targets = np.where(mask[:, 1:] == 1, ids[:, 1:], IGNORE_INDEX)
        inputs = (torch.from_numpy(ids[:, :-1].copy()), torch.from_numpy(mask[:, :-1].copy()), torch.from_numpy(channel_ids[:, :-1].copy()))
        return inputs, torch.from_numpy(targets)


_NO_TARGET = object()


def _is_channel_groups(value: Any) -> bool:
    """Whether ``value`` looks like a list of groups, each a list of channel words."""
    # Every group's type, but only the first group's words: a full check would cost a
    # Python call per channel word of every sample.
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(group, (list, tuple)) for group in value)
        and all(isinstance(word, str) for word in value[0])
    )


def _groups_and_target(sample: Any) -> tuple[Any, Any]:
    """Split one sample into its channel groups and its target (``_NO_TARGET`` for bare groups).

    Unambiguous: the first element of bare groups is a group of words, while the first
    element of a pair is a whole list of groups.
    """
    if _is_channel_groups(sample):
        return sample, _NO_TARGET
    if isinstance(sample, (list, tuple)) and len(sample) == 2 and _is_channel_groups(sample[0]):
        return sample[0], sample[1]
    raise DataError(
        f"TextDataLoader: a sample must be channel groups (a list of groups of channel words) or a (groups, target) pair; "
        f"got {type(sample).__name__} {repr(sample)[:80]}"
    )


class TextDataLoader(DataLoader):
    """A DataLoader of tokenized ChannelGroups samples (from BPEDataset).

    Batches are ``((input_ids, attention_mask, channel_ids), targets)``. For a dataset
    of bare channel groups the targets are the next token ids, -100 at padding; for a
    dataset of ``(groups, target)`` pairs they are its targets, collated by torch's
    ``default_collate`` (a class per sample, say, to decode from text). ``channel_ids``
    is the layout index of the channel each token came from, -1 for separators and padding.

    Args:
        dataset: a dataset of ChannelGroups (or plain lists of groups), or of
            ``(groups, target)`` pairs.
        options: :class:`~brain_gen.config.schema.TextOptions`, or its keys as keywords:
            ``tokenizer_path``, the folder holding ``tokenizer/`` from ``brain-gen
            tokenizer-text``; ``max_length``, at most this many input tokens per sample
            (longer ones are cut); ``use_separator``, [SEP] between the channels of a
            group and [BOS] before each group (with false, only spaces separate words).
        **kwargs: any torch DataLoader argument.
    """

    def __init__(self, dataset, options: TextOptions | None = None, **kwargs: Any):
        if "collate_fn" in kwargs:
            raise ValueError("TextDataLoader makes its own collate_fn")
        self.text = TextCollate(TextOptions.take(options, kwargs))
        self.vocab_size = self.text.vocab_size
        self.sequence_length = self.text.options.max_length
        super().__init__(dataset, collate_fn=self.text, **kwargs)

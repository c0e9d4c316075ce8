"""Windows of mu-law codes as text: each code becomes one character, each channel of a group of
time steps one word (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from brain_gen.dataset.datasets import ChunkDataset
from brain_gen.dataset.mulaw import mu_law_encode
from brain_gen.dataset.splitter import Split

# Codes map to Latin Extended and later letters: never whitespace, never a special token.
CODE_CHAR_OFFSET = 0x100


def code_alphabet(mu: int) -> list[str]:
    """The characters of codes 0..mu."""
    return [chr(CODE_CHAR_OFFSET + code) for code in range(mu + 1)]


class ChannelGroups(list):
    """A sample: a list of groups, each the list of per-channel strings of one group of time steps.

    ``channels`` gives, for each string position in a group, the channel's index in
    the dataset's channel layout (channels a session lacks are left out).
    """

    def __init__(self, groups: Iterable[list[str]], channels: list[int]):
        super().__init__(groups)
        self.channels = channels


class BPEDataset(ChunkDataset):
    """Windows of mu-law codes rendered as text groups for BPE.

    Each sample is one window's codes, int64 ``[C, L]`` (C channels, L samples), which
    TextDataLoader's collate renders as text, tokenizes and pads to token ids ``[B, T]``.

    Args:
        split: the split to read.
        max_val, mu: the mu-law coding (as ChunkDataset).
        group_size: time steps per group; every channel's string in a group has this
            many characters (the last group of a window may be shorter).
    """

    def __init__(self, split: Split, max_val: float = 10.0, mu: int = 255, group_size: int = 4):
        super().__init__(split, max_val=max_val, mu=mu)
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = int(group_size)
        self.alphabet = np.array(code_alphabet(self.mu))
        # A text sequence has no fixed length in time steps: the model is checked against
        # the tokenizer instead.
        self.sequence_length = None
        self.vocab_size = None

    def __getitem__(self, index: int) -> ChannelGroups:
        window, present = self.read_window(index)
        codes = self.encode(window)
        channels = np.flatnonzero(present)
        letters = self.alphabet[codes[channels]]  # [channels, time] array of characters
        rows = ["".join(row) for row in letters]
        step = self.group_size
        groups = [[row[start : start + step] for row in rows] for start in range(0, codes.shape[1], step)]
        return ChannelGroups(groups, channels.tolist())

    def encode(self, window: np.ndarray) -> np.ndarray:
        return mu_law_encode(torch.from_numpy(window), self.mu, self.max_val).numpy()

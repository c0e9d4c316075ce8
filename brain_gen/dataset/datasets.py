"""Datasets over the windows of a split.

Every dataset class is built as ``Class(split, **dataset_kwargs)``. A window always
has the canonical channel layout (the union over sessions); channels a session
lacks are zero in the input and masked in the target, so losses skip them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from brain_gen.dataset.mulaw import mu_law_encode
from brain_gen.dataset.session import open_chunk
from brain_gen.dataset.splitter import Split

# Target value of a missing channel for integer (code) targets; cross entropy skips it.
IGNORE_INDEX = -100


class WindowDataset(Dataset):
    """Reads windows ``[n_channels, window_samples]`` of a split as float32 arrays."""

    def __init__(self, split: Split):
        self.split = split
        self.num_channels = split.layout.n_channels
        position = {name: index for index, name in enumerate(split.layout.ch_names)}
        # For each session: where its channels sit in the canonical layout.
        self._rows = [np.array([position[name] for name in s.ch_names]) for s in split.sessions]
        self._complete = [
            len(rows) == self.num_channels and bool((rows == np.arange(self.num_channels)).all()) for rows in self._rows
        ]
        self._open_chunks: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.split.windows)

    def __getstate__(self) -> dict:
        # Memory maps are reopened in each worker process rather than pickled.
        state = self.__dict__.copy()
        state["_open_chunks"] = {}
        return state

    def _chunk(self, session_index: int, chunk_index: int) -> np.ndarray:
        key = (session_index, chunk_index)
        if key not in self._open_chunks:
            self._open_chunks[key] = open_chunk(self.split.sessions[session_index].chunk_path(chunk_index))
        return self._open_chunks[key]

    def read_window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's samples, float32 ``[C, L]``, and which channels are present, bool ``[C]``."""
        session_index, chunk_index, start = (int(v) for v in self.split.windows[index])
        samples = self._chunk(session_index, chunk_index)[:, start : start + self.split.window_samples]
        if self._complete[session_index]:
            # A copy: the memory map is read-only and must never leak into a batch.
            return np.array(samples, dtype=np.float32), np.ones(self.num_channels, dtype=bool)
        window = np.zeros((self.num_channels, self.split.window_samples), dtype=np.float32)
        rows = self._rows[session_index]
        window[rows] = samples
        present = np.zeros(self.num_channels, dtype=bool)
        present[rows] = True
        return window, present


class ChunkDatasetContinuous(WindowDataset):
    """Float next-step inputs ``x[:, :-1]`` with targets ``x[:, 1:]``.

    Args:
        split: the split to read.
        target: ``float`` (default): the next values, NaN for missing channels.
            ``codes``: the next values as int64 mu-law codes (-100 for missing
            channels), for MixupDataLoader with ``quantize: true``, which mixes the
            float inputs and then codes them the same way.
        mu, max_val: the mu-law coding of ``codes`` targets.
    """

    def __init__(self, split: Split, target: str = "float", mu: int = 255, max_val: float = 10.0):
        super().__init__(split)
        if target not in ("float", "codes"):
            raise ValueError(f"target must be 'float' or 'codes', got {target!r}")
        if not max_val > 0 or mu < 1:
            raise ValueError(f"mu must be at least 1 and max_val positive, got mu={mu}, max_val={max_val}")
        self.target = target
        self.mu = int(mu)
        self.max_val = float(max_val)
        self.sequence_length = split.window_samples - 1
        self.vocab_size = self.mu + 1 if target == "codes" else None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window, present = self.read_window(index)
        x = torch.from_numpy(window)
        missing = torch.from_numpy(~present)
        if self.target == "codes":
            targets = mu_law_encode(x[:, 1:], self.mu, self.max_val)
            targets[missing] = IGNORE_INDEX
        else:
            targets = x[:, 1:].clone()
            targets[missing] = float("nan")
        return x[:, :-1], targets


class ChunkDataset(WindowDataset):
    """Mu-law token next-step pairs ``(codes[:, :-1], codes[:, 1:])``, int64 codes in [0, mu].

    Args:
        split: the split to read.
        max_val: amplitude (in the data's units) mapped to the outermost codes; larger
            values are clipped.
        mu: mu-law parameter; the vocabulary has ``mu + 1`` codes.
    """

    def __init__(self, split: Split, max_val: float = 10.0, mu: int = 255):
        super().__init__(split)
        if not max_val > 0:
            raise ValueError(f"max_val must be positive, got {max_val}")
        if mu < 1:
            raise ValueError(f"mu must be at least 1, got {mu}")
        self.max_val = float(max_val)
        self.mu = int(mu)
        self.sequence_length = split.window_samples - 1
        self.vocab_size = self.mu + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window, present = self.read_window(index)
        codes = mu_law_encode(torch.from_numpy(window), self.mu, self.max_val)
        targets = codes[:, 1:].clone()
        targets[torch.from_numpy(~present)] = IGNORE_INDEX
        return codes[:, :-1], targets

"""Datasets over the windows of a split.

Every dataset class is built as ``Class(split, **dataset_kwargs)``. A window always
has the canonical channel layout (the union over sessions); channels a session
lacks are zero in the input and masked in the target, so losses skip them.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from brain_gen.config.errors import DataError
from brain_gen.dataset.mulaw import mu_law_encode
from brain_gen.dataset.session import open_chunk
from brain_gen.dataset.splitter import Split

log = logging.getLogger(__name__)

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
        # Per session: where each chunk starts in the whole recording, in samples.
        self._chunk_starts = [np.cumsum([0] + [chunk.n_samples for chunk in s.chunks]) for s in split.sessions]

    def session_samples(self, session_index: int) -> int:
        """Length of a whole session, in samples."""
        return int(self._chunk_starts[session_index][-1])

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

    def locate(self, index: int) -> tuple[str, float]:
        """(session name, start in seconds from the session's start) of sample ``index``."""
        session_index, chunk_index, start = (int(v) for v in self.split.windows[index])
        return self.split.sessions[session_index].name, (self._chunk_starts[session_index][chunk_index] + start) / self.split.sfreq

    def read_window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The window's samples, float32 ``[C, L]``, and which channels are present, bool ``[C]``."""
        session_index, chunk_index, start = (int(v) for v in self.split.windows[index])
        samples = self._chunk(session_index, chunk_index)[:, start : start + self.split.window_samples]
        return self._in_layout(session_index, samples)

    def read_span(self, session_index: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``length`` samples of a session from sample ``start`` of the whole recording, read across
        chunk boundaries, in the canonical layout ``[C, length]``, and which channels are present."""
        starts = self._chunk_starts[session_index]
        stop = start + length
        pieces = []
        chunk_index = int(np.searchsorted(starts, start, side="right")) - 1
        while start < stop:
            piece_end = min(stop, int(starts[chunk_index + 1]))
            offset = int(starts[chunk_index])
            pieces.append(self._chunk(session_index, chunk_index)[:, start - offset : piece_end - offset])
            start, chunk_index = piece_end, chunk_index + 1
        samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        return self._in_layout(session_index, samples)

    def _in_layout(self, session_index: int, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A session's samples ``[its channels, L]`` placed in the canonical layout, and which channels are present."""
        if self._complete[session_index]:
            # A copy: the memory map is read-only and must never leak into a batch.
            return np.array(samples, dtype=np.float32), np.ones(self.num_channels, dtype=bool)
        window = np.zeros((self.num_channels, samples.shape[1]), dtype=np.float32)
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
        if self.target == "codes":
            targets = mu_law_encode(x[:, 1:], self.mu, self.max_val)
            targets[torch.from_numpy(~present)] = IGNORE_INDEX
        elif present.all():
            # A view, as the inputs are: the collate copies both into the batch anyway.
            targets = x[:, 1:]
        else:
            targets = x[:, 1:].clone()  # its own memory: NaN must not reach the inputs
            targets[torch.from_numpy(~present)] = float("nan")
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
        if present.all():
            return codes[:, :-1], codes[:, 1:]  # views: the collate copies both into the batch
        targets = codes[:, 1:].clone()  # its own memory: -100 must not reach the inputs
        targets[torch.from_numpy(~present)] = IGNORE_INDEX
        return codes[:, :-1], targets


class ChunkDatasetClassification(WindowDataset):
    """One sample per event of the sessions' ``events.tsv``: ``(x float32 [C, L], y int64)``.

    The window starts ``tmin`` seconds from the event onset and is
    L = round((tmax - tmin) x sfreq) samples long, read across chunk boundaries.
    Events whose window runs past either edge of the recording are dropped (counted
    in one warning). ``example_seconds`` and ``overlap_seconds`` do not shape these
    samples.

    Args:
        split: the split to read.
        tmin, tmax: window start and end relative to the onset, in seconds.
        label_column: the events.tsv column holding the class label.
        classes: the labels to keep, in the order of their class indices. Default:
            the sorted labels of every session in every split, so that all splits
            share one mapping.
        baseline: ``[start, end]`` in seconds relative to the onset (within
            [tmin, tmax]): each channel's mean over that span is subtracted.
    """

    def __init__(
        self,
        split: Split,
        tmin: float = -0.1,
        tmax: float = 0.5,
        label_column: str = "trial_type",
        classes: list[str] | None = None,
        baseline: list[float] | None = None,
    ):
        super().__init__(split)
        if not tmax > tmin:
            raise ValueError(f"tmax ({tmax} s) must be after tmin ({tmin} s)")
        self.sequence_length = int(round((tmax - tmin) * split.sfreq))
        if self.sequence_length < 1:
            raise ValueError(f"tmax - tmin = {tmax - tmin} s is shorter than one sample at {split.sfreq:g} Hz")
        self.tmin, self.tmax = float(tmin), float(tmax)
        self.baseline_span = None
        if baseline is not None:
            if len(baseline) != 2 or not tmin <= baseline[0] < baseline[1] <= tmax:
                raise ValueError(f"baseline must be [start, end] within [tmin, tmax] = [{tmin}, {tmax}] s, got {baseline}")
            first = int(round((baseline[0] - tmin) * split.sfreq))
            self.baseline_span = (first, max(first + 1, int(round((baseline[1] - tmin) * split.sfreq))))
        self.label_column = label_column
        sessions_for_labels = split.all_sessions or split.sessions
        if classes is None:
            classes = sorted({label for session in sessions_for_labels for _, label in read_events(session, label_column)})
        self.classes = [str(name) for name in classes]
        self.num_classes = len(self.classes)
        index_of = {name: index for index, name in enumerate(self.classes)}
        events, dropped = [], 0
        for session_index, session in enumerate(split.sessions):
            total = int(self._chunk_starts[session_index][-1])
            for onset, label in read_events(session, label_column):
                if label not in index_of:
                    continue
                start = int(round((onset + self.tmin) * split.sfreq))
                if start < 0 or start + self.sequence_length > total:
                    dropped += 1
                    continue
                events.append((session_index, start, onset, index_of[label]))
        if dropped:
            log.warning("%s split: dropped %d event(s) whose window [tmin, tmax] runs past the recording's edge", split.name, dropped)
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def read_event(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The event's window ``[C, L]`` in the canonical layout (joined across chunks) and which channels are present."""
        session_index, start, _, _ = self.events[index]
        return self.read_span(session_index, start, self.sequence_length)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window, _ = self.read_event(index)
        if self.baseline_span is not None:
            first, last = self.baseline_span
            window -= window[:, first:last].mean(axis=1, keepdims=True)
        return torch.from_numpy(window), torch.tensor(self.events[index][3], dtype=torch.int64)

    def locate(self, index: int) -> tuple[str, float]:
        """(session name, start of the event's window in seconds from the session's start) of sample ``index``."""
        session_index, start, _, _ = self.events[index]
        return self.split.sessions[session_index].name, start / self.split.sfreq

    def describe(self, index: int) -> tuple[str, float, str]:
        """(session name, event onset in seconds, class label) of sample ``index``."""
        session_index, _, onset, label_index = self.events[index]
        return self.split.sessions[session_index].name, onset, self.classes[label_index]


def read_events(session, label_column: str) -> list[tuple[float, str]]:
    """(onset in seconds, label) of every row of a session's events.tsv; none without the file."""
    path = Path(session.path) / "events.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {"onset", label_column} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: no {', '.join(sorted(missing))} column; events.tsv needs onset and {label_column} (datasplitter.dataset_kwargs.label_column)")
        events = []
        for line, row in enumerate(reader, start=2):
            try:
                onset = float(row["onset"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {line}: onset {row['onset']!r} is not a number of seconds") from None
            label = row[label_column]
            if label not in (None, "", "n/a"):
                events.append((onset, label))
    return events

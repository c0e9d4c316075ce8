"""Find sessions, cut them into windows and split them into train / val / test.

Splits keep a unit whole (a session, a subject, or a dataset), are deterministic
for a seed, and never share a unit. Session descriptions are cached so that a
second start only stats files instead of reading them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brain_gen.config.errors import ConfigError, DataError
from brain_gen.config.schema import DataSplitterConfig
from brain_gen.dataset.session import SessionInfo, list_session_dirs, scan_session
from brain_gen.distributed import launched_as_rank_zero

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
CACHE_VERSION = 1


@dataclass
class ChannelLayout:
    """The canonical channel order: the union of all sessions' channels."""

    ch_names: list[str]
    pos_2d: list[list[float]]
    ch_types: list[str | None]

    @classmethod
    def union_of(cls, sessions: list[SessionInfo]) -> ChannelLayout:
        """Channels in order of first appearance over the sessions (which are sorted)."""
        names: list[str] = []
        positions: list[list[float]] = []
        types: list[str | None] = []
        seen = set()
        for session in sessions:
            for index, name in enumerate(session.ch_names):
                if name not in seen:
                    seen.add(name)
                    names.append(name)
                    positions.append(session.pos_2d[index])
                    types.append(session.ch_types[index] if session.ch_types else None)
        return cls(names, positions, types)

    @property
    def n_channels(self) -> int:
        return len(self.ch_names)


@dataclass
class Split:
    """The sessions of one split and its windows.

    ``windows`` is an int32 array (int64 for chunks of 2**31 samples or more) of rows ``(session index, chunk index, start sample)``.
    """

    name: str
    sessions: list[SessionInfo]
    windows: np.ndarray
    window_samples: int
    layout: ChannelLayout
    sfreq: float
    # Every session of the dataset, in all splits: for what all splits must share (class labels).
    all_sessions: list[SessionInfo] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.windows)


def dataset_roots(config: DataSplitterConfig) -> dict[str, Path]:
    """Dataset name -> root folder. A bare path is named after its folder."""
    roots = config.dataset_root
    if isinstance(roots, dict):
        return {name: Path(path) for name, path in roots.items()}
    paths = [Path(roots)] if isinstance(roots, str) else [Path(path) for path in roots]
    named: dict[str, Path] = {}
    for path in paths:
        if path.name in named:
            raise ConfigError(
                f"datasplitter.dataset_root: two roots are both named {path.name!r}; "
                "give a mapping {name: path} to name them apart"
            )
        named[path.name] = path
    return named


def _count_split(n_units: int, val_ratio: float, test_ratio: float, unit: str) -> tuple[int, int]:
    """Val and test unit counts. A non-zero ratio always gets at least one unit."""

    def share(ratio: float) -> int:
        return max(1, int(np.floor(n_units * ratio + 0.5))) if ratio > 0 else 0

    n_val, n_test = share(val_ratio), share(test_ratio)
    if n_units - n_val - n_test < 1:
        raise DataError(
            f"datasplitter: {n_units} {unit}(s) are too few to fill train, val and test; "
            "add data or lower val_ratio / test_ratio"
        )
    return n_val, n_test


class DataSplitter:
    """Builds the train, val and test splits described by a ``datasplitter`` section."""

    def __init__(self, config: DataSplitterConfig, cache_dir: str | os.PathLike):
        self.config = config
        self.cache_dir = Path(config.cache_dir or cache_dir)
        self.roots = dataset_roots(config)
        if config.split_strategy == "dataset":
            if config.heldout_dataset not in self.roots:
                raise ConfigError(
                    f"datasplitter.heldout_dataset: {config.heldout_dataset!r} is not a dataset name; "
                    f"the datasets are {', '.join(sorted(self.roots))}"
                )
            if len(self.roots) < 2:
                raise ConfigError("datasplitter.split_strategy: 'dataset' needs at least two datasets in dataset_root")
        self.sessions_read = 0
        self.sessions_from_cache = 0

    # ----------------------------------------------------------------- scanning

    def _cache_file(self, root: Path) -> Path:
        digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        return self.cache_dir / f"sessions-{digest}.json"

    def _load_cache(self, root: Path) -> dict[str, SessionInfo]:
        path = self._cache_file(root)
        if self.config.refresh_cache or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("version") != CACHE_VERSION:
                return {}
            return {entry["path"]: SessionInfo.from_json(entry) for entry in data["sessions"]}
        except (OSError, ValueError, KeyError, TypeError):
            # A damaged cache is only a lost shortcut: rescan.
            log.warning("ignoring unreadable session cache %s; rescanning", path)
            return {}

    def _save_cache(self, root: Path, sessions: list[SessionInfo]) -> None:
        # Every rank of a distributed run scans and splits alike; the shortcut is written once.
        if not launched_as_rank_zero():
            return
        path = self._cache_file(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": CACHE_VERSION, "root": str(root), "sessions": [s.to_json() for s in sessions]}
        # Written under a temporary name and renamed, so a reader never sees half a file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(payload, handle)
        os.replace(handle.name, path)

    def scan(self) -> list[SessionInfo]:
        """Describe every session of every dataset root, sorted by dataset then name."""
        sessions = []
        for dataset, root in sorted(self.roots.items()):
            cached = self._load_cache(root)
            found, changed = [], False
            for session_dir in list_session_dirs(root):
                info, was_read = scan_session(session_dir, dataset, cached.get(str(session_dir)))
                info.dataset = dataset
                found.append(info)
                changed |= was_read
                self.sessions_read += was_read
                self.sessions_from_cache += not was_read
            if changed or len(found) != len(cached):
                self._save_cache(root, found)
            sessions.extend(found)
        self._check_sfreq(sessions)
        return sessions

    @staticmethod
    def _check_sfreq(sessions: list[SessionInfo]) -> None:
        reference = sessions[0]
        for session in sessions[1:]:
            if session.sfreq != reference.sfreq:
                raise DataError(
                    f"sampling rates differ: {reference.path} is {reference.sfreq:g} Hz but {session.path} "
                    f"is {session.sfreq:g} Hz; resample all sessions to one rate"
                )

    # ----------------------------------------------------------------- splitting

    def _unit_of(self, session: SessionInfo) -> str:
        if self.config.split_strategy == "session":
            return session.key
        # Subjects are only the same person within one dataset.
        return f"{session.dataset}/{session.subject or session.name}"

    def assign(self, sessions: list[SessionInfo]) -> dict[str, str]:
        """Session key -> split name."""
        config = self.config
        rng = np.random.default_rng(config.seed)
        if config.split_strategy == "subject":
            missing = [s.name for s in sessions if s.subject is None]
            if missing:
                log.warning(
                    "%d session(s) name no subject (no 'subject' in meta.json, no sub-XXX in the name); "
                    "each counts as its own subject",
                    len(missing),
                )
        if config.split_strategy == "dataset":
            heldout = sorted({self._unit_of(s) for s in sessions if s.dataset == config.heldout_dataset})
            if len(heldout) < 2:
                raise DataError(
                    f"datasplitter.heldout_dataset: {config.heldout_dataset!r} has {len(heldout)} subject(s); "
                    "it needs at least 2 to split into val and test"
                )
            order = [heldout[i] for i in rng.permutation(len(heldout))]
            n_val = len(order) - len(order) // 2
            unit_split = {unit: ("val" if rank < n_val else "test") for rank, unit in enumerate(order)}
            return {s.key: unit_split.get(self._unit_of(s), "train") for s in sessions}

        units = sorted({self._unit_of(s) for s in sessions})
        unit_name = "subject" if config.split_strategy == "subject" else "session"
        n_val, n_test = _count_split(len(units), config.val_ratio, config.test_ratio, unit_name)
        order = [units[i] for i in rng.permutation(len(units))]
        unit_split = {}
        for rank, unit in enumerate(order):
            unit_split[unit] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
        return {s.key: unit_split[self._unit_of(s)] for s in sessions}

    def window_samples(self, sfreq: float) -> tuple[int, int]:
        """Window length and hop, in samples."""
        length = int(round(self.config.example_seconds * sfreq))
        hop = length - int(round(self.config.overlap_seconds * sfreq))
        if length < 2 or hop < 1:
            raise ConfigError(
                f"datasplitter.example_seconds: {self.config.example_seconds} s at {sfreq:g} Hz gives "
                f"{length} sample(s) with a hop of {hop}; make windows longer or the overlap shorter"
            )
        return length, hop

    def split(self) -> dict[str, Split]:
        """Scan, assign and window: the three splits by name."""
        sessions = self.scan()
        layout = ChannelLayout.union_of(sessions)
        sfreq = sessions[0].sfreq
        length, hop = self.window_samples(sfreq)
        assignment = self.assign(sessions)
        # Three numbers per window (session, chunk, start sample), 12 bytes in int32: a
        # million windows take 12 MB. Only chunks of 2**31 samples or more need int64.
        longest = max((chunk.n_samples for session in sessions for chunk in session.chunks), default=0)
        index_type = np.int32 if max(longest, len(sessions)) < 2**31 else np.int64
        short_chunks = 0
        splits = {}
        for name in SPLIT_NAMES:
            members = [s for s in sessions if assignment[s.key] == name]
            rows = []
            for session_index, session in enumerate(members):
                for chunk_index, chunk in enumerate(session.chunks):
                    if chunk.n_samples < length:
                        short_chunks += 1
                        continue
                    starts = np.arange(0, chunk.n_samples - length + 1, hop, dtype=index_type)
                    block = np.empty((len(starts), 3), dtype=index_type)
                    block[:, 0], block[:, 1], block[:, 2] = session_index, chunk_index, starts
                    rows.append(block)
            windows = np.concatenate(rows) if rows else np.empty((0, 3), dtype=index_type)
            splits[name] = Split(name, members, windows, length, layout, sfreq, all_sessions=sessions)
        if len(splits["train"]) == 0:
            # The error alone says it all: no separate line about the skipped chunks.
            chunks = [chunk.n_samples for session in splits["train"].sessions for chunk in session.chunks]
            longest = f"; the longest has {max(chunks)}" if chunks else ""
            raise DataError(
                f"datasplitter.example_seconds: the training split has no windows: all {len(chunks)} of its chunks are "
                f"shorter than one window of {self.config.example_seconds:g} s ({length} samples{longest}); "
                "make example_seconds shorter"
            )
        if short_chunks:
            log.warning(
                "skipped %d chunk(s) shorter than one window of %g s (%d samples)",
                short_chunks,
                self.config.example_seconds,
                length,
            )
        return splits

"""Read and check sessions stored in the chunked session format.

A session is a folder::

    <session>/meta.json     {"sfreq": 250.0, "ch_names": [...], "pos_2d": [[x, y], ...],
                             "ch_types": [...] (optional), "subject": "sub-01" (optional)}
    <session>/<k>.npy       float32 or float16, shape [n_channels, n_samples], k = 0, 1, 2, ...
    <session>/events.tsv    optional, BIDS-style onset / duration / trial_type

Chunks are memory-mapped and never unpickled. ``write_session`` writes the format (for
`brain-gen prepare`, the demo and tests alike) and ``read_meta`` checks it on reading.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brain_gen.config.errors import DataError

log = logging.getLogger(__name__)

CHUNK_NAME = re.compile(r"^(\d+)\.npy$")
SUBJECT_TOKEN = re.compile(r"(?:^|[_\-/])(sub-[A-Za-z0-9]+)")
ALLOWED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
# Samples per channel checked for NaN/Inf at a time, to bound memory on long chunks.
FINITE_CHECK_BLOCK = 1 << 18
# Hidden folders of a session being written, or of the one it replaces: never read as sessions.
PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = ".replaced-"


@dataclass
class SessionMeta:
    """What a session's meta.json holds.

    ``extra`` is anything else worth keeping with the data, such as the provenance that
    `brain-gen prepare` writes (source file, bad channels, settings); readers ignore it.
    """

    sfreq: float
    ch_names: list[str]
    pos_2d: list[list[float]]
    ch_types: list[str] | None = None
    subject: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sfreq": float(self.sfreq), "ch_names": list(self.ch_names), "pos_2d": self.pos_2d}
        data.update({key: value for key, value in (("ch_types", self.ch_types), ("subject", self.subject)) if value is not None})
        return {**data, **self.extra}


def write_session(
    target: Path,
    chunks: Iterable[np.ndarray],
    meta: SessionMeta,
    events: Iterable[tuple[float, float, str]] | None = None,
    dtype: str | np.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one session: ``<k>.npy`` per chunk ``[n_channels, n_samples]``, meta.json, and
    events.tsv when ``events`` (onset, duration, trial_type) are given; returns ``target``.

    Chunks are stored as ``dtype``; by default float16 ones stay float16 and others
    become float32. The files go to a hidden folder that is then renamed to ``target``,
    so ``target`` never holds a half-written session. An existing ``target`` is an error
    unless it is an empty folder or ``overwrite`` is set: then it is renamed aside first and put back if the new one
    fails to move in. A process killed outright leaves only hidden folders, which the
    next write of the same session removes.
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already holds files; nothing is overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Only this session's leftovers: "<prefix><name>-<pid>" exactly, so that the hidden
    # folder of another session whose name extends this one (sub-01-ses-2) is left alone.
    leftover = re.compile(f"({re.escape(PARTIAL_PREFIX)}|{re.escape(REPLACED_PREFIX)}){re.escape(target.name)}-[0-9]+")
    for stale in target.parent.glob(f".*{target.name}-*"):
        if leftover.fullmatch(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    partial = target.with_name(f"{PARTIAL_PREFIX}{target.name}-{os.getpid()}")
    replaced = target.with_name(f"{REPLACED_PREFIX}{target.name}-{os.getpid()}")
    partial.mkdir()
    try:
        for index, chunk in enumerate(chunks):
            chunk_dtype = dtype or (np.float16 if chunk.dtype == np.float16 else np.float32)
            np.save(partial / f"{index}.npy", np.ascontiguousarray(chunk, dtype=chunk_dtype))
        if events is not None:
            lines = ["onset\tduration\ttrial_type", *(f"{onset:.6f}\t{length:.6f}\t{kind}" for onset, length, kind in events)]
            (partial / "events.tsv").write_text("\n".join(lines) + "\n")
        (partial / "meta.json").write_text(json.dumps(meta.to_json()))
        if target.exists():
            os.replace(target, replaced)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if replaced.exists() and not target.exists():
            os.replace(replaced, target)  # put the old session back
        raise
    shutil.rmtree(replaced, ignore_errors=True)
    return target


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk file of a session."""

    file_name: str
    n_samples: int
    size_bytes: int
    mtime_ns: int


@dataclass
class SessionInfo:
    """Everything the splitter needs to know about a session, without its samples."""

    dataset: str
    name: str
    path: str
    sfreq: float
    ch_names: list[str]
    pos_2d: list[list[float]]
    ch_types: list[str] | None
    subject: str | None
    chunks: list[ChunkInfo] = field(default_factory=list)
    # meta.json's modification time, so a cached description can tell it is stale.
    meta_mtime_ns: int = 0

    @property
    def key(self) -> str:
        """Unique name across datasets: ``dataset/session``."""
        return f"{self.dataset}/{self.name}"

    def chunk_path(self, index: int) -> Path:
        return Path(self.path) / self.chunks[index].file_name

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionInfo:
        chunks = [ChunkInfo(**chunk) for chunk in data.pop("chunks")]
        return cls(**data, chunks=chunks)


def subject_from_name(session_name: str) -> str | None:
    """The ``sub-XXX`` token of a BIDS-like session name, if any."""
    match = SUBJECT_TOKEN.search(session_name)
    return match.group(1) if match else None


def list_session_dirs(root: Path) -> list[Path]:
    """Session folders (those holding meta.json) directly under ``root``, sorted by name.

    Hidden folders (names starting with a dot) are the only ones skipped in silence:
    brain-gen prepare writes unfinished sessions under such names. A folder with chunk
    files but no meta.json is an error (a session that would silently be left out);
    any other folder is named in one warning line.
    """
    if not root.is_dir():
        raise DataError(f"datasplitter.dataset_root: folder not found: {root}")
    folders = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    sessions = [folder for folder in folders if (folder / "meta.json").is_file()]
    others = [folder for folder in folders if not (folder / "meta.json").is_file()]
    broken = [folder for folder in others if any(CHUNK_NAME.match(child.name) for child in folder.iterdir())]
    if broken:
        names = ", ".join(str(folder) for folder in broken)
        raise DataError(
            f"{names}: chunk files but no meta.json, so not a session; write its meta.json (brain-gen prepare does), "
            "or move the folder out of datasplitter.dataset_root"
        )
    if others:
        log.warning("datasplitter.dataset_root: ignored %d folder(s) without meta.json: %s", len(others), ", ".join(folder.name for folder in others))
    if not sessions:
        raise DataError(
            f"datasplitter.dataset_root: no session folders with a meta.json in {root}; "
            "point it at the folder that contains the session folders"
        )
    return sessions


def list_chunk_files(session_dir: Path) -> list[Path]:
    """The session's ``<k>.npy`` files ordered by k as a number (10 after 9)."""
    numbered = []
    for child in session_dir.iterdir():
        match = CHUNK_NAME.match(child.name)
        if match:
            numbered.append((int(match.group(1)), child))
    if not numbered:
        raise DataError(f"{session_dir}: no chunk files named 0.npy, 1.npy, ... in this session")
    numbered.sort()
    for expected, (number, path) in enumerate(numbered):
        if number != expected:
            # Two names for one number (1.npy, 01.npy) or a hole: the order of the recording is in doubt.
            problem = f"both {numbered[expected - 1][1].name} and {path.name}" if number < expected else f"{expected}.npy is missing"
            raise DataError(f"{session_dir}: chunks must be numbered 0, 1, 2, ... without gaps; {problem}")
    return [path for _, path in numbered]


def read_meta(session_dir: Path) -> dict[str, Any]:
    """Read and check meta.json; every problem names the file."""
    meta_path = session_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path}: cannot read as JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: must hold a JSON object")
    for key in ("sfreq", "ch_names", "pos_2d"):
        if key not in meta:
            raise DataError(f"{meta_path}: missing key {key!r}")
    sfreq = meta["sfreq"]
    if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or not sfreq > 0:
        raise DataError(f"{meta_path}: sfreq must be a positive number of Hz, got {sfreq!r}")
    ch_names = meta["ch_names"]
    if not isinstance(ch_names, list) or not ch_names or not all(isinstance(name, str) for name in ch_names):
        raise DataError(f"{meta_path}: ch_names must be a non-empty list of strings")
    if len(set(ch_names)) != len(ch_names):
        raise DataError(f"{meta_path}: ch_names has duplicates")
    n_channels = len(ch_names)
    pos_2d = meta["pos_2d"]
    try:
        positions = np.asarray(pos_2d, dtype=np.float64)
    except (TypeError, ValueError):
        positions = None
    if positions is None or positions.shape != (n_channels, 2) or not np.isfinite(positions).all():
        raise DataError(f"{meta_path}: pos_2d must be {n_channels} finite [x, y] pairs, one per channel")
    ch_types = meta.get("ch_types")
    if ch_types is not None and (not isinstance(ch_types, list) or len(ch_types) != n_channels):
        raise DataError(f"{meta_path}: ch_types must list one type per channel ({n_channels})")
    subject = meta.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise DataError(f"{meta_path}: subject must be a string, got {subject!r}")
    return {
        "sfreq": float(sfreq),
        "ch_names": ch_names,
        "pos_2d": positions.tolist(),
        "ch_types": ch_types,
        "subject": subject,
    }


def open_chunk(path: Path) -> np.ndarray:
    """Memory-map a chunk file without allowing pickled objects."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); re-export this chunk") from exc


def check_chunk(path: Path, n_channels: int) -> int:
    """Check dtype, shape and finiteness of a chunk; return its sample count."""
    array = open_chunk(path)
    if array.dtype not in ALLOWED_DTYPES:
        raise DataError(f"{path}: dtype {array.dtype} is not supported; save chunks as float32 or float16")
    if array.ndim != 2 or array.shape[0] != n_channels:
        raise DataError(
            f"{path}: shape {tuple(array.shape)} does not match meta.json's {n_channels} channels; "
            "expected [n_channels, n_samples]"
        )
    for start in range(0, array.shape[1], FINITE_CHECK_BLOCK):
        block = array[:, start : start + FINITE_CHECK_BLOCK]
        if not np.isfinite(block).all():
            bad_sample = start + int(np.argwhere(~np.isfinite(block))[0, 1])
            raise DataError(f"{path}: contains NaN or Inf (first at sample {bad_sample}); clean or drop this chunk")
    return int(array.shape[1])


def _chunk_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def scan_session(session_dir: Path, dataset: str, cached: SessionInfo | None = None) -> tuple[SessionInfo, bool]:
    """Describe a session, reusing ``cached`` when no file changed since it was made.

    Returns the description and whether the session had to be read again.
    """
    chunk_files = list_chunk_files(session_dir)
    if cached is not None and _cache_is_fresh(cached, session_dir, chunk_files):
        return cached, False
    meta = read_meta(session_dir)
    chunks = []
    for chunk_path in chunk_files:
        n_samples = check_chunk(chunk_path, len(meta["ch_names"]))
        size_bytes, mtime_ns = _chunk_stat(chunk_path)
        chunks.append(ChunkInfo(chunk_path.name, n_samples, size_bytes, mtime_ns))
    subject = meta["subject"] or subject_from_name(session_dir.name)
    info = SessionInfo(
        dataset=dataset,
        name=session_dir.name,
        path=str(session_dir),
        sfreq=meta["sfreq"],
        ch_names=meta["ch_names"],
        pos_2d=meta["pos_2d"],
        ch_types=meta["ch_types"],
        subject=subject,
        chunks=chunks,
        meta_mtime_ns=(session_dir / "meta.json").stat().st_mtime_ns,
    )
    return info, True


def _cache_is_fresh(cached: SessionInfo, session_dir: Path, chunk_files: list[Path]) -> bool:
    if [chunk.file_name for chunk in cached.chunks] != [path.name for path in chunk_files]:
        return False
    if cached.meta_mtime_ns != (session_dir / "meta.json").stat().st_mtime_ns:
        return False
    return all(
        (chunk.size_bytes, chunk.mtime_ns) == _chunk_stat(path) for chunk, path in zip(cached.chunks, chunk_files)
    )

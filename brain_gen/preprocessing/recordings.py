"""Find raw recordings among files, folders and BIDS datasets, name them, and read them with MNE."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brain_gen.config.errors import DataError

# Entry files (or folders) of the formats MNE reads. Companion files (BrainVision
# .eeg/.vmrk, EEGLAB .fdt, BIDS sidecars) are read through their entry file.
FILE_SUFFIXES = (".fif", ".fif.gz", ".edf", ".bdf", ".gdf", ".vhdr", ".set", ".con", ".sqd", ".cnt")
FOLDER_SUFFIXES = (".ds", ".mff")
BIDS_DATATYPES = ["meg", "eeg", "ieeg"]
BIDS_ENTITY_ORDER = ("subject", "session", "task", "acquisition", "run", "processing", "recording", "space")
BIDS_ENTITY_KEYS = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "run": "run",
                    "processing": "proc", "recording": "rec", "space": "space"}
# Later parts of a recording that FIF writes in pieces, which MNE reads through the first
# part: BIDS split-02 and up, and Neuromag's name-1.fif after name.fif.
BIDS_LATER_SPLIT = re.compile(r"_split-(?!0*1_)\d+_")
NEUROMAG_PART = re.compile(r"^(?P<base>.+)-\d+(?P<suffix>\.fif(\.gz)?)$")


def is_fif_continuation(path: Path) -> bool:
    """A later part of a split FIF recording (read through its first part), not a recording of its own."""
    if BIDS_LATER_SPLIT.search(path.name):
        return True
    match = NEUROMAG_PART.match(path.name)
    # sub-01.fif or run-2.fif are recordings; rest-1.fif is a part only when rest.fif sits beside it.
    return bool(match) and (path.parent / f"{match['base']}{match['suffix']}").exists()


class RecordingUnusable(Exception):
    """The file cannot be read, or has nothing to prepare; the message is the one-line reason."""


@dataclass
class Recording:
    """One raw recording to prepare into the session folder ``name``."""

    path: Path
    name: str
    subject: str | None = None
    bids_path: Any = None  # mne_bids.BIDSPath for recordings found in a BIDS dataset

    @property
    def supported(self) -> bool:
        return self.bids_path is not None or _suffix(self.path) is not None


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    suffixes = FOLDER_SUFFIXES if path.is_dir() else FILE_SUFFIXES
    return next((suffix for suffix in suffixes if name.endswith(suffix)), None)


def _stem(path: Path) -> str:
    suffix = _suffix(path) or path.suffix
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _name_from_entities(entities: dict[str, Any]) -> str | None:
    parts = [f"{BIDS_ENTITY_KEYS[key]}-{entities[key]}" for key in BIDS_ENTITY_ORDER if entities.get(key)]
    return "_".join(parts) if entities.get("subject") else None


def _from_file_name(path: Path) -> Recording:
    """A recording named after the BIDS entities in its file name, or else its stem."""
    from mne_bids import get_entities_from_fname

    try:
        entities = get_entities_from_fname(path.name, on_error="ignore")
    except Exception:  # a name that only looks like BIDS
        entities = {}
    name = _name_from_entities(entities)
    subject = f"sub-{entities['subject']}" if name else None
    return Recording(path=path, name=name or _stem(path), subject=subject)


def _bids_recordings(root: Path) -> list[Recording]:
    from mne_bids import find_matching_paths

    recordings = []
    for bids_path in find_matching_paths(root, datatypes=BIDS_DATATYPES, suffixes=BIDS_DATATYPES, extensions=list(FILE_SUFFIXES + FOLDER_SUFFIXES)):
        if bids_path.split not in (None, "01"):
            continue
        entities = {key: getattr(bids_path, key) for key in BIDS_ENTITY_ORDER}
        name = _name_from_entities(entities) or _stem(bids_path.fpath)
        recordings.append(Recording(path=Path(bids_path.fpath), name=name, subject=f"sub-{bids_path.subject}", bids_path=bids_path))
    # MEG and EEG recorded in one run share their entities: the datatype keeps them apart.
    counts = Counter(recording.name for recording in recordings)
    for recording in recordings:
        if counts[recording.name] > 1:
            recording.name = f"{recording.name}_{recording.bids_path.datatype}"
    return recordings


def _folder_recordings(folder: Path) -> list[Recording]:
    found = []
    for path in sorted(folder.rglob("*")):
        if any(parent.name.lower().endswith(FOLDER_SUFFIXES) for parent in path.relative_to(folder).parents if parent != Path(".")):
            continue  # files inside a CTF .ds or an .mff folder
        if _suffix(path) is not None and not is_fif_continuation(path):
            found.append(_from_file_name(path))
    return found


def find_recordings(inputs: list[str | Path]) -> list[Recording]:
    """Every recording under ``inputs`` (files, folders, BIDS roots), each with a unique session name.

    A named input that does not exist is a DataError. Files of an unknown type that
    were named explicitly are kept, so that the run reports them as skipped.
    """
    recordings: list[Recording] = []
    bases: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; give recordings, folders of recordings, or a BIDS root")
        if path.is_dir() and _suffix(path) is None:
            found = _bids_recordings(path) if (path / "dataset_description.json").is_file() else _folder_recordings(path)
            recordings.extend(found)
            bases.extend([path] * len(found))
        else:
            recordings.append(_from_file_name(path))
            bases.append(path.parent)
    # Same name from two places (rest.fif of two subjects): name those by their path
    # instead; the same stem in two formats (rec.edf, rec.set) also gets the format.
    for _ in range(2):
        counts = Counter(recording.name for recording in recordings)
        for recording, base in zip(recordings, bases):
            if counts[recording.name] > 1:
                relative = recording.path.relative_to(base) if recording.path.is_relative_to(base) else Path(recording.path.name)
                by_path = "_".join([*relative.parent.parts, _stem(recording.path)])
                format_name = (_suffix(recording.path) or recording.path.suffix).lstrip(".").replace(".", "")
                recording.name = by_path if by_path != recording.name else f"{recording.name}_{format_name}"
    seen: dict[str, Path] = {}
    unique = []
    for recording in recordings:
        if recording.name in seen:
            if seen[recording.name].resolve() == recording.path.resolve():
                continue  # the same file named twice
            raise DataError(f"{recording.path}: would be prepared into the same session folder as {seen[recording.name]} ({recording.name}); rename one")
        seen[recording.name] = recording.path
        unique.append(recording)
    return unique


def read_recording(recording: Recording):
    """The recording as an MNE Raw with its data loaded; RecordingUnusable with the reason otherwise."""
    import mne

    if not recording.supported:
        raise RecordingUnusable(f"unsupported file type; expected one of {', '.join(FILE_SUFFIXES + FOLDER_SUFFIXES)}")
    try:
        if recording.bids_path is not None:
            from mne_bids import read_raw_bids

            raw = read_raw_bids(recording.bids_path, verbose="error")
        else:
            raw = mne.io.read_raw(recording.path, preload=False, verbose="error")
        raw.load_data(verbose="error")
    except Exception as exc:  # MNE's readers raise many types for corrupt or truncated files
        raise RecordingUnusable(f"cannot be read: {first_line(exc)}") from exc
    if raw.n_times == 0:
        raise RecordingUnusable("holds no samples")
    return raw


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

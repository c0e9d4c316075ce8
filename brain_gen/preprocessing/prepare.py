"""`brain-gen prepare`: raw recordings in, session folders out.

Each recording goes through MNE-Python: pick channels, drop bad ones, notch and
band-pass filter, resample. Then each channel is robustly z-scored and clipped, and
the session is written in the chunked format (meta.json, <k>.npy, events.tsv) into
a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain_gen.config.schema import PrepareConfig
from brain_gen.dataset.session import SessionMeta, write_session
from brain_gen.preprocessing.recordings import Recording, RecordingUnusable, find_recordings, first_line, read_recording

# Progress is reported after each of these steps.
STEPS = ("read", "filter", "resample", "bad channels", "normalize", "write")
# IQR of a standard normal distribution: dividing by IQR / 1.349 gives unit variance for Gaussian data.
NORMAL_IQR = 1.349
# Annotation descriptions that mark spans of data, not events.
SEGMENT_MARKS = ("BAD", "EDGE")
# MAD of a standard normal distribution, to read the median absolute deviation as a standard deviation.
NORMAL_MAD = 1.4826


@dataclass
class Outcome:
    """What happened to one recording: status is done, skipped or failed."""

    recording: str
    session: str
    status: str
    detail: str


# --------------------------------------------------------------------------- steps


def stim_events(raw) -> list[tuple[float, float, str]]:
    """(onset s, duration s, trial_type) of the trigger-channel events; onsets from the first sample."""
    import mne

    if "stim" not in raw.get_channel_types():
        return []
    try:
        events = mne.find_events(raw, shortest_event=1, initial_event=True, verbose="error")
    except ValueError:
        return []
    return [((sample - raw.first_samp) / raw.info["sfreq"], 0.0, str(code)) for sample, _, code in events]


def annotation_events(raw) -> list[tuple[float, float, str]]:
    """(onset s, duration s, description) of the recording's annotations; onsets from the first sample.

    MNE keeps annotation onsets on a clock whose zero lies ``first_time`` before the
    first sample, with or without a measurement date. Segment marks (descriptions
    starting with BAD or EDGE, MNE's convention for spans to ignore) are not events.
    """
    annotations = raw.annotations
    return [
        (float(onset) - raw.first_time, float(duration), str(description))
        for onset, duration, description in zip(annotations.onset, annotations.duration, annotations.description)
        if not str(description).upper().startswith(SEGMENT_MARKS)
    ]


def recording_events(raw, source: str) -> list[tuple[float, float, str]]:
    """The events written to events.tsv: from annotations, the trigger channel, or (auto) annotations if any, else triggers.

    Annotations and triggers often describe the same events (BIDS readers and many
    converters turn triggers into annotations), so ``auto`` never writes both.
    """
    annotated = annotation_events(raw) if source in ("auto", "annotations", "both") else []
    if source == "annotations" or (source == "auto" and annotated):
        return sorted(annotated)
    return sorted(annotated + stim_events(raw))


def pick_channels(raw, settings: PrepareConfig) -> list[str]:
    """Keep the configured channels, without the marked bads if asked; returns the bads dropped."""
    marked = list(raw.info["bads"])
    if isinstance(settings.picks, str):
        picks: Any = settings.picks
    else:
        # MNE applies exclude="bads" to picks by type only; a list of names is filtered here.
        picks = [name for name in settings.picks if name in raw.ch_names and not (settings.exclude_bads and name in marked)]
        if not picks:
            raise RecordingUnusable(
                f"none of the channels in prepare.picks is in this recording, or all are marked bad "
                f"(it has {', '.join(raw.ch_names[:5])}, ...)"
            )
    type_of = dict(zip(raw.ch_names, raw.get_channel_types()))
    try:
        raw.pick(picks, exclude="bads" if settings.exclude_bads else [], verbose="error")
    except ValueError as exc:
        raise RecordingUnusable(f"no channels left after picking {settings.picks!r}: {first_line(exc)}") from exc
    if not settings.exclude_bads:
        return []
    # The marked bads the picks would otherwise have kept: named ones, or those of a kept type.
    if isinstance(settings.picks, list):
        return [name for name in marked if name in settings.picks and name in type_of]
    kept_types = set(raw.get_channel_types())
    return [name for name in marked if type_of.get(name) in kept_types]


def detect_bad_channels(data: np.ndarray, ch_types: list[str], noisy_z: float) -> tuple[list[int], list[int]]:
    """Indices of flat channels, and of noisy ones among channels of the same type.

    Flat: standard deviation below 1e-6 of the median standard deviation of its type.
    Noisy: the channel's log standard deviation lies more than ``noisy_z`` robust
    standard deviations (median absolute deviation x 1.4826) from the median of its type.
    """
    deviations = data.std(axis=1)
    flat: list[int] = []
    noisy: list[int] = []
    for ch_type in sorted(set(ch_types)):
        members = np.array([index for index, kind in enumerate(ch_types) if kind == ch_type])
        typical = np.median(deviations[members])
        flat_here = members[deviations[members] <= 1e-6 * typical] if typical > 0 else members
        flat.extend(int(index) for index in flat_here)
        alive = np.setdiff1d(members, flat_here)
        if len(alive) < 3:
            continue
        log_std = np.log(deviations[alive])
        spread = NORMAL_MAD * np.median(np.abs(log_std - np.median(log_std)))
        if spread > 0:
            noisy.extend(int(index) for index in alive[np.abs(log_std - np.median(log_std)) > noisy_z * spread])
    return sorted(flat), sorted(noisy)


def notch_frequencies(settings: PrepareConfig, sfreq: float) -> list[float]:
    """The line frequency and its harmonics below Nyquist, or the explicit list."""
    if settings.notch is None:
        return []
    if isinstance(settings.notch, list):
        return list(settings.notch)
    nyquist = sfreq / 2
    return [settings.notch * k for k in range(1, int(nyquist // settings.notch) + 1) if settings.notch * k < nyquist]


def robust_zscore(data: np.ndarray) -> np.ndarray:
    """(x - median) / (IQR / 1.349) per channel, in place; channels with no spread are only centred."""
    q25, median, q75 = np.percentile(data, [25, 50, 75], axis=1, keepdims=True)
    scale = (q75 - q25) / NORMAL_IQR
    scale[scale <= 0] = 1.0
    data -= median
    data /= scale
    return data


def sphere_center(points: np.ndarray) -> np.ndarray:
    """Least-squares centre of the sphere through ``points`` (|p|^2 = 2 p.c + k); the origin if ill-posed."""
    if len(points) < 4:
        return np.zeros(3)
    design = np.column_stack([2 * points, np.ones(len(points))])
    solution, _, rank, _ = np.linalg.lstsq(design, (points**2).sum(axis=1), rcond=None)
    return solution[:3] if rank == 4 else np.zeros(3)


def standard_montage_name() -> str:
    """The 10-05 system montage: 'colin27_1005' since MNE 1.13, 'standard_1005' before."""
    from mne.channels import get_builtin_montages

    return "colin27_1005" if "colin27_1005" in get_builtin_montages() else "standard_1005"


def positions_2d(raw) -> tuple[list[list[float]], list[str]]:
    """Sensor positions projected to 2-D, and the channels that have none.

    3-D positions (MEG sensors moved into head coordinates, EEG electrodes from the
    file or from a matching standard montage) are projected azimuthally about the top
    of the best-fitting sphere: the distance from the vertex becomes the radius.
    Channels without a position are spread on a ring just outside the others, so that
    every channel has one.
    """
    import mne

    ch_types = raw.get_channel_types()
    locations = np.array([channel["loc"][:3] for channel in raw.info["chs"]], dtype=float)
    known = np.isfinite(locations).all(axis=1) & (np.abs(locations).sum(axis=1) > 0)
    eeg_like = np.array([kind in ("eeg", "seeg", "ecog") for kind in ch_types])
    if eeg_like.any() and not known[eeg_like].any():
        # No electrode positions in the file: use a standard montage where names match one.
        montage = mne.channels.make_standard_montage(standard_montage_name())
        raw.set_montage(montage, match_case=False, match_alias=True, on_missing="ignore", verbose="error")
        locations = np.array([channel["loc"][:3] for channel in raw.info["chs"]], dtype=float)
        known = np.isfinite(locations).all(axis=1) & (np.abs(locations).sum(axis=1) > 0)
    meg = np.array([kind in ("mag", "grad", "ref_meg") for kind in ch_types])
    if meg.any() and raw.info["dev_head_t"] is not None:
        locations[meg] = mne.transforms.apply_trans(raw.info["dev_head_t"], locations[meg])
    flat = np.zeros((len(ch_types), 2))
    if known.any():
        relative = locations[known] - sphere_center(locations[known])
        radius = np.linalg.norm(relative, axis=1)
        radius[radius == 0] = 1.0
        polar = np.arccos(np.clip(relative[:, 2] / radius, -1.0, 1.0))
        azimuth = np.arctan2(relative[:, 1], relative[:, 0])
        flat[known] = np.column_stack([polar * np.cos(azimuth), polar * np.sin(azimuth)])
    missing = np.flatnonzero(~known)
    if len(missing):
        ring = 1.2 * (np.abs(flat[known]).max() if known.any() else 1.0 / 1.2)
        angles = 2 * np.pi * np.arange(len(missing)) / len(missing)
        flat[missing] = np.column_stack([ring * np.cos(angles), ring * np.sin(angles)])
    return flat.round(6).tolist(), [raw.ch_names[index] for index in missing]


# --------------------------------------------------------------------------- one recording


def prepare_recording(
    recording: Recording, out_root: Path, settings: PrepareConfig, overwrite: bool = False,
    report: Callable[[str], None] = lambda step: None,
) -> Outcome:
    """Prepare one recording into ``out_root/<recording.name>``; never raises for a bad file."""
    target = out_root / recording.name
    outcome = Outcome(str(recording.path), recording.name, "done", str(target))
    if (target / "meta.json").is_file() and not overwrite:
        outcome.status, outcome.detail = "skipped", "already prepared (--overwrite redoes it)"
        return outcome
    try:
        raw = read_recording(recording)
        report("read")
        events = recording_events(raw, settings.events)
        marked_bads = pick_channels(raw, settings)
        notch = notch_frequencies(settings, raw.info["sfreq"])
        if notch:
            raw.notch_filter(notch, verbose="error")
        if settings.l_freq is not None or settings.h_freq is not None:
            raw.filter(settings.l_freq, settings.h_freq, verbose="error")
        report("filter")
        if settings.resample is not None and settings.resample != raw.info["sfreq"]:
            raw.resample(settings.resample, verbose="error")
        report("resample")
        # Bad channels are judged after filtering (drifts would inflate every deviation)
        # and on the resampled data, the smallest copy.
        data = raw.get_data()
        flat, noisy = detect_bad_channels(data, raw.get_channel_types(), settings.noisy_z) if settings.detect_bads else ([], [])
        detected = {"flat": [raw.ch_names[i] for i in flat], "noisy": [raw.ch_names[i] for i in noisy]}
        if flat or noisy:
            if len(flat) + len(noisy) == len(raw.ch_names):
                raise RecordingUnusable("no channels left: every channel is flat or noisy")
            data = np.delete(data, flat + noisy, axis=0)
            raw.drop_channels(detected["flat"] + detected["noisy"])
        report("bad channels")
        if settings.normalize:
            robust_zscore(data)
        if settings.clip is not None:
            np.clip(data, -settings.clip, settings.clip, out=data)
        pos_2d, unplaced = positions_2d(raw)
        report("normalize")
        sfreq = float(raw.info["sfreq"])
        meta = SessionMeta(
            sfreq=sfreq,
            ch_names=list(raw.ch_names),
            pos_2d=pos_2d,
            ch_types=raw.get_channel_types(),
            subject=recording.subject,
            extra={
                "source": str(recording.path),
                "bads_marked": marked_bads,
                "bads_detected": detected,
                "positions_missing": unplaced,
                "preprocessing": settings.model_dump(mode="json"),
            },
        )
        chunk_samples = max(1, round(settings.chunk_seconds * sfreq))
        chunks = (data[:, start : start + chunk_samples] for start in range(0, data.shape[1], chunk_samples))
        duration = data.shape[1] / sfreq
        kept_events = [(onset, length, kind) for onset, length, kind in events if 0 <= onset < duration]
        write_session(target, chunks, meta, kept_events, dtype=settings.dtype, overwrite=overwrite)
        report("write")
    except RecordingUnusable as exc:
        outcome.status, outcome.detail = "skipped", str(exc)
    except Exception as exc:  # a readable recording that could not be prepared: reported, never fatal
        outcome.status, outcome.detail = "failed", first_line(exc)
    return outcome


# --------------------------------------------------------------------------- many recordings


def _prepare_in_worker(recording: Recording, out_root: Path, settings: PrepareConfig, overwrite: bool, queue, index: int) -> Outcome:
    return prepare_recording(recording, out_root, settings, overwrite, report=lambda step: queue.put((index, step)))


def prepare_all(inputs: list[str | Path], out_root: str | Path, settings: PrepareConfig, jobs: int = 1,
                overwrite: bool = False, progress: bool = True) -> list[Outcome]:
    """Prepare every recording under ``inputs``, ``jobs`` at a time, with one progress line each."""
    from tqdm import tqdm

    recordings = find_recordings(inputs)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    width = max((len(recording.name) for recording in recordings), default=10)
    bars = [tqdm(total=len(STEPS), desc=recording.name.ljust(width), position=index, leave=True, disable=not progress,
                 bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} {postfix}") for index, recording in enumerate(recordings)]

    def advance(index: int, step: str) -> None:
        bars[index].update(1)
        bars[index].set_postfix_str(step)

    outcomes: list[Outcome | None] = [None] * len(recordings)
    if jobs <= 1 or len(recordings) <= 1:
        for index, recording in enumerate(recordings):
            outcomes[index] = prepare_recording(recording, out_root, settings, overwrite, report=lambda step, i=index: advance(i, step))
            bars[index].set_postfix_str(outcomes[index].status)
    else:
        import multiprocessing

        with multiprocessing.Manager() as manager:
            queue = manager.Queue()

            def run_pool(indices: list[int], workers: int) -> list[int]:
                """Prepare ``indices`` in a pool; returns those lost when a worker process died."""
                lost = []
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(_prepare_in_worker, recordings[i], out_root, settings, overwrite, queue, i): i for i in indices}
                    pending = set(futures)
                    while pending:
                        finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        while not queue.empty():
                            advance(*queue.get())
                        for future in finished:
                            index = futures[future]
                            try:
                                outcomes[index] = future.result()
                                bars[index].set_postfix_str(outcomes[index].status)
                            except BrokenProcessPool:
                                lost.append(index)
                return lost

            # Sessions there before this run: only these may come back "skipped".
            existed = {index for index, recording in enumerate(recordings) if (out_root / recording.name / "meta.json").is_file()}
            # A worker that crashes (segfault, out of memory) breaks the whole pool: the
            # recordings it took down are retried one per process, so only the culprit fails.
            for index in run_pool(list(range(len(recordings))), jobs):
                recording = recordings[index]
                target = out_root / recording.name
                if index not in existed and (target / "meta.json").is_file():
                    # Finished (its session is complete) before the pool broke, only its result was lost.
                    outcomes[index] = Outcome(str(recording.path), recording.name, "done", str(target))
                    bars[index].set_postfix_str("done")
                    continue
                if run_pool([index], 1):
                    reason = "the worker process died while preparing it (a crash, or out of memory)"
                    outcomes[index] = Outcome(str(recording.path), recording.name, "failed", reason)
                    bars[index].set_postfix_str("failed")
    for bar in bars:
        bar.close()
    return [outcome for outcome in outcomes if outcome is not None]


def summary_table(outcomes: list[Outcome]) -> str:
    """A plain-text table of every recording's outcome, then the counts."""
    rows = [("session", "status", "detail")] + [(outcome.session, outcome.status, outcome.detail) for outcome in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}" for row in rows]
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("done", "skipped", "failed")}
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()))
    return "\n".join(lines)

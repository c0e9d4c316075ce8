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
from typing import Literal

import numpy as np

from brain_gen.config.schema import PrepareConfig
from brain_gen.dataset.session import SessionMeta, write_session
from brain_gen.preprocessing.steps import (
    detect_bad_channels,
    notch_frequencies,
    pick_channels,
    positions_2d,
    recording_events,
    robust_zscore,
)
from brain_gen.preprocessing.recordings import Recording, RecordingUnusable, find_recordings, first_line, read_recording

# Progress is reported after each of these steps.
STEPS = ("read", "filter", "resample", "bad channels", "normalize", "write")


@dataclass
class Outcome:
    """What happened to one recording."""

    recording: str
    session: str
    status: Literal["done", "skipped", "failed"]
    detail: str


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

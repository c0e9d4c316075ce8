"""brain-gen prepare against MNE alone, on a 10-minute, 306-channel, 1 kHz recording.

Baseline: what MNE takes for the same reading, band-pass filter and resampling to
250 Hz (read_raw_fif with preload, Raw.filter, Raw.resample). Prepare: the whole
`prepare_recording` with the same settings, which adds picking, events, bad-channel
detection, robust z-scoring, clipping, positions and writing the chunks.
Target: prepare takes at most 2x the MNE baseline.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import mne
import numpy as np

from benchmarks.common import Result
from brain_gen.config.schema import PrepareConfig
from brain_gen.preprocessing.prepare import prepare_recording
from brain_gen.preprocessing.recordings import Recording

N_MAG, N_GRAD, SFREQ, SECONDS = 102, 204, 1000.0, 600.0
L_FREQ, H_FREQ, NEW_SFREQ = 0.5, 100.0, 250.0


def write_recording(folder: Path) -> Path:
    """A Vectorview-sized recording (102 magnetometers, 204 gradiometers) of coloured noise, as FIF."""
    names = [f"MEG{k:04d}" for k in range(N_MAG + N_GRAD)]
    info = mne.create_info(names, SFREQ, ["mag"] * N_MAG + ["grad"] * N_GRAD)
    rng = np.random.default_rng(0)
    n_samples = int(SECONDS * SFREQ)
    data = np.cumsum(rng.standard_normal((len(names), n_samples), dtype=np.float32), axis=1, dtype=np.float32)
    data *= 1e-13
    raw = mne.io.RawArray(data, info, verbose="error")
    path = folder / "meg_raw.fif"
    raw.save(path, verbose="error")
    return path


def mne_alone(path: Path) -> None:
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    raw.filter(L_FREQ, H_FREQ, verbose="error")
    raw.resample(NEW_SFREQ, verbose="error")


def main(rounds: int = 2) -> list[Result]:
    settings = PrepareConfig(l_freq=L_FREQ, h_freq=H_FREQ, resample=NEW_SFREQ)
    with tempfile.TemporaryDirectory() as root:
        path = write_recording(Path(root))
        times: dict[str, list[float]] = {"mne": [], "prepare": []}
        for _ in range(rounds):  # interleaved, best of the rounds
            start = time.perf_counter()
            mne_alone(path)
            times["mne"].append(time.perf_counter() - start)
            out = Path(root) / "sessions"
            start = time.perf_counter()
            outcome = prepare_recording(Recording(path=path, name="meg"), out, settings, overwrite=True)
            times["prepare"].append(time.perf_counter() - start)
            assert outcome.status == "done", outcome
            shutil.rmtree(out)
    mne_time, prepare_time = min(times["mne"]), min(times["prepare"])
    ratio = prepare_time / mne_time
    print(f"{N_MAG + N_GRAD} channels, {SECONDS / 60:g} min at {SFREQ:g} Hz, band-pass {L_FREQ}-{H_FREQ} Hz, resample to {NEW_SFREQ:g} Hz")
    print(f"MNE read+filter+resample {mne_time:.1f} s, brain-gen prepare {prepare_time:.1f} s")
    print(f"prepare/MNE time ratio: {ratio:.3f} (target <= 2.0)")
    measured = f"{ratio:.2f}x ({prepare_time:.1f} s against {mne_time:.1f} s)"
    return [Result("bench_prepare", "brain-gen prepare over MNE read, filter, resample", measured, "<= 2x", ratio <= 2.0)]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

"""The signal steps of `brain-gen prepare`, one recording at a time: events, channel picks,
bad-channel detection, notch frequencies, robust z-scoring and 2-D sensor positions.

``brain_gen.preprocessing.prepare`` runs them in order and writes the session.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from brain_gen.config.schema import PrepareConfig
from brain_gen.preprocessing.recordings import RecordingUnusable, first_line

# IQR of a standard normal distribution: dividing by IQR / 1.349 gives unit variance for Gaussian data.
NORMAL_IQR = 1.349
# Annotation descriptions that mark spans of data, not events.
SEGMENT_MARKS = ("BAD", "EDGE")
# MAD of a standard normal distribution, to read the median absolute deviation as a standard deviation.
NORMAL_MAD = 1.4826


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

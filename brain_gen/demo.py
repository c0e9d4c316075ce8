"""The demo: a small synthetic MEG-like dataset and a config that trains ChannelGPT on it.

The recordings are made here, from a fixed seed, so the demo needs no download:
a few oscillating sources (alpha around 10 Hz, beta around 20 Hz, a slow drift)
mixed into sensors through a random lead field, plus sensor noise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from brain_gen.dataset.session import SessionMeta, write_session

# Source rhythms: (centre frequency in Hz, pole radius); a radius near 1 gives a sharp peak.
SOURCE_RHYTHMS = ((10.0, 0.985), (20.0, 0.97), (2.0, 0.99))


def resonant_noise(n_samples: int, sfreq: float, frequency: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Noise through a two-pole resonator: a narrow-band rhythm like an alpha oscillation."""
    a1 = 2 * radius * math.cos(2 * math.pi * frequency / sfreq)
    a2 = -radius * radius
    drive = rng.standard_normal(n_samples + 2)
    out = np.zeros(n_samples + 2)
    for t in range(2, n_samples + 2):
        out[t] = a1 * out[t - 1] + a2 * out[t - 2] + drive[t]
    return out[2:]


def make_synthetic_dataset(
    root: str | Path,
    n_sessions: int = 10,
    n_channels: int = 8,
    sfreq: float = 100.0,
    session_seconds: float = 90.0,
    chunk_seconds: float = 30.0,
    sessions_per_subject: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``n_sessions`` synthetic sessions under ``root`` and return it.

    Each channel has unit variance. Sessions ``2k`` and ``2k+1`` share subject
    ``sub-0k`` (with the default two sessions per subject).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, n_channels, endpoint=False)
    pos_2d = np.stack([np.cos(angles), np.sin(angles)], axis=1).round(4).tolist()
    ch_names = [f"MEG{index:03d}" for index in range(n_channels)]
    lead_field = rng.standard_normal((n_channels, len(SOURCE_RHYTHMS)))
    n_samples = int(session_seconds * sfreq)
    for session in range(n_sessions):
        sources = np.stack([resonant_noise(n_samples, sfreq, f, r, rng) for f, r in SOURCE_RHYTHMS])
        sources /= sources.std(axis=1, keepdims=True)
        data = lead_field @ sources + 0.1 * rng.standard_normal((n_channels, n_samples))
        data = (data - data.mean(axis=1, keepdims=True)) / data.std(axis=1, keepdims=True)
        subject = f"sub-{session // sessions_per_subject:02d}"
        chunk_samples = int(chunk_seconds * sfreq)
        write_session(
            root / f"{subject}_ses-{session % sessions_per_subject + 1:02d}",
            [data[:, start : start + chunk_samples] for start in range(0, n_samples, chunk_samples)],
            SessionMeta(sfreq, ch_names, pos_2d, ch_types=["mag"] * n_channels, subject=subject),
        )
    return root


def make_evoked_dataset(
    root: str | Path,
    n_sessions: int = 6,
    n_channels: int = 8,
    sfreq: float = 100.0,
    session_seconds: float = 60.0,
    chunk_seconds: float = 20.0,
    classes: tuple[str, ...] = ("left", "right", "tone"),
    amplitude: float = 1.5,
    seed: int = 0,
) -> Path:
    """Sessions with class-specific evoked responses in unit noise, and their events.tsv.

    An event every second, of a random class. Each class adds its own spatial pattern
    (one weight per channel) times a Gaussian bump 30 ms wide, peaking 100 ms after
    the onset plus 80 ms per class index, so a decoder has something to find. Two
    sessions per subject.
    """
    rng = np.random.default_rng(seed)
    response_times = np.arange(int(0.4 * sfreq)) / sfreq
    patterns = {name: rng.standard_normal(n_channels) for name in classes}
    bumps = {name: np.exp(-0.5 * ((response_times - 0.1 - 0.08 * k) / 0.03) ** 2) for k, name in enumerate(classes)}
    ch_names = [f"EEG{k:03d}" for k in range(n_channels)]
    positions = [[math.cos(2 * math.pi * k / n_channels), math.sin(2 * math.pi * k / n_channels)] for k in range(n_channels)]
    n_samples, chunk_samples = int(session_seconds * sfreq), int(chunk_seconds * sfreq)
    for session in range(n_sessions):
        data = rng.standard_normal((n_channels, n_samples))
        events = []
        for onset in np.arange(1.0, session_seconds - 1.0, 1.0):
            label = classes[int(rng.integers(len(classes)))]
            start = int(round(onset * sfreq))
            data[:, start : start + len(response_times)] += amplitude * np.outer(patterns[label], bumps[label])
            events.append((float(onset), 0.0, label))
        chunks = [data[:, i : i + chunk_samples] for i in range(0, n_samples, chunk_samples)]
        subject = f"sub-{session // 2 + 1:02d}"
        write_session(Path(root) / f"{subject}_ses-{session % 2 + 1:02d}", chunks, SessionMeta(sfreq, ch_names, positions, subject=subject), events)
    return Path(root)


def demo_config() -> dict[str, Any]:
    """A config, relative to its own folder, that trains a small ChannelGPT on `data/`."""
    return {
        "save_dir": "runs",
        "model_name": "ChannelGPT",
        "loss_name": "CrossEntropy",
        "model_config": {
            "vocab_size": 256,
            "num_channels": 8,
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "dropout": 0.0,
            "max_position_embeddings": 128,
        },
        "datasplitter": {
            "dataset_root": "data",
            "example_seconds": 1.0,
            "overlap_seconds": 0.0,
            "dataset_class": "ChunkDataset",
            "dataset_kwargs": {"max_val": 4.0, "mu": 255},
            "split_strategy": "subject",
        },
        "dataloader": {"batch_size": 16},
        "lightning": {"lr": 3.0e-3, "weight_decay": 0.01},
        "trainer": {
            "max_epochs": 3,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 10,
            "tune_batch_size": False,
        },
        # Each last-checkpoint is evaluated in a background process: generated continuations
        # compared with real ones (spectra, correlations, amplitudes) and plotted.
        "eval_runner": {"enabled": True},
    }

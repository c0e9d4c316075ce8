"""Windows per second of the datasets through a DataLoader, against slicing the windows by hand.

Data: generated sessions of 306 channels at 250 Hz in 60 s chunks; windows of 10 s
(306 x 2,500 float32, 3 MB each), no overlap. Sides, timed in this process, taking
turns, best of ROUNDS passes over the same windows in the same shuffled order:

- ``loop``: a tight loop that slices each window from the memory-mapped .npy chunk
  into a float32 tensor and stacks batches of 8 (the baseline);
- ``ChunkDatasetContinuous`` (float windows) and ``ChunkDataset`` (mu-law codes)
  through a torch DataLoader with batch 8, num_workers 0 (and 2, in separate processes
  that share this machine's two cores).

Target: at least 0.9x of the loop with num_workers 0.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SESSIONS, SESSION_SECONDS, SFREQ, CHANNELS, WINDOW_SECONDS = 4, 240.0, 250.0, 306, 10.0
BATCH, ROUNDS = 8, 3
TARGET = 0.9


def make_data(root: Path) -> Path:
    from brain_gen.demo import make_synthetic_dataset

    return make_synthetic_dataset(root / "data", n_sessions=SESSIONS, n_channels=CHANNELS, sfreq=SFREQ,
                                  session_seconds=SESSION_SECONDS, chunk_seconds=60.0, seed=1)


def train_split(data: Path, cache: Path):
    from brain_gen.config.schema import DataSplitterConfig
    from brain_gen.dataset.splitter import DataSplitter

    config = DataSplitterConfig(dataset_root=str(data), example_seconds=WINDOW_SECONDS, val_ratio=0.0, test_ratio=0.0)
    return DataSplitter(config, cache_dir=cache).split()["train"]


def loop_pass(split, order: np.ndarray) -> int:
    """Slice every window from the memory-mapped chunks into batches of float32 tensors."""
    chunks = {}
    length = split.window_samples
    windows = 0
    for first in range(0, len(order), BATCH):
        batch = []
        for index in order[first : first + BATCH]:
            session, chunk, start = (int(value) for value in split.windows[index])
            key = (session, chunk)
            if key not in chunks:
                chunks[key] = np.load(split.sessions[session].chunk_path(chunk), mmap_mode="r")
            batch.append(torch.from_numpy(np.ascontiguousarray(chunks[key][:, start : start + length])))
        windows += len(torch.stack(batch))
    return windows


def loader_pass(dataset, order: np.ndarray, workers: int) -> int:
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=BATCH, sampler=order.tolist(), num_workers=workers)
    return sum(len(batch[1]) for batch in loader)


def timed(function, *arguments) -> float:
    start = time.perf_counter()
    windows = function(*arguments)
    return windows / (time.perf_counter() - start)


def main() -> dict[str, float]:
    from brain_gen.dataset.datasets import ChunkDataset, ChunkDatasetContinuous

    with tempfile.TemporaryDirectory() as folder:
        split = train_split(make_data(Path(folder)), Path(folder) / "cache")
        order = np.random.default_rng(0).permutation(len(split))
        sides = {
            "loop": lambda: timed(loop_pass, split, order),
            "ChunkDatasetContinuous, workers 0": lambda: timed(loader_pass, ChunkDatasetContinuous(split), order, 0),
            "ChunkDataset (codes), workers 0": lambda: timed(loader_pass, ChunkDataset(split), order, 0),
            "ChunkDatasetContinuous, workers 2": lambda: timed(loader_pass, ChunkDatasetContinuous(split), order, 2),
            "ChunkDataset (codes), workers 2": lambda: timed(loader_pass, ChunkDataset(split), order, 2),
        }
        best = dict.fromkeys(sides, 0.0)
        for side in sides.values():
            side()  # warm: the chunks in the page cache for every side
        for _ in range(ROUNDS):
            for name, side in sides.items():
                best[name] = max(best[name], side())
    print(f"{len(order)} windows of {CHANNELS} x {int(WINDOW_SECONDS * SFREQ)} float32, batch {BATCH}, best of {ROUNDS}")
    print("| side | windows/s | over the loop | target |")
    print("| --- | --- | --- | --- |")
    for name, rate in best.items():
        ratio = rate / best["loop"]
        target = f">= {TARGET}x ({'met' if ratio >= TARGET else 'NOT met'})" if "workers 0" in name else ""
        print(f"| {name} | {rate:.0f} | {ratio:.2f}x | {target} |")
    return {name: rate / best["loop"] for name, rate in best.items()}


if __name__ == "__main__":
    main()

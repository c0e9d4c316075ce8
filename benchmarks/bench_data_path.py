"""Windows per second of the datasets through a DataLoader, against slicing the windows by hand.

Data: generated sessions of 306 channels at 250 Hz in 60 s chunks; windows of 10 s
(306 x 2,500 float32, 3 MB each), no overlap, in one shuffled order for every side.

- ``loop``: a tight loop that slices each window from the memory-mapped .npy chunk
  into a float32 tensor and stacks batches of 8 (the baseline);
- ``ChunkDatasetContinuous`` (float windows) and ``ChunkDataset`` (mu-law codes)
  through a torch DataLoader with batch 8.

With num_workers 0 the sides take turns batch by batch in this process (the machine's
speed drifts by tens of percent within seconds, which whole passes timed one after
another do not survive): each ratio is the median of the batch-by-batch ratios over
PASSES passes. With num_workers 2 the workers load ahead, so a batch's wait says
nothing of their speed: those sides are timed as whole passes (best of ROUNDS), for
context; on this machine the two workers and the main process share two cores.

Target: at least 0.9x of the loop with num_workers 0.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Result

SESSIONS, SESSION_SECONDS, SFREQ, CHANNELS, WINDOW_SECONDS = 4, 240.0, 250.0, 306, 10.0
BATCH, ROUNDS, PASSES = 8, 3, 15
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


def loop_batches(split, order: np.ndarray):
    """Batches of float32 tensors, each window sliced from its memory-mapped chunk."""
    chunks = {}
    length = split.window_samples
    for first in range(0, len(order), BATCH):
        batch = []
        for index in order[first : first + BATCH]:
            session, chunk, start = (int(value) for value in split.windows[index])
            key = (session, chunk)
            if key not in chunks:
                chunks[key] = np.load(split.sessions[session].chunk_path(chunk), mmap_mode="r")
            batch.append(torch.from_numpy(np.ascontiguousarray(chunks[key][:, start : start + length])))
        yield torch.stack(batch)


def loop_pass(split, order: np.ndarray) -> int:
    return sum(len(batch) for batch in loop_batches(split, order))


def loader(dataset, order: np.ndarray, workers: int = 0):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=BATCH, sampler=order.tolist(), num_workers=workers)


def loader_pass(dataset, order: np.ndarray, workers: int) -> int:
    return sum(len(batch[1]) for batch in loader(dataset, order, workers))


def batch_by_batch(sides: dict, passes: int) -> dict[str, list[float]]:
    """Seconds per batch of every side, the sides taking turns one batch at a time; ``sides`` make fresh iterators."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(passes):
        iterators = {name: iter(make()) for name, make in sides.items()}
        while True:
            for name, iterator in iterators.items():
                started = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:
                    break
                seconds[name].append(time.perf_counter() - started)
            else:
                continue
            break
    return seconds


def timed(function, *arguments) -> float:
    start = time.perf_counter()
    windows = function(*arguments)
    return windows / (time.perf_counter() - start)


def main() -> list[Result]:
    from brain_gen.dataset.datasets import ChunkDataset, ChunkDatasetContinuous

    with tempfile.TemporaryDirectory() as folder:
        split = train_split(make_data(Path(folder)), Path(folder) / "cache")
        order = np.random.default_rng(0).permutation(len(split))
        in_turns = {
            "loop": lambda: loop_batches(split, order),
            "ChunkDatasetContinuous, workers 0": lambda: loader(ChunkDatasetContinuous(split), order),
            "ChunkDataset (codes), workers 0": lambda: loader(ChunkDataset(split), order),
        }
        batch_by_batch(in_turns, 1)  # warm: the chunks in the page cache for every side
        seconds = batch_by_batch(in_turns, PASSES)
        with_workers = {
            "ChunkDatasetContinuous, workers 2": lambda: timed(loader_pass, ChunkDatasetContinuous(split), order, 2),
            "ChunkDataset (codes), workers 2": lambda: timed(loader_pass, ChunkDataset(split), order, 2),
            "loop": lambda: timed(loop_pass, split, order),
        }
        best = dict.fromkeys(with_workers, 0.0)
        for _ in range(ROUNDS):
            for name, side in with_workers.items():
                best[name] = max(best[name], side())
    loop_rate = BATCH / statistics.median(seconds["loop"])
    print(f"{len(order)} windows of {CHANNELS} x {int(WINDOW_SECONDS * SFREQ)} float32, batch {BATCH}")
    print(f"loop: {loop_rate:.0f} windows/s (median batch), {best['loop']:.0f} windows/s (best whole pass)")
    results = []
    for name in ("ChunkDatasetContinuous, workers 0", "ChunkDataset (codes), workers 0"):
        ratio = statistics.median(loop / side for loop, side in zip(seconds["loop"], seconds[name]))
        rate = BATCH / statistics.median(seconds[name])
        print(f"{name}: {rate:.0f} windows/s, {ratio:.2f}x of the loop (median of {len(seconds[name])} batch-by-batch ratios)")
        results.append(Result("bench_data_path", f"windows/s over slicing the memory map: {name}", f"{ratio:.2f}x ({rate:.0f}/s)", f">= {TARGET}x", ratio >= TARGET))
    for name in ("ChunkDatasetContinuous, workers 2", "ChunkDataset (codes), workers 2"):
        ratio = best[name] / best["loop"]
        print(f"{name}: {best[name]:.0f} windows/s, {ratio:.2f}x of the loop (best whole pass of {ROUNDS})")
        results.append(Result("bench_data_path", f"windows/s over slicing the memory map: {name}", f"{ratio:.2f}x ({best[name]:.0f}/s)", "(context)", None))
    return results


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

"""Start-up of the data: the datasplitter on 1,000 sessions of 20 chunks, cold and cached.

Cold: every session folder is scanned (meta.json and each chunk's .npy header), and
the session cache is written. Cached: the cache is read instead, as every later run of
the same data does. Both sides are timed in this process, taking turns, best of
ROUNDS; printed are both times and cold over cached.

Targets: a cached start of at most 1 s, and cold over cached at least 10x.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Result

SESSIONS, CHUNKS = 1000, 20
ROUNDS = 3
TARGET_CACHED_S, TARGET_RATIO = 1.0, 10.0


def make_sessions(root: Path) -> None:
    """1,000 small sessions (4 channels, 20 chunks of 200 samples at 100 Hz) in the session format."""
    from brain_gen.dataset.session import SessionMeta, write_session

    chunk = np.zeros((4, 200), dtype=np.float32)
    meta = SessionMeta(100.0, ["A", "B", "C", "D"], [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for index in range(SESSIONS):
        write_session(root / f"sub-{index // 10:03d}_ses-{index % 10:02d}", [chunk] * CHUNKS, meta)


def split_time(root: Path, cache: Path, cold: bool) -> float:
    from brain_gen.config.schema import DataSplitterConfig
    from brain_gen.dataset.splitter import DataSplitter

    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    config = DataSplitterConfig(dataset_root=str(root), example_seconds=1.0)
    start = time.perf_counter()
    splits = DataSplitter(config, cache_dir=cache).split()
    elapsed = time.perf_counter() - start
    assert sum(len(split.sessions) for split in splits.values()) == SESSIONS
    return elapsed


def main() -> list[Result]:
    with tempfile.TemporaryDirectory() as folder:
        root, cache = Path(folder) / "data", Path(folder) / "cache"
        make_sessions(root)
        split_time(root, cache, cold=True)  # file system metadata in memory for both sides
        cold, cached = [], []
        for _ in range(ROUNDS):
            cold.append(split_time(root, cache, cold=True))
            cached.append(split_time(root, cache, cold=False))
    best_cold, best_cached = min(cold), min(cached)
    ratio = best_cold / best_cached
    print(f"datasplitter on {SESSIONS} sessions x {CHUNKS} chunks, best of {ROUNDS}")
    print(f"| cached start | {best_cached:.3f} s | target <= {TARGET_CACHED_S} s | {'met' if best_cached <= TARGET_CACHED_S else 'NOT met'} |")
    print(f"| cold over cached | {ratio:.1f}x ({best_cold:.2f} s cold) | target >= {TARGET_RATIO}x | {'met' if ratio >= TARGET_RATIO else 'NOT met'} |")
    return [
        Result("bench_startup", f"datasplitter cached start, {SESSIONS} sessions x {CHUNKS} chunks", f"{best_cached:.2f} s", f"<= {TARGET_CACHED_S:g} s", best_cached <= TARGET_CACHED_S),
        Result("bench_startup", "datasplitter cold start over cached", f"{ratio:.1f}x ({best_cold:.1f} s cold)", f">= {TARGET_RATIO:g}x", ratio >= TARGET_RATIO),
    ]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

"""MixUp collate against plain collate, for a [64, 306, 1024] float batch.

Plain: torch's default_collate, what a DataLoader uses by default. MixUp: the
collate of MixupDataLoader with mixing on every batch (mixup_prob 1). Both get the
same 64 samples of float inputs [306, 1024] and float targets [306, 1024].
Target: the MixUp collate takes at most 1.10x the plain one.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from benchmarks.common import interleaved_best
from brain_gen.dataset.mixup import MixupCollate

BATCH, CHANNELS, SAMPLES = 64, 306, 1024


def main() -> float:
    torch.manual_seed(0)
    samples = [(torch.randn(CHANNELS, SAMPLES), torch.randn(CHANNELS, SAMPLES)) for _ in range(BATCH)]
    mixup = MixupCollate(mixup_alpha=0.4, mixup_prob=1.0)
    times = interleaved_best({"plain": lambda: default_collate(samples), "mixup": lambda: mixup(samples)})
    ratio = times["mixup"] / times["plain"]
    print(f"plain collate {times['plain'] * 1e3:.1f} ms, mixup collate {times['mixup'] * 1e3:.1f} ms per batch")
    print(f"mixup/plain collate time ratio: {ratio:.3f} (target <= 1.10)")
    return ratio


if __name__ == "__main__":
    main()

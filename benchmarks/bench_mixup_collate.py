"""MixUp collate against plain collate, for a [64, 306, 1024] float batch.

Plain: torch's default_collate, what a DataLoader uses by default. MixUp: the
collate of MixupDataLoader with mixing on every batch (mixup_prob 1). Both get the
same 64 samples of float inputs [306, 1024] and float targets [306, 1024].
Target: the MixUp collate takes at most 1.10x the plain one.

Most of a plain collate is the kernel mapping fresh pages for the batch; the MixUp
collate allocates its batch huge-page backed. So that the blend's own cost stays
visible, a second line compares it with a plain stack into memory allocated the same way.
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from benchmarks.common import Result, interleaved_best
from brain_gen.dataset.mixup import MixupCollate, stack_batch

BATCH, CHANNELS, SAMPLES = 64, 306, 1024


def main() -> list[Result]:
    torch.manual_seed(0)
    samples = [(torch.randn(CHANNELS, SAMPLES), torch.randn(CHANNELS, SAMPLES)) for _ in range(BATCH)]
    mixup = MixupCollate(mixup_alpha=0.4, mixup_prob=1.0)
    times = interleaved_best(
        {
            "plain": lambda: default_collate(samples),
            "mixup": lambda: mixup(samples),
            "same_memory": lambda: tuple(stack_batch(list(column)) for column in zip(*samples)),
        }
    )
    ratio = times["mixup"] / times["plain"]
    print(f"plain collate {times['plain'] * 1e3:.1f} ms, mixup collate {times['mixup'] * 1e3:.1f} ms per batch")
    print(f"plain stack into huge-page memory {times['same_memory'] * 1e3:.1f} ms per batch")
    print(f"blend cost over a stack into the same memory: {times['mixup'] / times['same_memory']:.3f}x (for information)")
    print(f"mixup/plain collate time ratio: {ratio:.3f} (target <= 1.10)")
    blend = times["mixup"] / times["same_memory"]
    return [
        Result("bench_mixup_collate", "MixUp collate over default_collate", f"{ratio:.2f}x", "<= 1.10x", ratio <= 1.10),
        Result("bench_mixup_collate", "the blend alone, over a stack into the same memory", f"{blend:.2f}x", "(context)", None),
    ]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

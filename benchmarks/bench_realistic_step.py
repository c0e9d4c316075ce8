"""A realistic step: a 2.2M-parameter WaveNet, brain-gen against a hand-written loop, in lock-step.

The same lock-step harness as bench_step_overhead (one one-thread process per side,
taking turns step by step), on a convolutional model whose step takes hundreds of
milliseconds on this CPU: WaveNet, 160 residual and skip channels, 10 layers, 16
channels of 2 s windows at 100 Hz, batch 16. Sides: the hand-written loop (DataLoader,
forward, loss, backward, clipping, AdamW) and ``ExperimentDL`` with a user's defaults
(progress bar, TensorBoard, telemetry, checkpoints, warmup + cosine per step) at
``log_every_n_steps`` 1 and 50. Each side also reports its peak resident memory.

Targets: brain-gen within 1.02x of the hand-written step (median of step-by-step
ratios), and its peak RSS within 1.2x of the hand-written loop's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from benchmarks.bench_step_overhead import brain_gen, hand_written, user_config
from benchmarks.common import Result
from benchmarks.lockstep import median_ratio, run_in_lockstep

# Single steps vary by a few percent here: 40 of them settle the median ratio to about 1%.
WARMUP, STEPS = 3, 40
TARGET_STEP, TARGET_RSS = 1.02, 1.2


def config(save_dir: Path, data: Path, log_every: int = 1) -> dict[str, Any]:
    model = {
        "model_name": "WaveNet",
        "model_config": {"vocab_size": 256, "num_channels": 16, "residual_channels": 160, "skip_channels": 160, "n_layers": 10},
    }
    datasplitter = {"example_seconds": 2.0, "dataset_kwargs": {"max_val": 4.0}}
    return user_config(save_dir, data, log_every, model, datasplitter, batch_size=16, warmup_steps=5)


def main() -> list[Result]:
    from brain_gen.demo import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        # 40 sessions of 60 s: 32 train, 960 windows of 2 s, 60 batches of 16 in one epoch.
        data = make_synthetic_dataset(root / "data", n_sessions=40, n_channels=16, sfreq=100.0, session_seconds=60.0, chunk_seconds=60.0, seed=1)
        sides = {
            "hand": (hand_written, (config(root / "hand", data),)),
            "brain_gen": (brain_gen, (config(root / "bg", data),)),
            "brain_gen_50": (brain_gen, (config(root / "bg50", data, 50),)),
        }
        cycles = run_in_lockstep(sides, WARMUP, STEPS, root)
        rss = {name: int((root / f"{name}.rss").read_text()) for name in sides}
    step = median_ratio(cycles["brain_gen"], cycles["hand"])
    step_50 = median_ratio(cycles["brain_gen_50"], cycles["hand"])
    memory = rss["brain_gen"] / rss["hand"]
    hand_ms = sorted(cycles["hand"])[len(cycles["hand"]) // 2] * 1000
    print(f"2.2M-parameter WaveNet, batch 16: hand-written step {hand_ms:.0f} ms (median), {STEPS} steps per side, lock-step")
    for cadence, ratio in ((1, step), (50, step_50)):
        verdict = "met" if ratio <= TARGET_STEP else "NOT met"
        print(f"| step time over hand-written, log_every_n_steps {cadence} | {ratio:.3f}x | target <= {TARGET_STEP}x | {verdict} |")
    print(f"| peak RSS over hand-written | {memory:.2f}x ({rss['brain_gen'] / 2**20:.0f} MB against {rss['hand'] / 2**20:.0f} MB) "
          f"| target <= {TARGET_RSS}x | {'met' if memory <= TARGET_RSS else 'NOT met'} |")
    return [
        *(Result("bench_realistic_step", f"2.2M WaveNet step over the hand-written loop, log_every_n_steps {cadence}", f"{ratio:.3f}x", f"<= {TARGET_STEP}x", ratio <= TARGET_STEP)
          for cadence, ratio in ((1, step), (50, step_50))),
        Result("bench_realistic_step", "peak RSS over the hand-written loop", f"{memory:.2f}x ({rss['brain_gen'] / 2**20:.0f} MB)", f"<= {TARGET_RSS}x", memory <= TARGET_RSS),
    ]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

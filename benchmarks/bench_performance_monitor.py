"""PerformanceMonitor's own cost per training step, against the step time of the demo model.

The monitor's per-step hooks are timed on their own (many calls, with logging
switched off between log intervals as in training), and compared with one training
step of the demo ChannelGPT (batch 16, 8 channels, 99 steps) timed in the same process.
Target: under 1% of the step time.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from benchmarks.common import Result, best_time
from brain_gen.demo import demo_config
from brain_gen.losses.next_step import CrossEntropy
from brain_gen.models.channel_gpt import ChannelGPT
from brain_gen.training.performance import PerformanceMonitor

CALLS = 20_000


def main() -> list[Result]:
    monitor = PerformanceMonitor()
    # A step the logger does not write, as almost every step is: only the clock reads run.
    trainer = SimpleNamespace(_logger_connector=SimpleNamespace(should_update_logs=False))
    batch = (torch.zeros(16, 8, 99, dtype=torch.long), torch.zeros(16, 8, 99, dtype=torch.long))

    def hooks():
        for index in range(CALLS):
            monitor.on_train_batch_start(trainer, None, batch, index)
            monitor.on_train_batch_end(trainer, None, None, batch, index)

    per_step_hooks = best_time(hooks, repeats=3, warmup=1) / CALLS

    model = ChannelGPT(**demo_config()["model_config"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = CrossEntropy()
    inputs = torch.randint(0, 256, (16, 8, 99))

    def step():
        optimizer.zero_grad()
        loss(model(inputs), inputs).backward()
        optimizer.step()

    step_time = best_time(step, repeats=5, warmup=1)
    share = per_step_hooks / step_time
    print(f"monitor hooks {per_step_hooks * 1e6:.1f} us per step; demo training step {step_time * 1e3:.0f} ms")
    print(f"monitor share of step time: {share * 100:.4f}% (target < 1%)")
    measured = f"{share * 100:.4f}% ({per_step_hooks * 1e6:.1f} us against {step_time * 1e3:.0f} ms)"
    return [Result("bench_performance_monitor", "PerformanceMonitor hooks over a demo training step", measured, "< 1%", share < 0.01)]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

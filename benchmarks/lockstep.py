"""Lock-step timing: several training processes take turns one step at a time.

This machine's speed drifts by up to 70% within tens of seconds, so runs timed one
after another can give any ratio between 0.7 and 1.6. Taking turns step by step puts
every side in the same few milliseconds of the machine's life: each side is a
process of its own with one torch thread, waits for the baton before each step,
times its step (from one batch start to the next, less the wait for the baton) and
passes the baton on. Ratios are taken step by step, and their median is reported.

A side is a function ``run(turn)`` started in a fresh process; it calls ``turn()``
once at the start of every step (a hand-written loop calls it at the top of its loop,
a Lightning run from the ``Turns`` callback at ``on_train_batch_start``). ``turn``
returns False once the side has timed enough steps: the side then stops.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class Baton:
    """One side's place in the ring: wait for the side before, time the step, hand on."""

    def __init__(self, mine: Any, next_side: Any, warmup: int, steps: int, out: str):
        self.mine, self.next_side = mine, next_side
        self.warmup, self.steps, self.out = warmup, steps, out
        self.cycles: list[float] = []
        self.count = 0
        self.resumed: float | None = None

    def __call__(self) -> bool:
        now = time.perf_counter()
        if self.resumed is not None and self.count > self.warmup:
            self.cycles.append(now - self.resumed)
        self.count += 1
        done = len(self.cycles) >= self.steps
        self.next_side.release()
        if done:
            Path(self.out).write_text(json.dumps(self.cycles))
            return False
        self.mine.acquire()
        self.resumed = time.perf_counter()
        return True


class Turns(pl.Callback):
    """Takes the lock-step turn at every training batch start; stops training when the side is done."""

    def __init__(self, turn: Callable[[], bool]):
        self.turn = turn

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.turn():
            trainer.should_stop = True
            # Lightning stops after this batch; its step is not timed.


def _side(run: Callable[..., None], arguments: tuple, baton: Baton) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    run(baton, *arguments)
    if len(baton.cycles) < baton.steps:
        # The side ended early (its data ran out): keep the ring turning for the others.
        Path(baton.out).write_text(json.dumps(baton.cycles))
        baton.next_side.release()


def run_in_lockstep(sides: dict[str, tuple[Callable[..., None], tuple]], warmup: int, steps: int, folder: Path) -> dict[str, list[float]]:
    """Run every side's ``run(turn, *arguments)`` in its own process, taking turns; per-step cycle times by side."""
    context = multiprocessing.get_context("spawn")
    names = list(sides)
    locks = [context.Semaphore(0) for _ in names]
    processes = []
    for index, name in enumerate(names):
        out = str(folder / f"{name}.json")
        baton = Baton(locks[index], locks[(index + 1) % len(names)], warmup, steps, out)
        run, arguments = sides[name]
        process = context.Process(target=_side, args=(run, arguments, baton), name=name)
        process.start()
        processes.append(process)
    locks[0].release()  # the first side starts
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"side {process.name} failed (exit {process.exitcode})")
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in names}


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the step-by-step ratios of two sides' cycle times."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def median_difference_ms(minuend: list[float], subtrahend: list[float]) -> float:
    """Median of the step-by-step differences, in milliseconds."""
    return statistics.median((a - b) * 1000 for a, b in zip(minuend, subtrahend))

"""Checkpoint stall: extra wall time a save adds to training, threaded against synchronous.

A 50M-parameter model (12 linear layers of 2048 x 2048) trains with AdamW on random
data for the same number of steps three times in this process: without
checkpoints, with Lightning's ModelCheckpoint as it comes (synchronous writes), and
with the same ModelCheckpoint writing through BackgroundCheckpointIO (with its
CheckpointWriteMonitor), both saving every SAVE_EVERY steps.

How the stall is measured: on a shared 2-core machine the speed of whole runs drifts
by up to 30% from one run to the next, more than the effect being measured. So each
run is timed step by step (from one step's start to the next, the last one up to the
end of fit, which includes waiting for unfinished writes). Its excess is the total
minus steps x the median of its steps before the first save, which no save or
background write can have touched. The excess of the run without checkpoints
(noise, and its own drift) is subtracted, and each figure is the median over
interleaved rounds. Whole-run totals are printed too.
Target: the threaded stall is at most 0.3x the synchronous one.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from brain_gen.losses.next_step import MSE
from brain_gen.training.checkpointing import BackgroundCheckpointIO, CheckpointWriteMonitor
from brain_gen.training.lightning import LitModel

WIDTH, LAYERS, BATCH = 2048, 12, 8
# Saves at steps 20, 40 and 60, then 19 more steps (a 4th save would come at step 80):
# time for the last background write to land before training ends, as it would in a
# long run, so the benchmark measures what a save costs the loop and not the one final
# wait for an unfinished write.
STEPS, SAVE_EVERY, SAVES = 79, 20, 3
ROUNDS = 3


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


class StepClock(pl.Callback):
    """Wall-clock time at the start of every training step."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())


def excess_seconds(writes: str | None, folder: str) -> tuple[float, float]:
    """(excess over the run's median step before the first save, total time of the steps), in seconds.

    ``writes``: None (no checkpoints), "sync" (Lightning's own) or "background".
    """
    clock = StepClock()
    data = TensorDataset(torch.randn(STEPS * BATCH, WIDTH), torch.randn(STEPS * BATCH, WIDTH))
    module = LitModel(model(), MSE(), {"lr": 1e-4, "weight_decay": 0.01})
    callbacks: list[pl.Callback] = [clock]
    plugins = []
    if writes is not None:
        callbacks.append(ModelCheckpoint(dirpath=folder, every_n_train_steps=SAVE_EVERY, save_top_k=1, monitor=None))
    if writes == "background":
        checkpoint_io = BackgroundCheckpointIO()
        callbacks.append(CheckpointWriteMonitor(checkpoint_io))
        plugins.append(checkpoint_io)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=writes is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        plugins=plugins,
    )
    trainer.fit(module, DataLoader(data, batch_size=BATCH))
    steps = torch.tensor(clock.starts + [time.perf_counter()], dtype=torch.float64).diff()
    total = float(steps.sum())
    before_first_save = steps[: SAVE_EVERY - 1]
    excess = total - len(steps) * float(before_first_save.median())
    if writes is not None:
        saves = callbacks[1]._last_global_step_saved // SAVE_EVERY
        assert saves == SAVES, f"expected {SAVES} saves, the run made {saves}"
    # Untimed: remove the files and push every dirty page to disk, so that the kernel's
    # writeback of this run's checkpoints does not slow down the next run.
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()
    return excess, total


def main() -> float:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    parameters = sum(p.numel() for p in model().parameters())
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "sync": [], "threaded": []}
    with tempfile.TemporaryDirectory() as root:
        excess_seconds(None, f"{root}/none")  # warm-up: allocator, threads, page cache
        for round_index in range(ROUNDS):
            runs["plain"].append(excess_seconds(None, f"{root}/none"))
            runs["sync"].append(excess_seconds("sync", f"{root}/sync{round_index}"))
            runs["threaded"].append(excess_seconds("background", f"{root}/threaded{round_index}"))
    for name, results in runs.items():
        print(f"{name:>8}: steps took " + ", ".join(f"{total:.1f} s (excess {excess:.2f})" for excess, total in results))
    excess = {name: statistics.median(result[0] for result in results) for name, results in runs.items()}
    sync_stall = (excess["sync"] - excess["plain"]) / SAVES
    threaded_stall = max(excess["threaded"] - excess["plain"], 0.0) / SAVES
    ratio = threaded_stall / sync_stall
    print(f"{parameters / 1e6:.1f}M parameters, {STEPS} steps, a save every {SAVE_EVERY}, median of {ROUNDS} rounds")
    print(f"stall per save: ModelCheckpoint {sync_stall:.2f} s, with BackgroundCheckpointIO {threaded_stall:.2f} s")
    print(f"threaded/synchronous stall ratio: {ratio:.3f} (target <= 0.3)")
    return ratio


if __name__ == "__main__":
    main()

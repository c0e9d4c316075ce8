"""Checkpoint stall: extra wall time a save adds to training, threaded against synchronous.

A 50M-parameter model (12 linear layers of 2048 x 2048) trains with AdamW on random
data for the same number of steps three times in this process: without
checkpoints, with Lightning's ModelCheckpoint, and with ThreadedModelCheckpoint, both
saving every SAVE_EVERY steps. The stall per save is the extra time over the run
without checkpoints, divided by the number of saves.
Target: the threaded stall is at most 0.3x the synchronous one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from brain_gen.losses.next_step import MSE
from brain_gen.training.checkpointing import ThreadedModelCheckpoint
from brain_gen.training.lightning import LitModel

WIDTH, LAYERS, BATCH = 2048, 12, 8
# Saves at steps 20, 40 and 60, then 20 more steps: time for the last background write
# to land before training ends, as it would in a real run, so the benchmark measures
# what a save costs the loop and not the final wait for an unfinished write.
STEPS, SAVE_EVERY, SAVES = 80, 20, 3


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def train_seconds(checkpoint_class, folder: str) -> float:
    data = TensorDataset(torch.randn(STEPS * BATCH, WIDTH), torch.randn(STEPS * BATCH, WIDTH))
    module = LitModel(model(), MSE(), {"lr": 1e-4, "weight_decay": 0.01})
    callbacks = []
    if checkpoint_class is not None:
        callbacks.append(checkpoint_class(dirpath=folder, every_n_train_steps=SAVE_EVERY, save_top_k=1, monitor=None))
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=checkpoint_class is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, DataLoader(data, batch_size=BATCH))
    elapsed = time.perf_counter() - start
    # Untimed: remove the files and push every dirty page to disk, so that the kernel's
    # writeback of this run's checkpoints does not slow down the next run.
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()
    return elapsed


def main() -> float:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    parameters = sum(p.numel() for p in model().parameters())
    saves = SAVES
    runs: dict[str, list[float]] = {"plain": [], "sync": [], "threaded": []}
    with tempfile.TemporaryDirectory() as root:
        folder = f"{root}/none"
        train_seconds(None, folder)  # warm-up: allocator, threads, page cache
        # Two interleaved rounds, best of each: a drift of the machine hits all three alike.
        for round_index in range(2):
            runs["plain"].append(train_seconds(None, folder))
            runs["sync"].append(train_seconds(ModelCheckpoint, f"{root}/sync{round_index}"))
            runs["threaded"].append(train_seconds(ThreadedModelCheckpoint, f"{root}/threaded{round_index}"))
    plain, synchronous, threaded = (min(runs[name]) for name in ("plain", "sync", "threaded"))
    sync_stall = (synchronous - plain) / saves
    threaded_stall = max(threaded - plain, 0.0) / saves
    ratio = threaded_stall / sync_stall
    print(f"{parameters / 1e6:.1f}M parameters, {STEPS} steps, a save every {SAVE_EVERY}: no checkpoints {plain:.1f} s")
    print(f"stall per save: ModelCheckpoint {sync_stall:.2f} s, ThreadedModelCheckpoint {threaded_stall:.2f} s")
    print(f"threaded/synchronous stall ratio: {ratio:.3f} (target <= 0.3)")
    return ratio


if __name__ == "__main__":
    main()

"""Checkpoint stall: the time a save takes from training, background writes against synchronous, in lock-step.

The model: a small trainable network (4 linear layers of 1024 x 1024, AdamW) carrying
560 MB of other state in a buffer, so that every checkpoint is 610 MB while a step
takes tens of milliseconds. What a save costs the loop depends on the bytes it
copies and writes, not on the step; short steps let many of them run during each
background write (so its competition with training is measured) and keep the noise of
single steps small against a stall of a tenth of a second.

Three sides, each a process of its own with one torch thread, take turns step by step
(benchmarks/lockstep.py):

- ``plain``: no checkpoints;
- ``sync``: Lightning's ModelCheckpoint as it comes (synchronous writes);
- ``background``: the same ModelCheckpoint writing through BackgroundCheckpointIO, with
  its CheckpointWriteMonitor, as `brain-gen train` runs it.

Both checkpointing sides save every SAVE_EVERY steps. A side's stall is what its steps
took beyond the plain side's, step by step, less its typical per-step difference (the
median, which no save touches), summed over the WINDOW steps from each save: the time
the save and its write took from the training loop. (Summed over every step instead,
the random delays of single steps, tens of ms at times, swamp a stall of 0.1 s.) The last save is followed by steps enough for its background write to
land, as in a long run, so the benchmark measures what a save costs the loop and not
one final wait.

Why lock-step: this machine's speed drifts by up to 70% within tens of seconds, and a
stall of a tenth of a second per save vanishes in whole runs timed one after another.
One torch thread per side is also how a GPU run trains: one host thread driving the
device, the other core free for the writer thread.

Target: the background stall is at most 0.1x the synchronous one, median over rounds.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Result
from benchmarks.lockstep import Turns, run_in_lockstep

WIDTH, LAYERS, BATCH = 1024, 4, 64
STATE_FLOATS = 140 * 2**20  # 560 MB
SAVE_EVERY, SAVES = 50, 3
# Saves after steps 50, 100 and 150; the side stops after step 196 (WARMUP + STEPS + 1:
# the batch during which a side learns it is done runs untimed), which leaves the last
# background write over forty timed steps to land.
WARMUP, STEPS = 5, 190
ROUNDS = 2
# Steps from each save over which its stall is counted: the save itself, and the steps
# its background write may compete with (a 610 MB write takes about two seconds).
WINDOW = 20
TARGET = 0.1


def train(turn, writes: str | None, folder: str) -> None:
    """One side: train with no checkpoints (None), Lightning's synchronous writes ("sync") or ours ("background")."""
    import logging
    import warnings

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from brain_gen.losses.next_step import MSE
    from brain_gen.training.checkpointing import BackgroundCheckpointIO, CheckpointWriteMonitor
    from brain_gen.training.lightning import LitModel

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    model.register_buffer("carried_state", torch.randn(STATE_FLOATS))  # saved in every checkpoint, not trained
    steps = WARMUP + STEPS + 2
    data = TensorDataset(torch.randn(steps * BATCH, WIDTH), torch.randn(steps * BATCH, WIDTH))
    callbacks: list[pl.Callback] = [Turns(turn)]
    plugins = []
    checkpoint = ModelCheckpoint(dirpath=folder, every_n_train_steps=SAVE_EVERY, save_top_k=1, monitor=None)
    if writes is not None:
        callbacks.append(checkpoint)
    if writes == "background":
        checkpoint_io = BackgroundCheckpointIO()
        callbacks.append(CheckpointWriteMonitor(checkpoint_io))
        plugins.append(checkpoint_io)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=writes is not None,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, plugins=plugins,
    )
    trainer.fit(LitModel(model, MSE(), {"lr": 1e-4, "weight_decay": 0.01}), DataLoader(data, batch_size=BATCH))
    if writes is not None:
        saves = checkpoint._last_global_step_saved // SAVE_EVERY
        assert saves == SAVES, f"expected {SAVES} saves, the run made {saves}"


def stall_seconds(side: list[float], plain: list[float], window: int) -> float:
    """Seconds the side's saves took from its loop: over ``window`` steps from each save, its steps beyond the
    plain side's, less their typical per-step difference (the median over all steps, which saves do not move)."""
    differences = [a - b for a, b in zip(side, plain)]
    typical = statistics.median(differences)
    # Cycle i is that of batch WARMUP + i (counted from 0); the save of global step
    # k x SAVE_EVERY happens at the end of batch k x SAVE_EVERY - 1.
    saves = [k * SAVE_EVERY - 1 - WARMUP for k in range(1, SAVES + 1)]
    return sum(difference - typical for save in saves for difference in differences[save : save + window])


def main(rounds: int = ROUNDS) -> list[Result]:
    sync_stalls, background_stalls, ratios, at_save = [], [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            sides = {name: (train, (writes, str(root / name))) for name, writes in (("plain", None), ("sync", "sync"), ("background", "background"))}
            cycles = run_in_lockstep(sides, WARMUP, STEPS, root)
        sync = stall_seconds(cycles["sync"], cycles["plain"], WINDOW) / SAVES
        background = max(stall_seconds(cycles["background"], cycles["plain"], WINDOW), 0.0) / SAVES
        saving_step = stall_seconds(cycles["background"], cycles["plain"], 1) / SAVES
        step_ms = statistics.median(cycles["plain"]) * 1000
        print(f"round: plain step {step_ms:.0f} ms; stall per save over {WINDOW} steps: synchronous {sync:.2f} s, "
              f"background {background:.3f} s (at the saving step alone {saving_step:.3f} s), ratio {background / sync:.3f}")
        sync_stalls.append(sync)
        background_stalls.append(background)
        at_save.append(saving_step)
        ratios.append(background / sync)
    ratio = statistics.median(ratios)
    measured = (f"{ratio:.3f}x (rounds {', '.join(f'{r:.3f}' for r in ratios)}; {statistics.median(background_stalls):.3f} s "
                f"against {statistics.median(sync_stalls):.2f} s per 610 MB save)")
    return [
        Result("bench_checkpoint_stall", f"stall per save over {WINDOW} steps, background over synchronous writes", measured, f"<= {TARGET}x", ratio <= TARGET),
        Result("bench_checkpoint_stall", "background stall at the saving step alone", f"{statistics.median(at_save):.3f} s", "(context)", None),
    ]


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

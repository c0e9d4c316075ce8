"""The framework's cost per training step at small (GPU-sized) steps, in lock-step.

Sides, each a process of its own with one torch thread, taking turns step by step
(benchmarks/lockstep.py), all on the same data and model (a one-layer ChannelGPT,
d_model 16, 4 channels, 0.4 s windows, whose step takes 6-8 ms on this CPU alone and
11-15 ms in lock-step, where every turn starts with caches the other sides filled),
batch 8, AdamW, gradient clipping at 1.0:

- ``hand``: a hand-written loop: DataLoader, forward, loss, backward, clipping, step;
- ``lightning``: bare Lightning: the same in a LightningModule, no logger, callbacks or bar;
- ``brain_gen_1`` and ``brain_gen_50``: ``ExperimentDL`` with a user's defaults
  (progress bar, TensorBoard, the spec's per-step telemetry, checkpoints, warmup +
  cosine per step) at ``log_every_n_steps`` 1 and 50.

Printed: the median of the step-by-step ratios against the hand-written loop, and
brain-gen's extra milliseconds per step over bare Lightning (median of the
step-by-step differences, with their quartiles: single steps here vary by several
ms, so a difference well under a millisecond needs many steps to show). Targets: at
most 1.0 ms at log_every_n_steps 1, 0.3 ms at 50.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Result
from benchmarks.lockstep import Turns, median_difference_ms, median_ratio, run_in_lockstep

# Single steps vary by several ms here: 1,000 of them give the median difference to
# within a fraction of a millisecond.
WARMUP, STEPS = 30, 1000
BATCH = 8
TARGETS_MS = {"brain_gen_1": 1.0, "brain_gen_50": 0.3}


def user_config(save_dir: Path, data: Path, log_every: int, model: dict[str, Any], datasplitter: dict[str, Any], batch_size: int, warmup_steps: int) -> dict[str, Any]:
    """A config as a user writes one: CrossEntropy, AdamW with warmup + cosine per step, clipping at 1.0, one CPU epoch."""
    return {
        "save_dir": str(save_dir),
        **model,
        "loss_name": "CrossEntropy",
        "datasplitter": {"dataset_root": str(data), "val_ratio": 0.1, "test_ratio": 0.1, **datasplitter},
        "dataloader": {"batch_size": batch_size},
        "lightning": {
            "lr": 1e-3,
            "weight_decay": 0.01,
            "lr_warmup": {"steps": warmup_steps, "interval": "step"},
            "lr_scheduler": {"class_name": "CosineAnnealingLR", "interval": "step", "T_max": 1000},
        },
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": log_every, "num_sanity_val_steps": 0,
            "gradient_clip_val": 1.0,
        },
    }


def config(save_dir: Path, data: Path, log_every: int) -> dict[str, Any]:
    model = {
        "model_name": "ChannelGPT",
        "model_config": {"vocab_size": 64, "num_channels": 4, "d_model": 16, "n_layers": 1, "n_heads": 1, "max_position_embeddings": 32},
    }
    datasplitter = {"example_seconds": 0.4, "dataset_kwargs": {"max_val": 4.0, "mu": 63}}
    return user_config(save_dir, data, log_every, model, datasplitter, BATCH, warmup_steps=20)


def _parts(settings: dict[str, Any]):
    """The model, loss and training dataset every side uses, built as brain-gen builds them."""
    from brain_gen.training.train import ExperimentDL

    experiment = ExperimentDL(settings)
    experiment.build()
    return experiment.model, experiment.lit_model.loss_fn, experiment.datasets["train"]


def _batch_size(settings: dict[str, Any]) -> int:
    return settings["dataloader"]["batch_size"]


def hand_written(turn, settings: dict[str, Any]) -> None:
    import torch
    from torch.utils.data import DataLoader

    model, loss_fn, dataset = _parts(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for inputs, targets in DataLoader(dataset, batch_size=_batch_size(settings), shuffle=True):
        if not turn():
            break
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    report_peak_memory(turn)


def bare_lightning(turn, settings: dict[str, Any]) -> None:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    model, loss_fn, dataset = _parts(settings)

    class Bare(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            inputs, targets = batch
            return loss_fn(self.model(inputs), targets)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[Turns(turn)], default_root_dir=settings["save_dir"],
    )
    trainer.fit(Bare(), DataLoader(dataset, batch_size=_batch_size(settings), shuffle=True))
    report_peak_memory(turn)


def brain_gen(turn, settings: dict[str, Any]) -> None:
    from brain_gen.training.train import ExperimentDL

    settings = {**settings, "trainer": {**settings["trainer"], "callbacks": [Turns(turn)]}}
    ExperimentDL(settings).train()
    report_peak_memory(turn)


def report_peak_memory(turn) -> None:
    """The side's peak resident memory in bytes, next to its step times (``<side>.rss``)."""
    import resource

    Path(turn.out).with_suffix(".rss").write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))


def main() -> list[Result]:
    from brain_gen.demo import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        # 45 sessions of 120 s: 36 train, 1,350 batches of 8 windows of 0.4 s in one epoch.
        data = make_synthetic_dataset(root / "data", n_sessions=45, n_channels=4, sfreq=50.0, session_seconds=120.0, chunk_seconds=60.0, seed=1)
        sides = {
            "hand": (hand_written, (config(root / "hand", data, 1),)),
            "lightning": (bare_lightning, (config(root / "lightning", data, 1),)),
            "brain_gen_1": (brain_gen, (config(root / "bg1", data, 1),)),
            "brain_gen_50": (brain_gen, (config(root / "bg50", data, 50),)),
        }
        cycles = run_in_lockstep(sides, WARMUP, STEPS, root)
    hand_ms = sorted(cycles["hand"])[len(cycles["hand"]) // 2] * 1000
    print(f"hand-written step: {hand_ms:.2f} ms (median); {STEPS} steps per side, lock-step")
    print("| side | over hand-written (median ratio) | extra ms per step over bare Lightning | target |")
    print("| --- | --- | --- | --- |")
    results = []
    for name in ("lightning", "brain_gen_1", "brain_gen_50"):
        ratio = median_ratio(cycles[name], cycles["hand"])
        extra = median_difference_ms(cycles[name], cycles["lightning"]) if name != "lightning" else 0.0
        spread = ""
        if name != "lightning":
            quartiles = statistics.quantiles([(a - b) * 1000 for a, b in zip(cycles[name], cycles["lightning"])], n=4)
            spread = f" (quartiles {quartiles[0]:+.1f} .. {quartiles[2]:+.1f})"
        target = f"<= {TARGETS_MS[name]} ms" if name in TARGETS_MS else ""
        met = "" if name not in TARGETS_MS else (" met" if extra <= TARGETS_MS[name] else " NOT met")
        print(f"| {name} | {ratio:.2f}x | {extra:+.2f} ms{spread}{met} | {target} |")
        if name in TARGETS_MS:
            cadence = name.rsplit("_", 1)[1]
            results.append(Result("bench_step_overhead", f"extra ms per small step over bare Lightning, log_every_n_steps {cadence}",
                                  f"{extra:+.2f} ms{spread}", f"<= {TARGETS_MS[name]} ms", extra <= TARGETS_MS[name]))
    return results


if __name__ == "__main__":
    from benchmarks.common import print_table

    print_table(main())

"""Throughput telemetry: PerformanceMonitor, and a TensorBoard logger that flushes at a bounded rate."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.profilers import PassThroughProfiler
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary


def batch_size_of(batch: Any) -> int:
    """Samples in a ``(inputs, targets)`` batch."""
    return len(batch[1])


def tokens_of(batch: Any) -> int | torch.Tensor:
    """Tokens in a batch: channels x time for signal windows, non-padding tokens for text.

    Text batches carry ``(input_ids, attention_mask, channel_ids)``; their count stays
    a device tensor, so that no step waits for it.
    """
    inputs = batch[0]
    if isinstance(inputs, (tuple, list)):
        first = inputs[0]
        if len(inputs) > 1 and torch.is_tensor(inputs[1]) and inputs[1].shape == first.shape and not inputs[1].is_floating_point():
            return inputs[1].sum()
        return first.numel()
    return inputs.numel()


def logs_written_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes this training step's logs (every ``log_every_n_steps``, and when stopping).

    Lightning's own decision, read from its logger connector: it holds from the
    step's start (``on_train_batch_start``) to its end, so values computed only on
    these steps are exactly the ones the logger writes.
    """
    return trainer._logger_connector.should_update_logs


def batch_steps_optimizer(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether this batch ends with an optimizer step: Lightning writes the logs of such batches only."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or trainer.is_last_batch


def write_step_scalars(trainer: pl.Trainer, batch_idx: int, values: dict[str, float | torch.Tensor]) -> None:
    """Write per-step values straight to the loggers, at the step Lightning writes this batch's logs.

    ``self.log`` costs about a millisecond per value in Lightning's bookkeeping, more
    than a small step takes; values that feed nothing but the logger skip it. Rank
    zero writes (reduce across ranks first where a value needs it); tensors reach the
    host in one copy. A batch that only accumulates gradients writes nothing, as with
    Lightning, whose next (stepping) batch writes.
    """
    if not values or not trainer.loggers or not trainer.is_global_zero:
        return
    if not batch_steps_optimizer(trainer, batch_idx):
        return
    tensors = [value for value in values.values() if torch.is_tensor(value)]
    numbers = iter(torch.stack([value.float().reshape(()).to(tensors[0].device) for value in tensors]).tolist() if tensors else [])
    metrics = {name: next(numbers) if torch.is_tensor(value) else float(value) for name, value in values.items()}
    # The optimizer steps before this one: the step Lightning gives this batch's own logs.
    step = trainer.global_step - 1
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class PerformanceMonitor(pl.Callback):
    """Logs ``perf/*`` throughput at every training step Lightning writes logs for (``log_every_n_steps``).

    - ``perf/batches_per_sec``, ``perf/samples_per_sec``, ``perf/tokens_per_sec``: over
      the batches since the last log (across epoch boundaries, validation time
      excluded); under DDP summed over ranks (global rates);
    - ``perf/data_wait_fraction``: the share of that time spent between one batch's end
      and the next one's start, which is where the loader is waited for;
    - ``perf/epoch_time_sec`` at the end of each training epoch;
    - on CUDA, ``perf/cuda_memory_allocated_gb`` and ``perf/cuda_memory_peak_gb``.

    Only clock reads happen per step; nothing waits for the device except the token
    count of text batches, read once per log.
    """

    def __init__(self):
        self._reset_window(time.perf_counter())
        self._epoch_started = time.perf_counter()

    def _reset_window(self, now: float) -> None:
        self._window_started = now
        self._last_batch_end = now
        self._batches = 0
        self._samples = 0
        self._tokens: int | torch.Tensor = 0
        self._waiting = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._epoch_started = now
        # The window runs on across epochs (logs follow the global step), but the time
        # spent validating between epochs is not time spent waiting for data.
        self._waiting -= now - self._last_batch_end
        self._last_batch_end = now

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._waiting += time.perf_counter() - self._last_batch_end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._batches += 1
        self._samples += batch_size_of(batch)
        self._tokens = self._tokens + tokens_of(batch)
        self._last_batch_end = now
        # Log exactly when Lightning writes this step's logs, so perf/* shares their steps.
        if not logs_written_this_step(trainer):
            return
        if not batch_steps_optimizer(trainer, batch_idx):
            return  # the window goes on to the batch that steps, where Lightning writes
        elapsed = max(now - self._window_started, 1e-9)
        waiting = min(max(self._waiting / elapsed, 0.0), 1.0)
        # Rates are summed over the ranks (samples of the whole run per second), the
        # waiting share averaged: one all-reduce for all four, once per log.
        counts = torch.stack([torch.as_tensor(value, dtype=torch.float32).to(pl_module.device) for value in (self._batches, self._samples, self._tokens, waiting)])
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        batches, samples, tokens, waiting_sum = counts.tolist()
        values = {
            "perf/batches_per_sec": batches / elapsed,
            "perf/samples_per_sec": samples / elapsed,
            "perf/tokens_per_sec": tokens / elapsed,
            "perf/data_wait_fraction": waiting_sum / trainer.world_size,
        }
        if pl_module.device.type == "cuda":
            gigabyte = float(1 << 30)
            values["perf/cuda_memory_allocated_gb"] = torch.cuda.memory_allocated(pl_module.device) / gigabyte
            values["perf/cuda_memory_peak_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / gigabyte
        write_step_scalars(trainer, batch_idx, values)
        self._reset_window(now)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("perf/epoch_time_sec", time.perf_counter() - self._epoch_started, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, at a fraction of its cost per hook.

    Lightning wraps every hook it calls, for each callback and at every step, in
    ``trainer.profiler.profile(name)``. The default PassThroughProfiler makes that a
    generator-based context manager, about 2 us each; with a run's dozen callbacks that
    is over a hundred a step, a quarter of a millisecond. Here it is one shared no-op
    context. A profiler the user names (``trainer.profiler``) replaces this one.
    """

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing


class BoundedFlushTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger, flushing to disk at most every ``flush_interval_sec`` seconds,
    and writing each step's scalars as one event.

    Lightning asks the logger to save after every logged step, which would make the
    event file write through to disk each time. Events still reach disk when the
    writer's own queue fills, and everything is flushed when the run ends.

    Lightning's logger writes one event per scalar: each goes through the event
    writer's queue and wakes its thread, about 60 us a scalar here, a millisecond for
    the fifteen of a step at ``log_every_n_steps: 1``. Here the scalars of one step,
    from every ``log_metrics`` call for it (LitModel's telemetry, PerformanceMonitor,
    Lightning's own ``self.log`` values), are kept until the step changes or Lightning
    saves the logger after writing the step, and go out as one event. TensorBoard files
    a scalar by its tag and step, whichever event holds it, so they read back the same.
    """

    def __init__(self, *args: Any, flush_interval_sec: float = 30.0, **kwargs: Any):
        kwargs.setdefault("flush_secs", int(flush_interval_sec))
        super().__init__(*args, **kwargs)
        self.flush_interval_sec = flush_interval_sec
        self._last_flush = time.monotonic()
        # Names get a prefix (TensorBoardLogger's sixth argument) in Lightning's own path only.
        self._one_event_per_step = not kwargs.get("prefix") and len(args) < 6
        self._pending_step: int | None = None
        self._pending: list[Summary.Value] = []

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float | torch.Tensor], step: int | None = None) -> None:
        values = []
        if self._one_event_per_step and step is not None:
            for name, value in metrics.items():
                number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
                if not isinstance(number, (int, float)):  # dicts, arrays: Lightning's path, and its errors
                    values = []
                    break
                values.append(Summary.Value(tag=name, simple_value=float(number)))
        if step != self._pending_step or not values:
            self._write_pending()
        if not values:
            super().log_metrics(metrics, step)
            return
        self._pending_step = step
        self._pending.extend(values)

    def _write_pending(self) -> None:
        """Write the step's kept scalars as one event."""
        writer = self.experiment.file_writer if self._pending else None
        if writer is not None:
            writer.add_summary(Summary(value=self._pending), self._pending_step)
        else:  # none pending, or the writer was closed (finalize): add_scalar opens it again
            for value in self._pending:
                self.experiment.add_scalar(value.tag, value.simple_value, self._pending_step)
        self._pending_step, self._pending = None, []

    def save(self) -> None:
        self._write_pending()  # Lightning saves after writing a step's logs: the step is complete
        now = time.monotonic()
        if now - self._last_flush < self.flush_interval_sec:
            return
        self._last_flush = now
        super().save()

    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._write_pending()
            super().save()
        super().finalize(status)

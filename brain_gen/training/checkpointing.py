"""Checkpoints written in the background, never torn, through Lightning's CheckpointIO extension point.

Threaded checkpoint writers elsewhere serialize live tensors from a background
thread while training keeps changing them, so a file can hold a mix of two steps.
Here the training thread first copies the whole checkpoint (model, optimizer,
schedulers, loops, callbacks) to CPU memory; only writing that frozen copy happens
in the background, durably (brain_gen.training.durable_write). The checkpoint a new
one replaces is deleted only after the new one is durable, so a kill at any moment
leaves only complete files.

The parts:
- BackgroundCheckpointIO, the plugin (``pl.Trainer(plugins=[...])``): Lightning's
  ModelCheckpoint saves and removes through it; it snapshots and queues the writes.
- CheckpointWriteMonitor, a callback: the training thread's side of the plugin. It
  logs the time training waited for a write, raises a failed write, and finishes
  the writes when training ends.
- FinalCheckpoint, a callback: one more save when training ends for any reason but
  a crash.
- run_checkpoints(): all of them as ExperimentDL's Trainer uses them.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy, Strategy

from brain_gen.config.errors import CheckpointWriteError
from brain_gen.memory import empty_page_aligned
from brain_gen.training.durable_write import DurableWriter
from brain_gen.training.fsdp import is_sharded_checkpoint

log = logging.getLogger(__name__)


def snapshot(value: Any, reuse: Any = None) -> Any:
    """A deep copy of a checkpoint with every tensor copied to CPU memory.

    Containers are rebuilt, tensors are cloned, other objects are deep-copied, so
    nothing in the result is shared with the live training state. ``reuse`` is an
    earlier snapshot whose write has finished: its CPU tensors are overwritten in
    place where shapes match, which spares the cost of fresh memory at every save.
    """
    if isinstance(value, torch.Tensor):
        if (
            isinstance(reuse, torch.Tensor)
            and reuse.device.type == "cpu"
            and reuse.shape == value.shape
            and reuse.dtype == value.dtype
            and reuse.is_contiguous()
        ):
            return reuse.copy_(value.detach())
        if value.layout != torch.strided or value.is_quantized:
            return value.detach().to("cpu", copy=True)
        # Page-aligned, so that the write can send it to the disk by direct I/O.
        return empty_page_aligned(value.shape, value.dtype).copy_(value.detach())
    if isinstance(value, dict):
        copied = copy.copy(value)  # keeps the dict's own type (OrderedDict, AttributeDict)
        earlier = reuse if isinstance(reuse, dict) else {}
        for key, item in value.items():
            copied[key] = snapshot(item, earlier.get(key))
        return copied
    if isinstance(value, (list, tuple)):
        earlier = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(value) else [None] * len(value)
        items = [snapshot(item, previous) for item, previous in zip(value, earlier)]
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    return copy.deepcopy(value)


def blank_snapshot(value: Any) -> Any:
    """Fresh CPU memory shaped like the tensors of ``value``, in the containers ``snapshot`` reuses from.

    Only what ``snapshot`` would copy into is made: strided tensors, in dicts, lists and
    tuples (as lists); everything else is left out.
    """
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized:
            return None
        return empty_page_aligned(value.shape, value.dtype)
    if isinstance(value, dict):
        return {key: blank_snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [blank_snapshot(item) for item in value]
    return None


def _fault_in(value: Any) -> None:
    """Write every tensor of a ``blank_snapshot`` once, so the kernel maps its pages now rather than at the first save."""
    if isinstance(value, torch.Tensor):
        value.zero_()
    elif isinstance(value, dict):
        for item in value.values():
            _fault_in(item)
    elif isinstance(value, list):
        for item in value:
            _fault_in(item)


def supports_background_writes(strategy: Strategy) -> bool:
    """Whether checkpoints of this strategy are written in the background.

    Sharded strategies (FSDP, DeepSpeed, model parallel) gather or shard the state in
    their own save: their shards never reach a CheckpointIO, and a gathered full state
    that does is already a CPU copy of a model big enough to need sharding, which a
    snapshot would double. They keep synchronous writes.
    """
    return isinstance(strategy, SingleDeviceStrategy) or type(strategy) is DDPStrategy


class BackgroundCheckpointIO(TorchCheckpointIO):
    """A CheckpointIO plugin that writes checkpoints on a background thread, durably and never torn.

    ``save_checkpoint`` runs on the training thread: it copies the checkpoint to CPU
    memory and queues the write of that copy. One thread writes, so at most one write
    is in flight. A save first waits for the writes of earlier steps, so the queue
    never holds more than one step's files: the best and the last checkpoint of the
    same step are written one after the other without stalling training, and memory
    holds at most one step's snapshots. ``remove_checkpoint`` is queued behind the
    write of the file's replacement, and skipped if that write failed. A failure is
    kept until ``raise_failed_write`` raises it on the training thread. Lightning calls
    the plugin only on global rank zero (``Strategy.save_checkpoint`` /
    ``remove_checkpoint``).

    Writes go to the background only while ``background`` is true, which a
    CheckpointWriteMonitor sets for the run's strategy: without one, nobody would
    raise a failed write. Otherwise, and after ``teardown``, every call completes
    before it returns (Lightning's ddp_spawn hands the final weights to the main
    process through a file it reads right away).
    """

    def __init__(self, writer: DurableWriter | None = None):
        super().__init__()
        self.writer = writer or DurableWriter()
        self.background = False
        self._executor: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []
        # The global step whose snapshots are queued or being written, and those snapshots.
        self._queued_step: int | None = None
        self._queued_snapshots: list[Any] = []
        # Snapshots whose writes have finished: their memory is reused by the next step's.
        self._reusable_snapshots: list[Any] = []
        # (global step, seconds) of each save that waited for the previous write, until reported.
        self._waits: list[tuple[int | None, float]] = []
        self._durable_write_listeners: list[Callable[[str], None]] = []

    def on_durable_write(self, listener: Callable[[str], None], of: ModelCheckpoint | None = None) -> None:
        """Call ``listener(path)`` after each checkpoint file written through this plugin is complete on disk;
        with ``of``, only for the files of that checkpoint callback.

        With background writes it runs on the writer thread, right after the file got its
        final name and before any later write or delete, so the listener can hard-link
        the file before it could be replaced. It must be quick.
        """
        if of is not None:
            everything = listener

            def listener(path: str) -> None:
                if written_by(of, path):
                    everything(path)

        self._durable_write_listeners.append(listener)

    # ----------------------------------------------------------------- CheckpointIO

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = str(path)
        if not self.background:
            self._write_and_notify(checkpoint, path)
            return
        # An earlier failed write is reported by CheckpointWriteMonitor (before each batch and
        # each save), which alone knows when every rank of a distributed run can hear of it.
        step = checkpoint.get("global_step")
        if step is None or step != self._queued_step:
            waited = self.finish_writes()
            if waited > 0:
                log.info("checkpoint: training waited %.0f ms for the previous write", waited * 1000)
                self._waits.append((step, waited))
            # Every earlier write has finished (waited for above), so its buffers are free.
            self._reusable_snapshots, self._queued_snapshots = self._queued_snapshots, []
            self._queued_step = step
        reuse = self._reusable_snapshots.pop(0) if self._reusable_snapshots else None
        frozen = snapshot(checkpoint, reuse=reuse)
        self._queued_snapshots.append(frozen)
        self._submit(self._write_and_notify, frozen, path)

    def prepare_snapshot_memory(self, like: dict[str, Any]) -> None:
        """Have the first snapshot's memory ready before the first save, mapped by the writer thread.

        ``like``: the parts of a checkpoint that hold nearly all its bytes (the model's
        state dict and the optimizers' states), read now for their shapes only. The first
        snapshot otherwise copies into fresh memory on the training thread, and mapping
        that memory page by page costs more than the copy: 0.4 s for 560 MB here, against
        0.08 s for the same copy into memory already mapped. Later snapshots reuse that
        memory anyway. Does nothing once a save has happened, or without background writes.
        """
        if not self.background or self._queued_step is not None or self._queued_snapshots or self._reusable_snapshots:
            return
        blank = blank_snapshot(like)
        # Queued like the snapshot of a write: the first save waits for it (finish_writes)
        # and then takes it as reusable memory.
        self._queued_snapshots.append(blank)
        self._submit(_fault_in, blank)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        if not self.background:
            super().remove_checkpoint(path)
            return
        write = self._writes[-1] if self._writes else None
        self._submit(self._remove_after, write, path)

    def load_checkpoint(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.finish_writes()  # the file asked for may still be on its way
        return super().load_checkpoint(path, *args, **kwargs)

    def teardown(self) -> None:
        """Finish pending writes and stop the writer thread; from now on, writes complete before they return.

        Lightning calls this when a run ends, also when it stops on an exception, where
        raising would replace that exception: a failure nobody has raised yet is logged.
        A CheckpointWriteMonitor has normally finished and reported every write already.
        """
        waited = self.finish_writes()
        if waited > 0:
            log.info("checkpoint: teardown waited %.0f ms for the last write to finish", waited * 1000)
        try:
            self.raise_failed_write()
        except CheckpointWriteError as error:
            log.error("%s", error)
        self.background = False
        self._queued_step, self._queued_snapshots, self._reusable_snapshots = None, [], []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ----------------------------------------------------------------- the training thread's view

    def finish_writes(self) -> float:
        """Block until queued writes and removals finish; returns the seconds spent waiting."""
        if all(future.done() for future in self._writes):
            return 0.0
        start = time.perf_counter()
        for future in self._writes:
            future.exception()  # waits; failures are reported by raise_failed_write
        return time.perf_counter() - start

    def take_failed_write(self) -> BaseException | None:
        """The error of a finished write that failed, if any; finished writes are forgotten."""
        finished = [future for future in self._writes if future.done()]
        self._writes = [future for future in self._writes if not future.done()]
        errors = [future.exception() for future in finished]
        return next((error for error in errors if error is not None), None)

    def raise_failed_write(self) -> None:
        """Raise the error of a finished write that failed, as CheckpointWriteError; forget finished writes."""
        error = self.take_failed_write()
        if error is not None:
            raise CheckpointWriteError(failure_message(error)) from error

    def take_waits(self) -> list[tuple[int | None, float]]:
        """The (global step, seconds) of saves that waited for the previous write since the last call."""
        waits, self._waits = self._waits, []
        return waits

    # ----------------------------------------------------------------- the writer thread

    def _submit(self, function: Callable[..., None], *args: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer", initializer=_lower_priority)
        self._writes.append(self._executor.submit(function, *args))

    def _write_and_notify(self, state: dict[str, Any], path: str) -> None:
        self.writer.write(state, path)
        for listener in self._durable_write_listeners:
            try:
                listener(path)
            except Exception:  # a listener's failure must not fail the checkpoint
                log.exception("checkpoint: a listener failed on %s", path)

    def _remove_after(self, write: Future | None, path: str | os.PathLike) -> None:
        if write is not None and write.exception() is not None:
            return  # the replacement never became durable: keep the file it was to replace
        super().remove_checkpoint(path)


def _lower_priority() -> None:
    """Let the training threads win when the writer thread competes with them for CPU.

    With direct I/O the writer needs little CPU (about 0.01 s for 600 MB), but every
    slice it takes on a machine whose cores all run training threads stalls a parallel
    operator until its preempted thread comes back. Nice 19 keeps those slices short
    and rare; unlike SCHED_IDLE it keeps the thread's disk requests in the normal
    best-effort I/O class, so dataset reads cannot starve a checkpoint write.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: keep the default priority


def failure_message(error: BaseException) -> str:
    return f"writing a checkpoint failed: {error}"


class CheckpointWriteMonitor(pl.Callback):
    """The training thread's side of a BackgroundCheckpointIO.

    At setup it switches the plugin to background writes where the strategy allows
    them. Before each batch and validation, it logs the time a save waited for the
    previous write (``checkpoint/blocked_ms``, at that save's global step) and raises a
    failed write. When training ends it finishes the writes and does the same; when
    training stops on an exception it finishes them and logs a failure instead of
    raising it over that exception.
    """

    def __init__(self, checkpoint_io: BackgroundCheckpointIO):
        self.checkpoint_io = checkpoint_io
        self._snapshot_memory_asked = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.strategy.checkpoint_io is not self.checkpoint_io:
            raise ValueError("CheckpointWriteMonitor: pass its BackgroundCheckpointIO to the Trainer too: pl.Trainer(plugins=[checkpoint_io])")
        self.checkpoint_io.background = supports_background_writes(trainer.strategy)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._report(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the first optimizer step, when the optimizer's state exists. Rank zero
        # alone saves, so it alone needs the memory.
        if not self._snapshot_memory_asked and trainer.global_step > 0 and trainer.is_global_zero:
            self._snapshot_memory_asked = True
            like = {"state_dict": pl_module.state_dict(), "optimizer_states": [optimizer.state_dict() for optimizer in trainer.optimizers]}
            self.checkpoint_io.prepare_snapshot_memory(like)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the epoch's checkpoint saves: Lightning runs ModelCheckpoints after other callbacks.
        self._report(trainer, every_rank_here=True)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, every_rank_here=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_writes("training ended")
        self._report(trainer, every_rank_here=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish_writes("training stopped")
        # Not a point every rank reaches: no agreement, only rank zero's own account.
        error = self.checkpoint_io.take_failed_write()
        # A stop for a failed write already says so (once): a second failed write adds nothing.
        if error is not None and not isinstance(exception, CheckpointWriteError):
            log.error("%s", failure_message(error))

    def _finish_writes(self, moment: str) -> None:
        waited = self.checkpoint_io.finish_writes()
        if waited > 0:
            log.info("checkpoint: %s; waited %.0f ms for the last write to finish", moment, waited * 1000)

    def _report(self, trainer: pl.Trainer, every_rank_here: bool = False) -> None:
        """Log waits, and raise a failed write.

        With one process the failure is raised at once. With several, only rank zero
        writes, and a rank that stopped alone would leave the others waiting forever at
        the next collective: so the failure is shared at hooks every rank reaches at the
        same point (``every_rank_here``), and every rank raises the same error there.
        """
        for step, seconds in self.checkpoint_io.take_waits():
            for logger in trainer.loggers:
                logger.log_metrics({"checkpoint/blocked_ms": seconds * 1000}, step=step)
        if trainer.world_size == 1:
            self.checkpoint_io.raise_failed_write()
            return
        if not every_rank_here:
            return
        error = self.checkpoint_io.take_failed_write()
        message = trainer.strategy.broadcast(failure_message(error) if error is not None else None, src=0)
        if message is not None:
            raise CheckpointWriteError(message) from error


class FinalCheckpoint(pl.Callback):
    """One more save through a ModelCheckpoint when training ends for any reason but a crash.

    Training that ends at max_epochs, by early stopping or by Ctrl-C keeps its latest
    state even between the ModelCheckpoint's ``every_n_epochs`` saves. A Ctrl-C that
    lands inside a batch saves nothing: the optimizer may be half-way through a step.

    Lightning's ``ModelCheckpoint(save_on_exception=True)`` does not serve: it saves on
    crashes too, and inside a batch, not when training ends normally, and outside the
    top-k bookkeeping, so the checkpoint it should replace would stay.
    """

    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint
        self._in_batch = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._in_batch = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._in_batch = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, epoch_finished=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Ctrl-C is a deliberate stop, not a crash: keep the work done so far.
        if isinstance(exception, KeyboardInterrupt) and not self._in_batch:
            self._save(trainer, epoch_finished=False)

    def save_now(self, trainer: pl.Trainer) -> None:
        """Save the latest state at once, between two steps, and wait until it is on disk (a preempted run).

        Every rank calls it. The save at the end of training then finds this step saved.
        """
        self._save(trainer, epoch_finished=False)
        checkpoint_io = trainer.strategy.checkpoint_io
        if isinstance(checkpoint_io, BackgroundCheckpointIO):
            checkpoint_io.finish_writes()
            checkpoint_io.raise_failed_write()

    def _save(self, trainer: pl.Trainer, epoch_finished: bool) -> None:
        # ModelCheckpoint has no public "save now": its public hooks follow every_n_epochs.
        # These protected members are the ones its own hooks use, so the final file is
        # named, ranked and replaces the previous one exactly as a scheduled save would.
        checkpoint = self.checkpoint
        if checkpoint._last_global_step_saved == trainer.global_step or trainer.global_step == 0:
            return
        monitor_candidates = checkpoint._monitor_candidates(trainer)
        if epoch_finished:
            # The epoch counter has already moved past the last epoch; name the file after
            # the epoch that produced it, as the per-epoch saves do.
            monitor_candidates["epoch"] = torch.tensor(max(trainer.current_epoch - 1, 0))
        checkpoint._save_topk_checkpoint(trainer, monitor_candidates)


def written_by(checkpoint: ModelCheckpoint, path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the files ``checkpoint`` saves: in its folder, named by its filename template."""
    path = Path(path)
    prefix = (checkpoint.filename or "").split("{")[0]
    return checkpoint.dirpath is not None and path.parent == Path(checkpoint.dirpath) and path.name.startswith(prefix)


@dataclass(frozen=True)
class RunCheckpoints:
    """What a Trainer needs for a run's checkpoints: ``pl.Trainer(callbacks=callbacks, plugins=[checkpoint_io])``."""

    callbacks: list[pl.Callback]
    checkpoint_io: BackgroundCheckpointIO
    best: ModelCheckpoint | None
    last: ModelCheckpoint
    final: FinalCheckpoint


def run_checkpoints(dirpath: Path, cadence_epochs: int | None = None, has_validation: bool = True) -> RunCheckpoints:
    """The best (lowest val/loss; only with validation) and the latest checkpoint, each kept as one file,
    written in the background.

    The latest one is written every ``cadence_epochs`` epochs (every epoch by default),
    and once more when training ends for any reason but a crash.
    """
    best = None if not has_validation else ModelCheckpoint(
        dirpath=dirpath,
        filename="best-checkpoint-epoch={epoch}-step={step}",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    last = ModelCheckpoint(
        dirpath=dirpath,
        filename="last-checkpoint-epoch={epoch}-step={step}",
        monitor=None,
        save_top_k=1,
        auto_insert_metric_name=False,
        every_n_epochs=cadence_epochs or 1,
    )
    checkpoint_io = BackgroundCheckpointIO()
    # FinalCheckpoint before the monitor: when training ends, the final save comes first,
    # then the wait for its write. Lightning keeps this order (it moves only
    # ModelCheckpoints, to the end).
    final = FinalCheckpoint(last)
    callbacks: list[pl.Callback] = [*([best] if best is not None else []), last, final, CheckpointWriteMonitor(checkpoint_io)]
    return RunCheckpoints(callbacks=callbacks, checkpoint_io=checkpoint_io, best=best, last=last, final=final)


def newest_complete_checkpoint(save_dir: str | os.PathLike, prefix: str = "last-checkpoint") -> Path | None:
    """The most recently written ``<prefix>*.ckpt`` anywhere under ``save_dir``, if any.

    Temporary files of unfinished writes never carry the final name, so every match
    is a complete file, or the complete folder of a sharded FSDP checkpoint.
    """
    candidates = [path for path in Path(save_dir).rglob(f"{prefix}*.ckpt") if path.is_file() or is_sharded_checkpoint(path)]
    if not candidates:
        return None
    return max(candidates, key=lambda path: (path.stat().st_mtime_ns, str(path)))

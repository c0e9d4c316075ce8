"""ThreadedModelCheckpoint: checkpoints written in the background, never torn.

Threaded checkpoint writers elsewhere serialize live tensors from a background
thread while training keeps changing them, so a file can hold a mix of two steps.
Here the training thread first copies the whole checkpoint (model, optimizer,
schedulers, loops, callbacks) to CPU memory; only writing that frozen copy happens
in the background: to a temporary file in the same folder, fsync'ed, then renamed
over the final name. The previous checkpoint is deleted only after the new one is
durable, so a kill at any moment leaves only complete files.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".partial"


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint in the background failed."""


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
        return value.detach().to("cpu", copy=True)
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


@contextlib.contextmanager
def _without_crc32():
    """Skip the zip records' CRC-32 while saving: most of torch.save's CPU time, taken
    from training on a small machine. Completeness comes from the atomic rename instead."""
    options = getattr(torch.serialization, "get_crc32_options", None)
    if options is None:  # torch < 2.5 has no switch
        yield
        return
    previous = options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


def write_atomically(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temporary file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "wb") as handle, _without_crc32():
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Make the rename itself durable before anything relies on it.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class ThreadedModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose file writes run on a background thread.

    Takes every ModelCheckpoint argument. At most one write is in flight: a new save
    first waits for the previous one, and the time training was blocked by that wait
    is logged (``checkpoint/blocked_ms``). A failed write is raised on the training
    thread at the next hook. Pending writes are finished at the end of training and
    when training stops with an exception. Only global rank zero writes.

    With ``final_last_checkpoint=True`` a checkpoint is also written when training ends
    for any reason but a crash (max_epochs, early stopping, Ctrl-C), even between
    ``every_n_epochs`` saves, so finished work is never lost.
    """

    def __init__(self, *args: Any, final_last_checkpoint: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.final_last_checkpoint = final_last_checkpoint
        self._executor: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []
        self.blocked_seconds = 0.0
        self._in_batch = False
        self._last_snapshot: Any = None

    # ----------------------------------------------------------------- writing

    def _supports_background_writes(self, trainer: pl.Trainer) -> bool:
        # Sharded strategies (FSDP, DeepSpeed) gather state in their own save: keep theirs.
        strategy = trainer.strategy
        return isinstance(strategy, SingleDeviceStrategy) or type(strategy) is DDPStrategy

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if not self._supports_background_writes(trainer):
            super()._save_checkpoint(trainer, filepath)
            return
        self.raise_failed_write()
        waited = self.wait_for_writes()
        if waited > 0:
            self.blocked_seconds += waited
            log.info("checkpoint: training waited %.0f ms for the previous write", waited * 1000)
            if trainer.is_global_zero and trainer.logger is not None:
                trainer.logger.log_metrics({"checkpoint/blocked_ms": waited * 1000}, step=trainer.global_step)
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        if trainer.is_global_zero:
            # Every earlier write has finished (waited for above), so its buffers are free.
            frozen = snapshot(checkpoint, reuse=self._last_snapshot)
            self._last_snapshot = frozen
            self._submit(write_atomically, frozen, filepath)
        trainer.strategy.barrier("ThreadedModelCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if not self._supports_background_writes(trainer):
            super()._remove_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            # Queued behind the write of its replacement, and skipped if that write failed.
            write = self._writes[-1] if self._writes else None
            self._submit(_remove_after, write, filepath)

    def _submit(self, function, *args) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer", initializer=_lower_priority)
        self._writes.append(self._executor.submit(function, *args))

    def wait_for_writes(self) -> float:
        """Block until queued writes finish; returns the seconds spent waiting."""
        if not any(not future.done() for future in self._writes):
            return 0.0
        start = time.perf_counter()
        for future in self._writes:
            future.exception()  # waits; failures are reported by raise_failed_write
        return time.perf_counter() - start

    def raise_failed_write(self) -> None:
        """Raise the error of a finished write that failed; forget finished writes."""
        finished = [future for future in self._writes if future.done()]
        self._writes = [future for future in self._writes if not future.done()]
        for future in finished:
            error = future.exception()
            if error is not None:
                raise CheckpointWriteError(f"writing a checkpoint failed: {error}") from error

    # ----------------------------------------------------------------- hooks

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._in_batch = True
        self.raise_failed_write()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._in_batch = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.raise_failed_write()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.final_last_checkpoint:
            self._save_final(trainer, epoch_finished=True)
        self.wait_for_writes()
        self.raise_failed_write()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # Ctrl-C is a deliberate stop, not a crash: keep the work done so far, unless it
        # landed inside a batch, where the optimizer may be half-way through a step.
        if self.final_last_checkpoint and isinstance(exception, KeyboardInterrupt) and not self._in_batch:
            self._save_final(trainer, epoch_finished=False)
        self.wait_for_writes()
        try:
            self.raise_failed_write()
        except CheckpointWriteError as error:
            log.error("%s", error)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.wait_for_writes()
        self._last_snapshot = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _save_final(self, trainer: pl.Trainer, epoch_finished: bool) -> None:
        if self._last_global_step_saved == trainer.global_step or trainer.global_step == 0:
            return
        monitor_candidates = self._monitor_candidates(trainer)
        if epoch_finished:
            # The epoch counter has already moved past the last epoch; name the file after
            # the epoch that produced it, as the per-epoch saves do.
            monitor_candidates["epoch"] = torch.tensor(max(trainer.current_epoch - 1, 0))
        self._save_topk_checkpoint(trainer, monitor_candidates)


def _lower_priority() -> None:
    """Let the training threads win when the writer thread competes with them for CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: keep the default priority


def _remove_after(write: Future | None, filepath: str) -> None:
    if write is not None and write.exception() is not None:
        return
    Path(filepath).unlink(missing_ok=True)


def newest_complete_checkpoint(save_dir: str | os.PathLike, prefix: str = "last-checkpoint") -> Path | None:
    """The most recently written ``<prefix>*.ckpt`` anywhere under ``save_dir``, if any.

    Temporary files of unfinished writes never carry the final name, so every match
    is a complete file.
    """
    candidates = [path for path in Path(save_dir).rglob(f"{prefix}*.ckpt") if path.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda path: (path.stat().st_mtime_ns, str(path)))

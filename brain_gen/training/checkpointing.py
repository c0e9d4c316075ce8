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
import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from brain_gen.memory import empty_page_aligned

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


# O_DIRECT needs the buffer address, the file offset and the length of every write to
# be multiples of the device's logical block size; 4096 covers the disks in use.
DIRECT_IO_ALIGNMENT = 4096

# torch.save's options are process-wide settings: one lock, so that two writer threads
# (best and last checkpoints) never restore each other's values.
_SAVE_OPTIONS_LOCK = threading.Lock()
# Folders whose file system refused O_DIRECT once: written buffered from then on.
_BUFFERED_FOLDERS: set[Path] = set()


@contextlib.contextmanager
def _checkpoint_save_options():
    """torch.save settings for checkpoint files, while the block runs.

    - No zip CRC-32: it is most of torch.save's CPU time, taken from training on a
      small machine. Completeness comes from the atomic rename instead (torch >= 2.5).
    - Tensor data starts at 4096-byte offsets in the file, so that it can go to the
      disk by direct I/O without a copy (torch >= 2.7; before, _DirectFile stages it).
    These are process-wide settings: a torch.save elsewhere in the process while a
    checkpoint is written gets them too, which changes nothing but its CRC and padding.
    """
    from torch.utils import serialization

    settings = getattr(getattr(serialization, "config", None), "save", None)
    get_crc32 = getattr(torch.serialization, "get_crc32_options", None)
    with _SAVE_OPTIONS_LOCK:
        previous_crc32 = get_crc32() if get_crc32 is not None else None
        previous_alignment = getattr(settings, "storage_alignment", None)
        if get_crc32 is not None:
            torch.serialization.set_crc32_options(False)
        if previous_alignment is not None:
            settings.storage_alignment = DIRECT_IO_ALIGNMENT
        try:
            yield
        finally:
            if previous_crc32 is not None:
                torch.serialization.set_crc32_options(previous_crc32)
            if previous_alignment is not None:
                settings.storage_alignment = previous_alignment


class _DirectIOUnsupported(Exception):
    """The file system refused O_DIRECT (some network and FUSE file systems, tmpfs before Linux 6.6)."""


class _DirectFile:
    """A write-only file for torch.save that sends page-aligned data straight to the disk.

    A buffered write copies every byte into the page cache and leaves the kernel to
    write it back: about 0.2-1.3 s of CPU for a 600 MB checkpoint, taken from the
    training threads on a small machine. With O_DIRECT the disk reads the snapshot's
    memory itself (0.01 s of CPU). Large tensors of a snapshot are page-aligned
    (brain_gen.memory), and torch.save is told to start tensor data at aligned file
    offsets, so most bytes go straight from the snapshot. The rest (zip headers,
    small tensors, unaligned tails) is gathered in an aligned staging buffer.
    """

    def __init__(self, path: Path, staging_bytes: int = 1 << 20):
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except (AttributeError, OSError) as error:  # no O_DIRECT on this OS, or refused here
            raise _DirectIOUnsupported from error
        try:
            self._staging = mmap.mmap(-1, staging_bytes)  # page-aligned
        except BaseException:
            os.close(self._fd)
            raise
        self._staged = memoryview(self._staging)
        self._staged_bytes = 0
        self.size = 0
        self.direct_bytes = 0
        # torch.save turns an exception raised in write() into a vague RuntimeError; the
        # real one is kept here and raised by _save_direct instead.
        self.error: BaseException | None = None

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            try:
                done += os.write(self._fd, data[done:])
            except OSError as error:
                self.error = _DirectIOUnsupported() if error.errno == errno.EINVAL else error
                raise self.error from error

    def _flush_staging(self, length: int) -> None:
        self._write_all(self._staged[:length])
        self._staged_bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        position = 0
        while position < len(view):
            aligned_length = (len(view) - position) // DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT
            # The file offset is aligned whenever the staged bytes fill whole blocks.
            if aligned_length and self._staged_bytes % DIRECT_IO_ALIGNMENT == 0:
                address = np.frombuffer(view[position:], dtype=np.uint8, count=1).ctypes.data
                if address % DIRECT_IO_ALIGNMENT == 0:
                    if self._staged_bytes:
                        self._flush_staging(self._staged_bytes)
                    self._write_all(view[position : position + aligned_length])
                    self.direct_bytes += aligned_length
                    position += aligned_length
                    continue
            count = min(len(self._staging) - self._staged_bytes, len(view) - position)
            self._staged[self._staged_bytes : self._staged_bytes + count] = view[position : position + count]
            self._staged_bytes += count
            position += count
            if self._staged_bytes == len(self._staging):
                self._flush_staging(self._staged_bytes)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do: data is written as it comes, and close() writes the rest."""

    def abandon(self) -> None:
        """Close without writing what is staged: the caller deletes the file."""
        os.close(self._fd)
        # After a failed write, an exception's traceback may still hold slices of the
        # staging buffer; the mapping is then freed with the last of them.
        with contextlib.suppress(BufferError):
            self._staged.release()
            self._staging.close()

    def close(self) -> None:
        """Write the staged tail padded to a whole block, cut the file to size, fsync."""
        try:
            if self._staged_bytes:
                padded = -(-self._staged_bytes // DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT
                self._staged[self._staged_bytes : padded] = bytes(padded - self._staged_bytes)
                self._flush_staging(padded)
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:
            self.abandon()


def _save_direct(state: dict[str, Any], path: Path) -> None:
    handle = _DirectFile(path)
    try:
        torch.save(state, handle)
    except BaseException as error:
        handle.abandon()
        if handle.error is not None and handle.error is not error:
            raise handle.error from error
        raise
    if handle.error is not None:  # swallowed somewhere inside torch.save
        handle.abandon()
        raise handle.error
    handle.close()


def _save_buffered(state: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def write_atomically(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temporary file next to ``path``, fsync, then rename over ``path``.

    The file is written with direct I/O where the file system allows it, else buffered.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with _checkpoint_save_options():
            if path.parent not in _BUFFERED_FOLDERS:
                try:
                    _save_direct(state, temporary)
                except _DirectIOUnsupported:
                    # Remembered, so that later saves do not write the file twice.
                    _BUFFERED_FOLDERS.add(path.parent)
                    log.warning("checkpoint: %s does not take direct I/O; checkpoints there are written buffered", path.parent)
            if path.parent in _BUFFERED_FOLDERS:
                _save_buffered(state, temporary)
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
        # Called with the path of each checkpoint once it is complete on disk (see on_durable_write).
        self._durable_write_listeners: list[Callable[[str], None]] = []

    def on_durable_write(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` after each checkpoint this callback writes is complete on disk.

        With background writes it runs on the writer thread, right after the file got its
        final name and before any later write or delete of this callback, so the
        listener can hard-link the file before it could be replaced. It must be quick.
        """
        self._durable_write_listeners.append(listener)

    def _notify_durable(self, filepath: str) -> None:
        for listener in self._durable_write_listeners:
            try:
                listener(filepath)
            except Exception:  # a listener's failure must not fail the checkpoint
                log.exception("checkpoint: a listener failed on %s", filepath)

    def _write_and_notify(self, state: dict[str, Any], filepath: str) -> None:
        write_atomically(state, filepath)
        self._notify_durable(filepath)

    # ----------------------------------------------------------------- writing

    def _supports_background_writes(self, trainer: pl.Trainer) -> bool:
        # Sharded strategies (FSDP, DeepSpeed) gather state in their own save: keep theirs.
        strategy = trainer.strategy
        return isinstance(strategy, SingleDeviceStrategy) or type(strategy) is DDPStrategy

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if not self._supports_background_writes(trainer):
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                self._notify_durable(filepath)
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
            self._submit(self._write_and_notify, frozen, filepath)
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

    def _finish_writes(self, moment: str) -> None:
        waited = self.wait_for_writes()
        if waited > 0:
            log.info("checkpoint: %s; waited %.0f ms for the last write to finish", moment, waited * 1000)

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
        self._finish_writes("training ended")
        self.raise_failed_write()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        # Ctrl-C is a deliberate stop, not a crash: keep the work done so far, unless it
        # landed inside a batch, where the optimizer may be half-way through a step.
        if self.final_last_checkpoint and isinstance(exception, KeyboardInterrupt) and not self._in_batch:
            self._save_final(trainer, epoch_finished=False)
        self._finish_writes("training stopped")
        try:
            self.raise_failed_write()
        except CheckpointWriteError as error:
            log.error("%s", error)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._finish_writes("teardown")
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

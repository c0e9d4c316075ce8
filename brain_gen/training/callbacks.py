"""The callbacks the `trainer` section asks for: early stopping, the batch-size finder, the user's own."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning import callbacks as lightning_callbacks
from pytorch_lightning.callbacks import BatchSizeFinder, EarlyStopping
from lightning_fabric.utilities.exceptions import MisconfigurationException

from brain_gen.config.errors import ConfigError, did_you_mean, raise_problems
from brain_gen.config.registry import check_arguments, import_object
from brain_gen.config.schema import EarlyStoppingConfig

log = logging.getLogger(__name__)


def user_callbacks(entries: list[Any]) -> list[pl.Callback]:
    """Build ``trainer.callbacks``: ``{class_path, init_args}``, a Lightning callback name, or an object.

    Every entry is checked, and the problems of all of them are raised together.
    """
    built, problems = [], []
    for index, entry in enumerate(entries):
        try:
            built.append(_user_callback(f"trainer.callbacks.{index}", entry))
        except ConfigError as exc:
            problems += exc.problems
    raise_problems(problems)
    return built


def _user_callback(key: str, entry: Any) -> pl.Callback:
    if isinstance(entry, pl.Callback):
        return entry
    if isinstance(entry, str):
        entry = {"class_path": entry}
    if not isinstance(entry, dict) or "class_path" not in entry:
        raise ConfigError(f"{key}: expected a callback class name or {{class_path: ..., init_args: {{...}}}}, got {entry!r}")
    unknown = set(entry) - {"class_path", "init_args"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key; a callback entry has class_path and init_args")
    class_path, init_args = entry["class_path"], entry.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ConfigError(f"{key}.init_args: expected a mapping, got {init_args!r}")
    callback_class = _callback_class(f"{key}.class_path", class_path)
    raise_problems(check_arguments(f"{key}.init_args", callback_class, init_args))
    try:
        return callback_class(**init_args)
    except (ValueError, TypeError, MisconfigurationException) as exc:
        raise ConfigError(f"{key}: {class_path} rejected its arguments: {exc}") from exc


def _callback_class(key: str, name: str) -> type[pl.Callback]:
    if "." not in name and ":" not in name:
        found = getattr(lightning_callbacks, name, None)
        if not (isinstance(found, type) and issubclass(found, pl.Callback)):
            names = [n for n, v in vars(lightning_callbacks).items() if isinstance(v, type) and issubclass(v, pl.Callback)]
            raise ConfigError(f"{key}: {name!r} is not a Lightning callback{did_you_mean(name, names)}; or give an import path package.module:Class")
        return found
    try:
        found = import_object(name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {name!r} ({exc})") from exc
    if not (isinstance(found, type) and issubclass(found, pl.Callback)):
        raise ConfigError(f"{key}: {name!r} is not a pytorch_lightning Callback class")
    return found


def early_stopping(config: EarlyStoppingConfig | None) -> EarlyStopping | None:
    """Lightning's EarlyStopping with the configured options; options left null keep Lightning's defaults."""
    if config is None:
        return None
    options = {key: value for key, value in config.model_dump().items() if value is not None}
    return EarlyStopping(**options)


def available_memory_bytes() -> int:
    """Memory the system can still give this process (MemAvailable), or physical memory as a fallback."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_batch_size_cap(train_windows: int, bytes_per_window: int) -> int:
    """Largest batch the CPU search may try: within the dataset and half of the free memory.

    A CPU out-of-memory kills the process instead of raising, so unlike on a GPU the
    search cannot find the limit by failing; ``bytes_per_window`` is what one window
    costs through a training step (LitModel.training_bytes).
    """
    memory_cap = available_memory_bytes() // 2 // max(bytes_per_window, 1)
    return max(1, min(train_windows, memory_cap))


def batch_size_finder(init_val: int, cap: int | None) -> BatchSizeFinder | None:
    """BatchSizeFinder doubling from ``init_val``, with no more trials than ``cap`` allows (None: no cap)."""
    max_trials = 25
    if cap is not None:
        # Trials run init_val, 2 init_val, ... init_val * 2**(max_trials - 1).
        doublings = int(math.floor(math.log2(cap / init_val))) if cap >= init_val else -1
        max_trials = min(max_trials, doublings + 1)
    if max_trials < 2:  # one trial at the configured size finds nothing new
        return None
    return BatchSizeFinder(mode="power", init_val=init_val, steps_per_trial=3, max_trials=max_trials)


class LogBatchSize(pl.Callback):
    """Logs the batch size training really uses (after any search) as ``batch_size``."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = getattr(trainer.datamodule, "batch_size", None)
        if size is None or trainer.logger is None:
            return
        trainer.logger.log_metrics({"batch_size": float(size)}, step=trainer.global_step)
        log.info("training with batch_size=%d", size)


class _SignalWhileTraining(pl.Callback):
    """Handles one signal with ``handle`` while training runs, then puts the previous handler back."""

    signum: signal.Signals

    def __init__(self):
        self._previous_handler: Any = None

    def _install(self, handle) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._previous_handler = signal.getsignal(self.signum)
        signal.signal(self.signum, handle)

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()


class GracefulInterrupt(_SignalWhileTraining):
    """The first Ctrl-C finishes the current batch and ends training as if it were done.

    Training then ends through the normal path, so the final last-checkpoint holds a
    consistent state (a KeyboardInterrupt could land in the middle of an optimizer
    step). A second Ctrl-C interrupts at once, as Lightning normally does.
    """

    signum = signal.SIGINT

    def __init__(self):
        super().__init__()
        self.stopping = False  # a first Ctrl-C came: the next one interrupts at once

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stopping = False

        def stop_after_this_batch(signum, frame):
            if self.stopping:
                self._restore()
                raise KeyboardInterrupt
            self.stopping = True
            trainer.should_stop = True
            log.warning("Ctrl-C: stopping after this batch and saving a last-checkpoint; press Ctrl-C again to stop at once")

        self._install(stop_after_this_batch)


class Preemption(_SignalWhileTraining):
    """SIGTERM, a cluster's notice before it kills a job: stop after the current step.

    Every rank finishes the step it is in; after each step the ranks agree (one small
    all-reduce under DDP) whether any of them got the signal, so all stop after the
    same step, however the signal reached them (SLURM and torchrun signal every rank,
    Lightning's own launcher only the first). Training then ends through the normal
    path, so FinalCheckpoint writes a last-checkpoint, and ExperimentDL.train raises
    TrainingPreempted; the command exits with 143, as a process killed by SIGTERM would.

    While training runs this replaces Lightning's SIGTERM handler, whose own stop
    broadcasts from inside the signal handler and was seen to leave DDP ranks waiting.
    """

    signum = signal.SIGTERM

    def __init__(self):
        super().__init__()
        self.signalled = False  # this process got SIGTERM
        self.requested = False  # the ranks agreed to stop: training ended on SIGTERM

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signalled = self.requested = False

        def stop_after_this_step(signum, frame):
            if not self.signalled:
                log.warning("SIGTERM: stopping after this step and saving a last-checkpoint")
            self.signalled = True

        self._install(stop_after_this_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        stop = self.signalled if trainer.world_size == 1 else trainer.strategy.reduce_boolean_decision(self.signalled, all=False)
        if stop:
            self.requested = True
            trainer.should_stop = True

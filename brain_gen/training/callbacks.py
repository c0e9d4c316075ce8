"""The callbacks the `trainer` section asks for: early stopping, the batch-size finder, the user's own."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import callbacks as lightning_callbacks
from pytorch_lightning.callbacks import BatchSizeFinder, EarlyStopping
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_fabric.utilities.exceptions import MisconfigurationException

from brain_gen.config.errors import ConfigError, did_you_mean, raise_problems
from brain_gen.config.registry import check_arguments, import_object
from brain_gen.config.schema import EarlyStoppingConfig
from brain_gen.distributed import TrainingPreempted
from brain_gen.seeding import agreed_seed, derive_seed

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
    """Logs the batch size training really uses (after any search, or restored by a resume) as ``batch_size``."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = getattr(trainer.datamodule, "batch_size", None)
        if size is None or trainer.logger is None:
            return
        trainer.logger.log_metrics({"batch_size": float(size)}, step=trainer.global_step)
        log.info("training with batch_size=%d", size)


class SeedEachBatch(pl.Callback):
    """Seeds torch's random state before every training batch, from the run's seed and the batch's place.

    Dropout and token corruption draw from torch's global random state. Seeded from
    (seed, epoch, batch index, rank) before each batch, those draws depend on where a
    batch is in the run and on nothing that happened before, so a run resumed at any
    step draws what the uninterrupted run drew. The state the process had before
    fitting (CPU, and this rank's GPU) is put back when fitting ends.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._batch_seeds = 0
        self._saved: tuple[torch.device, torch.Tensor, torch.Tensor | None] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.seed = agreed_seed(trainer, self.seed)
        # Taken here, before a batch-size search runs its trial steps (at on_fit_start).
        device = trainer.strategy.root_device
        self._saved = (device, torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        self._batch_seeds = derive_seed(self.seed, "training batches", trainer.global_rank)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        seed = (self._batch_seeds + trainer.current_epoch * 2**32 + batch_idx) % 2**63
        torch.random.default_generator.manual_seed(seed)
        if pl_module.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # this rank's device only

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is None:
            return
        device, cpu_state, device_state = self._saved
        self._saved = None
        torch.set_rng_state(cpu_state)
        if device_state is not None:
            torch.cuda.set_rng_state(device_state, device)


class _SignalWhileTraining(pl.Callback):
    """Handles signals while training runs, then puts the previous handlers back.

    Handlers go in at on_train_start, after Lightning has put in its own (after
    on_fit_start): Lightning notes every handler in force then and puts them all back
    when it tears down, which would bring back a handler of ours installed before.
    """

    def __init__(self):
        self._previous_handlers: dict[int, Any] = {}
        self._installed: dict[int, Any] = {}

    def _install(self, signum: int, handle) -> Any:
        """Handle ``signum`` with ``handle``; returns the handler it replaces (None off the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return None  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signum)
        self._previous_handlers.setdefault(signum, previous)
        self._installed[signum] = handle
        signal.signal(signum, handle)
        return previous

    def _restore(self) -> None:
        for signum, handler in self._previous_handlers.items():
            # Only while ours is in force: when fitting ends normally, Lightning has already
            # put back the handlers of before the run, and ours would bring back Lightning's.
            if handler is not None and signal.getsignal(signum) is self._installed.get(signum):
                signal.signal(signum, handler)
        self._previous_handlers, self._installed = {}, {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()


class GracefulInterrupt(_SignalWhileTraining):
    """The first Ctrl-C finishes the current batch and ends training as if it were done.

    Training then ends through the normal path, so the final last-checkpoint holds a
    consistent state (a KeyboardInterrupt could land in the middle of an optimizer
    step). A second Ctrl-C interrupts at once, as Lightning normally does.
    """

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

        self._install(signal.SIGINT, stop_after_this_batch)


class Preemption(_SignalWhileTraining):
    """A cluster's notice before it stops a job: stop after the current step, with a last-checkpoint.

    The notices are SIGTERM (SLURM, Kubernetes), and under SLURM with Lightning's
    auto-requeue (its SLURMEnvironment, on by default) the requeue signal, SIGUSR1
    unless the environment says otherwise.

    Every rank finishes the step it is in; after each step the ranks agree (one small
    all-reduce under DDP) whether any of them got a notice, so all stop after the
    same step, however the signal reached them (SLURM and torchrun signal every rank,
    Lightning's own launcher only the first). Then, at once: the last-checkpoint of that
    step is written and waited for (``save_checkpoint``), and every rank raises
    TrainingPreempted, which ends training without the validation pass that stopping
    through ``should_stop`` would run first, and whatever ``min_epochs`` or
    ``min_steps`` say. The command exits with 143, as a process killed by SIGTERM would.
    After the requeue signal, ExperimentDL.train then calls ``requeue_if_asked``.

    While training runs this replaces Lightning's handlers of both signals: its SIGTERM
    handler broadcasts from inside the signal handler, and its requeue handler saves a
    checkpoint there, both in the middle of a step; the SIGTERM one was seen to leave
    DDP ranks waiting.
    """

    def __init__(self, save_checkpoint: Callable[[pl.Trainer], None] | None = None):
        """``save_checkpoint(trainer)`` writes the last-checkpoint and returns once it is on disk (None: no checkpoints)."""
        super().__init__()
        self.save_checkpoint = save_checkpoint
        self.signals_received: set[int] = set()  # by this process
        self.stop_signal: signal.Signals | None = None  # the notice the ranks stopped on (the requeue signal wins)
        self._requeue_signal: signal.Signals | None = None
        self._lightning_requeue_handler: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals_received, self.stop_signal = set(), None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's own SIGTERM handler would also raise its SIGTERMException at a batch
        # end, before this callback's check: ours replaces it.
        if trainer.received_sigterm:  # a notice that came while validation was checked first
            self.signals_received.add(signal.SIGTERM)

        def stop_after_this_step(signum, frame):
            if not self.signals_received:
                log.warning("%s: stopping after this step and saving a last-checkpoint", signal.Signals(signum).name)
            self.signals_received.add(signum)

        self._install(signal.SIGTERM, stop_after_this_step)
        environment = slurm_requeue_environment(trainer)
        self._requeue_signal = environment.requeue_signal if environment is not None else None
        if self._requeue_signal is not None:
            self._lightning_requeue_handler = self._install(self._requeue_signal, stop_after_this_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        received = (signal.SIGTERM in self.signals_received, self._requeue_signal in self.signals_received)
        if trainer.world_size > 1:
            # The number of ranks that got each notice: one all-reduce for both.
            agreed = trainer.strategy.reduce(torch.tensor(received, dtype=torch.float32, device=pl_module.device), reduce_op="sum")
            received = tuple(bool(count > 0) for count in agreed.tolist())
        if not any(received):
            return
        self.stop_signal = self._requeue_signal if received[1] else signal.SIGTERM
        if self.save_checkpoint is not None:
            self.save_checkpoint(trainer)
        raise TrainingPreempted(trainer.global_step, self.stop_signal.name)

    def requeue_if_asked(self) -> bool:
        """After the requeue signal, once training has stopped: Lightning's auto-requeue. Whether it ran.

        The handler is the one Lightning installed for the requeue signal (it does so
        for a SLURM job with auto-requeue on): it saves Lightning's HPC checkpoint (every
        rank takes part) into the run folder and has rank zero run ``scontrol requeue``.
        Called on every rank, after training, where they all are together.
        """
        handler = self._lightning_requeue_handler
        if self.stop_signal is None or self.stop_signal != self._requeue_signal or not callable(handler):
            return False
        handler(self.stop_signal, None)
        return True


def slurm_requeue_environment(trainer: pl.Trainer) -> SLURMEnvironment | None:
    """The run's SLURM environment when the job runs under SLURM with auto-requeue on, else None."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None and SLURMEnvironment.detect():
        environment = SLURMEnvironment()  # the one Lightning detects for a single-device strategy
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal is not None:
        return environment
    return None

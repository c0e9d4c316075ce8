"""ExperimentDL: assemble data, model, loss, LitModel, logger, callbacks and Trainer from a config."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from brain_gen.config.errors import ConfigError, did_you_mean, raise_problems
from brain_gen.config.loading import adopt_seed, check_trainer_kwargs, load_config
from brain_gen.config.pending import pending_features
from brain_gen.config.registry import instantiate, resolve_class
from brain_gen.config.schema import FSDP_STRATEGIES, ExperimentConfig
from brain_gen.dataset import DATASETS
from brain_gen.dataset.datamodule import BrainDataModule
from brain_gen.dataset.loaders import BUILTIN_LOADERS, loader_extras
from brain_gen.dataset.mixup import MixupDataLoader
from brain_gen.dataset.text import TextDataLoader, train_text_tokenizer
from brain_gen.dataset.splitter import SPLIT_NAMES, DataSplitter, Split
from brain_gen.distributed import TrainingPreempted, launched_as_rank_zero
from brain_gen.eval.evaluation import check_evaluation_fits
from brain_gen.eval.reports import TestReport
from brain_gen.eval.process import WorkerProcess
from brain_gen.eval.runner import EvalRunner
from brain_gen.losses import LOSSES
from brain_gen.models import MODELS
from brain_gen.seeding import derive_seed
from brain_gen.training.callbacks import (
    GracefulInterrupt,
    LogBatchSize,
    Preemption,
    SeedEachBatch,
    batch_size_finder,
    cpu_batch_size_cap,
    early_stopping,
    user_callbacks,
)
from brain_gen.training.checkpointing import newest_complete_checkpoint, run_checkpoints
from brain_gen.training.checks import (
    class_problems,
    data_fit_problems,
    init_weights,
    model_problems,
    read_checkpoint_safely,
    resume_checkpoint_problems,
    setup_problems,
    trainer_setup_problems,
    writable_folder_problems,
)
from brain_gen.training.durable_write import remove_stale_temporaries
from brain_gen.training.fsdp import durable_fsdp_strategy
from brain_gen.training.lightning import LitModel
from brain_gen.training.performance import BoundedFlushTensorBoardLogger, NoProfiler, PerformanceMonitor

log = logging.getLogger(__name__)

# Loader classes by config name (`dataloader_class`); each is also importable from this module.
LOADERS = {name: f"{__name__}:{name}" for name in BUILTIN_LOADERS}

try:  # Lightning >= 2.1 raises this for impossible Trainer settings (e.g. a missing GPU).
    from lightning_fabric.utilities.exceptions import MisconfigurationException
except ImportError:  # pragma: no cover
    from pytorch_lightning.utilities.exceptions import MisconfigurationException


class ExperimentDL:
    """One experiment: ``ExperimentDL(cfg).train()`` or ``.test()``.

    Args:
        cfg: a config mapping, or the path of a YAML config file.
        overrides: ``a.b.c=VALUE`` strings applied on top of the file.
        eval_process: an evaluation process already started for this config
            (``brain_gen.eval.process.start_early``); without one, fitting starts its own.
        check_trainer: False for work that only reads the data (training a tokenizer):
            the Trainer settings are then checked when a run starts, not here.

    The config is fully validated here, before any data is read. Data and model
    are built on first use. ``train()`` raises ``TrainingPreempted`` when a cluster's
    notice (SIGTERM, or SLURM's requeue signal) stopped it, after writing a last-checkpoint.
    """

    def __init__(
        self,
        cfg: dict[str, Any] | str | os.PathLike,
        overrides: list[str] | None = None,
        eval_process: WorkerProcess | None = None,
        check_trainer: bool = True,
    ):
        self.config = load_config(cfg, overrides, check_trainer=check_trainer)
        # False for commands that only read the data (tokenizer-text): a config for a GPU
        # machine can then be used where there is none. A run checks the Trainer first.
        self._trainer_checked = check_trainer
        # Started by the command line before its imports; the eval runner of the first fit adopts it.
        self._early_eval_process = eval_process
        problems = []
        if self.config.resume_from == "last":
            newest = newest_complete_checkpoint(self.config.save_dir)
            if newest is None:
                problems.append(
                    f"resume_from: last: no complete last-checkpoint under {self.config.save_dir}; "
                    "train first or give a checkpoint path"
                )
            else:
                log.info("resume_from: last is %s", newest)
                self.config.resume_from = str(newest)
        if self.config._seed_drawn and self.config.resume_from and not problems:
            self._continue_with_checkpoint_seed(Path(self.config.resume_from))
        # Every problem the config alone shows, reported together before anything is read.
        problems += setup_problems(self.config, check_trainer)
        problems += class_problems([
            ("datasplitter.dataset_class", self.config.datasplitter.dataset_class, DATASETS),
            ("dataloader_class", self.config.dataloader_class, LOADERS),
            ("model_name", self.config.model_name, MODELS),
            ("loss_name", self.config.loss_name, LOSSES),
        ])
        try:
            self.user_callbacks = user_callbacks(self.config.trainer.callbacks)
        except ConfigError as exc:
            problems += exc.problems
        raise_problems(problems)
        self.save_dir = Path(self.config.save_dir)
        if self.config.eval_runner is not None and self.config.eval_runner.cloud_keys_set:
            log.warning(
                "notice: eval_runner.%s: evaluations run locally on this machine; the cloud keys have no effect",
                ", ".join(self.config.eval_runner.cloud_keys_set),
            )
        self.eval_runner: EvalRunner | None = None
        self.splits: dict[str, Split] | None = None
        self.datasets: dict[str, Any] = {}
        self.model: torch.nn.Module | None = None
        self.lit_model: LitModel | None = None
        self.trainer: pl.Trainer | None = None

    def _continue_with_checkpoint_seed(self, checkpoint: Path) -> None:
        """``seed: null`` while resuming: the seed the checkpoint was trained with, so the run continues exactly."""
        try:
            contents = read_checkpoint_safely(checkpoint) if checkpoint.is_file() else None
        except pickle.UnpicklingError:
            return  # refused with its own line by the checks before training
        trained_with = ((contents or {}).get("hyper_parameters") or {}).get("seed") if isinstance(contents, dict) else None
        if isinstance(trained_with, int):
            adopt_seed(self.config, trained_with)
            log.info("seed: null while resuming: continuing with the checkpoint's seed %d", trained_with)

    # ----------------------------------------------------------------- building

    @property
    def evaluates(self) -> bool:
        """Whether eval_runner asks for evaluations while training."""
        return self.config.eval_runner is not None and self.config.eval_runner.enabled

    def build_datasets(self) -> None:
        """Scan and split the data and build the three datasets (once)."""
        if self.datasets:
            return
        splitter_config = self.config.datasplitter
        dataset_class = resolve_class("datasplitter.dataset_class", splitter_config.dataset_class, DATASETS)
        self.splits = DataSplitter(splitter_config, cache_dir=self.save_dir / "cache").split()
        self.datasets = {
            name: instantiate("datasplitter.dataset_kwargs", dataset_class, splitter_config.dataset_kwargs, split)
            for name, split in self.splits.items()
        }

    def build(self) -> None:
        """Build model, loss, datasets, loaders and LitModel, checking that they fit together (once)."""
        if self.lit_model is not None:
            return
        config = self.config
        loader_class = resolve_class("dataloader_class", config.dataloader_class, LOADERS)
        model_class = resolve_class("model_name", config.model_name, MODELS)
        loss_class = resolve_class("loss_name", config.loss_name, LOSSES)

        # Model and loss first: their config mistakes surface before any data is read.
        # The initial weights come from the run's seed, without touching torch's own random state.
        # (torch.manual_seed would also seed every GPU, outside what fork_rng puts back.)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(derive_seed(config.seed, "weights"))
            model = instantiate("model_config", model_class, config.model_kwargs)
        problems = model_problems(model, config.lightning)
        if config.resume_from and config.resume_from != "last":
            reshapes = config.lightning.resume_context is not None
            problems += resume_checkpoint_problems(Path(config.resume_from), model, config.model_name, config.model_kwargs, reshapes)
        if config.init_from:
            problems += init_weights(Path(config.init_from), model, config.model_kwargs)
        raise_problems(problems)
        loss = instantiate("loss", loss_class, config.loss)
        self.build_datasets()
        extras, eval_extras = loader_extras(config, loader_class)
        self.datamodule = BrainDataModule(
            self.datasets,
            loader_class,
            config.dataloader,
            extras,
            eval_extras,
            seed=config.seed,
            distributed_sampler=config.trainer.lightning_kwargs.get("use_distributed_sampler", True) is not False,
        )
        train_loader = self.datamodule.make_loader("train")
        resume_context = config.lightning.resume_context if config.resume_from else None
        raise_problems(data_fit_problems(model, self.datasets["train"], train_loader, resume_context))
        lit_model = LitModel(model, loss, config.lightning, hparams=config.to_dict(), stop_on_non_finite=config.trainer.stop_on_non_finite)
        try:
            # Skipped when resume_context will reshape the model first: before that it cannot fit the data.
            if resume_context is None:
                # Two windows, so that a MixUp pair really blends.
                trial = [self.datasets["train"][index] for index in range(min(2, len(self.datasets["train"])))]
                lit_model.trial_step(train_loader.collate_fn(trial))
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"model_name / loss_name / datasplitter.dataset_class: {config.model_name} with {config.loss_name} "
                f"fails on one {config.datasplitter.dataset_class} window ({type(exc).__name__}: {exc}); "
                "check that the three fit together"
            ) from exc
        self.model, self.lit_model = model, lit_model
        self._check_monitors()
        if self.evaluates:
            # Found now, not when the first evaluation fails after an epoch of training.
            notices = check_evaluation_fits(config, self.splits, self.datasets, model_class, loss)
            for notice in notices:
                log.warning("%s", notice)
            if self.eval_runner is not None:
                self.eval_runner.generates = not notices

    def _check_monitors(self) -> None:
        """Every metric a config key monitors must be one the run logs, checked before training.

        The monitored metrics are logged at every step, whatever log_every_n_steps says.
        """
        problems = []
        scheduler = self.config.lightning.lr_scheduler
        stopping = self.config.trainer.early_stopping
        monitors = [scheduler.monitor if scheduler is not None else None, stopping.monitor if stopping is not None else None]
        monitors += [getattr(callback, "monitor", None) for callback in self.user_callbacks]
        self.lit_model.monitored = {monitor for monitor in monitors if isinstance(monitor, str)}
        if scheduler is not None and scheduler.monitor is not None:
            # A per-step schedule reads its monitor after every step, when only training metrics exist.
            per_step = self.config.lightning.schedule_interval == "step"
            when = "is not logged at every step (interval: step)" if per_step else "is never logged"
            problems += self._monitor_problems("lightning.lr_scheduler.monitor", scheduler.monitor, self.has_validation and not per_step, when)
        if stopping is not None:
            # Checked at the end of the training epoch, before that epoch's validation has run.
            at_train_end = stopping.check_on_train_epoch_end
            when = "is not logged when checked at train epoch end" if at_train_end else "is never logged"
            # strict: false is Lightning's opt-out for a monitor that may be missing: its own
            # handling of a missing monitor applies, after one notice line.
            strict = stopping.strict is not False
            problems += self._monitor_problems("trainer.early_stopping.monitor", stopping.monitor, self.has_validation and not at_train_end, when, strict)
        raise_problems(problems)

    def _monitor_problems(self, key: str, monitor: str, with_validation: bool, when: str, strict: bool = True) -> list[str]:
        logged = self.lit_model.logged_metric_names(with_validation=with_validation)
        if monitor in logged:
            return []
        problem = f"{key}: {monitor!r} {when}{did_you_mean(monitor, logged)}; logged metrics: {', '.join(logged)}"
        if strict:
            return [problem]
        log.warning("notice: %s (strict: false, so training goes on)", problem)
        return []

    def dataloader(self, split: str) -> DataLoader | None:
        """The loader of one split, or None when that split has no windows."""
        self.build()
        return self.datamodule.make_loader(split)

    @property
    def has_validation(self) -> bool:
        """Whether the validation split has windows (after build)."""
        return len(self.datasets["val"]) > 0

    def _build_trainer(self, logger: TensorBoardLogger | bool, fitting: bool = False) -> pl.Trainer:
        """The run's Trainer with the run's callbacks; after build(), so that the callbacks fit the data."""
        eval_runner = self.eval_runner if fitting else None
        callbacks, checkpoint_io = run_callbacks(self.config, self.user_callbacks, Path(logger.log_dir) if logger else None, self.has_validation, self.datasets.get("test"), eval_runner)
        kwargs = dict(self.config.trainer.lightning_kwargs)
        kwargs.setdefault("profiler", NoProfiler())
        if kwargs.get("strategy") in FSDP_STRATEGIES:
            kwargs["strategy"] = durable_fsdp_strategy(kwargs["strategy"], self.config.trainer.fsdp_state_dict_type)
        # A user's own plugins (trainer.plugins) stay, next to the checkpoint writer.
        plugins = kwargs.pop("plugins", None)
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
        if checkpoint_io is not None:
            plugins.append(checkpoint_io)
        try:
            # Lightning's own files (its SLURM requeue checkpoint, the batch-size search's
            # temporary one) belong to the run: in its folder, where no later run looks.
            root = logger.log_dir if logger else self.save_dir
            return pl.Trainer(**kwargs, logger=logger, callbacks=callbacks, plugins=plugins, default_root_dir=str(root))
        except (MisconfigurationException, ValueError) as exc:  # checked before data by setup_problems; kept for safety
            raise ConfigError(f"trainer: {exc}") from exc

    def _add_batch_size_finder(self, trainer: pl.Trainer) -> None:
        """Put a BatchSizeFinder in front of the callbacks when tune_batch_size asks for one and it is safe."""
        config = self.config.trainer
        if not config.tune_batch_size:
            return
        batch_size = self.config.dataloader.batch_size
        if isinstance(trainer.strategy, ParallelStrategy):
            log.warning("notice: trainer.tune_batch_size skipped: Lightning cannot search batch sizes under a distributed strategy")
            return
        if isinstance(trainer.accelerator, CPUAccelerator) and not config.explicitly_set("tune_batch_size"):
            log.warning(
                "notice: trainer.tune_batch_size skipped on CPU (running out of host memory kills the process); "
                "training with dataloader.batch_size=%d; set tune_batch_size: true to search within a safe bound",
                batch_size,
            )
            return
        if self.config.resume_from:
            # A searched size is the checkpoint's: another would change what every later step sees.
            self.datamodule.keep_checkpoint_batch_size = True
            log.warning("notice: trainer.tune_batch_size: resuming, so the batch size %s was trained with is kept (no search)", self.config.resume_from)
            return
        if isinstance(trainer.accelerator, CPUAccelerator):
            dataset = self.datasets["train"]
            trial = [dataset[index] for index in range(min(2, len(dataset)))]
            batch = self.datamodule.make_loader("train").collate_fn(trial)
            cap = cpu_batch_size_cap(len(dataset), self.lit_model.training_bytes(batch) // len(trial))
        else:
            cap = len(self.datasets["train"])
        finder = batch_size_finder(batch_size, cap)
        if finder is None:
            log.warning("notice: trainer.tune_batch_size: batch_size=%d is already at the search bound (%d); no search", batch_size, cap)
            return
        trainer.callbacks.insert(0, finder)

    def _start_run(self, fitting: bool = False) -> pl.Trainer:
        """A Trainer logging into a new version folder, with the resolved config saved there."""
        self._check_run_settings()
        logger = BoundedFlushTensorBoardLogger(save_dir=str(self.save_dir), name=self.config.experiment_name, default_hp_metric=False)
        run_dir = Path(logger.log_dir)
        # Evaluations follow the checkpoints of fitting; a test run has none.
        if self.evaluates and fitting and self.checkpoints:
            self.eval_runner = EvalRunner(self.config.eval_runner, run_dir, run_dir / "config.yaml", early_process=self._early_eval_process)
            self._early_eval_process = None
            if launched_as_rank_zero():
                # Started now, so that its imports overlap the reading of the data.
                self.eval_runner.start()
        try:
            self.build()
            if not self.has_validation:
                log.warning(
                    "the validation split has no windows (datasplitter.val_ratio is 0 or its sessions are too short): "
                    "no val/loss and no best-checkpoint; last-checkpoint is still written"
                )
            trainer = self._build_trainer(logger, fitting)
            # The run folder is rank zero's: the other ranks of a distributed run would each
            # pick a version of their own, and Lightning sends them rank zero's folder
            # (trainer.log_dir, the checkpoint folder) once the processes are connected.
            if launched_as_rank_zero():
                # Writes that a killed process left unfinished under the experiment's folders.
                removed, freed = remove_stale_temporaries(Path(logger.root_dir))
                if removed:
                    log.warning("removed %d unfinished checkpoint write(s) of runs no longer running, freeing %.1f MB", removed, freed / 1e6)
                run_dir.mkdir(parents=True, exist_ok=True)
                # "x": a run never overwrites another run's files.
                with open(run_dir / "config.yaml", "x") as handle:
                    yaml.safe_dump(self.config.to_dict(), handle, sort_keys=False)
        except BaseException:
            if self.eval_runner is not None:
                self.eval_runner.cancel()  # the run stops before it starts: so does its evaluation process
            raise
        self.trainer = trainer
        return trainer

    def _trainer_problems(self) -> list[str]:
        """The Trainer checks a config loaded with check_trainer=False skipped (once)."""
        self._trainer_checked = True
        return check_trainer_kwargs(self.config.trainer.model_extra or {}) + trainer_setup_problems(self.config)

    def _check_run_settings(self) -> None:
        """What a run needs beyond reading data: the Trainer settings (unless checked already) and no pending keys."""
        problems = [] if self._trainer_checked else self._trainer_problems()
        pending = pending_features(self.config)
        if pending:
            problems.append(f"not implemented yet: {', '.join(pending)}; remove or switch off these keys")
        raise_problems(problems)

    @property
    def checkpoints(self) -> bool:
        """Whether runs write checkpoints (trainer.enable_checkpointing)."""
        return self.config.trainer.lightning_kwargs.get("enable_checkpointing", True) is not False

    # ----------------------------------------------------------------- running

    def train(self) -> pl.Trainer:
        """Fit on the train split, validating on the val split; continue from resume_from if set."""
        trainer = self._start_run(fitting=True)
        log.info("run folder: %s", trainer.logger.log_dir)
        try:
            if self.config.trainer.validate_before_resume and self.config.resume_from:
                log.info("validating the restored weights of %s before training resumes", self.config.resume_from)
                with self.lit_model.resume_validation():
                    trainer.validate(self.lit_model, datamodule=self.datamodule, ckpt_path=self.config.resume_from, weights_only=True)
            # Added only now, so that the validation pass above does not search too.
            self._add_batch_size_finder(trainer)
            try:
                # weights_only: a checkpoint is read as tensors and plain data, never as code to run.
                trainer.fit(self.lit_model, datamodule=self.datamodule, ckpt_path=self.config.resume_from, weights_only=True)
            except TrainingPreempted as preempted:
                # The last-checkpoint is on disk: now SLURM's requeue, where the notice asked for it.
                preemption = next(callback for callback in trainer.callbacks if isinstance(callback, Preemption))
                if preemption.requeue_if_asked():
                    raise TrainingPreempted(preempted.step, preempted.signal_name, requeued=True) from None
                raise
            if self.eval_runner is not None:
                self.eval_runner.finish()
        except MisconfigurationException as exc:
            # Lightning's own checks of the setup fail before the first step; a failure
            # after hours of training is a crash, and keeps its traceback.
            if self.lit_model.trained_batches:
                raise
            raise ConfigError(f"trainer: {exc}") from exc
        finally:
            if self.eval_runner is not None:
                self.eval_runner.cancel()  # nothing left after finish(); after a crash, stop the process
        return trainer

    def _trained_checkpoint(self) -> str | None:
        """The best checkpoint of a train() call on this object, else its latest one."""
        if self.trainer is None:
            return None
        for callback in self.trainer.checkpoint_callbacks:
            if callback.monitor and callback.best_model_path:
                return callback.best_model_path
        paths = [callback.last_model_path or callback.best_model_path for callback in self.trainer.checkpoint_callbacks]
        return next((path for path in paths if path), None)

    def test(self) -> list[dict[str, float]]:
        """Evaluate the test split, log ``test/*`` and write the test report to the version folder.

        The report is test_metrics.json, plus confusion_matrix.png and test_predictions.csv
        for classification datasets (see brain_gen.eval.reports).

        Uses the best checkpoint of a ``train()`` call on this object (its latest one when
        there was no validation), else resume_from.
        """
        trained = self._trained_checkpoint()
        checkpoint = trained or self.config.resume_from
        if not checkpoint:
            raise ConfigError("resume_from: testing needs a checkpoint; set resume_from to a .ckpt file")
        trainer = self.trainer if trained else self._start_run()
        if len(self.datasets["test"]) == 0:
            raise ConfigError("datasplitter.test_ratio: the test split has no windows; raise test_ratio or add data")
        return trainer.test(self.lit_model, datamodule=self.datamodule, ckpt_path=checkpoint, weights_only=True)

    def train_text_tokenizer(
        self,
        out_dir: str | os.PathLike,
        vocab_size: int = 4096,
        min_frequency: int = 2,
        special_tokens: dict[str, str] | None = None,
        max_windows: int | None = None,
    ) -> Path:
        """Train a BPE tokenizer on the training split's text groups; returns ``<out_dir>/tokenizer``."""
        if not (Path(out_dir) / "tokenizer").exists():
            raise_problems(writable_folder_problems("tokenizer-text --out", Path(out_dir)))
        self.build_datasets()
        dataset = self.datasets["train"]
        if not hasattr(dataset, "alphabet"):
            raise ConfigError(
                f"datasplitter.dataset_class: tokenizer-text needs text groups, but {self.config.datasplitter.dataset_class} "
                "gives none; use BPEDataset"
            )
        count = len(dataset) if max_windows is None else min(max_windows, len(dataset))
        samples = (dataset[index] for index in range(count))
        return train_text_tokenizer(samples, out_dir, list(dataset.alphabet), vocab_size, min_frequency, special_tokens)

    def validate(self) -> dict[str, Any]:
        """Check config, data, model and Trainer settings without training; return a summary."""
        if not self._trainer_checked:
            raise_problems(self._trainer_problems())
        self.build()
        self._build_trainer(logger=False)
        train_split = self.splits["train"]
        # What one sample is: a window of example_seconds, or (classification) one event.
        per_event = hasattr(self.datasets["train"], "events")
        return {
            "splits": {
                name: {"sessions": len(self.splits[name].sessions), "samples": len(self.datasets[name])}
                for name in SPLIT_NAMES
            },
            "sample_kind": "events" if per_event else "windows",
            "channels": train_split.layout.n_channels,
            "sfreq": train_split.sfreq,
            "window_samples": getattr(self.datasets["train"], "sequence_length", None) if per_event else train_split.window_samples,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "pending": pending_features(self.config),
        }


def run_callbacks(
    config: ExperimentConfig,
    user: list[pl.Callback],
    run_dir: Path | None,
    has_validation: bool,
    test_dataset: Any = None,
    eval_runner: EvalRunner | None = None,
) -> tuple[list[pl.Callback], CheckpointIO | None]:
    """Every callback of a run, from its config, its folder (None: no logger) and whether it validates.

    Checkpoints (best only with validation) and the eval runner that follows them,
    early stopping, telemetry, Ctrl-C handling and the test report, then the user's
    own callbacks. The only later change to this list is the batch-size finder that
    tune_batch_size puts in front. Returned with the checkpoint writer the Trainer
    takes as a plugin (None without checkpoints).
    """
    trainer_config = config.trainer
    callbacks: list[pl.Callback] = []
    checkpoint_io = None
    save_on_preemption = None
    if run_dir is not None and trainer_config.lightning_kwargs.get("enable_checkpointing", True) is not False:
        checkpoints = run_checkpoints(run_dir / "checkpoints", trainer_config.checkpoint_cadence_epochs, has_validation)
        callbacks.extend(checkpoints.callbacks)
        checkpoint_io = checkpoints.checkpoint_io
        save_on_preemption = checkpoints.final.save_now
        if eval_runner is not None:
            # Evaluations follow the last-checkpoints, each as soon as it is complete on disk.
            checkpoints.checkpoint_io.on_durable_write(eval_runner.checkpoint_written, of=checkpoints.last)
            callbacks.append(eval_runner)
    stopping = early_stopping(trainer_config.early_stopping)
    if stopping is not None:
        callbacks.append(stopping)
    callbacks.extend([SeedEachBatch(config.seed), LogBatchSize(), PerformanceMonitor(), GracefulInterrupt(), Preemption(save_on_preemption)])
    if test_dataset is not None:
        callbacks.append(TestReport(test_dataset))
    return callbacks + list(user), checkpoint_io

"""The `trainer` section's own keys on real Trainer runs: early stopping, callbacks, validation before resume, batch size."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BatchSizeFinder

from brain_gen.config.errors import ConfigError
from brain_gen.training.callbacks import batch_size_finder, cpu_batch_size_cap
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config
from tests.conftest import scalars

QUICK = {"max_epochs": 6, "limit_train_batches": 2, "limit_val_batches": 2}


def train(tmp_path, dataset, **changes):
    trainer = {**QUICK, **changes.pop("trainer", {})}
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", dataset, trainer=trainer, **changes))
    experiment.train()
    return experiment, scalars(Path(experiment.trainer.logger.log_dir))


def test_early_stopping_stops_and_keeps_a_final_checkpoint(tmp_path, tiny_dataset):
    # No later epoch can beat the first by 100 nats: with patience 1, training stops after the second epoch.
    experiment, logged = train(tmp_path, tiny_dataset, trainer={"early_stopping": {"patience": 1, "min_delta": 100.0}, "checkpoint_cadence_epochs": 10})
    assert experiment.trainer.current_epoch == 2 and len(logged["val/loss"]) == 2
    names = [p.name for p in (Path(experiment.trainer.logger.log_dir) / "checkpoints").glob("last-checkpoint*")]
    assert names == ["last-checkpoint-epoch=1-step=4.ckpt"]


@pytest.mark.parametrize("setting, patience", [(True, 10), (2, 2)])
def test_early_stopping_short_forms(tmp_path, tiny_dataset, setting, patience):
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer={**QUICK, "early_stopping": setting}))
    experiment.build()
    trainer = experiment._build_trainer(False)
    stopper = trainer.early_stopping_callback
    assert stopper.patience == patience and stopper.monitor == "val/loss" and stopper.mode == "min"


def test_callbacks_from_names_class_paths_and_objects_are_appended(tmp_path, tiny_dataset):
    class Counter(pl.Callback):
        batches = 0

        def on_train_batch_end(self, *args):
            Counter.batches += 1

    callbacks = [
        "LearningRateMonitor",
        {"class_path": "pytorch_lightning.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step", "log_weight_decay": True}},
        Counter(),
    ]
    experiment, logged = train(tmp_path, tiny_dataset, trainer={"max_epochs": 1, "callbacks": callbacks})
    assert Counter.batches == 2
    # One tag per parameter group (decay and no decay); the monitor given init_args also logs weight decay.
    assert {"lr-AdamW/pg1", "lr-AdamW/pg2", "lr-AdamW/pg1-weight_decay", "lr-AdamW/pg2-weight_decay"} <= set(logged)
    types = [type(c).__name__ for c in experiment.trainer.callbacks]
    assert types.count("LearningRateMonitor") == 2
    assert {"ModelCheckpoint", "FinalCheckpoint", "CheckpointWriteMonitor"} <= set(types)


def test_validate_before_resume_logs_a_validation_of_the_restored_weights(tmp_path, tiny_dataset):
    first, _ = train(tmp_path / "a", tiny_dataset, trainer={"max_epochs": 1})
    checkpoint = str(next((Path(first.trainer.logger.log_dir) / "checkpoints").glob("last-*.ckpt")))
    _, plain = train(tmp_path / "b", tiny_dataset, resume_from=checkpoint, trainer={"max_epochs": 2})
    _, checked = train(tmp_path / "c", tiny_dataset, resume_from=checkpoint, trainer={"max_epochs": 2, "validate_before_resume": True})
    assert len(plain["val/loss"]) == 1 and len(checked["val/loss"]) == 2
    # The extra pass saw the restored weights: the same loss the first run validated with.
    assert checked["val/loss"][0][1] == pytest.approx(scalars(Path(first.trainer.logger.log_dir))["val/loss"][-1][1], rel=1e-5)


def test_explicit_batch_size_search_on_cpu_is_bounded_used_and_logged(tmp_path, tiny_dataset):
    experiment, logged = train(tmp_path, tiny_dataset, trainer={"max_epochs": 1, "tune_batch_size": True, "limit_train_batches": None})
    found = experiment.datamodule.batch_size
    # 160 training windows bound the doubling search from 8: at most 8 * 2**4 = 128.
    assert 8 < found <= 128
    assert logged["batch_size"][-1][1] == found
    assert experiment.trainer.train_dataloader.batch_size == found


def test_batch_size_search_bounds():
    assert batch_size_finder(8, cap=160)._max_trials == 5  # 8, 16, 32, 64, 128
    assert batch_size_finder(8, cap=16)._max_trials == 2
    assert batch_size_finder(8, cap=15) is None
    assert isinstance(batch_size_finder(8, cap=None), BatchSizeFinder)
    assert cpu_batch_size_cap(train_windows=1000, bytes_per_window=1) == 1000
    assert cpu_batch_size_cap(train_windows=1000, bytes_per_window=1 << 50) == 1


@pytest.mark.parametrize("devices", [1, 2])
def test_batch_size_search_is_skipped_under_distributed_training(tmp_path, tiny_dataset, caplog, devices):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"tune_batch_size": True, "strategy": "ddp", "devices": devices})
    experiment = ExperimentDL(config)
    experiment.build()
    trainer = experiment._build_trainer(False)
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        experiment._add_batch_size_finder(trainer)
    assert not any(isinstance(c, BatchSizeFinder) for c in trainer.callbacks)
    assert any("distributed" in record.getMessage() for record in caplog.records)


def test_performance_monitor_logs_throughput_every_log_interval(tmp_path, tiny_dataset):
    # 5 batches per epoch with a log every 3 steps: the intervals straddle epochs.
    _, logged = train(tmp_path, tiny_dataset, trainer={"max_epochs": 3, "limit_train_batches": 5, "log_every_n_steps": 3})
    loss_steps = [step for step, _ in logged["train/loss"]]
    for tag in ("perf/batches_per_sec", "perf/samples_per_sec", "perf/tokens_per_sec", "perf/data_wait_fraction"):
        assert [step for step, _ in logged[tag]] == loss_steps, tag
    for (_, batches), (_, samples), (_, tokens), (_, wait) in zip(
        logged["perf/batches_per_sec"], logged["perf/samples_per_sec"], logged["perf/tokens_per_sec"], logged["perf/data_wait_fraction"]
    ):
        assert samples == pytest.approx(8 * batches, rel=1e-5)  # batch size 8
        assert tokens == pytest.approx(4 * 49 * samples, rel=1e-5)  # 4 channels x 49 steps per window
        assert 0.0 <= wait <= 1.0
    assert len(logged["perf/epoch_time_sec"]) == 3 and all(value > 0 for _, value in logged["perf/epoch_time_sec"])


def test_token_count_of_text_batches_skips_padding():
    import torch

    from brain_gen.training.performance import tokens_of

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = ((torch.zeros(2, 4, dtype=torch.long), mask, torch.zeros(2, 4, dtype=torch.long)), torch.zeros(2, 4))
    assert int(tokens_of(batch)) == 5
    assert tokens_of((torch.zeros(3, 4, 10), torch.zeros(3, 4, 10))) == 120


def test_tensorboard_is_not_flushed_on_every_logged_step(tmp_path, tiny_dataset, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    flushes = []
    original = SummaryWriter.flush
    monkeypatch.setattr(SummaryWriter, "flush", lambda self: (flushes.append(1), original(self)))
    _, logged = train(tmp_path, tiny_dataset, trainer={"max_epochs": 2, "limit_train_batches": 10, "log_every_n_steps": 1})
    assert len(logged["train/loss"]) == 20  # every step logged and on disk at the end
    assert 1 <= len(flushes) <= 4  # the final flush, not one per step


def test_the_logger_writes_each_steps_scalars_as_one_event_that_reads_back_exactly(tmp_path):
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from brain_gen.training.performance import BoundedFlushTensorBoardLogger

    logger = BoundedFlushTensorBoardLogger(save_dir=str(tmp_path), name="run", default_hp_metric=False)
    logger.log_metrics({"train/loss": torch.tensor(0.25), "lr": 1e-3}, step=7)
    logger.log_metrics({"grad_norm": 3}, step=7)  # another call for the same step joins its event
    logger.log_metrics({"train/loss": 0.125}, step=8)
    logger.save()  # Lightning saves after each logged step: that step's event is written
    logger.log_metrics({"grouped": {"a": 1.0, "b": 2.0}}, step=9)  # a dict of scalars: Lightning's own add_scalars
    logger.log_metrics({"train/loss": 0.0625}, step=10)
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    read = {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert read == {"train/loss": [(7, 0.25), (8, 0.125), (10, 0.0625)], "lr": [(7, pytest.approx(1e-3))], "grad_norm": [(7, 3.0)]}
    assert sorted(path.name for path in Path(logger.log_dir).iterdir() if path.is_dir()) == ["grouped_a", "grouped_b"]
    # The three scalars of step 7 are one event on disk, and nothing kept is lost at the end.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    [event_file] = Path(logger.log_dir).glob("events.out.tfevents.*")
    per_event = [len(event.summary.value) for event in EventFileLoader(str(event_file)).Load() if event.HasField("summary")]
    assert per_event == [3, 1, 1]


def test_the_trainer_profiles_nothing_cheaply_unless_the_user_names_a_profiler(tmp_path, tiny_dataset):
    from pytorch_lightning.profilers import SimpleProfiler

    from brain_gen.training.performance import NoProfiler

    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}))
    experiment.train()
    assert type(experiment.trainer.profiler) is NoProfiler
    with experiment.trainer.profiler.profile("anything") as inside:
        assert inside is None
    experiment = ExperimentDL(tiny_config(tmp_path / "runs2", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "profiler": "simple"}))
    experiment.train()
    profiler = experiment.trainer.profiler
    assert isinstance(profiler, SimpleProfiler)
    assert any("training_step" in action for action in profiler.recorded_durations)  # it recorded the run's hooks


def test_training_bytes_counts_the_activations_kept_for_backward(tmp_path, tiny_dataset):
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset))
    experiment.build()
    dataset = experiment.datasets["train"]
    one = experiment.lit_model.training_bytes(experiment.datamodule.make_loader("train").collate_fn([dataset[0]]))
    four = experiment.lit_model.training_bytes(experiment.datamodule.make_loader("train").collate_fn([dataset[i] for i in range(4)]))
    logits_bytes = 4 * 49 * 256 * 4  # one window's float32 logits
    assert one > 3 * logits_bytes  # far more than the outputs alone
    assert four == pytest.approx(4 * one, rel=0.05)  # grows with the batch
    assert all(p.grad is None for p in experiment.model.parameters())


def test_lightning_callback_argument_errors_are_config_errors(tmp_path, tiny_dataset):
    from brain_gen.config.errors import ConfigError

    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"callbacks": [{"class_path": "LearningRateMonitor", "init_args": {"logging_interval": "hour"}}]})
    with pytest.raises(ConfigError, match="trainer.callbacks.0: LearningRateMonitor rejected its arguments"):
        ExperimentDL(config)


def test_early_stopping_strict_false_trains_with_a_monitor_that_is_not_logged(tmp_path, tiny_dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        experiment, _ = train(tmp_path, tiny_dataset, trainer={"max_epochs": 3, "early_stopping": {"monitor": "val/not_logged", "strict": False}})
    # Lightning's own handling of a missing monitor: no stop, every epoch runs.
    assert experiment.trainer.current_epoch == 3 and not experiment.trainer.early_stopping_callback.stopped_epoch
    notices = [record.getMessage() for record in caplog.records if "val/not_logged" in record.getMessage()]
    assert len(notices) == 1 and "is never logged" in notices[0] and "strict: false" in notices[0]


@pytest.mark.parametrize("strict", [None, True])
def test_early_stopping_with_a_monitor_that_is_not_logged_fails_before_training_unless_strict_is_false(tmp_path, tiny_dataset, strict):
    stopping = {"monitor": "val/not_logged"} if strict is None else {"monitor": "val/not_logged", "strict": strict}
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer={**QUICK, "early_stopping": stopping}))
    with pytest.raises(ConfigError, match="trainer.early_stopping.monitor: 'val/not_logged' is never logged"):
        experiment.train()
    assert experiment.trainer is None or experiment.trainer.global_step == 0


def test_run_callbacks_are_assembled_once_from_config_folder_and_validation(tmp_path, tiny_dataset):
    from brain_gen.config.loading import load_config
    from brain_gen.training.train import run_callbacks

    class Mine(pl.Callback):
        pass

    config = load_config(tiny_config(tmp_path / "runs", tiny_dataset, trainer={"early_stopping": True}))
    mine = Mine()

    def names(callbacks):
        return [type(callback).__name__ for callback in callbacks]

    with_validation, checkpoint_io = run_callbacks(config, [mine], tmp_path / "run", has_validation=True, test_dataset=[])
    assert [c.monitor for c in with_validation[:2]] == ["val/loss", None]
    assert names(with_validation)[2:] == [
        "FinalCheckpoint", "CheckpointWriteMonitor", "EarlyStopping", "SeedEachBatch", "LogBatchSize", "PerformanceMonitor", "GracefulInterrupt", "Preemption",
        "TestReport", "Mine",
    ]
    assert with_validation[-1] is mine and type(checkpoint_io).__name__ == "BackgroundCheckpointIO"
    # Without validation there is no best-checkpoint to keep: only the last one is written.
    without_validation, _ = run_callbacks(config, [mine], tmp_path / "run", has_validation=False)
    assert [c.monitor for c in without_validation[:1]] == [None] and "TestReport" not in names(without_validation)
    assert names(without_validation).count("ModelCheckpoint") == 1
    # No run folder (validate): no checkpoints and no checkpoint writer.
    callbacks, checkpoint_io = run_callbacks(config, [], None, has_validation=True)
    assert not any("Checkpoint" in name for name in names(callbacks)) and checkpoint_io is None


def test_an_empty_validation_split_trains_without_a_best_checkpoint_callback(tmp_path, tiny_dataset):
    experiment, logged = train(tmp_path, tiny_dataset, datasplitter={"val_ratio": 0.0}, trainer={"max_epochs": 1})
    monitors = [callback.monitor for callback in experiment.trainer.checkpoint_callbacks]
    assert monitors == [None] and "val/loss" not in logged
    assert len(list((Path(experiment.trainer.logger.log_dir) / "checkpoints").glob("last-checkpoint*.ckpt"))) == 1

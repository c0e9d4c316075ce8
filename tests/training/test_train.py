"""End-to-end training through a real pytorch_lightning.Trainer, checked in the TensorBoard files."""

from __future__ import annotations


import pytest
import torch
import yaml

from brain_gen.cli import main
from brain_gen.training.checkpointing import BackgroundCheckpointIO
from brain_gen.training.train import ExperimentDL
from tests.conftest import scalars, tiny_config, write_config


@pytest.fixture
def trained_run(tmp_path, tiny_dataset, capsys):
    """A two-epoch run trained through the CLI: (config path, run folder)."""
    config_path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset))
    assert main(["train", str(config_path)]) == 0
    assert "open TensorBoard with: tensorboard --logdir" in capsys.readouterr().out
    return config_path, tmp_path / "runs" / "logs" / "version_0"


def test_cli_training_logs_scalars_writes_checkpoints_and_learns(trained_run):
    config_path, run_dir = trained_run
    logged = scalars(run_dir)
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy"} <= set(logged)
    val_loss = [value for _, value in logged["val/loss"]]
    assert len(val_loss) == 2 and val_loss[1] < val_loss[0]
    # The first training steps start near chance: log(256) nats for 256 codes.
    assert logged["train/loss"][0][1] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=0.3)

    checkpoints = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2
    assert checkpoints[0].startswith("best-checkpoint") and checkpoints[1].startswith("last-checkpoint")
    assert "epoch=1" in checkpoints[1]

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["dataloader"]["batch_size"] == 8
    assert saved["datasplitter"]["val_ratio"] == 0.2 and saved["experiment_name"] == "logs"
    # The resolved config is itself a valid config.
    assert ExperimentDL(run_dir / "config.yaml").config.to_dict() == saved


def test_runs_never_overwrite_each_other_and_resume_continues(trained_run, tmp_path):
    config_path, first_run = trained_run
    first_files = {path: path.read_bytes() for path in first_run.rglob("*") if path.is_file()}
    last = next((first_run / "checkpoints").glob("last-checkpoint*.ckpt"))

    assert main(["train", str(config_path), "--set", f"resume_from={last}", "--set", "trainer.max_epochs=3"]) == 0
    second_run = first_run.parent / "version_1"
    assert {path: path.read_bytes() for path in first_run.rglob("*") if path.is_file()} == first_files

    first_steps = [step for step, _ in scalars(first_run)["train/loss"]]
    second = scalars(second_run)
    assert min(step for step, _ in second["train/loss"]) > max(first_steps)
    assert len(second["val/loss"]) == 1  # only epoch index 2 was left to train
    assert yaml.safe_load((second_run / "config.yaml").read_text())["resume_from"] == str(last)


def test_test_command_evaluates_a_checkpoint(trained_run, capsys):
    config_path, run_dir = trained_run
    best = next((run_dir / "checkpoints").glob("best-checkpoint*.ckpt"))
    assert main(["test", str(config_path), "--set", f"resume_from={best}"]) == 0
    logged = scalars(run_dir.parent / "version_1")
    assert {"test/loss", "test/accuracy"} <= set(logged)
    state = torch.load(best, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["model_config"]["d_model"] == 32


def test_train_then_test_in_python_uses_the_best_checkpoint(tmp_path, tiny_dataset):
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1}))
    experiment.train()
    results = experiment.test()
    assert results[0]["test/loss"] > 0
    assert "test/loss" in scalars(tmp_path / "runs" / "logs" / "version_0")


def test_validate_summarizes_without_training(tmp_path, tiny_dataset, capsys):
    config_path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset))
    assert main(["validate", str(config_path)]) == 0
    out = capsys.readouterr().out
    # 6 sessions of 40 s, 1 s windows, 3 subjects; subjects are not the split unit by default.
    assert "train: 4 sessions, 160 windows" in out and "val  : 1 sessions, 40 windows" in out
    assert "4 channels at 50 Hz" in out and "windows of 50 samples (1 s)" in out
    assert "ChannelGPT with" in out and "parameters" in out
    assert not (tmp_path / "runs" / "logs").exists()


def test_spec_minimal_example_validates_with_local_data(tmp_path, tiny_dataset, capsys):
    # The spec's minimal example; only save_dir, datasplitter, the model lines and the accelerator are adapted.
    example = {
        "dataloader": {"batch_size": 4, "num_workers": 16, "prefetch_factor": 4, "pin_memory": True, "persistent_workers": True},
        "lightning": {
            "lr": 2.0e-4,
            "weight_decay": 0.1,
            "compile": False,
            "lr_warmup": {"steps": 1000, "interval": "step"},
            "lr_scheduler": {"class_name": "CosineAnnealingLR", "eta_min": 1.0e-5, "T_max": 100},
        },
        "trainer": {
            "max_epochs": 100,
            "accelerator": "cpu",
            "precision": "bf16-mixed",
            "gradient_clip_val": 1.0,
            "log_every_n_steps": 100,
            "early_stopping": {"monitor": "val/loss", "patience": 5},
        },
        "save_dir": str(tmp_path / "runs"),
        "datasplitter": {"dataset_root": str(tiny_dataset), "example_seconds": 1.0},
        "model_name": "ChannelGPT",
        "loss_name": "CrossEntropy",
        "model_config": {"vocab_size": 256, "num_channels": 4, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_position_embeddings": 64},
    }
    assert main(["validate", str(write_config(tmp_path, example))]) == 0
    assert "config ok" in capsys.readouterr().out


def test_loader_options_reach_the_dataloaders(tmp_path, tiny_dataset):
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        dataloader={"batch_size": 7, "num_workers": 1, "prefetch_factor": 3, "persistent_workers": True, "drop_last": True},
        trainer={"max_epochs": 1},
    )
    experiment = ExperimentDL(config)
    experiment.train()
    train, val = experiment.dataloader("train"), experiment.dataloader("val")
    assert (train.batch_size, train.num_workers, train.prefetch_factor, train.persistent_workers) == (7, 1, 3, True)
    assert train.drop_last is True and val.drop_last is False
    # 160 training windows in batches of 7: the partial batch is dropped; val keeps its 40 windows.
    assert len(train) == 160 // 7 and sum(len(batch[1]) for batch in val) == 40
    assert experiment.trainer.global_step == 160 // 7


def test_a_users_own_model_and_loss_load_from_import_paths(tmp_path, tiny_dataset):
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        model_name="tests.user_classes:LastValueModel",
        loss_name="tests.user_classes.SquaredError",
        datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}},
        trainer={"max_epochs": 1, "limit_train_batches": 3},
    )
    config["model_config"] = {"num_channels": 4}
    ExperimentDL(config).train()
    logged = scalars(tmp_path / "runs" / "logs" / "version_0")
    assert {"train/loss", "val/loss", "val/max_error"} <= set(logged)


def test_checkpointing_can_be_switched_off(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2, "enable_checkpointing": False})
    experiment = ExperimentDL(config)
    experiment.train()
    assert not (tmp_path / "runs" / "logs" / "version_0" / "checkpoints").exists()
    # No checkpoint callbacks, so no background-writing plugin either.
    assert not experiment.trainer.checkpoint_callbacks
    assert not isinstance(experiment.trainer.strategy.checkpoint_io, BackgroundCheckpointIO)


def test_an_empty_validation_split_trains_warns_and_tests_the_last_checkpoint(tmp_path, tiny_dataset, caplog):
    import logging

    config = tiny_config(tmp_path / "runs", tiny_dataset, datasplitter={"val_ratio": 0}, trainer={"max_epochs": 1})
    experiment = ExperimentDL(config)
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        experiment.train()
    assert any("validation split has no windows" in r.getMessage() for r in caplog.records)
    names = [p.name for p in (tmp_path / "runs" / "logs" / "version_0" / "checkpoints").iterdir()]
    assert len(names) == 1 and names[0].startswith("last-checkpoint")
    assert experiment.test()[0]["test/loss"] > 0


def test_a_runs_saved_config_trains_again(trained_run, capsys):
    _, run_dir = trained_run
    assert main(["train", str(run_dir / "config.yaml"), "--set", "trainer.max_epochs=1"]) == 0
    assert (run_dir.parent / "version_1" / "checkpoints").is_dir()

"""The config schema, loading, overrides and error messages."""

from __future__ import annotations

import logging

import pytest
import yaml

from brain_gen.config.errors import ConfigError
from brain_gen.config.loading import load_config
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config, with_changes


def minimal(**sections):
    config = {
        "save_dir": "runs",
        "model_name": "ChannelGPT",
        "loss_name": "CrossEntropy",
        "datasplitter": {"dataset_root": "data", "example_seconds": 1.0},
        "lightning": {"lr": 1e-3, "weight_decay": 0.1},
    }
    return with_changes(config, **sections)


def error_of(config, overrides=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_follow_the_spec():
    config = load_config(minimal())
    assert config.experiment_name == "logs"
    assert config.loss == {} and config.model_kwargs == {}
    assert config.dataloader_class == "DataLoader"
    loader = config.dataloader
    assert (loader.batch_size, loader.num_workers, loader.prefetch_factor) == (1, 0, 2)
    assert (loader.pin_memory, loader.persistent_workers, loader.drop_last) == (False, False, False)
    assert (loader.mixup_alpha, loader.mixup_prob, loader.num_classes) == (0.0, 1.0, None)
    assert (loader.quantize, loader.mu, loader.max_val) == (False, 255, 10.0)
    assert (loader.tokenizer_path, loader.max_length, loader.use_separator) == (None, None, True)
    lightning = config.lightning
    assert lightning.resume_lr is None and lightning.resume_weight_decay is None
    assert lightning.resume_context is None and lightning.resume_token_corruption is None
    assert (lightning.compile, lightning.benchmark_train_step, lightning.no_decay_verbose) == (False, False, False)
    assert lightning.grad_clip_threshold == 1.0
    assert lightning.lr_scheduler is None and lightning.lr_warmup is None
    trainer = config.trainer
    assert trainer.tune_batch_size is True and trainer.early_stopping is None
    assert trainer.checkpoint_cadence_epochs is None and trainer.validate_before_resume is False
    assert trainer.callbacks == []
    splitter = config.datasplitter
    assert (splitter.val_ratio, splitter.test_ratio, splitter.seed) == (0.1, 0.1, 42)
    assert (splitter.overlap_seconds, splitter.split_strategy, splitter.dataset_class) == (0.0, "session", "ChunkDataset")


def test_short_forms_of_warmup_and_early_stopping():
    config = load_config(minimal(lightning={"lr_warmup": 50}, trainer={"early_stopping": 7}))
    assert config.lightning.lr_warmup.steps == 50 and config.lightning.lr_warmup.interval is None
    assert config.trainer.early_stopping.patience == 7
    assert config.trainer.early_stopping.monitor == "val/loss"
    assert load_config(minimal(trainer={"early_stopping": True})).trainer.early_stopping.patience == 10
    assert load_config(minimal(trainer={"early_stopping": False})).trainer.early_stopping is None


def test_scheduler_extra_keys_go_to_the_constructor():
    config = load_config(minimal(lightning={"lr_scheduler": {"class_name": "CosineAnnealingLR", "T_max": 9, "eta_min": 0.1}}))
    assert config.lightning.lr_scheduler.constructor_kwargs == {"T_max": 9, "eta_min": 0.1}
    assert config.lightning.lr_scheduler.interval == "epoch"


def test_unknown_key_names_path_and_closest_key():
    assert error_of(minimal(lightning={"lr_sheduler": {"class_name": "StepLR"}})) == (
        "lightning.lr_sheduler: unknown key (did you mean lr_scheduler?)"
    )
    assert "datasplitter.exmaple_seconds: unknown key (did you mean example_seconds?)" in error_of(
        minimal(datasplitter={"exmaple_seconds": 2})
    )
    assert error_of(minimal(savedir="x")).startswith("savedir: unknown key (did you mean save_dir?)")


def test_wrong_type_names_path_expected_type_and_value():
    message = error_of(minimal(dataloader={"batch_size": "lots"}))
    assert message.startswith("dataloader.batch_size:") and "integer" in message and "'lots'" in message
    message = error_of(minimal(datasplitter={"dataset_root": 5}))
    assert message == "datasplitter.dataset_root: expected str or list[str] or dict[str,str], got 5"


def test_missing_required_keys_are_all_reported():
    config = minimal()
    del config["lightning"]["lr"]
    del config["model_name"]
    message = error_of(config)
    assert "model_name: required key is missing" in message
    assert "lightning.lr: required key is missing" in message


def test_trainer_keys_are_checked_against_lightning_trainer():
    assert error_of(minimal(trainer={"max_epoch": 3})).startswith("trainer.max_epoch: unknown key (did you mean max_epochs?)")
    assert error_of(minimal(trainer={"max_epochs": "ten"})) == "trainer.max_epochs: expected int | None, got 'ten'"
    message = error_of(minimal(trainer={"precision": "bf17"}))
    assert message.startswith("trainer.precision: expected") and "'bf16-mixed'" in message
    assert "trainer.logger: set by brain-gen" in error_of(minimal(trainer={"logger": False}))
    assert load_config(minimal(trainer={"max_epochs": "3"})).trainer.lightning_kwargs == {"max_epochs": 3}


def test_cross_key_rules():
    assert "overlap_seconds (1.0) must be smaller than example_seconds (1.0)" in error_of(
        minimal(datasplitter={"overlap_seconds": 1.0})
    )
    assert "persistent_workers needs num_workers > 0" in error_of(minimal(dataloader={"persistent_workers": True}))
    assert "dataloader.mixup_alpha is only used by MixupDataLoader" in error_of(minimal(dataloader={"mixup_alpha": 0.2}))
    assert "tokenizer_path is required" in error_of(minimal(dataloader_class="TextDataLoader"))
    assert "needs heldout_dataset" in error_of(minimal(datasplitter={"split_strategy": "dataset"}))
    assert "val_ratio + test_ratio must be below 1" in error_of(minimal(datasplitter={"val_ratio": 0.5, "test_ratio": 0.5}))
    assert "patience: input should be greater than or equal to 0" in error_of(minimal(trainer={"early_stopping": {"patience": -1}}))


def test_overrides_are_yaml_typed_and_create_sections():
    config = load_config(minimal(), ["trainer.max_epochs=3", "lightning.lr=2e-4", "dataloader.pin_memory=true"])
    assert config.trainer.lightning_kwargs["max_epochs"] == 3
    assert config.lightning.lr == 2e-4
    assert config.dataloader.pin_memory is True
    assert "--set expects KEY=VALUE" in error_of(minimal(), ["trainer.max_epochs"])
    assert "lightning.lr is a float, not a mapping" in error_of(minimal(), ["lightning.lr.x=1"])


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "model.yaml").write_text("d_model: 16\nn_layers: 1\n")
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(minimal(model_config="model.yaml")))
    config = load_config(config_path, ["datasplitter.cache_dir=cache"])
    assert config.save_dir == str(folder / "runs")
    assert config.datasplitter.dataset_root == str(folder / "data")
    assert config.datasplitter.cache_dir == str(folder / "cache")
    assert config.model_kwargs == {"d_model": 16, "n_layers": 1}


def test_file_errors_name_the_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"config: file not found: {tmp_path / 'nope.yaml'}"
    broken = tmp_path / "broken.yaml"
    broken.write_text("lightning:\n  lr: [1,\n")
    assert error_of(broken).startswith(f"config: invalid YAML in {broken} line")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(minimal(model_config="missing_model.yaml")))
    assert error_of(path) == f"model_config: file not found: {tmp_path / 'missing_model.yaml'}"


@pytest.mark.parametrize(
    "changes",
    [
        {"lightning": {"lr_warmup": 5}, "trainer": {"max_epochs": 2, "early_stopping": 3}},
        {"dataloader_class": "MixupDataLoader", "dataloader": {"mixup_alpha": 0.4}},
        {"datasplitter": {"split_strategy": "dataset", "heldout_dataset": "b", "dataset_root": {"a": "x", "b": "y"}}},
    ],
)
def test_resolved_config_loads_back_equal(changes):
    config = load_config(minimal(**changes))
    again = load_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.to_dict() == config.to_dict()


def test_switched_off_values_are_accepted(tmp_path, tiny_dataset):
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        trainer={"tune_batch_size": False, "early_stopping": None, "callbacks": [], "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1},
        lightning={"compile": False, "lr_warmup": None, "lr_scheduler": None, "resume_token_corruption": False},
    )
    experiment = ExperimentDL(config)
    trainer = experiment.train()
    # Each switch is off in the run: no search, no stopping, no extra callbacks, no schedule, no compile.
    types = {type(callback).__name__ for callback in trainer.callbacks}
    assert not types & {"BatchSizeFinder", "EarlyStopping"} and trainer.global_step == 2
    assert trainer.lr_scheduler_configs == [] and not any(name.startswith("_orig_mod") for name, _ in experiment.lit_model.named_parameters())
    # false is normalised to null: code only asks `is not None`.
    assert experiment.config.lightning.resume_token_corruption is None


def test_resume_token_corruption_true_becomes_the_model_configs_settings(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, resume_from="earlier.ckpt", lightning={"resume_token_corruption": True})
    config["model_config"] = {**config["model_config"], "token_corruption_cfg": {"p": 0.25}}
    assert load_config(config).lightning.resume_token_corruption == {"p": 0.25}
    # A model config without settings built its model without corruption: reusing it means off.
    del config["model_config"]["token_corruption_cfg"]
    assert load_config(config).lightning.resume_token_corruption == {"enabled": False}
    assert load_config({**config, "lightning": {**config["lightning"], "resume_token_corruption": False}}).lightning.resume_token_corruption is None


def test_several_misplaced_loader_keys_are_one_problem_each():
    with pytest.raises(ConfigError) as raised:
        load_config(minimal(dataloader={"mixup_alpha": 0.2, "use_separator": True}))
    assert [problem.split(" is only")[0] for problem in raised.value.problems] == ["dataloader.mixup_alpha", "dataloader.use_separator"]


def test_default_batch_size_tuning_is_skipped_on_cpu_with_a_notice(tmp_path, tiny_dataset, caplog):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1})
    del config["trainer"]["tune_batch_size"]
    with caplog.at_level(logging.INFO, logger="brain_gen"):
        ExperimentDL(config).train()
    notices = [record.getMessage() for record in caplog.records if "tune_batch_size" in record.getMessage()]
    assert len(notices) == 1 and "skipped on CPU" in notices[0] and "batch_size=8" in notices[0]


def test_booleans_are_not_numbers():
    assert error_of(minimal(lightning={"lr": True})) == "lightning.lr: expected a number, got True"
    assert error_of(minimal(dataloader={"num_classes": False})) == "dataloader.num_classes: expected a number, got False"
    assert "trainer.log_every_n_steps: expected int | None, got True" in error_of(minimal(trainer={"log_every_n_steps": True}))
    # Trainer arguments that do take booleans keep them; numeric strings still count as numbers.
    config = load_config(minimal(lightning={"lr": "3e-4"}, trainer={"fast_dev_run": True, "enable_progress_bar": False}))
    assert config.lightning.lr == 3e-4 and config.trainer.lightning_kwargs == {"fast_dev_run": True, "enable_progress_bar": False}


def test_overrides_reach_into_a_model_config_file(tmp_path):
    (tmp_path / "model.yaml").write_text("d_model: 16\nn_layers: 1\n")
    (tmp_path / "other.yaml").write_text("d_model: 8\n")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(minimal(model_config="model.yaml")))
    assert load_config(path, ["model_config.d_model=64"]).model_kwargs == {"d_model": 64, "n_layers": 1}
    assert load_config(path, ["model_config=other.yaml"]).model_kwargs == {"d_model": 8}


def test_saved_intervals_read_back_as_the_same_schedule():
    config = load_config(
        minimal(lightning={"lr_warmup": {"steps": 100, "interval": "step"}, "lr_scheduler": {"class_name": "CosineAnnealingLR", "T_max": 10}})
    )
    assert config.lightning.schedule_interval == "step"
    again = load_config(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.lightning.schedule_interval == "step" and again.to_dict() == config.to_dict()

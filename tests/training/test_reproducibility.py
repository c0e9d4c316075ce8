"""Seeded runs repeat exactly, and a resumed run repeats the uninterrupted one bit for bit."""

from __future__ import annotations

import copy
import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from brain_gen.cli import main
from brain_gen.training.train import ExperimentDL
from tests.conftest import scalars, tiny_config, with_changes, write_config

# Four short epochs of four batches; dropout and token corruption make the model draw
# from torch's random state at every step, so a stream that is not carried shows.
QUICK = {"max_epochs": 4, "limit_train_batches": 4, "limit_val_batches": 2}
RANDOM_MODEL = {"dropout": 0.2, "token_corruption_cfg": {"enabled": True, "p": 0.1}}


def _config(tmp_path: Path, dataset: Path, name: str, **changes) -> dict:
    config = tiny_config(tmp_path / name, dataset, trainer=dict(QUICK))
    config["model_config"].update(RANDOM_MODEL)
    return with_changes(config, **changes)


def _train(config: dict, **trainer) -> tuple[dict[str, list[tuple[int, float]]], dict[str, torch.Tensor]]:
    config = with_changes(yaml.safe_load(yaml.safe_dump(config)), trainer=trainer) if trainer else config
    experiment = ExperimentDL(config)
    fitted = experiment.train()
    weights = {name: value.detach().clone() for name, value in experiment.model.state_dict().items() if torch.is_tensor(value)}
    return scalars(Path(fitted.logger.log_dir)), weights


def _assert_same_weights(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    assert one.keys() == other.keys()
    different = [name for name in one if not torch.equal(one[name], other[name])]
    assert not different, f"weights differ: {different[:3]}"


def _stop_and_resume(tmp_path: Path, config: dict, stop: dict) -> tuple[dict, dict]:
    """Train with ``stop`` trainer settings, then resume from the last-checkpoint to the end."""
    _train(config, **stop)
    return _train({**config, "resume_from": "last"})


def _losses(run_scalars: dict, after_step: int = -1) -> list[tuple[int, float]]:
    return [(step, value) for step, value in run_scalars["train/loss"] if step > after_step]


MIXUP = {
    "dataloader_class": "MixupDataLoader",
    "datasplitter": {"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {"target": "codes", "mu": 255, "max_val": 4.0}},
    "dataloader": {"batch_size": 8, "mixup_alpha": 0.4, "num_classes": 256, "quantize": True, "max_val": 4.0},
}
WARMUP_COSINE = {
    "lightning": {
        "lr": 3.0e-3,
        "weight_decay": 0.01,
        "lr_warmup": {"steps": 3, "interval": "step"},
        "lr_scheduler": {"class_name": "CosineAnnealingLR", "interval": "step", "T_max": 16},
    }
}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({}, id="plain"),
        pytest.param(WARMUP_COSINE, id="warmup-cosine-per-step"),
        pytest.param(MIXUP, id="mixup"),
        pytest.param({"dataloader": {"batch_size": 8, "num_workers": 2}}, id="two-workers"),
    ],
)
def test_two_epochs_then_a_resume_repeat_four_epochs_bit_for_bit(tmp_path, tiny_dataset, variant):
    straight_scalars, straight_weights = _train(_config(tmp_path, tiny_dataset, "straight", **variant))
    resumed_scalars, resumed_weights = _stop_and_resume(tmp_path, _config(tmp_path, tiny_dataset, "resumed", **variant), {"max_epochs": 2})
    # Steps 8..15 are trained after the resume: every loss and lr is the same number.
    assert _losses(resumed_scalars) == _losses(straight_scalars, after_step=7)
    assert [step for step, _ in _losses(resumed_scalars)][0] == 8
    assert resumed_scalars["lr"] == [entry for entry in straight_scalars["lr"] if entry[0] > 7]
    _assert_same_weights(straight_weights, resumed_weights)


class StopAtStep(pl.Callback):
    """Sends this process SIGTERM after training step ``step``: a cluster's notice mid-epoch."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "two-workers"])
def test_a_run_preempted_inside_an_epoch_resumes_exactly(tmp_path, tiny_dataset, workers):
    from brain_gen.distributed import TrainingPreempted

    loader = {"dataloader": {"batch_size": 8, "num_workers": workers}}
    straight_scalars, straight_weights = _train(_config(tmp_path, tiny_dataset, "straight", **loader))
    config = _config(tmp_path, tiny_dataset, "resumed", **loader)
    stopped = with_changes(yaml.safe_load(yaml.safe_dump(config)), trainer={"callbacks": [StopAtStep(5)]})
    with pytest.raises(TrainingPreempted) as preempted:
        ExperimentDL(stopped).train()
    # The notice comes at the end of step 5; training stops after the next, in the middle of the second epoch.
    assert preempted.value.step == 6
    resumed_scalars, resumed_weights = _train({**config, "resume_from": "last"})
    # Scalars are logged at the step count before the batch's own step: 6 is the seventh batch.
    assert _losses(resumed_scalars) == _losses(straight_scalars, after_step=5)
    _assert_same_weights(straight_weights, resumed_weights)


def test_the_same_seed_repeats_a_run_and_another_seed_does_not(tmp_path, tiny_dataset):
    first_scalars, first = _train(_config(tmp_path, tiny_dataset, "first", trainer={"max_epochs": 1}))
    second_scalars, second = _train(_config(tmp_path, tiny_dataset, "second", trainer={"max_epochs": 1}))
    assert first_scalars["train/loss"] == second_scalars["train/loss"]
    _assert_same_weights(first, second)
    _, other = _train(_config(tmp_path, tiny_dataset, "other", seed=7, trainer={"max_epochs": 1}))
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_seed_null_draws_a_seed_and_the_runs_config_yaml_repeats_the_run(tmp_path, tiny_dataset, capsys):
    config = _config(tmp_path, tiny_dataset, "drawn", seed=None, trainer={"max_epochs": 1})
    assert main(["train", str(write_config(tmp_path, config))]) == 0
    first_run = tmp_path / "drawn" / "logs" / "version_0"
    saved = yaml.safe_load((first_run / "config.yaml").read_text())
    assert isinstance(saved["seed"], int)
    # The eval runner's own seeds, left null, are written as the ones derived from it.
    assert main(["train", str(first_run / "config.yaml")]) == 0
    second_run = tmp_path / "drawn" / "logs" / "version_1"
    assert yaml.safe_load((second_run / "config.yaml").read_text())["seed"] == saved["seed"]
    assert scalars(first_run)["train/loss"] == scalars(second_run)["train/loss"]
    # Another null draws another seed.
    assert main(["train", str(write_config(tmp_path, config))]) == 0
    assert yaml.safe_load((tmp_path / "drawn" / "logs" / "version_2" / "config.yaml").read_text())["seed"] != saved["seed"]
    capsys.readouterr()


def test_training_leaves_torchs_random_state_as_it_found_it(tmp_path, tiny_dataset):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    _train(_config(tmp_path, tiny_dataset, "state", trainer={"max_epochs": 1}))
    assert torch.equal(torch.rand(3), expected)


def test_the_eval_runners_seeds_derive_from_the_runs_seed_unless_given(tmp_path, tiny_dataset):
    from brain_gen.config.loading import load_config
    from brain_gen.seeding import derive_seed

    def seeds(**changes) -> tuple[int, int]:
        settings = load_config(tiny_config(tmp_path, tiny_dataset, eval_runner={"enabled": True}, **changes)).eval_runner
        return settings.example_sampler.seed, settings.generator.seed

    assert seeds() == (derive_seed(42, "eval contexts"), derive_seed(42, "eval generation"))
    assert seeds(seed=7) == (derive_seed(7, "eval contexts"), derive_seed(7, "eval generation")) != seeds()
    given = {"enabled": True, "example_sampler": {"seed": 3}, "generator": {"seed": 4}}
    settings = load_config(tiny_config(tmp_path, tiny_dataset, seed=7, eval_runner=given)).eval_runner
    assert (settings.example_sampler.seed, settings.generator.seed) == (3, 4)


def test_resuming_with_seed_null_continues_with_the_checkpoints_seed(tmp_path, tiny_dataset):
    drawn = _config(tmp_path, tiny_dataset, "drawn", seed=None)
    _train(drawn, max_epochs=2)
    trained_with = yaml.safe_load((tmp_path / "drawn" / "logs" / "version_0" / "config.yaml").read_text())["seed"]
    straight_scalars, straight_weights = _train(_config(tmp_path, tiny_dataset, "straight", seed=trained_with))
    resumed = ExperimentDL({**drawn, "resume_from": "last"})
    assert resumed.config.seed == trained_with
    fitted = resumed.train()
    assert _losses(scalars(Path(fitted.logger.log_dir))) == _losses(straight_scalars, after_step=7)
    _assert_same_weights(straight_weights, {name: value for name, value in resumed.model.state_dict().items() if torch.is_tensor(value)})
    assert yaml.safe_load((Path(fitted.logger.log_dir) / "config.yaml").read_text())["seed"] == trained_with


def test_fitting_puts_back_the_signal_handlers_it_found(tmp_path, tiny_dataset):
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    _train(_config(tmp_path, tiny_dataset, "handlers", trainer={"max_epochs": 1}))
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_resumed_run_keeps_the_batch_size_a_search_chose(tmp_path, tiny_dataset):
    from pytorch_lightning.callbacks import BatchSizeFinder

    config = _config(tmp_path, tiny_dataset, "searched", trainer={"max_epochs": 1})
    _train(config)
    last = next((tmp_path / "searched" / "logs" / "version_0" / "checkpoints").glob("last-*"))
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["BrainDataModule"] == {"batch_size": 8}
    state["BrainDataModule"]["batch_size"] = 5  # as if a search had chosen 5
    torch.save(state, last)
    resumed = ExperimentDL(with_changes(copy.deepcopy(config), resume_from=str(last), trainer={"max_epochs": 2, "tune_batch_size": True}))
    fitted = resumed.train()
    assert not any(isinstance(callback, BatchSizeFinder) for callback in fitted.callbacks)
    assert [value for _, value in scalars(Path(fitted.logger.log_dir))["batch_size"]] == [5.0]
    assert fitted.train_dataloader.batch_size == 5


def test_a_sparser_log_cadence_writes_the_same_values_at_its_steps(tmp_path, tiny_dataset):
    # Values are computed only on the steps the logger writes: seeded, both runs train alike.
    every, _ = _train(_config(tmp_path, tiny_dataset, "every", trainer={"max_epochs": 3, "log_every_n_steps": 1}))
    third, _ = _train(_config(tmp_path, tiny_dataset, "third", trainer={"max_epochs": 3, "log_every_n_steps": 3}))
    for tag in ("train/loss", "train/accuracy", "train/f1", "train/perplexity", "lr", "weight_decay", "grad_norm", "grad_clip_pct"):
        dense, sparse = dict(every[tag]), dict(third[tag])
        assert sorted(sparse) == [2, 5, 8, 11], (tag, sorted(sparse))
        assert all(dense[step] == value for step, value in sparse.items()), tag

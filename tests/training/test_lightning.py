"""The `lightning` section on real Trainer runs: optimizer groups, schedules, telemetry, compile, resume."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from brain_gen.cli import main
from brain_gen.config.errors import ConfigError
from brain_gen.config.loading import load_config
from brain_gen.training.lightning import LitModel
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config, write_config
from tests.conftest import scalars

BASE_LR = 1e-2


def run(tmp_path: Path, dataset: Path, *, lightning=None, trainer=None, **top) -> tuple[ExperimentDL, dict]:
    """Train a tiny ChannelGPT; returns the experiment and the scalars of its run folder."""
    config = tiny_config(
        tmp_path / "runs",
        dataset,
        lightning={"lr": BASE_LR, **(lightning or {})},
        trainer={"max_epochs": 2, "limit_train_batches": 7, "limit_val_batches": 2, **(trainer or {})},
        **top,
    )
    experiment = ExperimentDL(config)
    experiment.train()
    return experiment, scalars(Path(experiment.trainer.logger.log_dir))


def values(logged: dict, tag: str) -> list[float]:
    return [value for _, value in logged[tag]]


def last_checkpoint(experiment: ExperimentDL) -> str:
    return str(next((Path(experiment.trainer.logger.log_dir) / "checkpoints").glob("last-checkpoint*.ckpt")))


def cli_error(capsys, tmp_path, config) -> str:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["train", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- optimizer


def test_no_decay_group_holds_biases_norm_weights_and_1d_parameters(tmp_path, tiny_dataset):
    experiment, logged = run(tmp_path, tiny_dataset, lightning={"weight_decay": 0.05}, trainer={"max_epochs": 1})
    optimizer = experiment.trainer.optimizers[0]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    named = dict(experiment.model.named_parameters())
    expected_no_decay = {id(p) for name, p in named.items() if p.ndim <= 1}
    assert {id(p) for p in no_decay["params"]} == expected_no_decay
    assert {id(p) for p in decay["params"]} == {id(p) for p in named.values()} - expected_no_decay
    assert any(name.endswith("attention_norm.weight") for name, p in named.items() if id(p) in expected_no_decay)
    assert values(logged, "weight_decay") == pytest.approx([0.05] * 7)


def test_no_decay_verbose_prints_the_names_and_count_once(tmp_path, tiny_dataset, capsys):
    experiment, _ = run(tmp_path, tiny_dataset, lightning={"no_decay_verbose": True})
    lines = [line for line in capsys.readouterr().out.splitlines() if "no weight decay" in line]
    _, no_decay = experiment.lit_model.parameter_groups()
    assert len(lines) == 1
    assert lines[0].startswith(f"no weight decay for {len(no_decay)} parameter(s): ")
    assert all(name in lines[0] for name, _ in no_decay)


# --------------------------------------------------------------------------- schedules


def test_warmup_then_cosine_lr_matches_closed_form(tmp_path, tiny_dataset):
    eta_min, t_max, warmup = 1e-4, 10, 5
    schedule = {"class_name": "CosineAnnealingLR", "T_max": t_max, "eta_min": eta_min, "interval": "step"}
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_warmup": warmup, "lr_scheduler": schedule})
    expected = [
        BASE_LR * (k + 1) / warmup
        if k < warmup
        else eta_min + (BASE_LR - eta_min) * (1 + math.cos(math.pi * (k - warmup) / t_max)) / 2
        for k in range(14)
    ]
    assert values(logged, "lr") == pytest.approx(expected, rel=1e-6)


def test_epoch_interval_steps_the_schedule_once_per_epoch(tmp_path, tiny_dataset):
    schedule = {"class_name": "StepLR", "step_size": 1, "gamma": 0.5}
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_scheduler": schedule}, trainer={"max_epochs": 3, "limit_train_batches": 3})
    assert values(logged, "lr") == pytest.approx([BASE_LR] * 3 + [BASE_LR / 2] * 3 + [BASE_LR / 4] * 3, rel=1e-6)


def test_frequency_steps_the_schedule_every_n_intervals(tmp_path, tiny_dataset):
    schedule = {"class_name": "StepLR", "step_size": 1, "gamma": 0.5, "interval": "step", "frequency": 2}
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_scheduler": schedule}, trainer={"max_epochs": 1, "limit_train_batches": 6})
    assert values(logged, "lr") == pytest.approx([BASE_LR * 0.5 ** (k // 2) for k in range(6)], rel=1e-6)


def test_warmup_alone_ramps_per_step_then_holds(tmp_path, tiny_dataset):
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_warmup": {"steps": 4}}, trainer={"max_epochs": 1})
    assert values(logged, "lr") == pytest.approx([BASE_LR * min(1, (k + 1) / 4) for k in range(7)], rel=1e-6)


def test_epoch_warmup_follows_the_scheduler_interval(tmp_path, tiny_dataset):
    schedule = {"class_name": "ConstantLR", "factor": 1.0, "total_iters": 1}
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_warmup": 2, "lr_scheduler": schedule}, trainer={"max_epochs": 3, "limit_train_batches": 2})
    assert values(logged, "lr") == pytest.approx([BASE_LR / 2] * 2 + [BASE_LR] * 4, rel=1e-6)


def test_reduce_on_plateau_reads_its_monitor(tmp_path, tiny_dataset):
    # An improvement must beat the best by 10 nats: never, so the lr halves after every epoch but the first.
    schedule = {"class_name": "ReduceLROnPlateau", "monitor": "val/loss", "factor": 0.5, "patience": 0, "threshold": 10, "threshold_mode": "abs"}
    _, logged = run(tmp_path, tiny_dataset, lightning={"lr_scheduler": schedule}, trainer={"max_epochs": 3, "limit_train_batches": 2})
    assert values(logged, "lr") == pytest.approx([BASE_LR] * 4 + [BASE_LR / 2] * 2, rel=1e-6)


@pytest.mark.parametrize(
    "lightning, expected",
    [
        ({"lr_scheduler": {"class_name": "CosineAnealingLR", "T_max": 3}}, "lightning.lr_scheduler.class_name: 'CosineAnealingLR' is not a scheduler of torch.optim.lr_scheduler (did you mean CosineAnnealingLR"),
        ({"lr_scheduler": {"class_name": "StepLR", "step_size": 2, "gama": 0.1}}, "lightning.lr_scheduler.gama: not an argument of StepLR (did you mean gamma?)"),
        ({"lr_scheduler": {"class_name": "CosineAnnealingLR"}}, "lightning.lr_scheduler.T_max: required by CosineAnnealingLR"),
        ({"lr_scheduler": {"class_name": "ReduceLROnPlateau"}}, "lr_scheduler.monitor is required by ReduceLROnPlateau"),
        ({"lr_scheduler": {"class_name": "ReduceLROnPlateau", "monitor": "val_loss"}}, "lightning.lr_scheduler.monitor: 'val_loss' is never logged (did you mean val/loss?); logged metrics: train/loss"),
        ({"lr_scheduler": {"class_name": "ReduceLROnPlateau", "monitor": "val/loss"}, "lr_warmup": 3}, "lr_warmup cannot be combined with ReduceLROnPlateau"),
        ({"lr_scheduler": {"class_name": "StepLR", "step_size": 1, "interval": "epoch"}, "lr_warmup": {"steps": 3, "interval": "step"}}, "lr_warmup.interval (step) differs from lr_scheduler.interval (epoch)"),
        ({"resume_lr": 1e-3}, "lightning.resume_lr only applies when resuming; set resume_from or remove the key"),
        ({"lr_scheduler": {"class_name": "Cosine"}}, "'Cosine' is not a scheduler of torch.optim.lr_scheduler; choose one of ChainedScheduler, ConstantLR, CosineAnnealingLR"),
        ({"lr_scheduler": {"class_name": "LinearLR", "start_factor": 2}}, "lightning.lr_scheduler: LinearLR rejected its arguments: Starting multiplicative factor expected to be greater than 0 and less or equal to 1"),
        ({"lr_scheduler": {"class_name": "OneCycleLR", "max_lr": 0.1}}, "lightning.lr_scheduler: OneCycleLR rejected its arguments"),
        ({"lr_scheduler": {"class_name": "StepLR", "step_size": 1, "last_epoch": 3}}, "lightning.lr_scheduler.last_epoch: set by brain-gen"),
        (
            {"lr_scheduler": {"class_name": "ReduceLROnPlateau", "monitor": "val/loss", "interval": "step"}},
            "lightning.lr_scheduler.monitor: 'val/loss' is not logged at every step (interval: step) (did you mean train/loss?)",
        ),
    ],
)
def test_schedule_mistakes_exit_2_with_one_line(capsys, tmp_path, tiny_dataset, lightning, expected):
    config = tiny_config(tmp_path / "runs", tiny_dataset, lightning=lightning)
    assert expected in cli_error(capsys, tmp_path, config)


# --------------------------------------------------------------------------- telemetry


class GradientNormRecorder(pl.Callback):
    """Reference grad norm by the definition: one long vector of every gradient, before clipping."""

    def __init__(self):
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.cat(grads).norm().item())


def test_grad_norm_and_clip_percentage_match_their_definitions(tmp_path, tiny_dataset):
    recorder = GradientNormRecorder()
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        lightning={"lr": BASE_LR, "grad_clip_threshold": 0.45},
        trainer={"max_epochs": 2, "limit_train_batches": 7, "limit_val_batches": 1, "gradient_clip_val": 0.01, "callbacks": [recorder]},
    )
    experiment = ExperimentDL(config)
    experiment.train()
    logged = scalars(Path(experiment.trainer.logger.log_dir))
    assert values(logged, "grad_norm") == pytest.approx(recorder.norms, rel=1e-5)
    # Logged before clipping: the clipped gradients would all have norm 0.01.
    assert min(values(logged, "grad_norm")) > 0.01
    over = [norm > 0.45 for norm in recorder.norms]
    expected_pct = [100.0 * sum(over[: k + 1]) / (k + 1) for k in range(len(over))]
    assert values(logged, "grad_clip_pct") == pytest.approx(expected_pct, abs=1e-4)
    assert 0 < expected_pct[-1] < 100, "threshold should split the steps for this test to mean something"


def test_benchmark_train_step_logs_step_time_only_when_asked(tmp_path, tiny_dataset):
    _, plain = run(tmp_path / "off", tiny_dataset, trainer={"max_epochs": 1})
    assert "perf/train_step_ms" not in plain
    _, timed = run(tmp_path / "on", tiny_dataset, lightning={"benchmark_train_step": True}, trainer={"max_epochs": 1})
    step_ms = values(timed, "perf/train_step_ms")
    assert len(step_ms) == 7 and all(0 < ms < 60_000 for ms in step_ms)


def test_step_timing_synchronizes_cuda_devices(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    module = LitModel(torch.nn.Linear(2, 2), torch.nn.MSELoss(), {"lr": 1e-3, "weight_decay": 0.0, "benchmark_train_step": True})
    module._synchronize()
    assert calls == []
    module._device = torch.device("cuda", 0)
    module._synchronize()
    assert calls == [torch.device("cuda", 0)]


# --------------------------------------------------------------------------- compile


@pytest.mark.slow
def test_compiled_and_plain_checkpoints_load_into_each_other(tmp_path, tiny_dataset):
    from torch._dynamo.utils import counters

    counters.clear()
    short = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
    compiled, _ = run(tmp_path / "a", tiny_dataset, lightning={"compile": True}, trainer=short)
    assert compiled.lit_model.compiled_model is not None and counters["stats"]["unique_graphs"] > 0
    state = torch.load(last_checkpoint(compiled), map_location="cpu", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in state)

    plain, logged = run(tmp_path / "b", tiny_dataset, resume_from=last_checkpoint(compiled), trainer={**short, "max_epochs": 2})
    assert plain.trainer.global_step == 4 and "val/loss" in logged

    recompiled, logged = run(tmp_path / "c", tiny_dataset, lightning={"compile": True}, resume_from=last_checkpoint(plain), trainer={**short, "max_epochs": 3})
    assert recompiled.trainer.global_step == 6 and "val/loss" in logged


def test_checkpoints_of_self_compiled_models_load_without_prefix_errors(tmp_path, tiny_dataset):
    experiment, _ = run(tmp_path, tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2})
    checkpoint = torch.load(last_checkpoint(experiment), map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = {key.replace("model.", "model._orig_mod.", 1): value for key, value in checkpoint["state_dict"].items()}
    prefixed = tmp_path / "prefixed.ckpt"
    torch.save(checkpoint, prefixed)
    resumed, _ = run(tmp_path / "again", tiny_dataset, resume_from=str(prefixed), trainer={"max_epochs": 2, "limit_train_batches": 2})
    assert resumed.trainer.global_step == 4


# --------------------------------------------------------------------------- resume overrides


@pytest.fixture
def first_run(tmp_path, tiny_dataset):
    """One epoch of 7 steps with warmup 3 then cosine: (experiment, its last checkpoint)."""
    schedule = {"class_name": "CosineAnnealingLR", "T_max": 20, "interval": "step"}
    experiment, _ = run(tmp_path / "first", tiny_dataset, lightning={"lr_warmup": 3, "lr_scheduler": schedule, "weight_decay": 0.1}, trainer={"max_epochs": 1})
    return experiment, last_checkpoint(experiment)


def test_resume_lr_and_weight_decay_show_in_the_logs(tmp_path, tiny_dataset, first_run, caplog):
    import logging

    _, checkpoint = first_run
    schedule = {"class_name": "CosineAnnealingLR", "T_max": 20, "interval": "step"}
    with caplog.at_level(logging.INFO, logger="brain_gen"):
        resumed, logged = run(
            tmp_path / "second",
            tiny_dataset,
            resume_from=checkpoint,
            lightning={"lr_warmup": 3, "lr_scheduler": schedule, "weight_decay": 0.1, "resume_lr": 2e-3, "resume_weight_decay": 0.03},
        )
    lrs = values(logged, "lr")
    assert len(lrs) == 7 and lrs[0] == pytest.approx(2e-3)
    # The cosine child was at t=4 (7 steps - 3 of warmup); it continues from the new lr.
    assert lrs[1] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 5 / 20)) / (1 + math.cos(math.pi * 4 / 20)), rel=1e-6)
    assert values(logged, "weight_decay") == pytest.approx([0.03] * 7)
    decay, no_decay = resumed.trainer.optimizers[0].param_groups
    assert decay["initial_lr"] == no_decay["initial_lr"] == 2e-3 and no_decay["weight_decay"] == 0.0
    sequential = resumed.trainer.lr_scheduler_configs[0].scheduler
    assert len(sequential._schedulers) == 2
    assert all(child.base_lrs == [2e-3, 2e-3] for child in sequential._schedulers)
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "resume: lr set to 0.002" in messages and "resume: weight_decay of the decay group set to 0.03" in messages


def test_resume_context_lets_the_model_run_at_a_longer_window(tmp_path, tiny_dataset, capsys):
    first, _ = run(tmp_path / "first", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 2})
    checkpoint = last_checkpoint(first)
    longer = {"example_seconds": 2.0}
    with pytest.raises(ConfigError, match="max_position_embeddings: 64, but windows are 99 steps long"):
        run(tmp_path / "plain", tiny_dataset, resume_from=checkpoint, datasplitter=longer)

    resized, logged = run(
        tmp_path / "resized",
        tiny_dataset,
        resume_from=checkpoint,
        datasplitter=longer,
        lightning={"resume_context": {"input_shape": [4, 100], "rope_theta": 5000.0}},
        trainer={"max_epochs": 2, "limit_train_batches": 2},
    )
    assert resized.model.max_position_embeddings == 100 and resized.model.rope_theta == 5000.0
    assert resized.model.transformer.rope_cos.shape[0] == 100
    assert resized.trainer.global_step == 4 and "val/loss" in logged

    shrunk = tiny_config(tmp_path / "cli", tiny_dataset, resume_from=checkpoint, lightning={"resume_context": {"max_position_embeddings": 16}})
    assert "model_config.max_position_embeddings: 16, but windows are 49 steps long" in cli_error(capsys, tmp_path, shrunk)
    config = tiny_config(tmp_path / "cli", tiny_dataset, resume_from=checkpoint, lightning={"resume_context": {"input_shape": [5, 100]}})
    assert "lightning.resume_context: input_shape has 5 channels but ChannelGPT has 4" in cli_error(capsys, tmp_path, config)
    config["lightning"]["resume_context"] = {"spatial_reduction": 2}
    assert "lightning.resume_context.spatial_reduction: ChannelGPT.resize_context cannot change it" in cli_error(capsys, tmp_path, config)


def test_resume_context_needs_a_resizable_model(capsys, tmp_path, tiny_dataset, first_run):
    _, checkpoint = first_run
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        model_name="tests.user_classes:LastValueModel",
        loss_name="MSE",
        datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}},
        resume_from=checkpoint,
        lightning={"resume_context": {"max_position_embeddings": 10}},
    )
    config["model_config"] = {"num_channels": 4}
    # The checkpoint is ChannelGPT's: that is said too, on a line of its own.
    written_by = f"resume_from: {checkpoint} was written by model_name ChannelGPT, not tests.user_classes:LastValueModel"
    for expected in ("lightning.resume_context: LastValueModel has no resize_context method", "lightning.resume_token_corruption: LastValueModel has no update_token_corruption_cfg"):
        if "token" in expected:
            config["lightning"] = {"lr": 1e-3, "weight_decay": 0.0, "resume_token_corruption": True}
        assert main(["train", str(write_config(tmp_path, config))]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 2 and expected in lines[0] and written_by in lines[1], lines


def test_token_corruption_state_travels_in_checkpoints_and_resume_overrides_it(tmp_path, tiny_dataset):
    short = {"max_epochs": 1, "limit_train_batches": 2}
    first, _ = run(tmp_path / "first", tiny_dataset, model_config={**tiny_model(), "token_corruption_cfg": {"p": 0.2}}, trainer=short)
    checkpoint = last_checkpoint(first)
    again = {"max_epochs": 2, "limit_train_batches": 2}
    edited_config = {**tiny_model(), "token_corruption_cfg": {"p": 0.3}}

    kept, _ = run(tmp_path / "kept", tiny_dataset, model_config=edited_config, resume_from=checkpoint, trainer=again)
    assert kept.model.token_corruption.p == 0.2
    reapplied, _ = run(tmp_path / "true", tiny_dataset, model_config=edited_config, resume_from=checkpoint, lightning={"resume_token_corruption": True}, trainer=again)
    assert reapplied.model.token_corruption.p == 0.3
    replaced, _ = run(tmp_path / "dict", tiny_dataset, model_config=edited_config, resume_from=checkpoint, lightning={"resume_token_corruption": {"p": 0.5, "enabled": True}}, trainer=again)
    assert replaced.model.token_corruption.p == 0.5


def test_bad_token_corruption_override_is_caught_before_training(capsys, tmp_path, tiny_dataset, first_run):
    _, checkpoint = first_run
    config = tiny_config(tmp_path / "runs", tiny_dataset, resume_from=checkpoint, lightning={"resume_token_corruption": {"p": "often"}})
    assert "lightning.resume_token_corruption: token corruption p must be a number in [0, 1], got 'often'" in cli_error(capsys, tmp_path, config)
    assert not (tmp_path / "runs" / "logs").exists()


def test_grad_clip_percentage_continues_across_a_resume(tmp_path, tiny_dataset):
    first, first_logged = run(tmp_path / "a", tiny_dataset, lightning={"grad_clip_threshold": 1e-9}, trainer={"max_epochs": 1, "limit_train_batches": 3})
    assert values(first_logged, "grad_clip_pct") == pytest.approx([100.0] * 3)
    # Every earlier step exceeded the old threshold; none exceeds the new one.
    _, logged = run(tmp_path / "b", tiny_dataset, resume_from=last_checkpoint(first), lightning={"grad_clip_threshold": 1e9}, trainer={"max_epochs": 2, "limit_train_batches": 3})
    assert values(logged, "grad_clip_pct") == pytest.approx([100 * 3 / 4, 100 * 3 / 5, 100 * 3 / 6])


def test_no_decay_rules_by_name_norm_type_and_dimension():
    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(5, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.linear = torch.nn.Linear(4, 4)
            self.relative_bias = torch.nn.Parameter(torch.zeros(3, 3))
            self.scale = torch.nn.Parameter(torch.ones(4))
            self.frozen = torch.nn.Parameter(torch.ones(4, 4), requires_grad=False)

    module = LitModel(Mixed(), torch.nn.MSELoss(), {"lr": 1e-3, "weight_decay": 0.1})
    decay, no_decay = module.parameter_groups()
    assert [name for name, _ in decay] == ["embedding.weight", "linear.weight"]
    assert sorted(name for name, _ in no_decay) == ["linear.bias", "norm.bias", "norm.weight", "relative_bias", "scale"]


def tiny_model() -> dict:
    return dict(tiny_config(Path("x"), Path("y"))["model_config"])


def test_a_learning_rate_of_zero_trains_without_changing_the_weights(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, lightning={"lr": 0.0, "weight_decay": 0.1}, trainer={"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1})
    experiment = ExperimentDL(config)
    experiment.build()
    before = {name: parameter.detach().clone() for name, parameter in experiment.model.named_parameters()}
    experiment.train()
    assert experiment.trainer.global_step == 3
    after = dict(experiment.model.named_parameters())
    assert before and all(torch.equal(before[name], after[name]) for name in before)
    assert values(scalars(Path(experiment.trainer.logger.log_dir)), "lr") == [0.0, 0.0, 0.0]


def test_a_grad_clip_threshold_of_zero_counts_every_step_with_a_gradient(tmp_path, tiny_dataset):
    _, logged = run(tmp_path, tiny_dataset, lightning={"grad_clip_threshold": 0.0}, trainer={"max_epochs": 1, "limit_train_batches": 4})
    assert min(values(logged, "grad_norm")) > 0
    assert values(logged, "grad_clip_pct") == [100.0] * 4


def test_zero_is_accepted_wherever_torch_accepts_it(tmp_path, tiny_dataset):
    lightning = {"lr": 0.0, "weight_decay": 0.0, "resume_lr": 0.0, "resume_weight_decay": 0.0, "grad_clip_threshold": 0.0}
    config = load_config(tiny_config(tmp_path / "runs", tiny_dataset, resume_from="earlier.ckpt", lightning=lightning))
    assert all(getattr(config.lightning, key) == 0.0 for key in lightning)


@pytest.mark.parametrize("key", ["lr", "resume_lr", "grad_clip_threshold"])
def test_negative_optimizer_values_are_still_refused(tmp_path, tiny_dataset, key):
    config = tiny_config(tmp_path / "runs", tiny_dataset, lightning={"lr": BASE_LR, key: -0.1})
    with pytest.raises(ConfigError, match=f"lightning.{key}"):
        ExperimentDL(config)


def test_the_resume_validation_mark_is_cleared_however_the_pass_ends(tmp_path, tiny_dataset):
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset))
    experiment.build()
    lit_model = experiment.lit_model
    with pytest.raises(RuntimeError, match="validation failed"):
        with lit_model.resume_validation():
            assert lit_model.validating_before_resume
            raise RuntimeError("validation failed")
    assert not lit_model.validating_before_resume


def non_finite_config(tmp_path: Path, tiny_dataset: Path, kind: str, **trainer) -> dict:
    """Three steps per epoch; the model goes wrong in its 8th training step (step 7: epoch 2, batch 1)."""
    config = tiny_config(
        tmp_path / "runs", tiny_dataset, model_name="tests.user_classes:NonFiniteAtStep", loss_name="MSE",
        datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}},
        trainer={"max_epochs": 4, "limit_train_batches": 3, "limit_val_batches": 1, **trainer},
    )
    config["model_config"] = {"num_channels": 4, "at_call": 8, "kind": kind, "record_to": str(tmp_path / "bad_batch.pt")}
    return config


@pytest.mark.parametrize("kind, reported", [("loss", "train/loss is nan"), ("gradient", "while train/loss is finite")])
def test_a_non_finite_step_stops_training_before_it_is_applied_or_saved(tmp_path, tiny_dataset, capsys, kind, reported):
    assert main(["train", str(write_config(tmp_path, non_finite_config(tmp_path, tiny_dataset, kind)))]) == 3
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brain-gen: error:")]
    assert len(errors) == 1 and reported in errors[0], errors
    assert "at step 7 (epoch 2, batch 1 of the epoch: windows " in errors[0] and "trainer.stop_on_non_finite: false" in errors[0]
    # The windows named are the batch's: each one's samples are a row of the inputs the model got.
    named = re.findall(r"(\S+) at (\d+\.\d\d) s", errors[0].split("windows ", 1)[1])
    assert len(named) == 6 and "and 2 more" in errors[0]
    dataset = ExperimentDL(non_finite_config(tmp_path, tiny_dataset, kind))
    dataset.build_datasets()
    train = dataset.datasets["train"]
    where = {(session, f"{start:.2f}"): index for index in range(len(train)) for session, start in [train.locate(index)]}
    inputs = torch.load(tmp_path / "bad_batch.pt")
    for session, start in named:
        window = train[where[(session, start)]][0]
        assert any(torch.equal(window, row) for row in inputs), (session, start)
    # The last-checkpoint of epoch 1 stays the newest, with finite weights: resume_from: last continues from it.
    last = list((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-*"))
    assert [path.name for path in last] == ["last-checkpoint-epoch=1-step=6.ckpt"]
    state = torch.load(last[0], map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.isfinite(value).all() for value in state.values())


def test_stop_on_non_finite_false_trains_on(tmp_path, tiny_dataset, capsys):
    config = non_finite_config(tmp_path, tiny_dataset, "loss", stop_on_non_finite=False)
    assert main(["train", str(write_config(tmp_path, config))]) == 0
    last = next((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-*"))
    assert last.name == "last-checkpoint-epoch=3-step=12.ckpt"


def test_clipping_with_the_computed_norm_matches_lightnings_own_clipping(tmp_path, tiny_dataset, monkeypatch):
    def trained(name: str, **trainer) -> dict[str, torch.Tensor]:
        config = tiny_config(tmp_path / name, tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 4, **trainer})
        experiment = ExperimentDL(config)
        experiment.train()
        return {key: value for key, value in experiment.model.state_dict().items() if torch.is_tensor(value)}

    reused = []
    clip_with_norm = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *args, **kwargs: (reused.append(1), clip_with_norm(*args, **kwargs))[1])
    ours = trained("ours", gradient_clip_val=0.01)
    assert len(reused) == 4  # the computed norm served every step's clipping
    unclipped = trained("unclipped")
    calls = []
    real = pl.LightningModule.configure_gradient_clipping

    def lightnings_own(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        calls.append(gradient_clip_val)
        real(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    monkeypatch.setattr(LitModel, "configure_gradient_clipping", lightnings_own)
    lightnings = trained("lightning", gradient_clip_val=0.01)
    assert calls == [0.01] * 4
    # The same seeded run: the clip factor differs at most in its last bits (norms summed in another order).
    assert all(torch.allclose(ours[key], lightnings[key], rtol=1e-5, atol=1e-7) for key in ours)
    # And clipping happened: without it the weights end elsewhere.
    assert not all(torch.allclose(ours[key], unclipped[key], rtol=1e-3) for key in ours)

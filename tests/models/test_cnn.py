"""The CNN baselines: causal, with the documented receptive field, trainable from the reference toolkit's keys."""

from __future__ import annotations

import pytest
import torch

from brain_gen.cli import main
from brain_gen.config.schema import SamplingConfig
from brain_gen.models.cnn import CNNMultivariate, CNNMultivariateQuantized, CNNUnivariate, CNNUnivariateQuantized
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config, write_config

FLOAT_MODELS = [
    lambda: CNNUnivariate(num_layers=3, hidden_channels=4, kernel_size=4, linear=True),
    lambda: CNNMultivariate(in_channels=3, num_layers=3, hidden_channels=5, kernel_size=4, linear=True),
]
CODE_MODELS = [
    lambda: CNNUnivariateQuantized(num_classes=16, num_embeddings=2, num_layers=3, kernel_size=4, linear=True),
    lambda: CNNMultivariateQuantized(in_channels=3, num_classes=16, num_embeddings=2, num_layers=3, kernel_size=4, linear=True),
]


def changed_outputs(model, inputs, changed):
    """Steps whose output moves when the input at step ``changed`` does."""
    torch.manual_seed(0)
    before = model(inputs)
    altered = inputs.clone()
    altered[..., changed] = altered[..., changed] + 1 if altered.is_floating_point() else (altered[..., changed] + 5) % 16
    after = model(altered)
    moved = (before - after).abs().reshape(*before.shape[:3], -1).amax(dim=(0, 1, 3)) if before.dim() == 4 else (before - after).abs().amax(dim=(0, 1))
    return [step for step, amount in enumerate(moved.tolist()) if amount > 1e-6]


@pytest.mark.parametrize("make", FLOAT_MODELS + CODE_MODELS)
def test_an_output_sees_exactly_its_receptive_field_and_nothing_later(make):
    torch.manual_seed(1)
    model = make()
    assert model.receptive_field == 3 * (4 - 1) + 1
    inputs = torch.randn(2, 3, 30) if isinstance(model, (CNNUnivariate, CNNMultivariate)) else torch.randint(0, 16, (2, 3, 30))
    # Linear stacks: a change at step 10 reaches steps 10 .. 10 + receptive_field - 1, no earlier one.
    assert changed_outputs(model, inputs, 10) == list(range(10, 10 + model.receptive_field))


def test_univariate_models_keep_channels_apart_and_multivariate_ones_mix_them():
    torch.manual_seed(2)
    for model in (CNNUnivariate(num_layers=2, hidden_channels=3), CNNUnivariateQuantized(num_classes=16, num_embeddings=2)):
        inputs = torch.randn(1, 3, 20) if isinstance(model, CNNUnivariate) else torch.randint(0, 16, (1, 3, 20))
        altered = inputs.clone()
        altered[:, 0] = altered[:, 0] + 1 if inputs.is_floating_point() else (altered[:, 0] + 3) % 16
        assert torch.equal(model(inputs)[:, 1:], model(altered)[:, 1:])
    model = CNNMultivariate(in_channels=3, linear=True)
    inputs = torch.randn(1, 3, 20)
    altered = inputs.clone()
    altered[:, 0] += 1
    assert not torch.allclose(model(inputs)[:, 1], model(altered)[:, 1])


@pytest.mark.parametrize("make", CODE_MODELS)
def test_forecast_equals_greedy_recomputation(make):
    torch.manual_seed(3)
    model = make()
    context = torch.randint(0, 16, (2, 3, 7))
    generated = model.forecast(context, 12, SamplingConfig(strategy="argmax"))
    codes = context
    for _ in range(12):
        codes = torch.cat([codes, model(codes)[:, :, -1].argmax(dim=-1, keepdim=True)], dim=2)
    assert torch.equal(generated, codes[:, :, 7:])


def test_the_reference_toolkits_model_configs_train(tmp_path, tiny_dataset, capsys):
    quick = {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1}
    quantized = tiny_config(tmp_path / "q", tiny_dataset, trainer=quick, model_name="CNNMultivariateQuantized")
    # Keys as the reference toolkit writes them (tiny_config merges sections, so replace this one).
    quantized["model_config"] = {"in_channels": 4, "num_classes": 256, "num_embeddings": 4, "num_layers": 2, "hidden_channels": 16, "kernel_size": 5}
    quantized["eval_runner"] = {"enabled": False}
    assert main(["train", str(write_config(tmp_path, quantized))]) == 0
    floats = tiny_config(
        tmp_path / "f", tiny_dataset, trainer=quick, model_name="CNNUnivariate", loss_name="MSE",
        datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}},
    )
    floats["model_config"] = {"num_layers": 2, "hidden_channels": 8, "kernel_size": 5, "linear": False}
    floats["eval_runner"] = {"enabled": False}
    experiment = ExperimentDL(floats)
    experiment.train()
    assert experiment.trainer.callback_metrics["val/loss"] > 0


def test_a_channel_count_that_does_not_fit_names_in_channels(tmp_path, tiny_dataset, capsys):
    config = tiny_config(tmp_path / "runs", tiny_dataset, model_name="CNNMultivariateQuantized")
    config["model_config"] = {"in_channels": 3, "num_classes": 256}
    assert main(["validate", str(write_config(tmp_path, config))]) == 2
    err = capsys.readouterr().err
    assert "model_config.in_channels: 3, but the data has 4 channels" in err


def test_the_model_examples_train_briefly_and_compare_with_the_baselines(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from brain_gen.demo import make_synthetic_dataset

    examples = Path(__file__).resolve().parents[2] / "examples"
    make_synthetic_dataset(tmp_path / "demo_run" / "data", n_sessions=6, session_seconds=20.0, chunk_seconds=10.0)
    (tmp_path / "examples").mkdir()
    quick = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=3", "--set", "trainer.limit_val_batches=2",
             "--set", "eval_runner.enabled=false"]
    for name in ("cnn_quantized.yaml", "hf_llama.yaml", "space_time_gpt.yaml"):
        shutil.copy(examples / name, tmp_path / "examples" / name)
        example = str(tmp_path / "examples" / name)
        assert main(["baselines", example, "--ar", "1,2", "--var", "1"]) == 0
        capsys.readouterr()
        assert main(["train", example, *quick]) == 0
        assert "strongest baseline" in capsys.readouterr().out

"""Every kind of bad input ends the CLI with one line on stderr and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from brain_gen.cli import main
from brain_gen.config.errors import ConfigError
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


@pytest.fixture
def config_file(tmp_path, tiny_dataset):
    """Write a tiny config with changes: ``config_file(lambda config: ...)`` -> path."""

    def write(change=None, name="config.yaml"):
        config = tiny_config(tmp_path / "runs", tiny_dataset)
        if change:
            change(config)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def corrupt_first_chunk(dataset_root, array):
    session = sorted(dataset_root.iterdir())[0]
    np.save(session / "0.npy", array)
    return session / "0.npy"


@pytest.mark.parametrize(
    "change, command, expected",
    [
        (lambda c: c["lightning"].update(lr_sheduler={}), "train", "lightning.lr_sheduler: unknown key (did you mean lr_scheduler?)"),
        (lambda c: c["lightning"].update(lr="fast"), "validate", "lightning.lr: input should be a valid number"),
        (
            lambda c: c["lightning"].update(lr_scheduler={"class_name": "CosineAnnealingLR", "T_max": 10, "intervall": "step"}),
            "validate",
            "lightning.lr_scheduler.intervall: not an argument of CosineAnnealingLR (did you mean interval?)",
        ),
        (lambda c: c["trainer"].update(max_epoch=2), "train", "trainer.max_epoch: unknown key (did you mean max_epochs?)"),
        (lambda c: c["trainer"].update(accelerator="cuda"), "train", "trainer.accelerator: `CUDAAccelerator` can not run on your system"),
        (lambda c: c.update(model_name="ChanelGPT"), "train", "model_name: unknown name 'ChanelGPT' (did you mean ChannelGPT?)"),
        (lambda c: c.update(model_name="nowhere.module:Model"), "validate", "model_name: cannot import 'nowhere.module:Model'"),
        (lambda c: c["model_config"].update(d_modle=8), "train", "model_config.d_modle: not an argument of ChannelGPT (did you mean d_model?)"),
        (lambda c: c["model_config"].update(n_heads=3), "validate", "model_config: ChannelGPT rejected its arguments: d_model (32) must split into 3 heads"),
        (lambda c: c["model_config"].update(num_channels=5), "train", "model_config.num_channels: 5, but the data has 4 channels; set it to 4"),
        (lambda c: c["model_config"].update(vocab_size=16), "train", "model_config.vocab_size: 16, but the data has 256 codes"),
        (lambda c: c["model_config"].update(max_position_embeddings=8), "train", "model_config.max_position_embeddings: 8, but windows are 49 steps long"),
        (lambda c: c["datasplitter"].update(dataset_kwargs={"mu_": 3}), "train", "datasplitter.dataset_kwargs.mu_: not an argument of ChunkDataset (did you mean mu?)"),
        (lambda c: c["datasplitter"].update(dataset_root="/no/such/folder"), "train", "datasplitter.dataset_root: folder not found: /no/such/folder"),
        (lambda c: c.update(resume_from="missing.ckpt"), "train", "resume_from: checkpoint not found:"),
        (lambda c: c.update(eval_runner={"every_n_checkpoint": 1}), "train", "eval_runner.every_n_checkpoint: unknown key (did you mean every_n_checkpoints?)"),
        (lambda c: c.update(eval_runner={"enabled": True, "example_sampler": {"total_length_s": 100.0, "context_length_s": 2.0}}), "train", "eval_runner.example_sampler.total_length_s: 100 s is longer than session"),
        (lambda c: c.update(eval_runner={"enabled": True, "device": "cuda"}), "train", "eval_runner.device: cuda, but no GPU is visible"),
        (lambda c: c.update(eval_runner={"enabled": True, "generator": {"sampling": {"strategy": "nucleus"}}}), "train", "eval_runner.generator.sampling.strategy: input should be 'argmax', 'roulette', 'top_k' or 'top_p'"),
        (lambda c: c["trainer"].update(early_stopping={"monitor": "val_loss"}), "train", "trainer.early_stopping.monitor: 'val_loss' is never logged (did you mean val/loss?)"),
        (lambda c: c["trainer"].update(callbacks=["LearningRateMonitr"]), "train", "trainer.callbacks.0.class_path: 'LearningRateMonitr' is not a Lightning callback (did you mean LearningRateMonitor?)"),
        (lambda c: c["trainer"].update(callbacks=[{"class_path": "LearningRateMonitor", "init_args": {"log_moment": True}}]), "train", "trainer.callbacks.0.init_args.log_moment: not an argument of LearningRateMonitor (did you mean log_momentum?)"),
        (lambda c: c["trainer"].update(validate_before_resume=True), "train", "trainer.validate_before_resume only applies when resuming"),
        (lambda c: None, "test", "resume_from: testing needs a checkpoint"),
        (lambda c: c["trainer"].update(strategy="foo"), "train", "trainer.strategy: You selected an invalid strategy name"),
        (lambda c: c.update(loss_name="MSE"), "train", "model_name / loss_name / datasplitter.dataset_class: ChannelGPT with MSE fails on one ChunkDataset window"),
        (lambda c: c["datasplitter"].update(dataset_class="ChunkDatasetContinuous", dataset_kwargs={}), "validate", "ChannelGPT with CrossEntropy fails on one ChunkDatasetContinuous window"),
        (lambda c: c["model_config"].update(n_heads=0), "train", "model_config: ChannelGPT rejected its arguments: n_heads must be at least 1"),
        (lambda c: c.update(dataloader_class="DataLoder"), "validate", "dataloader_class: unknown name 'DataLoder' (did you mean DataLoader?)"),
        (lambda c: c["dataloader"].update(batch_size=True), "train", "dataloader.batch_size: expected a number, got True"),
        (lambda c: c["trainer"].update(max_epochs=True), "train", "trainer.max_epochs: expected int | None, got True"),
    ],
)
def test_bad_config_exits_2_with_one_line(capsys, config_file, change, command, expected):
    code, err = run_cli(capsys, command, str(config_file(change)))
    assert code == 2
    assert len(err) == 1 and err[0].startswith("brain-gen: error: ")
    assert expected in err[0]


def _several_mistakes(config):
    config["lightning"].update(lr="fast", lr_scheduler={"class_name": "CosineAnnealing"})
    config["trainer"].update(max_epoch=2)


def _several_setup_mistakes(config):
    config["lightning"].update(lr_scheduler={"class_name": "CosineAnnealing"})
    config["trainer"].update(accelerator="cuda", callbacks=["EarlyStoping"])
    config.update(resume_from="missing.ckpt")


@pytest.mark.parametrize(
    "change, expected",
    [
        # Schema errors and Trainer-argument errors together: neither hides the other.
        (_several_mistakes, ["lightning.lr: input should be a valid number", "trainer.max_epoch: unknown key (did you mean max_epochs?)"]),
        # Every problem the config alone shows, in one pass before data is read.
        (_several_setup_mistakes, ["lightning.lr_scheduler.class_name: 'CosineAnnealing' is not a scheduler", "resume_from: checkpoint not found:", "trainer.accelerator: `CUDAAccelerator` can not run on your system", "trainer.callbacks.0.class_path: 'EarlyStoping' is not a Lightning callback"]),
        # Two settings the Trainer refuses: each named by its key, one line each.
        (
            lambda c: c["trainer"].update(accelerator="cuda", strategy="foo"),
            ["trainer.strategy: You selected an invalid strategy name", "trainer.accelerator: `CUDAAccelerator` can not run on your system"],
        ),
        (
            lambda c: c["trainer"].update(callbacks=[{"class_path": "LearningRateMonitor", "init_args": {"interval": "step", "log_moment": True}}, "EarlyStoping"]),
            [
                "trainer.callbacks.0.init_args.interval: not an argument of LearningRateMonitor",
                "trainer.callbacks.0.init_args.log_moment: not an argument of LearningRateMonitor (did you mean log_momentum?)",
                "trainer.callbacks.1.class_path: 'EarlyStoping' is not a Lightning callback (did you mean EarlyStopping?)",
            ],
        ),
    ],
)
def test_every_problem_gets_its_own_line(capsys, config_file, change, expected):
    code, err = run_cli(capsys, "train", str(config_file(change)))
    assert code == 2
    assert len(err) == len(expected) and all(line.startswith("brain-gen: error: ") for line in err)
    for line, text in zip(err, expected):
        assert text in line
    assert not (config_file().parent / "runs").exists()


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[np.nan] * 4] * 4, np.float32), "contains NaN or Inf"),
        (np.ones((3, 100), np.float32), "shape (3, 100) does not match meta.json's 4 channels"),
    ],
)
def test_bad_data_exits_2_with_one_line_naming_the_file(capsys, config_file, tiny_dataset, array, expected):
    chunk = corrupt_first_chunk(tiny_dataset, array)
    code, err = run_cli(capsys, "train", str(config_file()))
    assert code == 2 and len(err) == 1
    assert str(chunk) in err[0] and expected in err[0]
    # Stopped before a run folder was made.
    assert not list((tiny_dataset.parent / "runs").glob("logs/version_*"))


def test_missing_and_broken_config_files(capsys, tmp_path):
    code, err = run_cli(capsys, "train", str(tmp_path / "none.yaml"))
    assert code == 2 and err == [f"brain-gen: error: config: file not found: {tmp_path / 'none.yaml'}"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {max_epochs: 2\n")
    code, err = run_cli(capsys, "validate", str(broken))
    assert code == 2 and len(err) == 1 and "invalid YAML" in err[0]


def test_bad_override_and_usage_errors(capsys, config_file):
    code, err = run_cli(capsys, "train", str(config_file()), "--set", "trainer.max_epochs")
    assert code == 2 and len(err) == 1 and "--set expects KEY=VALUE" in err[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'fly'" in err[0]


def test_debug_shows_the_traceback(capsys, config_file):
    from brain_gen.config.errors import ConfigError

    path = config_file(lambda c: c["lightning"].update(lr_sheduler={}))
    with pytest.raises(ConfigError):
        main(["train", str(path), "--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", "validate", str(path)])


def brain_gen_command(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `brain-gen` console script, as a user would."""
    script = Path(sys.executable).with_name("brain-gen")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)


def test_installed_command_prints_one_line_and_exits_2(tmp_path):
    result = brain_gen_command("validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"brain-gen: error: config: file not found: {tmp_path / 'missing.yaml'}"]
    assert result.stdout == ""


def test_installed_command_bad_data_after_trainer_setup_is_still_one_line(config_file, tiny_dataset):
    # The default tune_batch_size and Lightning's own status lines must not reach stderr before the error.
    chunk = corrupt_first_chunk(tiny_dataset, np.full((4, 100), np.inf, np.float32))
    path = config_file(lambda c: c["trainer"].pop("tune_batch_size"))
    result = brain_gen_command("train", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert str(chunk) in result.stderr and "contains NaN or Inf" in result.stderr


def test_demo_generates_data_trains_and_never_overwrites(tmp_path, capsys):
    quick = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=2", "--set", "trainer.limit_val_batches=2"]
    assert main(["demo", "--out", str(tmp_path / "demo"), *quick]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "demo" / "runs" / "logs" / "version_0"
    assert f"TensorBoard logs: {run_dir}" in out and f"checkpoints:      {run_dir / 'checkpoints'}" in out
    assert f"tensorboard --logdir {tmp_path / 'demo' / 'runs'}" in out and "final val/loss:" in out
    assert len(list((tmp_path / "demo" / "data").iterdir())) == 10
    assert list((run_dir / "checkpoints").glob("last-checkpoint*.ckpt"))

    chunk = next((tmp_path / "demo" / "data").glob("*/0.npy"))
    stamp = chunk.stat().st_mtime_ns
    assert main(["demo", "--out", str(tmp_path / "demo"), *quick]) == 0
    assert "generating the demo dataset" not in capsys.readouterr().out
    assert chunk.stat().st_mtime_ns == stamp and (run_dir.parent / "version_1" / "config.yaml").is_file()


def test_unusable_paths_exit_2_before_any_run_folder(capsys, config_file, tmp_path):
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("just text")
    code, err = run_cli(capsys, "train", str(config_file(lambda c: c.update(resume_from=str(not_a_checkpoint)))))
    assert code == 2 and err == [f"brain-gen: error: resume_from: {not_a_checkpoint} is not a PyTorch checkpoint (or it is truncated); point it at a .ckpt file"]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli(capsys, "train", str(config_file(lambda c: c.update(save_dir=str(blocker / "runs")))))
    assert code == 2 and err == [f"brain-gen: error: save_dir: {blocker} is a file, not a folder; choose another path"]
    assert not (tmp_path / "runs").exists()


def test_validate_keeps_lightnings_accelerator_lines_and_drops_its_advertisement(tmp_path, tiny_dataset, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", tiny_dataset)))
    assert main(["validate", str(config_path)]) == 0
    captured = capsys.readouterr()
    assert "GPU available" in captured.out and "config ok" in captured.out
    assert "litlogger" not in captured.out + captured.err and "💡" not in captured.out + captured.err


def test_tokenizer_text_reads_the_data_without_the_trainers_accelerator(capsys, tmp_path, tiny_dataset):
    # A config written for a GPU machine trains a tokenizer on a machine without one.
    config = tiny_config(tmp_path / "runs", tiny_dataset, datasplitter={"dataset_class": "BPEDataset", "dataset_kwargs": {"max_val": 4.0, "group_size": 5}})
    config["trainer"]["accelerator"] = "cuda"
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["tokenizer-text", str(path), "--out", str(tmp_path / "tok"), "--vocab-size", "300", "--max-windows", "10"]) == 0
    assert (tmp_path / "tok" / "tokenizer").exists()
    # Training with it still needs the accelerator.
    code, err = run_cli(capsys, "train", str(path))
    assert code == 2 and len(err) == 1 and "trainer.accelerator: `CUDAAccelerator` can not run on your system" in err[0]


def test_a_users_own_checkpoint_io_is_refused_before_data_is_read(tmp_path, tiny_dataset):
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    config = tiny_config(tmp_path / "runs", tiny_dataset)
    config["trainer"]["plugins"] = [TorchCheckpointIO()]
    with pytest.raises(ConfigError, match="trainer.plugins: brain-gen writes checkpoints through its own CheckpointIO"):
        ExperimentDL(config)
    # Without checkpoints of its own, brain-gen leaves the plugin to the user.
    config["trainer"]["enable_checkpointing"] = False
    ExperimentDL(config)

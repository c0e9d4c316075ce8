"""A catalogue of bad inputs, each tried through the command line as a new user would.

Every case must end the same way: exit status 2, one stderr line per problem, each
naming its key or file, no traceback, and nothing of an earlier run changed (its
folder hashes the same, and no new run folder appears).

A case is (command-line arguments, a change to a working config or dataset, and the
fragment each expected line names). Changes are functions of (config, Workspace).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from brain_gen.cli import main
from brain_gen.demo import make_synthetic_dataset
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config


@dataclass
class Workspace:
    """What a case may use: a trained run, its dataset, and a scratch folder of its own."""

    root: Path
    dataset: Path
    runs: Path
    checkpoint: Path
    scratch: Path

    def dataset_copy(self) -> Path:
        copied = self.scratch / "data"
        shutil.copytree(self.dataset, copied)
        return copied

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.scratch / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("bad_inputs")
    dataset = make_synthetic_dataset(root / "data", n_sessions=6, n_channels=4, sfreq=50.0, session_seconds=40.0, chunk_seconds=20.0, seed=1)
    config = tiny_config(root / "runs", dataset, trainer={"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1})
    ExperimentDL(config).train()
    checkpoint = next((root / "runs" / "logs" / "version_0" / "checkpoints").glob("last-*"))
    return Workspace(root, dataset, root / "runs", checkpoint, root)


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


Change = Callable[[dict, Workspace], Any]


@dataclass
class Case:
    id: str
    change: Change | None  # edits the config in place (or returns argv to use instead)
    names: list[str]  # the key or file each stderr line names, in order
    command: str = "train"


def _set(path: str, value: Any) -> Change:
    """Set a dotted key of the config (creating sections on the way)."""

    def change(config: dict, space: Workspace) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value(space) if callable(value) else value

    return change


def _drop(path: str) -> Change:
    def change(config: dict, space: Workspace) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]

    return change


def _both(*changes: Change) -> Change:
    def change(config: dict, space: Workspace) -> Any:
        for one in changes:
            one(config, space)

    return change


def _broken_dataset(breaks: Callable[[Path], Any]) -> Change:
    """Train on a copy of the dataset that ``breaks`` damages."""

    def change(config: dict, space: Workspace) -> None:
        root = space.dataset_copy()
        breaks(root)
        config["datasplitter"]["dataset_root"] = str(root)

    return change


def _session(root: Path, index: int = 0) -> Path:
    return sorted(path for path in root.iterdir() if path.is_dir())[index]


def _write_pickled_chunk(root: Path) -> None:
    np.save(_session(root) / "0.npy", np.array([{"payload": 1}], dtype=object), allow_pickle=True)


def _truncate_chunk(root: Path) -> None:
    chunk = _session(root) / "1.npy"
    chunk.write_bytes(chunk.read_bytes()[:200])


def _edit_meta(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def breaks(root: Path) -> None:
        meta_path = _session(root) / "meta.json"
        meta = json.loads(meta_path.read_text())
        edit(meta)
        meta_path.write_text(json.dumps(meta))

    return breaks


def _checkpoint_of_other_shape(config: dict, space: Workspace) -> None:
    config["resume_from"] = str(space.checkpoint)
    config["model_config"]["d_model"] = 16


def _plain_state_dict(config: dict, space: Workspace) -> None:
    state = torch.load(space.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    path = space.scratch / "weights.ckpt"
    torch.save({key.removeprefix("model."): value for key, value in state.items()}, path)
    config["resume_from"] = str(path)


class _Payload:
    def __reduce__(self):
        return (print, ("the payload ran",))


def _pickled_checkpoint(key: str) -> Change:
    def change(config: dict, space: Workspace) -> None:
        path = space.scratch / "trapped.ckpt"
        torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "x": _Payload()}, path)
        config[key] = str(path)

    return change


def _torn_checkpoint(config: dict, space: Workspace) -> None:
    path = space.scratch / "torn.ckpt"
    path.write_bytes(space.checkpoint.read_bytes()[:1000])
    config["resume_from"] = str(path)


def _empty_save_dir_resume_last(config: dict, space: Workspace) -> None:
    config["save_dir"] = str(space.scratch / "empty_runs")
    config["resume_from"] = "last"


def _argv(*arguments: str | Callable[[Workspace, Path], str]) -> Change:
    """A case given as command-line arguments (the config path is the second argument's default)."""

    def change(config: dict, space: Workspace) -> list[str]:
        return [argument(space, space.scratch / "config.yaml") if callable(argument) else argument for argument in arguments]

    return change


CONFIG = lambda space, path: str(path)  # noqa: E731  (the case's config file)


CASES = [
    # ---------------------------------------------------------------- top level
    Case("unknown-top-level-key", _set("modle_name", "ChannelGPT"), ["modle_name"]),
    Case("missing-model-name", _drop("model_name"), ["model_name"]),
    Case("unknown-model", _set("model_name", "ChannelGTP"), ["model_name"]),
    Case("model-import-path-missing", _set("model_name", "no_such_package.models:Net"), ["model_name"]),
    Case("unknown-loss", _set("loss_name", "CrossEntropi"), ["loss_name"]),
    Case("seed-not-a-number", _set("seed", "abc"), ["seed"]),
    Case("seed-a-fraction", _set("seed", 1.5), ["seed"]),
    Case("missing-save-dir", _drop("save_dir"), ["save_dir"]),
    Case("unknown-loader-class", _set("dataloader_class", "MyLoader"), ["dataloader_class"]),
    Case("model-config-unknown-argument", _set("model_config.d_modle", 32), ["model_config.d_modle"]),
    Case("model-config-bad-value", _set("model_config.n_heads", 3), ["model_config"]),
    Case("model-config-file-missing", _set("model_config", "no_such_model.yaml"), ["model_config"]),
    Case("loss-unknown-argument", _set("loss.smoothing", 0.1), ["loss"]),
    Case("init-and-resume-together", _both(_set("init_from", lambda s: str(s.checkpoint)), _set("resume_from", lambda s: str(s.checkpoint))), ["init_from"]),
    # ---------------------------------------------------------------- resume paths
    Case("resume-file-missing", _set("resume_from", "no_such.ckpt"), ["resume_from"]),
    Case("resume-not-a-checkpoint", _set("resume_from", lambda s: str(s.file("notes.ckpt", "just text"))), ["resume_from"]),
    Case("resume-torn-checkpoint", _torn_checkpoint, ["resume_from"]),
    Case("resume-other-shape", _checkpoint_of_other_shape, ["resume_from"]),
    Case("resume-other-model", _both(_set("resume_from", lambda s: str(s.checkpoint)), _set("model_name", "WaveNet"), _set("model_config", {"vocab_size": 256, "num_channels": 4})), ["resume_from"]),
    Case("resume-plain-state-dict", _plain_state_dict, ["resume_from"]),
    Case("resume-pickled-objects", _pickled_checkpoint("resume_from"), ["resume_from"]),
    Case("resume-last-without-runs", _empty_save_dir_resume_last, ["resume_from"]),
    Case("init-from-missing", _set("init_from", "no_such.pt"), ["init_from"]),
    Case("init-from-pickled-objects", _pickled_checkpoint("init_from"), ["init_from"]),
    Case("init-from-other-shape", _both(_set("init_from", lambda s: str(s.checkpoint)), _set("model_config.d_model", 16)), ["init_from"]),
    Case("test-without-checkpoint", None, ["resume_from"], command="test"),
    # ---------------------------------------------------------------- datasplitter
    Case("dataset-root-missing", _set("datasplitter.dataset_root", "no_such_folder"), ["datasplitter.dataset_root"]),
    Case("dataset-root-empty", _set("datasplitter.dataset_root", lambda s: str((s.scratch / "empty").mkdir() or s.scratch / "empty")), ["datasplitter.dataset_root"]),
    Case("example-seconds-negative", _set("datasplitter.example_seconds", -1.0), ["datasplitter.example_seconds"]),
    Case("example-seconds-longer-than-chunks", _set("datasplitter.example_seconds", 30.0), ["datasplitter.example_seconds"]),
    Case("val-ratio-above-one", _set("datasplitter.val_ratio", 1.5), ["datasplitter.val_ratio"]),
    Case("ratios-leave-no-training", _both(_set("datasplitter.val_ratio", 0.6), _set("datasplitter.test_ratio", 0.5)), ["datasplitter.val_ratio"]),
    Case("unknown-dataset-class", _set("datasplitter.dataset_class", "ChunkDatasett"), ["datasplitter.dataset_class"]),
    Case("dataset-kwargs-unknown-argument", _set("datasplitter.dataset_kwargs.max_value", 4.0), ["datasplitter.dataset_kwargs"]),
    Case("misspelled-datasplitter-key", _set("datasplitter.exmaple_seconds", 1.0), ["datasplitter.exmaple_seconds"]),
    Case("unknown-split-strategy", _set("datasplitter.split_strategy", "galaxy"), ["datasplitter.split_strategy"]),
    Case("overlap-not-shorter-than-window", _set("datasplitter.overlap_seconds", 1.0), ["datasplitter.overlap_seconds"]),
    # ---------------------------------------------------------------- data on disk
    Case("pickled-chunk", _broken_dataset(_write_pickled_chunk), ["0.npy"]),
    Case("truncated-chunk", _broken_dataset(_truncate_chunk), ["1.npy"]),
    Case("meta-not-json", _broken_dataset(lambda root: (_session(root) / "meta.json").write_text("{not json")), ["meta.json"]),
    Case("meta-missing-sfreq", _broken_dataset(_edit_meta(lambda meta: meta.pop("sfreq"))), ["meta.json"]),
    Case("meta-channel-count-differs", _broken_dataset(_edit_meta(lambda meta: meta["ch_names"].pop())), ["sub-00_ses-01"]),
    Case("sampling-rates-differ", _broken_dataset(_edit_meta(lambda meta: meta.update(sfreq=100.0))), ["Hz"]),
    Case("chunks-without-meta", _broken_dataset(lambda root: (_session(root) / "meta.json").unlink()), ["sub-00_ses-01"]),
    # ---------------------------------------------------------------- dataloader
    Case("batch-size-zero", _set("dataloader.batch_size", 0), ["dataloader.batch_size"]),
    Case("batch-size-text", _set("dataloader.batch_size", "eight"), ["dataloader.batch_size"]),
    Case("num-workers-negative", _set("dataloader.num_workers", -1), ["dataloader.num_workers"]),
    Case("mixup-key-without-mixup-loader", _set("dataloader.mixup_alpha", 0.2), ["dataloader.mixup_alpha"]),
    Case("tokenizer-path-without-text-loader", _set("dataloader.tokenizer_path", "tok"), ["dataloader.tokenizer_path"]),
    Case("text-loader-without-tokenizer", _set("dataloader_class", "TextDataLoader"), ["dataloader.tokenizer_path"]),
    Case("misspelled-dataloader-key", _set("dataloader.batchsize", 8), ["dataloader.batchsize"]),
    Case("mixup-on-integer-codes", _both(_set("dataloader_class", "MixupDataLoader"), _set("dataloader.mixup_alpha", 0.2)),
         ["datasplitter.dataset_class", "dataloader.num_classes"]),
    Case("persistent-workers-without-workers", _set("dataloader.persistent_workers", True), ["dataloader.persistent_workers"]),
    # ---------------------------------------------------------------- lightning
    Case("lr-missing", _drop("lightning.lr"), ["lightning.lr"]),
    Case("lr-negative", _set("lightning.lr", -0.1), ["lightning.lr"]),
    Case("weight-decay-text", _set("lightning.weight_decay", "none"), ["lightning.weight_decay"]),
    Case("scheduler-unknown-class", _set("lightning.lr_scheduler", {"class_name": "CosineAnealingLR", "T_max": 4}), ["lightning.lr_scheduler.class_name"]),
    Case("scheduler-misspelled-interval", _set("lightning.lr_scheduler", {"class_name": "StepLR", "step_size": 2, "intervall": "step"}), ["lightning.lr_scheduler.intervall"]),
    Case("scheduler-interval-month", _set("lightning.lr_scheduler", {"class_name": "StepLR", "step_size": 2, "interval": "month"}), ["lightning.lr_scheduler.interval"]),
    Case("scheduler-missing-argument", _set("lightning.lr_scheduler", {"class_name": "StepLR"}), ["lightning.lr_scheduler"]),
    Case("scheduler-monitor-not-logged", _set("lightning.lr_scheduler", {"class_name": "ReduceLROnPlateau", "monitor": "val/auc"}), ["lightning.lr_scheduler.monitor"]),
    Case("warmup-negative", _set("lightning.lr_warmup", -5), ["lightning.lr_warmup"]),
    Case("warmup-with-plateau", _both(_set("lightning.lr_warmup", 5), _set("lightning.lr_scheduler", {"class_name": "ReduceLROnPlateau", "monitor": "val/loss"})), ["lightning.lr_warmup"]),
    Case("plateau-without-monitor", _set("lightning.lr_scheduler", {"class_name": "ReduceLROnPlateau"}), ["lightning.lr_scheduler.monitor"]),
    Case("misspelled-lightning-key", _set("lightning.learning_rate", 0.1), ["lightning.learning_rate"]),
    Case("resume-context-unknown-key", _set("lightning.resume_context", {"context_size": 10}), ["lightning.resume_context"]),
    # ---------------------------------------------------------------- trainer
    Case("gpu-without-cuda", _set("trainer.accelerator", "gpu"), ["trainer.accelerator"]),
    Case("max-epochs-text", _set("trainer.max_epochs", "ten"), ["trainer.max_epochs"]),
    Case("misspelled-trainer-argument", _set("trainer.max_epoch", 3), ["trainer.max_epoch"]),
    Case("unknown-strategy", _set("trainer.strategy", "nonsense"), ["trainer.strategy"]),
    Case("unknown-precision", _set("trainer.precision", "17"), ["trainer.precision"]),
    Case("early-stopping-monitor-not-logged", _set("trainer.early_stopping", {"monitor": "val/acc"}), ["trainer.early_stopping.monitor"]),
    Case("callback-class-missing", _set("trainer.callbacks", [{"class_path": "no_such.module:Callback"}]), ["trainer.callbacks.0.class_path"]),
    Case("callback-unknown-argument", _set("trainer.callbacks", [{"class_path": "LearningRateMonitor", "init_args": {"interval": "step"}}]), ["trainer.callbacks.0.init_args"]),
    Case("checkpoint-cadence-zero", _set("trainer.checkpoint_cadence_epochs", 0), ["trainer.checkpoint_cadence_epochs"]),
    Case("fsdp-state-dict-type-unknown", _set("trainer.fsdp_state_dict_type", "half"), ["trainer.fsdp_state_dict_type"]),
    Case("stop-on-non-finite-text", _set("trainer.stop_on_non_finite", "sometimes"), ["trainer.stop_on_non_finite"]),
    # ---------------------------------------------------------------- eval_runner and prepare
    Case("misspelled-eval-runner-key", _set("eval_runner", {"enabled": True, "metric_split": "val"}), ["eval_runner.metric_split"]),
    Case("eval-context-not-shorter", _set("eval_runner", {"enabled": True, "example_sampler": {"context_length_s": 4.0, "total_length_s": 3.0}}), ["eval_runner.example_sampler.total_length_s"]),
    Case("eval-sampling-unknown", _set("eval_runner", {"enabled": True, "generator": {"sampling": {"strategy": "beam"}}}), ["eval_runner.generator.sampling.strategy"]),
    Case("eval-split-unknown", _set("eval_runner", {"enabled": True, "example_sampler": {"split": "training"}}), ["eval_runner.example_sampler.split"]),
    Case("prepare-unknown-key", _set("prepare", {"resampel": 100}), ["prepare.resampel"]),
    # ---------------------------------------------------------------- several problems at once: one line each
    Case("three-problems", _both(_set("dataloader.batch_size", 0), _set("lightning.lr", -1.0), _set("trainer.max_epochs", "ten")),
         ["dataloader.batch_size", "lightning.lr", "trainer.max_epochs"]),
    # ---------------------------------------------------------------- the command line
    Case("unknown-command", _argv("trian", CONFIG), ["trian"]),
    Case("no-config-argument", _argv("train"), ["config"]),
    Case("config-file-missing", _argv("train", "no_such_config.yaml"), ["no_such_config.yaml"]),
    Case("config-not-yaml", _argv("train", lambda s, p: str(s.file("broken.yaml", "a: [1, 2\nb: 3"))), ["broken.yaml"]),
    Case("config-a-list", _argv("train", lambda s, p: str(s.file("list.yaml", "- 1\n- 2\n"))), ["list.yaml"]),
    Case("set-without-equals", _argv("train", CONFIG, "--set", "dataloader.batch_size"), ["--set"]),
    Case("set-unknown-key", _argv("train", CONFIG, "--set", "dataloader.batchsize=4"), ["dataloader.batchsize"]),
    Case("set-bad-value", _argv("train", CONFIG, "--set", "trainer.max_epochs=many"), ["trainer.max_epochs"]),
    Case("vocab-size-zero", _argv("tokenizer-text", CONFIG, "--vocab-size", "0"), ["--vocab-size"]),
    Case("eval-checkpoint-missing", _argv("eval", CONFIG, "--ckpt", "no_such.ckpt"), ["no_such.ckpt"]),
    Case("generate-seconds-negative", _argv("generate", CONFIG, "--ckpt", "last", "--seconds", "-2", "--out", "x.fif"), ["--seconds"]),
    Case("prepare-input-missing", _argv("prepare", "no_such_recording.fif", "--out", lambda s, p: str(s.scratch / "prepared")), ["no_such_recording.fif"]),
]


def test_the_catalogue_covers_at_least_sixty_cases():
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_per_problem_and_changes_nothing(case, workspace, tmp_path, capsys):
    space = Workspace(workspace.root, workspace.dataset, workspace.runs, workspace.checkpoint, tmp_path)
    config = copy.deepcopy(tiny_config(workspace.runs, workspace.dataset, trainer={"max_epochs": 1}))
    argv = case.change(config, space) if case.change is not None else None
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    argv = argv or [case.command, str(config_path)]
    previous_run = workspace.runs / "logs" / "version_0"
    before = folder_digest(previous_run)
    runs_before = sorted(path.name for path in (workspace.runs / "logs").iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths of a case resolve in its own folder
    try:
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's usage errors
            status = exit.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert "Traceback" not in err
    assert len(lines) == len(case.names), lines
    for line, name in zip(lines, case.names):
        assert line.startswith("brain-gen") and "error" in line and name in line, (name, line)
    assert folder_digest(previous_run) == before
    assert sorted(path.name for path in (workspace.runs / "logs").iterdir()) == runs_before


def test_the_installed_command_reports_as_main_does(workspace, tmp_path):
    """The same checks through the `brain-gen` executable itself, in a process of its own."""
    import subprocess
    import sys

    config = tiny_config(workspace.runs, workspace.dataset, trainer={"max_epochs": "ten"})
    config["dataloader"]["batch_size"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    before = folder_digest(workspace.runs / "logs" / "version_0")
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and "dataloader.batch_size" in lines[0] and "trainer.max_epochs" in lines[1], lines
    assert folder_digest(workspace.runs / "logs" / "version_0") == before

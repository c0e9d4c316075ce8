"""Distributed runs: one run folder, one writer, one console, whatever the world size."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from brain_gen.cli import main
from brain_gen.config.loading import load_config
from brain_gen.dataset.splitter import DataSplitter
from brain_gen.demo import make_evoked_dataset
from brain_gen.distributed import launched_as_rank_zero
from tests.conftest import scalars, tiny_config, write_config

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


@pytest.fixture
def single_process(monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_any_launchers_rank_variable_marks_a_process_other_than_rank_zero(monkeypatch, single_process, variable):
    assert launched_as_rank_zero()
    monkeypatch.setenv(variable, "0")
    assert launched_as_rank_zero()
    monkeypatch.setenv(variable, "1")
    assert not launched_as_rank_zero()


def test_only_rank_zero_writes_the_split_cache_and_every_rank_splits_alike(tmp_path, tiny_dataset, monkeypatch, single_process):
    config = load_config(tiny_config(tmp_path / "runs", tiny_dataset)).datasplitter
    monkeypatch.setenv("LOCAL_RANK", "1")
    other_rank = DataSplitter(config, cache_dir=tmp_path / "cache").split()
    assert not (tmp_path / "cache").exists()
    monkeypatch.delenv("LOCAL_RANK")
    rank_zero = DataSplitter(config, cache_dir=tmp_path / "cache").split()
    assert len(list((tmp_path / "cache").glob("sessions-*.json"))) == 1
    assert {name: split.sessions for name, split in other_rank.items()} == {name: split.sessions for name, split in rank_zero.items()}


def test_other_ranks_print_errors_only(tmp_path, tiny_dataset, monkeypatch, capsys, single_process):
    path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == ""
    bad = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset, model_name="ChanelGPT"))
    assert main(["validate", str(bad)]) == 2
    assert "model_name: unknown name 'ChanelGPT'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_ddp_run_has_one_folder_one_set_of_checkpoints_and_one_console(tmp_path, tiny_dataset):
    trainer = {"max_epochs": 1, "strategy": "ddp", "devices": 2, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1}
    path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer))
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "runs" / "logs").iterdir())
    assert [run.name for run in runs] == ["version_0"]
    assert sorted(path.name.split("-epoch")[0] for path in (runs[0] / "checkpoints").iterdir()) == ["best-checkpoint", "last-checkpoint"]
    assert (runs[0] / "config.yaml").is_file() and "val/loss" in scalars(runs[0])
    # Rank one's status lines and summary would repeat rank zero's.
    assert result.stdout.count("logs and checkpoints:") == 1 and result.stdout.count("training with batch_size") == 1
    assert result.stdout.count("Initializing distributed") == 1


@pytest.mark.slow
def test_a_failed_checkpoint_write_on_rank_zero_stops_every_rank_with_the_same_message(tmp_path, tiny_dataset):
    trainer = {
        "max_epochs": 4, "strategy": "ddp", "devices": 2, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1,
        "callbacks": [{"class_path": "tests.user_classes:FullDiskCheckpoints"}],
    }
    path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer))
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(path)]
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    # Without the shared decision, rank one would wait at its next all-reduce until the timeout.
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 4, result.stderr[-3000:]
    # Each rank stops on the same error: one line each, no traceback.
    message = "brain-gen: error: writing a checkpoint failed: [Errno 28] No space left on device (test); the earlier checkpoints are intact"
    assert result.stderr.count(message) == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]


def _train_until_sigterm(tmp_path: Path, config: dict, environment: dict | None = None, signum: int = signal.SIGTERM) -> tuple[subprocess.CompletedProcess, str]:
    """Start `brain-gen train`, send SIGTERM (or ``signum``) once training runs, and wait for the command to end."""
    path = write_config(tmp_path, config)
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    for line in process.stdout:
        if "training with batch_size" in line:
            break
    time.sleep(1.0)  # some steps in
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err), str(path)


@pytest.mark.slow
def test_sigterm_stops_after_the_step_with_a_last_checkpoint_and_the_run_resumes(tmp_path, tiny_dataset):
    # min_epochs would keep a stop through trainer.should_stop waiting for epoch 1000.
    trainer = {"max_epochs": 1000, "min_epochs": 1000, "limit_train_batches": None, "limit_val_batches": None}
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer)
    result, _ = _train_until_sigterm(tmp_path, config)
    assert result.returncode == 143, result.stderr[-2000:]
    stopped = [line for line in result.stderr.splitlines() if "preempted (SIGTERM) at step" in line]
    assert len(stopped) == 1
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    last = list((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-checkpoint*.ckpt"))
    assert len(last) == 1
    state = torch.load(last[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == step > 0
    # The job is started again: it continues from that checkpoint and finishes.
    epochs_done = state["epoch"] + 1
    resumed = write_config(tmp_path, {**config, "resume_from": "last", "trainer": {**trainer, "max_epochs": epochs_done + 1, "min_epochs": None}})
    finished = subprocess.run([str(Path(sys.executable).with_name("brain-gen")), "train", str(resumed)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    final = list((tmp_path / "runs" / "logs" / "version_1" / "checkpoints").glob("last-checkpoint*.ckpt"))
    assert torch.load(final[0], map_location="cpu", weights_only=False)["global_step"] > step


@pytest.mark.slow
def test_sigterm_under_ddp_stops_every_rank_at_the_same_step_with_one_last_checkpoint(tmp_path, tiny_dataset):
    trainer = {"max_epochs": 1000, "strategy": "ddp", "devices": 2, "accelerator": "cpu", "limit_train_batches": None, "limit_val_batches": 1}
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer)
    result, _ = _train_until_sigterm(tmp_path, config)
    assert result.returncode == 143, result.stderr[-3000:]
    assert [run.name for run in (tmp_path / "runs" / "logs").iterdir()] == ["version_0"]
    last = list((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-checkpoint*.ckpt"))
    assert len(last) == 1
    step = torch.load(last[0], map_location="cpu", weights_only=False)["global_step"]
    # Every rank stopped at the step the checkpoint holds: each says so, with the same step.
    stopped = [line for line in result.stderr.splitlines() if "preempted (SIGTERM) at step" in line]
    assert stopped and all(f"at step {step};" in line for line in stopped), result.stderr[-3000:]
    # Started again, both ranks continue from that step and finish.
    epochs_done = torch.load(last[0], map_location="cpu", weights_only=False)["epoch"] + 1
    resumed = {**config, "resume_from": "last", "trainer": {**trainer, "max_epochs": epochs_done + 1}}
    _brain_gen(write_config(tmp_path, resumed))
    final = next((tmp_path / "runs" / "logs" / "version_1" / "checkpoints").glob("last-checkpoint*.ckpt"))
    assert torch.load(final, map_location="cpu", weights_only=False)["global_step"] > step


@pytest.mark.slow
def test_ddp_ranks_train_on_disjoint_shards_that_cover_the_training_windows_and_resume_together(tmp_path, tiny_dataset):
    record = tmp_path / "seen"
    record.mkdir()
    trainer = {"max_epochs": 1, "strategy": "ddp", "devices": 2, "accelerator": "cpu", "limit_train_batches": None, "limit_val_batches": 1}
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer)
    config["datasplitter"] = {**config["datasplitter"], "dataset_class": "tests.user_classes:RecordingChunkDataset", "dataset_kwargs": {"record_dir": str(record), "max_val": 4.0}}
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    brain_gen = str(Path(sys.executable).with_name("brain-gen"))
    result = subprocess.run([brain_gen, "train", str(write_config(tmp_path, config))], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    # The training split is the largest; the trial step before training reads windows 0 and 1 on each rank.
    windows = max(int(path.name.split("-")[0]) for path in record.iterdir())
    seen = {rank: [int(line) for line in (record / f"{windows}-rank{rank}.txt").read_text().split()][2:] for rank in (0, 1)}
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(windows))
    # Resumed, both ranks continue from the checkpoint's step.
    first = torch.load(next((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-*.ckpt")), map_location="cpu", weights_only=False)
    resumed = {**config, "resume_from": "last", "trainer": {**trainer, "max_epochs": 2}}
    result = subprocess.run([brain_gen, "train", str(write_config(tmp_path, resumed))], capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(run.name for run in (tmp_path / "runs" / "logs").iterdir()) == ["version_0", "version_1"]
    second = torch.load(next((tmp_path / "runs" / "logs" / "version_1" / "checkpoints").glob("last-*.ckpt")), map_location="cpu", weights_only=False)
    assert second["global_step"] == 2 * first["global_step"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun_two_nodes(config_path: Path) -> list[subprocess.CompletedProcess]:
    """Run `brain-gen train` as two one-process nodes over loopback, as two torchrun commands would on two hosts."""
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    environment = {name: value for name, value in os.environ.items() if name not in RANK_VARIABLES}
    processes = [
        subprocess.Popen(
            [str(bin_dir / "torchrun"), "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
             "--master-addr", "127.0.0.1", "--master-port", str(port), str(bin_dir / "brain-gen"), "train", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        )
        for node in (0, 1)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_nodes_started_by_torchrun_make_one_run_and_resume(tmp_path, tiny_dataset):
    trainer = {"max_epochs": 1, "strategy": "ddp", "num_nodes": 2, "devices": 1, "accelerator": "cpu", "limit_train_batches": 3, "limit_val_batches": 1}
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer)
    results = _torchrun_two_nodes(write_config(tmp_path, config))
    assert [result.returncode for result in results] == [0, 0], results[0].stderr[-2000:] + results[1].stderr[-2000:]
    # Lightning read torchrun's environment: one run of two processes, reported by node zero alone.
    assert "Starting with 2 processes" in results[0].stdout and results[1].stdout == ""
    logs = tmp_path / "runs" / "logs"
    assert [run.name for run in logs.iterdir()] == ["version_0"]
    checkpoints = sorted(path.name for path in (logs / "version_0" / "checkpoints").iterdir())
    assert checkpoints == ["best-checkpoint-epoch=0-step=3.ckpt", "last-checkpoint-epoch=0-step=3.ckpt"]
    # Started again with resume_from: last, both nodes continue from step 3.
    resumed = {**config, "resume_from": "last", "trainer": {**trainer, "max_epochs": 2}}
    results = _torchrun_two_nodes(write_config(tmp_path, resumed))
    assert [result.returncode for result in results] == [0, 0], results[0].stderr[-2000:] + results[1].stderr[-2000:]
    assert sorted(run.name for run in logs.iterdir()) == ["version_0", "version_1"]
    assert "last-checkpoint-epoch=1-step=6.ckpt" in [path.name for path in (logs / "version_1" / "checkpoints").iterdir()]


@pytest.mark.slow
def test_the_ddp_test_report_covers_every_test_event_once_as_one_process_does(tmp_path):
    from tests.eval.test_decoding import classification_config

    data = make_evoked_dataset(tmp_path / "evoked", n_sessions=10, session_seconds=39.0, seed=4)
    splits = {"split_strategy": "session", "test_ratio": 0.3}  # three sessions of 37 events: an odd count
    config = classification_config(tmp_path, data, trainer={"max_epochs": 2}, dataloader={"batch_size": 16}, datasplitter=splits)
    path = write_config(tmp_path, config)
    assert main(["train", str(path)]) == 0
    best = next((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("best-checkpoint*.ckpt"))
    assert main(["test", str(path), "--set", f"resume_from={best}"]) == 0
    ddp = ["--set", "trainer.strategy=ddp", "--set", "trainer.devices=2"]
    result = subprocess.run([str(Path(sys.executable).with_name("brain-gen")), "test", str(path), "--set", f"resume_from={best}", *ddp],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = (tmp_path / "runs" / "logs" / "version_1"), (tmp_path / "runs" / "logs" / "version_2")
    rows = {folder: (folder / "test_predictions.csv").read_text().splitlines() for folder in (one, two)}
    # Same rows in the same (dataset) order: each event once, though the sampler repeated some to even the shares.
    assert rows[one] == rows[two] and len(rows[one]) > 1
    assert (two / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = {folder: json.loads((folder / "test_metrics.json").read_text()) for folder in (one, two)}
    # Two equal shares of an odd count: Lightning's sampler tested one event twice.
    assert metrics[one]["n_samples"] % 2 == 1
    for name in ("accuracy", "f1", "n_samples", "confusion_matrix"):
        assert metrics[one][name] == metrics[two][name], name
    # test/loss is reduced over both processes (a mean over their batches, with the few repeated events).
    assert metrics[two]["loss"] == pytest.approx(metrics[one]["loss"], rel=0.05)


def _brain_gen(config_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(config_path), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_ddp_early_stopping_global_rates_reduced_validation_and_resume_overrides(tmp_path, tiny_dataset):
    ddp = {"strategy": "ddp", "devices": 2, "accelerator": "cpu", "limit_train_batches": 6, "limit_val_batches": None}
    stopping = {"monitor": "val/loss", "patience": 1, "min_delta": 100.0}
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={**ddp, "max_epochs": 6, "early_stopping": stopping})
    path = write_config(tmp_path, config)
    _brain_gen(path)
    logs = tmp_path / "runs" / "logs"
    first = logs / "version_0"
    # Epoch 0 sets the best; epoch 1 misses it by the min_delta: both ranks stop after epoch 1, as one process would.
    assert [path.name for path in (first / "checkpoints").glob("last-*")] == ["last-checkpoint-epoch=1-step=12.ckpt"]

    # perf/samples_per_sec is global: the sum of both ranks' rates, so one step's rate times the time
    # between two logged steps counts the windows of both ranks (2 x batch_size), not rank zero's.
    accumulator = EventAccumulator(str(first), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("perf/samples_per_sec")
    counted = [later.value * (later.wall_time - earlier.wall_time) / 8 for earlier, later in zip(events, events[1:]) if later.step == earlier.step + 1]
    assert 1.5 < float(np.median(counted)) < 2.6, counted

    # Resumed under DDP with a validation first and a new lr: the validation repeats the last one
    # of the first run (same weights, same shards), and training continues at the new lr on both ranks.
    last = next((first / "checkpoints").glob("last-*"))
    resumed = {**config, "resume_from": str(last), "lightning": {**config["lightning"], "resume_lr": 1.0e-4}, "trainer": {**config["trainer"], "max_epochs": 3, "early_stopping": None, "validate_before_resume": True}}
    _brain_gen(write_config(tmp_path, resumed))
    second = scalars(logs / "version_1")
    assert second["val/loss"][0][1] == pytest.approx(scalars(first)["val/loss"][-1][1], abs=1e-6)
    assert [value for _, value in second["lr"]] == pytest.approx([1.0e-4] * len(second["lr"]))

    # The same validation in one process, over the whole split: the reduced value of the two ranks.
    alone = {**resumed, "trainer": {**resumed["trainer"], "strategy": "auto", "devices": 1, "max_epochs": 2}}
    _brain_gen(write_config(tmp_path, alone))
    assert scalars(logs / "version_2")["val/loss"][0][1] == pytest.approx(second["val/loss"][0][1], rel=0.01)


@pytest.mark.slow
def test_sigusr1_under_slurm_writes_the_last_checkpoint_then_hands_the_job_to_lightnings_auto_requeue(tmp_path, tiny_dataset):
    # SLURM cannot run here: its environment variables make Lightning detect a SLURM job,
    # and a stand-in scontrol on the PATH records the requeue it is asked for.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "brain-gen", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    environment = {**os.environ, **slurm, "PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}
    trainer = {"max_epochs": 1000, "limit_train_batches": None, "limit_val_batches": 1}
    result, _ = _train_until_sigterm(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset, trainer=trainer), environment, signal.SIGUSR1)
    assert result.returncode == 143, result.stderr[-3000:]
    stopped = [line for line in result.stderr.splitlines() if "preempted (SIGUSR1) at step" in line]
    assert len(stopped) == 1 and "handed to SLURM's auto-requeue" in stopped[0], result.stderr[-3000:]
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    last = next((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("last-checkpoint*.ckpt"))
    hpc = tmp_path / "runs" / "logs" / "version_0" / "hpc_ckpt_1.ckpt"  # Lightning's own, in the run folder
    for path in (last, hpc):
        assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] == step > 0
    assert last.stat().st_mtime_ns <= hpc.stat().st_mtime_ns
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]

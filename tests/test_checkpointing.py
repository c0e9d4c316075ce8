"""ThreadedModelCheckpoint: frozen snapshots, durable writes, cadence, final saves, resume_from: last."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import brain_gen.training.checkpointing as checkpointing
from brain_gen.config.errors import ConfigError
from brain_gen.training.checkpointing import CheckpointWriteError
from brain_gen.training.train import ExperimentDL
from tests.conftest import tiny_config
from tests.test_training import scalars

QUICK = {"max_epochs": 3, "limit_train_batches": 2, "limit_val_batches": 1}


def checkpoints(run_dir: Path, prefix: str) -> list[str]:
    return sorted(path.name for path in (run_dir / "checkpoints").glob(f"{prefix}*.ckpt"))


def run_dir_of(experiment: ExperimentDL) -> Path:
    return Path(experiment.trainer.logger.log_dir)


def test_snapshot_is_frozen_while_training_continues_during_the_write(tmp_path, tiny_dataset, monkeypatch):
    original = checkpointing.write_atomically
    observations = []

    def slow_write(state, path):
        frozen = {key: value.clone() for key, value in state["state_dict"].items() if torch.is_tensor(value)}
        time.sleep(1.0)  # training runs further steps meanwhile
        live = experiment.lit_model.state_dict()
        observation = {
            "unchanged": all(torch.equal(value, state["state_dict"][key]) for key, value in frozen.items()),
            "live_moved": any(not torch.equal(frozen[key].cpu(), live[key].cpu()) for key in frozen if key in live),
            "step": state["global_step"],
            "path": path,
            "frozen": frozen,
        }
        observations.append(observation)  # the best and last callbacks each write on their own thread
        original(state, path)
        # Read back at once: a later last-checkpoint may replace this file before the test ends.
        observation["written_step"] = torch.load(path, map_location="cpu", weights_only=False)["global_step"]

    monkeypatch.setattr(checkpointing, "write_atomically", slow_write)
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 3, "limit_train_batches": 8, "limit_val_batches": 1})
    experiment = ExperimentDL(config)
    experiment.train()
    assert observations and all(o["unchanged"] for o in observations)
    # The first write overlapped later training steps: the live weights moved on while it ran.
    assert observations[0]["live_moved"]
    # Every file holds the step its snapshot was taken at, not a later one.
    assert [o["written_step"] for o in observations] == [o["step"] for o in observations]
    final = [o for o in observations if Path(o["path"]).exists() and "last-checkpoint" in Path(o["path"]).name][-1]
    saved = torch.load(final["path"], map_location="cpu", weights_only=False)
    assert saved["global_step"] == final["step"]
    assert all(torch.equal(saved["state_dict"][key], value) for key, value in final["frozen"].items())
    assert "checkpoint/blocked_ms" in scalars(run_dir_of(experiment))


def test_a_failed_write_is_raised_on_the_training_thread(tmp_path, tiny_dataset, monkeypatch):
    def failing_write(state, path):
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing, "write_atomically", failing_write)
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK))
    with pytest.raises(CheckpointWriteError, match="disk full"):
        experiment.train()


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.ckpt"
    checkpointing.write_atomically({"x": torch.ones(3)}, target)
    assert torch.equal(torch.load(target)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        checkpointing.write_atomically({"x": Unpicklable()}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    assert torch.equal(torch.load(target)["x"], torch.ones(3))


def mixed_checkpoint_state() -> dict:
    """A snapshot like a real one: large page-aligned tensors, odd sizes, small tensors, nesting."""
    torch.manual_seed(0)
    live = {
        "weight": torch.randn(1024, 1024),
        "odd": torch.randn(333, 1001),
        "bf16": torch.randn(1536, 1024).bfloat16(),
        "steps": torch.arange(7),
        "nested": {"moments": [torch.randn(700, 700), 3], "name": "adamw"},
    }
    return checkpointing.snapshot(live)


def assert_same_state(loaded: dict, state: dict) -> None:
    for key in ("weight", "odd", "bf16", "steps"):
        assert torch.equal(loaded[key], state[key]), key
    assert torch.equal(loaded["nested"]["moments"][0], state["nested"]["moments"][0])
    assert loaded["nested"]["moments"][1] == 3 and loaded["nested"]["name"] == "adamw"


def test_snapshot_tensors_of_a_mebibyte_or_more_start_on_a_page_boundary():
    state = mixed_checkpoint_state()
    assert state["weight"].data_ptr() % checkpointing.DIRECT_IO_ALIGNMENT == 0
    assert state["bf16"].data_ptr() % checkpointing.DIRECT_IO_ALIGNMENT == 0
    assert state["nested"]["moments"][0].data_ptr() % checkpointing.DIRECT_IO_ALIGNMENT == 0


def test_sparse_and_quantized_tensors_snapshot_and_save(tmp_path):
    state = {
        "sparse": torch.eye(4).to_sparse(),
        "quantized": torch.quantize_per_tensor(torch.randn(64, 64), 0.1, 0, torch.qint8),
    }
    checkpointing.write_atomically(checkpointing.snapshot(state), tmp_path / "a.ckpt")
    loaded = torch.load(tmp_path / "a.ckpt")
    assert torch.equal(loaded["sparse"].to_dense(), torch.eye(4))
    assert torch.equal(loaded["quantized"].int_repr(), state["quantized"].int_repr())


def test_direct_io_write_loads_back_exactly(tmp_path):
    state = mixed_checkpoint_state()
    try:
        handle = checkpointing._DirectFile(tmp_path / "direct.ckpt")
    except checkpointing._DirectIOUnsupported:
        pytest.skip("the test folder's file system refuses O_DIRECT (write_atomically falls back; tested below)")
    with checkpointing._checkpoint_save_options():
        torch.save(state, handle)
    handle.close()
    aligned_bytes = sum(state[key].nbytes for key in ("weight", "bf16")) + state["nested"]["moments"][0].nbytes
    assert handle.direct_bytes >= aligned_bytes * 0.99  # the aligned tensors skipped the staging copy
    assert (tmp_path / "direct.ckpt").stat().st_size == handle.size
    assert_same_state(torch.load(tmp_path / "direct.ckpt"), state)


def test_write_falls_back_to_buffered_io_when_direct_io_is_refused(tmp_path, monkeypatch):
    state = mixed_checkpoint_state()
    real_write = os.write
    calls = []

    def refuses_second_write(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(checkpointing.os, "write", refuses_second_write)
    checkpointing.write_atomically(state, tmp_path / "a.ckpt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    assert_same_state(torch.load(tmp_path / "a.ckpt"), state)


def test_a_failed_direct_write_raises_the_disk_error_and_leaves_nothing(tmp_path, monkeypatch):
    real_write = os.write

    def disk_full(fd, data):
        if len(data) >= checkpointing.DIRECT_IO_ALIGNMENT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(checkpointing.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpointing.write_atomically(mixed_checkpoint_state(), tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writes_restore_torch_save_options(tmp_path):
    from torch.utils.serialization import config

    before = (config.save.compute_crc32, config.save.storage_alignment)
    state = {"x": torch.randn(512, 512)}
    threads = [threading.Thread(target=checkpointing.write_atomically, args=(state, tmp_path / f"{n}.ckpt")) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (config.save.compute_crc32, config.save.storage_alignment) == before
    assert all(torch.equal(torch.load(tmp_path / f"{n}.ckpt")["x"], state["x"]) for n in range(4))


def test_cadence_throttles_last_checkpoint_and_training_end_writes_a_final_one(tmp_path, tiny_dataset, monkeypatch):
    written = []
    original = checkpointing.write_atomically
    monkeypatch.setattr(checkpointing, "write_atomically", lambda state, path: (written.append(Path(path).name), original(state, path)))
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={**QUICK, "max_epochs": 5, "checkpoint_cadence_epochs": 3})
    experiment = ExperimentDL(config)
    experiment.train()
    last = [name for name in written if name.startswith("last-checkpoint")]
    assert [name.split("-step")[0] for name in last] == ["last-checkpoint-epoch=2", "last-checkpoint-epoch=4"]
    assert checkpoints(run_dir_of(experiment), "last-checkpoint") == ["last-checkpoint-epoch=4-step=10.ckpt"]


class StopAt(pl.Callback):
    def __init__(self, epoch: int, error: BaseException):
        self.epoch, self.error = epoch, error

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise self.error


def train_with(tmp_path, dataset, callback, **trainer):
    # trainer.callbacks takes callback objects when the config comes from Python.
    extra = {**QUICK, "max_epochs": 6, "checkpoint_cadence_epochs": 10, "callbacks": [callback], **trainer}
    return ExperimentDL(tiny_config(tmp_path / "runs", dataset, trainer=extra))


def test_ctrl_c_keeps_the_work_done_but_a_crash_does_not_write_a_final_checkpoint(tmp_path, tiny_dataset):
    interrupted = train_with(tmp_path / "a", tiny_dataset, StopAt(1, KeyboardInterrupt()))
    try:
        with pytest.raises(SystemExit):  # Lightning ends the process after a graceful Ctrl-C shutdown
            interrupted.train()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT from then on
    assert checkpoints(run_dir_of(interrupted), "last-checkpoint") == ["last-checkpoint-epoch=1-step=4.ckpt"]

    crashed = train_with(tmp_path / "b", tiny_dataset, StopAt(1, RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        crashed.train()
    assert checkpoints(run_dir_of(crashed), "last-checkpoint") == []


class SignalAt(pl.Callback):
    """Sends this process SIGINT (a real Ctrl-C) in the middle of a training batch."""

    def __init__(self, batch: int):
        self.batch, self.seen = batch, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_a_batch_stops_after_it_with_a_consistent_final_checkpoint(tmp_path, tiny_dataset):
    experiment = train_with(tmp_path, tiny_dataset, SignalAt(batch=3))
    experiment.train()  # returns normally: the first Ctrl-C is a graceful stop
    assert experiment.trainer.global_step == 3
    saved = checkpoints(run_dir_of(experiment), "last-checkpoint")
    assert saved == ["last-checkpoint-epoch=1-step=3.ckpt"]
    state = torch.load(run_dir_of(experiment) / "checkpoints" / saved[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 3 and state["optimizer_states"][0]["state"][0]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_from_last_picks_the_newest_complete_checkpoint(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK)
    with pytest.raises(ConfigError, match="resume_from: last: no complete last-checkpoint under"):
        ExperimentDL({**config, "resume_from": "last"})
    first = ExperimentDL(config)
    first.train()
    (run_dir_of(first) / "checkpoints" / ".last-checkpoint-epoch=9-step=99.ckpt.123.partial").write_bytes(b"torn")
    resumed = ExperimentDL({**config, "resume_from": "last", "trainer": {**config["trainer"], "max_epochs": 4}})
    assert Path(resumed.config.resume_from).name == "last-checkpoint-epoch=2-step=6.ckpt"
    resumed.train()
    assert resumed.trainer.global_step == 8


# --------------------------------------------------------------------------- kill -9


KILL_TRIALS = 6


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_an_unloadable_checkpoint(tmp_path, tiny_dataset):
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        model_config={"vocab_size": 256, "num_channels": 4, "d_model": 256, "n_layers": 4, "n_heads": 4, "max_position_embeddings": 64},
        trainer={"max_epochs": 1000, "limit_train_batches": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0},
    )
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).with_name("brain-gen")), "train", str(path)]
    rng = random.Random(7)
    for _ in range(KILL_TRIALS):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # Wait for training to start (start-up takes 4-12 s, by how busy the machine is), then
        # kill the command at a random moment of training, when a write may be under way.
        for line in process.stdout:
            if "training with batch_size" in line:
                break
        time.sleep(rng.uniform(0.5, 4.0))
        os.kill(process.pid, signal.SIGKILL)
        process.stdout.close()
        process.wait()
    found = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert found, "no checkpoint was written before the kills"
    for checkpoint in found:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        assert {"state_dict", "optimizer_states", "loops", "global_step"} <= set(state)
    # Each surviving file also resumes: one more epoch from it.
    for checkpoint in found:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        again = {**config, "save_dir": str(tmp_path / "resumed"), "resume_from": str(checkpoint)}
        again["trainer"] = {**config["trainer"], "max_epochs": state["epoch"] + 2}
        experiment = ExperimentDL(again)
        experiment.train()
        assert experiment.trainer.global_step > state["global_step"]

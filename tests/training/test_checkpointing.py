"""Checkpoint writes: frozen snapshots, background durable writes, cadence, final saves, resume_from: last."""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import brain_gen.training.checkpointing as checkpointing
import brain_gen.training.durable_write as durable_write
from brain_gen.config.errors import ConfigError
from brain_gen.training.checkpointing import BackgroundCheckpointIO, CheckpointWriteError, newest_complete_checkpoint
from brain_gen.training.durable_write import DurableWriter
from brain_gen.training.train import ExperimentDL
from brain_gen.cli import main
from tests.conftest import tiny_config, write_config
from tests.conftest import scalars

QUICK = {"max_epochs": 3, "limit_train_batches": 2, "limit_val_batches": 1}


def checkpoints(run_dir: Path, prefix: str) -> list[str]:
    return sorted(path.name for path in (run_dir / "checkpoints").glob(f"{prefix}*.ckpt"))


def run_dir_of(experiment: ExperimentDL) -> Path:
    return Path(experiment.trainer.logger.log_dir)


def test_snapshot_is_frozen_while_training_continues_during_the_write(tmp_path, tiny_dataset, monkeypatch, caplog):
    original = DurableWriter.write
    observations = []

    def slow_write(writer, state, path):
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
        observations.append(observation)  # the best and last checkpoints, in the order they were saved
        original(writer, state, path)
        # Read back at once: a later last-checkpoint may replace this file before the test ends.
        observation["written_step"] = torch.load(path, map_location="cpu", weights_only=False)["global_step"]

    monkeypatch.setattr(DurableWriter, "write", slow_write)
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 3, "limit_train_batches": 8, "limit_val_batches": 1})
    experiment = ExperimentDL(config)
    with caplog.at_level(logging.INFO, logger=checkpointing.__name__):
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
    logged = scalars(run_dir_of(experiment))
    assert "checkpoint/blocked_ms" in logged
    # Logged at the global step of the save that waited: the end of an epoch of 8 batches.
    assert {step for step, _ in logged["checkpoint/blocked_ms"]} <= {8, 16, 24}
    # The last write of the run was still under way when training ended; the wait is logged once.
    assert caplog.text.count("checkpoint: training ended; waited") == 1
    assert "training waited" in caplog.text and "teardown waited" not in caplog.text


def test_a_failed_write_is_raised_on_the_training_thread(tmp_path, tiny_dataset, monkeypatch):
    def failing_write(writer, state, path):
        raise OSError("disk full")

    monkeypatch.setattr(DurableWriter, "write", failing_write)
    experiment = ExperimentDL(tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK))
    with pytest.raises(CheckpointWriteError, match="disk full"):
        experiment.train()


def test_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a.ckpt"
    writer = DurableWriter()
    writer.write({"x": torch.ones(3)}, target)
    assert torch.equal(torch.load(target)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        writer.write({"x": Unpicklable()}, target)
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
    assert state["weight"].data_ptr() % durable_write.DIRECT_IO_ALIGNMENT == 0
    assert state["bf16"].data_ptr() % durable_write.DIRECT_IO_ALIGNMENT == 0
    assert state["nested"]["moments"][0].data_ptr() % durable_write.DIRECT_IO_ALIGNMENT == 0


def test_sparse_and_quantized_tensors_snapshot_and_save(tmp_path):
    state = {
        "sparse": torch.eye(4).to_sparse(),
        "quantized": torch.quantize_per_tensor(torch.randn(64, 64), 0.1, 0, torch.qint8),
    }
    DurableWriter().write(checkpointing.snapshot(state), tmp_path / "a.ckpt")
    loaded = torch.load(tmp_path / "a.ckpt")
    assert torch.equal(loaded["sparse"].to_dense(), torch.eye(4))
    assert torch.equal(loaded["quantized"].int_repr(), state["quantized"].int_repr())


def test_direct_io_write_loads_back_exactly(tmp_path):
    state = mixed_checkpoint_state()
    try:
        handle = durable_write.DirectFile(tmp_path / "direct.ckpt")
    except durable_write.DirectIOUnsupported:
        pytest.skip("the test folder's file system refuses O_DIRECT (DurableWriter falls back; tested below)")
    with durable_write.checkpoint_save_settings():
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

    monkeypatch.setattr(durable_write.os, "write", refuses_second_write)
    writer = DurableWriter()
    writer.write(state, tmp_path / "a.ckpt")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    assert_same_state(torch.load(tmp_path / "a.ckpt"), state)
    # The refusal is remembered by this writer (later files there go buffered at once), and by no other.
    assert writer.buffered_folders == {tmp_path}
    assert DurableWriter().buffered_folders == set()
    calls.clear()
    writer.write(state, tmp_path / "b.ckpt")
    assert calls == [] and torch.equal(torch.load(tmp_path / "b.ckpt")["weight"], state["weight"])


def test_a_failed_direct_write_raises_the_disk_error_and_leaves_nothing(tmp_path, monkeypatch):
    real_write = os.write

    def disk_full(fd, data):
        if len(data) >= durable_write.DIRECT_IO_ALIGNMENT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(durable_write.os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        DurableWriter().write(mixed_checkpoint_state(), tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []


def stored_record(data: bytes, name: str) -> tuple[int, bytes, int]:
    """(offset in the file, bytes, CRC-32 field) of a stored zip record, read without checking the CRC."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(entry for entry in archive.infolist() if entry.filename.endswith(name))
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    return start, data[start : start + info.file_size], info.CRC


def test_a_checkpoint_write_changes_no_torch_save_setting_of_other_threads(tmp_path):
    from torch.utils.serialization import config

    before = (config.save.compute_crc32, config.save.storage_alignment)
    inside, resume = threading.Event(), threading.Event()

    class PauseWhilePickled:
        """Holds the checkpoint's torch.save half-way, with the writer's settings in force."""

        def __reduce__(self):
            inside.set()
            resume.wait(10)
            return (int, (0,))

    state = {"x": torch.randn(512, 512), "pause": PauseWhilePickled()}
    writer = threading.Thread(target=DurableWriter().write, args=(state, tmp_path / "a.ckpt"))
    writer.start()
    try:
        assert inside.wait(10)
        # Meanwhile a torch.save elsewhere in the process (a user callback, the eval runner)
        # writes torch's default format: CRC-32 checked, 64-byte alignment.
        assert (config.save.compute_crc32, config.save.storage_alignment) == before
        elsewhere = io.BytesIO()
        torch.save({"y": torch.ones(1000)}, elsewhere)
        with zipfile.ZipFile(io.BytesIO(elsewhere.getvalue())) as archive:
            assert archive.testzip() is None  # every record's CRC-32 is right
        assert stored_record(elsewhere.getvalue(), ".storage_alignment")[1] == str(before[1]).encode()
    finally:
        resume.set()
        writer.join()
    assert (config.save.compute_crc32, config.save.storage_alignment) == before
    written = (tmp_path / "a.ckpt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.ckpt", weights_only=False)["x"], state["x"])
    if torch.__version__ >= durable_write.PER_THREAD_SAVE_SETTINGS_SINCE:
        # The checkpoint itself was written with the writer's own settings: no CRC, 4 KiB alignment.
        assert stored_record(written, ".storage_alignment")[1] == str(durable_write.DIRECT_IO_ALIGNMENT).encode()
        offset, _, crc = stored_record(written, "data/0")
        assert offset % durable_write.DIRECT_IO_ALIGNMENT == 0 and crc == 0


class GatedWriter(DurableWriter):
    """A DurableWriter whose writes wait for a gate, and which counts writes in flight."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.gate = threading.Event()
        self.fail = fail
        self.in_flight = self.most_in_flight = 0

    def write(self, state, path):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            assert self.gate.wait(10)
            if self.fail:
                raise OSError("disk full")
            super().write(state, path)
        finally:
            self.in_flight -= 1


def background_plugin(writer: DurableWriter) -> BackgroundCheckpointIO:
    plugin = BackgroundCheckpointIO(writer)
    plugin.background = True  # as CheckpointWriteMonitor sets it for a single-device run
    return plugin


def test_the_first_snapshot_copies_into_memory_the_writer_thread_prepared_after_the_first_step(tmp_path, monkeypatch):
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from brain_gen.losses.next_step import MSE
    from brain_gen.training.checkpointing import CheckpointWriteMonitor
    from brain_gen.training.lightning import LitModel

    faulted_on, reuses = [], []
    fault_in, take_snapshot = checkpointing._fault_in, checkpointing.snapshot
    monkeypatch.setattr(checkpointing, "_fault_in", lambda blank: (faulted_on.append(threading.current_thread().name), fault_in(blank))[1])
    monkeypatch.setattr(checkpointing, "snapshot", lambda value, reuse=None: (reuses.append(reuse), take_snapshot(value, reuse))[1])
    torch.manual_seed(0)
    module = LitModel(torch.nn.Linear(8, 8), MSE(), {"lr": 1e-2, "weight_decay": 0.0})
    plugin = BackgroundCheckpointIO()
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, plugins=[plugin],
        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=1, monitor=None), CheckpointWriteMonitor(plugin)],
    )
    data = TensorDataset(torch.randn(12, 8), torch.randn(12, 8))
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert faulted_on and all(name.startswith("checkpoint-writer") for name in faulted_on)
    prepared = reuses[0]  # the first save copied into the prepared memory: model and AdamW state
    assert prepared["state_dict"]["model.weight"].shape == (8, 8)
    assert prepared["optimizer_states"][0]["state"][0]["exp_avg"].shape == (8, 8)
    [path] = tmp_path.glob("*.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 3
    for name, value in module.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value)
    live_state = trainer.optimizers[0].state_dict()["state"][0]
    assert torch.equal(saved["optimizer_states"][0]["state"][0]["exp_avg_sq"], live_state["exp_avg_sq"])


def test_a_save_waits_for_the_writes_of_earlier_steps_and_reports_the_wait_at_its_step(tmp_path):
    writer = GatedWriter()
    plugin = background_plugin(writer)
    written = []
    plugin.on_durable_write(written.append)
    plugin.save_checkpoint({"global_step": 10, "w": torch.ones(4)}, tmp_path / "best-10.ckpt")
    # The second file of the same step (best and last) is queued without waiting for the first.
    started = time.perf_counter()
    plugin.save_checkpoint({"global_step": 10, "w": torch.ones(4)}, tmp_path / "last-10.ckpt")
    assert time.perf_counter() - started < 0.2 and plugin.take_waits() == []
    threading.Timer(0.3, writer.gate.set).start()
    plugin.save_checkpoint({"global_step": 20, "w": torch.ones(4)}, tmp_path / "last-20.ckpt")  # blocks until step 10 is written
    assert (tmp_path / "best-10.ckpt").exists() and (tmp_path / "last-10.ckpt").exists()
    [(step, seconds)] = plugin.take_waits()
    assert step == 20 and seconds >= 0.25
    assert plugin.take_waits() == []
    plugin.teardown()
    assert writer.most_in_flight == 1
    assert written == [str(tmp_path / name) for name in ("best-10.ckpt", "last-10.ckpt", "last-20.ckpt")]
    assert not plugin.background  # after teardown, writes complete before save_checkpoint returns


def test_removal_waits_for_the_replacement_to_be_durable_and_is_skipped_if_it_failed(tmp_path):
    old = tmp_path / "old.ckpt"
    DurableWriter().write({"w": torch.zeros(4)}, old)

    writer = GatedWriter()
    plugin = background_plugin(writer)
    plugin.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, tmp_path / "new.ckpt")
    plugin.remove_checkpoint(old)
    time.sleep(0.2)
    assert old.exists()  # the new file is not durable yet
    writer.gate.set()
    plugin.finish_writes()
    assert not old.exists() and (tmp_path / "new.ckpt").exists()
    plugin.teardown()

    DurableWriter().write({"w": torch.zeros(4)}, old)
    failing = GatedWriter(fail=True)
    failing.gate.set()
    plugin = background_plugin(failing)
    plugin.save_checkpoint({"global_step": 2, "w": torch.ones(4)}, tmp_path / "newer.ckpt")
    plugin.remove_checkpoint(old)
    plugin.finish_writes()
    assert old.exists() and not (tmp_path / "newer.ckpt").exists()
    with pytest.raises(CheckpointWriteError, match="disk full"):
        plugin.raise_failed_write()
    plugin.teardown()


def test_without_background_writes_a_save_is_complete_when_it_returns(tmp_path):
    writer = GatedWriter()
    writer.gate.set()
    plugin = BackgroundCheckpointIO(writer)  # as for a sharded strategy, or with no monitor
    plugin.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, tmp_path / "a.ckpt")
    assert torch.equal(plugin.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.ones(4))
    (tmp_path / "sharded.ckpt").mkdir()  # sharded strategies save folders
    plugin.remove_checkpoint(tmp_path / "sharded.ckpt")
    plugin.remove_checkpoint(tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_the_monitor_switches_its_plugin_to_background_writes_and_refuses_to_run_without_it():
    plugin = BackgroundCheckpointIO()
    monitor = checkpointing.CheckpointWriteMonitor(plugin)
    with_plugin = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[monitor], plugins=[plugin])
    monitor.setup(with_plugin, None, "fit")
    assert plugin.background
    plugin.teardown()
    without_plugin = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[monitor])
    with pytest.raises(ValueError, match="plugins="):
        monitor.setup(without_plugin, None, "fit")


def test_background_writes_only_for_single_device_and_plain_ddp():
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    assert checkpointing.supports_background_writes(SingleDeviceStrategy("cpu"))
    assert checkpointing.supports_background_writes(DDPStrategy())
    assert not checkpointing.supports_background_writes(FSDPStrategy())


def test_cadence_throttles_last_checkpoint_and_training_end_writes_a_final_one(tmp_path, tiny_dataset, monkeypatch):
    written = []
    original = DurableWriter.write
    monkeypatch.setattr(DurableWriter, "write", lambda writer, state, path: (written.append(Path(path).name), original(writer, state, path)))
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
    with pytest.raises(ConfigError, match="resume_from: last: no complete last-checkpoint under") as raised:
        ExperimentDL({**config, "resume_from": "last"})
    assert len(raised.value.problems) == 1  # not also "checkpoint not found: last"
    first = ExperimentDL(config)
    first.train()
    (run_dir_of(first) / "checkpoints" / ".last-checkpoint-epoch=9-step=99.ckpt.123.partial").write_bytes(b"torn")
    resumed = ExperimentDL({**config, "resume_from": "last", "trainer": {**config["trainer"], "max_epochs": 4}})
    assert Path(resumed.config.resume_from).name == "last-checkpoint-epoch=2-step=6.ckpt"
    resumed.train()
    assert resumed.trainer.global_step == 8


def test_a_run_start_removes_the_unfinished_writes_of_processes_that_no_longer_run(tmp_path, tiny_dataset, caplog):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK)
    first = ExperimentDL(config)
    first.train()
    folder = run_dir_of(first) / "checkpoints"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    host = durable_write.this_host()
    stale = [folder / f".last-checkpoint-epoch=5-step=10.ckpt.{host}-{ended}.partial", folder / f".last-checkpoint-epoch=4-step=8.ckpt.{ended}.partial"]
    for path in stale:
        path.write_bytes(b"x" * 1_500_000)
    sharded = folder / f".last-checkpoint-epoch=6-step=12.ckpt.{host}-{ended}.partial"
    sharded.mkdir()
    (sharded / "__0_0.distcp").write_bytes(b"x" * 500_000)
    kept = [folder / f".best-checkpoint.ckpt.{host}-{os.getpid()}.partial", folder / f".best-checkpoint.ckpt.othermachine-{ended}.partial"]
    for path in kept:
        path.write_bytes(b"in flight")
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        ExperimentDL(config).train()
    assert "removed 3 unfinished checkpoint write(s) of runs no longer running, freeing 3.5 MB" in caplog.text
    assert not any(path.exists() for path in [*stale, sharded]) and all(path.exists() for path in kept)


def test_resuming_from_a_checkpoint_that_does_not_fit_is_one_line_before_any_run_folder(tmp_path, tiny_dataset, capsys):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK)
    first = ExperimentDL(config)
    first.train()
    last = next((run_dir_of(first) / "checkpoints").glob("last-*"))
    smaller = {**config, "resume_from": str(last), "model_config": {**config["model_config"], "d_model": 16}}
    assert main(["train", str(write_config(tmp_path, smaller))]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"brain-gen: error: resume_from: {last} does not fit the model: ")
    assert "parameter(s) differ in shape (" in lines[0] and "[256, 32] in the file, [256, 16] in the model" in lines[0]
    assert lines[0].endswith("model_config keys that differ from the checkpoint's: d_model 32 -> 16")
    assert [run.name for run in (tmp_path / "runs" / "logs").iterdir()] == ["version_0"]

    # A plain state_dict, and a torch.save file of something else: each said in one line.
    weights = tmp_path / "weights.ckpt"
    torch.save(first.model.state_dict(), weights)
    assert main(["train", str(write_config(tmp_path, {**config, "resume_from": str(weights)}))]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"brain-gen: error: resume_from: {weights} holds a plain state_dict (weights only), not a Lightning checkpoint with the "
        f"optimizer and training progress to continue from; to start a new training from these weights, use init_from: {weights}"
    ]
    other = tmp_path / "other.ckpt"
    torch.save({"step": 3}, other)
    assert main(["train", str(write_config(tmp_path, {**config, "resume_from": str(other)}))]) == 2
    assert "is a torch.save file but not a Lightning checkpoint" in capsys.readouterr().err
    assert [run.name for run in (tmp_path / "runs" / "logs").iterdir()] == ["version_0"]


class RunsCode:
    """A pickle payload: unpickling it would create ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("key", ["resume_from", "init_from"])
def test_a_checkpoint_holding_pickled_code_is_refused_without_running_it(tmp_path, tiny_dataset, capsys, key):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK)
    marker = tmp_path / "the payload ran"
    booby_trapped = tmp_path / "trapped.ckpt"
    # A checkpoint like Lightning's in every other way: weights, version, progress.
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "hyper_parameters": RunsCode(marker)}, booby_trapped)
    assert main(["train", str(write_config(tmp_path, {**config, key: str(booby_trapped)}))]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"brain-gen: error: {key}: {booby_trapped} holds pickled objects beyond tensors and plain data, which brain-gen does "
        "not unpickle (unpickling can run any code); use a checkpoint brain-gen wrote, or save the model's state_dict alone"
    ]
    assert not marker.exists() and not (tmp_path / "runs" / "logs").exists()


@pytest.mark.parametrize("source", ["state_dict", "lightning"])
def test_init_from_starts_a_new_training_from_the_weights_alone(tmp_path, tiny_dataset, source):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer=QUICK)
    first = ExperimentDL(config)
    first.train()
    trained = {name: value.clone() for name, value in first.model.state_dict().items() if torch.is_tensor(value)}
    path = next((run_dir_of(first) / "checkpoints").glob("last-*"))
    if source == "state_dict":
        path = tmp_path / "weights.pt"
        torch.save(first.model.state_dict(), path)
    second = ExperimentDL({**config, "init_from": str(path)})
    second.build()
    assert all(torch.equal(second.model.state_dict()[name], value) for name, value in trained.items())
    second.train()
    assert second.trainer.global_step == 6  # a new training: three epochs from step 0
    with pytest.raises(ConfigError, match="keep only one of them"):
        ExperimentDL({**config, "init_from": str(path), "resume_from": str(path)})


# --------------------------------------------------------------------------- kill -9


KILL_TRIALS = 20


def _train_command(argv: list[str]) -> None:
    """A training subprocess's whole life: the CLI, then the process ends."""
    sys.exit(main(argv))


def _wait_for(path: Path, process, timeout: float = 120.0) -> bool:
    """Wait until ``path`` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not process.is_alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _wait_for_partial(runs: Path, process, timeout: float = 60.0) -> bool:
    """Wait until a temporary checkpoint file of ``process`` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not any(runs.rglob(f"*-{process.pid}.partial")):
        if not process.is_alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.slow
def test_kill_9_at_random_moments_and_during_writes_never_leaves_an_unloadable_checkpoint(tmp_path, tiny_dataset, capsys):
    import multiprocessing

    markers = tmp_path / "markers"
    config = tiny_config(
        tmp_path / "runs",
        tiny_dataset,
        model_config={"vocab_size": 256, "num_channels": 4, "d_model": 128, "n_layers": 2, "n_heads": 4, "max_position_embeddings": 64},
        trainer={"max_epochs": 1000, "limit_train_batches": 1, "limit_val_batches": 1, "num_sanity_val_steps": 0},
    )
    # Every checkpoint takes about a second to write, through the real writer, and says when it starts.
    probe = {"class_path": "tests.user_classes:KillProbe", "init_args": {"marker_dir": str(markers), "write_seconds": 1.0}}
    killed = {**config, "trainer": {**config["trainer"], "callbacks": [probe]}}
    # Each trial is the job started again, as a requeued job is: it resumes once a last-checkpoint exists.
    (tmp_path / "fresh").mkdir()
    (tmp_path / "again").mkdir()
    fresh = write_config(tmp_path / "fresh", killed)
    again_after_kill = write_config(tmp_path / "again", {**killed, "resume_from": "last"})
    # Training processes come from a fork server that has imported everything once: a
    # trial then starts in a second or two instead of the command's 5-12 s of imports.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["brain_gen.cli", "pytorch_lightning", "tests.user_classes"])
    rng = random.Random(7)
    for trial in range(KILL_TRIALS):
        markers.mkdir(exist_ok=True)
        for marker in markers.iterdir():
            marker.unlink()
        left_before = sorted((tmp_path / "runs").rglob("*.partial"))
        command = again_after_kill if newest_complete_checkpoint(tmp_path / "runs") is not None else fresh
        process = context.Process(target=_train_command, args=(["train", str(command)],))
        process.start()
        assert _wait_for(markers / "started", process), f"trial {trial}: training did not start (exit {process.exitcode})"
        # What the killed processes left is gone by the time a new run trains.
        assert not any(path.exists() for path in left_before), f"trial {trial}: stale temporary files survived a start"
        aimed = trial % 2 == 0
        if aimed:
            # Inside a write, which takes about a second from the moment its temporary file appears:
            # the first of the run (a best-checkpoint), or the third (after a complete last-checkpoint).
            write = markers / ("write-1" if trial % 4 == 0 else "write-3")
            assert _wait_for(write, process), f"trial {trial}: no checkpoint write began"
            assert _wait_for_partial(tmp_path / "runs", process), f"trial {trial}: no temporary file appeared"
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            time.sleep(rng.uniform(0.5, 4.0))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        if aimed:  # the kill landed inside the write: its temporary file is left behind
            assert list((tmp_path / "runs").rglob("*.partial")), f"trial {trial}: the kill missed the write"

    found = sorted((tmp_path / "runs").rglob("*.ckpt"))
    assert found, "no checkpoint was written before the kills"
    newest = 0
    for checkpoint in found:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "loops", "global_step"} <= set(state)
        newest = max(newest, state["epoch"])
    assert newest_complete_checkpoint(tmp_path / "runs") is not None
    # resume_from: last finishes the run, and its start removed every unfinished write.
    again = {**config, "resume_from": "last", "trainer": {**config["trainer"], "max_epochs": newest + 2}}
    capsys.readouterr()
    assert main(["train", str(write_config(tmp_path, again))]) == 0, capsys.readouterr().err
    assert not list((tmp_path / "runs").rglob("*.partial"))
    resumed = max((tmp_path / "runs" / "logs").iterdir(), key=lambda run: int(run.name.split("_")[1]))
    assert sorted(path.name for path in (resumed / "checkpoints").glob("last-*")) == [f"last-checkpoint-epoch={newest + 1}-step={newest + 2}.ckpt"]


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, tiny_dataset, capsys):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 5, "limit_train_batches": 2, "limit_val_batches": 1})
    # Epoch 0 writes its best- and last-checkpoint; the disk fills up during epoch 1's first write.
    config["trainer"]["callbacks"] = [{"class_path": "tests.user_classes:DiskFillsUp", "init_args": {"after_writes": 2}}]
    assert main(["train", str(write_config(tmp_path, config))]) == 4
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "brain-gen: error: writing a checkpoint failed: [Errno 28] No space left on device; "
        "the earlier checkpoints are intact, resume_from: last continues from them"
    ], errors
    folder = tmp_path / "runs" / "logs" / "version_0" / "checkpoints"
    assert sorted(path.name for path in folder.iterdir()) == ["best-checkpoint-epoch=0-step=2.ckpt", "last-checkpoint-epoch=0-step=2.ckpt"]
    for path in folder.iterdir():
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["global_step"] == 2 and all(torch.isfinite(value).all() for value in state["state_dict"].values() if torch.is_tensor(value))
    # The last-checkpoint before the full disk resumes.
    again = {**config, "resume_from": "last", "trainer": {**config["trainer"], "max_epochs": 2, "callbacks": []}}
    assert main(["train", str(write_config(tmp_path, again))]) == 0


def test_only_the_last_checkpoint_callbacks_files_count_as_its_writes(tmp_path):
    from brain_gen.training.checkpointing import run_checkpoints, written_by

    checkpoints = run_checkpoints(tmp_path / "checkpoints", has_validation=True)
    folder = tmp_path / "checkpoints"
    assert written_by(checkpoints.last, folder / "last-checkpoint-epoch=0-step=4.ckpt")
    assert not written_by(checkpoints.last, folder / "best-checkpoint-epoch=0-step=4.ckpt")
    assert not written_by(checkpoints.last, tmp_path / "elsewhere" / "last-checkpoint-epoch=0-step=4.ckpt")
    assert written_by(checkpoints.best, folder / "best-checkpoint-epoch=0-step=4.ckpt")
    # A listener for the last-checkpoints (the eval runner's) hears of no best-checkpoint.
    heard, everything = [], []
    checkpoints.checkpoint_io.on_durable_write(heard.append, of=checkpoints.last)
    checkpoints.checkpoint_io.on_durable_write(everything.append)
    for name in ("best-checkpoint-epoch=0-step=4.ckpt", "last-checkpoint-epoch=0-step=4.ckpt"):
        checkpoints.checkpoint_io.save_checkpoint({"x": torch.ones(2)}, folder / name)
    checkpoints.checkpoint_io.teardown()
    assert [Path(path).name for path in heard] == ["last-checkpoint-epoch=0-step=4.ckpt"]
    assert len(everything) == 2

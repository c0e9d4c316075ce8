"""Classes a user might keep in their own package, loaded by import path in tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from brain_gen.dataset.datasets import ChunkDataset
from brain_gen.training import durable_write


class LastValueModel(nn.Module):
    """Predicts the next value as a learned scale of the current one, per channel."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels
        self.scale = nn.Parameter(torch.zeros(num_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class SquaredError(nn.Module):
    def __init__(self):
        super().__init__()
        self.metrics = {"max_error": lambda outputs, targets: (outputs - targets).abs().max()}

    def forward(self, outputs, targets, model=None):
        return ((outputs - targets) ** 2).mean()


class BrokenForecastGPT(nn.Module):
    """A ChannelGPT whose generation always fails: its evaluations must fail without stopping training."""

    def __init__(self, **kwargs):
        super().__init__()
        from brain_gen.models.channel_gpt import ChannelGPT

        self.inner = ChannelGPT(**kwargs)
        self.num_channels, self.vocab_size = self.inner.num_channels, self.inner.vocab_size
        self.max_position_embeddings = self.inner.max_position_embeddings

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.inner(codes)

    def forecast(self, context, steps, sampling=None, generator=None):
        raise RuntimeError("this forecast always fails")


class NoForecastGPT(nn.Module):
    """A next-code model without generation."""

    def __init__(self, **kwargs):
        super().__init__()
        from brain_gen.models.channel_gpt import ChannelGPT

        self.inner = ChannelGPT(**kwargs)
        self.num_channels, self.vocab_size = self.inner.num_channels, self.inner.vocab_size

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.inner(codes)


class FullDiskWriter:
    """A checkpoint writer that fails as a full disk would."""

    def write(self, state, path):
        raise OSError(28, "No space left on device (test)")


class FullDiskCheckpoints(pl.Callback):
    """Makes every checkpoint write of the run fail, as on a full disk."""

    def setup(self, trainer, pl_module, stage):
        trainer.strategy.checkpoint_io.writer = FullDiskWriter()


class RecordingChunkDataset(ChunkDataset):
    """ChunkDataset that appends each index it serves to ``<record_dir>/<samples>-rank<R>.txt``,
    so that a test can see which windows each process of a distributed run trained on."""

    def __init__(self, split, record_dir: str, **kwargs):
        super().__init__(split, **kwargs)
        self.record_dir = record_dir

    def __getitem__(self, index: int):
        import os
        from pathlib import Path

        rank = os.environ.get("LOCAL_RANK", "0")
        with open(Path(self.record_dir) / f"{len(self)}-rank{rank}.txt", "a") as handle:
            handle.write(f"{index}\n")
        return super().__getitem__(index)


class NonFiniteAtStep(nn.Module):
    """LastValueModel that goes wrong in its training forward number ``at_call`` (1-based).

    ``kind``: "loss" makes that output NaN; "gradient" keeps the output finite but
    gives the scale an infinite gradient. ``record_to``: a file that receives the
    inputs of that call.
    """

    def __init__(self, num_channels: int, at_call: int, kind: str = "loss", record_to: str | None = None):
        super().__init__()
        self.record_to = record_to  # where the inputs of the wrong call are saved (torch.save)
        self.inner = LastValueModel(num_channels)
        self.num_channels = num_channels
        self.at_call, self.kind, self.calls = at_call, kind, 0
        self.inner.scale.register_hook(lambda grad: grad * float("inf") if self._wrong_now() and self.kind == "gradient" else grad)

    def _wrong_now(self) -> bool:
        return self.calls == self.at_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
        outputs = self.inner(x)
        if self._wrong_now() and self.record_to:
            torch.save(x.detach().clone(), self.record_to)
        if self._wrong_now() and self.kind == "loss":
            outputs = outputs * float("nan")
        return outputs


class PacedDirectFile(durable_write.DirectFile):
    """DirectFile whose writes go at ``bytes_per_second``: a slow disk, for kill tests."""

    bytes_per_second = 1e7

    def write(self, data) -> int:
        time.sleep(memoryview(data).nbytes / self.bytes_per_second)
        return super().write(data)


class _PacedFile:
    def __init__(self, handle, bytes_per_second: float):
        self.handle, self.bytes_per_second = handle, bytes_per_second

    def write(self, data) -> int:
        time.sleep(memoryview(data).nbytes / self.bytes_per_second)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _tensor_bytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


class KillProbe(pl.Callback):
    """For kill -9 tests: every checkpoint write takes about ``write_seconds`` (the real
    durable writer, on a paced file), and the moments a kill is aimed at are announced
    as files in ``marker_dir``: ``started`` once training runs, ``write-N`` as write N begins.
    """

    def __init__(self, marker_dir: str, write_seconds: float = 1.0):
        self.marker_dir, self.write_seconds = Path(marker_dir), write_seconds

    def setup(self, trainer, pl_module, stage):
        probe = self

        class AnnouncingWriter(durable_write.DurableWriter):
            writes = 0

            def write(self, state, path):
                PacedDirectFile.bytes_per_second = max(_tensor_bytes(state), 1) / probe.write_seconds
                AnnouncingWriter.writes += 1
                (probe.marker_dir / f"write-{AnnouncingWriter.writes}").touch()
                super().write(state, path)

        def paced_save_buffered(state, path):
            with open(path, "wb") as handle:
                torch.save(state, _PacedFile(handle, PacedDirectFile.bytes_per_second))
                handle.flush()
                os.fsync(handle.fileno())

        # This process is the test's own training subprocess: the disk is made slow for all of it.
        durable_write.DirectFile = PacedDirectFile
        durable_write.save_buffered = paced_save_buffered
        trainer.strategy.checkpoint_io.writer = AnnouncingWriter()

    def on_train_start(self, trainer, pl_module):
        (self.marker_dir / "started").touch()


class DiskFullDirectFile(durable_write.DirectFile):
    """DirectFile on a full disk: its first write to the disk fails as os.write would."""

    def _write_all(self, data) -> None:
        self.error = OSError(28, "No space left on device")
        raise self.error


class DiskFillsUp(pl.Callback):
    """The disk fills up during checkpoint write number ``after_writes + 1`` of the run (and stays full)."""

    def __init__(self, after_writes: int):
        self.after_writes = after_writes

    def setup(self, trainer, pl_module, stage):
        limit = self.after_writes

        class FillingWriter(durable_write.DurableWriter):
            writes = 0

            def write(self, state, path):
                FillingWriter.writes += 1
                if FillingWriter.writes > limit:
                    # The disk is full from now on, until this run's teardown.
                    durable_write.DirectFile = DiskFullDirectFile
                    durable_write.save_buffered = _full_disk_save_buffered
                super().write(state, path)

        self._real = (durable_write.DirectFile, durable_write.save_buffered)
        trainer.strategy.checkpoint_io.writer = FillingWriter()

    def teardown(self, trainer, pl_module, stage):
        durable_write.DirectFile, durable_write.save_buffered = self._real

    def on_exception(self, trainer, pl_module, exception):
        self.teardown(trainer, pl_module, "fit")


def _full_disk_save_buffered(state, path):
    with open(path, "wb") as handle:
        handle.write(b"\0" * 4096)
        raise OSError(28, "No space left on device")

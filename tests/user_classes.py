"""Classes a user might keep in their own package, loaded by import path in tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from brain_gen.dataset.datasets import ChunkDataset


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
    gives the scale an infinite gradient.
    """

    def __init__(self, num_channels: int, at_call: int, kind: str = "loss"):
        super().__init__()
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
        if self._wrong_now() and self.kind == "loss":
            outputs = outputs * float("nan")
        return outputs

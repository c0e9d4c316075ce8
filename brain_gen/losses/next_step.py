"""Next-step losses: cross entropy over codes, mean squared error over values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.classification import multiclass_accuracy

from brain_gen.dataset.datasets import IGNORE_INDEX


class CrossEntropy(nn.Module):
    """Cross entropy of logits ``[..., V]`` against int64 codes ``[...]``.

    Targets equal to -100 (channels a session lacks) are skipped. Metric: ``accuracy``,
    the share of non-skipped positions whose most likely code is the target.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.metrics = {"accuracy": self.accuracy}

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if outputs.shape[:-1] != targets.shape or targets.is_floating_point():
            raise ValueError(
                f"CrossEntropy needs logits [..., classes] and integer targets [...], got {tuple(outputs.shape)} "
                f"and {targets.dtype} {tuple(targets.shape)}"
            )
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )

    @staticmethod
    def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multiclass_accuracy(
            outputs.reshape(-1, outputs.shape[-1]).argmax(dim=-1),
            targets.reshape(-1),
            num_classes=outputs.shape[-1],
            average="micro",
            ignore_index=IGNORE_INDEX,
            validate_args=False,
        )


class MSE(nn.Module):
    """Mean squared error over finite targets; NaN targets (missing channels) are skipped.

    Metric: ``mae``, the mean absolute error over the same positions.
    """

    def __init__(self):
        super().__init__()
        self.metrics = {"mae": self.mae}

    @staticmethod
    def _kept(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = ~torch.isnan(targets)
        return outputs[kept].float(), targets[kept].float()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if outputs.shape != targets.shape:
            raise ValueError(f"MSE needs outputs and targets of one shape, got {tuple(outputs.shape)} and {tuple(targets.shape)}")
        return F.mse_loss(*self._kept(outputs, targets))

    @classmethod
    def mae(cls, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return mean_absolute_error(*cls._kept(outputs, targets))

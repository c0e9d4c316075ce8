"""Next-step losses: cross entropy over codes, mean squared error over values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from brain_gen.dataset.datasets import IGNORE_INDEX


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices of integer targets, or of soft targets (their most likely class; -100 for empty rows)."""
    if not targets.is_floating_point():
        return targets
    labels = targets.argmax(dim=-1)
    return labels.masked_fill(targets.sum(dim=-1) <= 0, IGNORE_INDEX)


class CrossEntropy(nn.Module):
    """Cross entropy of logits ``[..., V]`` against int64 classes ``[...]`` or probabilities ``[..., V]``.

    Integer targets equal to -100 (channels a session lacks) are skipped, and so are
    all-zero probability rows. Probability targets come from MixupDataLoader. The
    same loss serves next-step models (logits ``[B, C, T, V]``) and classifiers
    (logits ``[B, n_classes]``). Metrics, on kept positions (probability targets count
    as their most likely class):

    - ``accuracy``: share whose most likely class is the target;
    - ``f1``: macro F1 over the classes that occur in targets or predictions;
    - ``perplexity``: exp of the cross entropy (without label smoothing).

    Validation and test values are means over batches, weighted by batch size; the
    test report (test_metrics.json) computes accuracy and F1 over the whole split.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.metrics = {"accuracy": self.accuracy, "f1": self.f1, "perplexity": self.perplexity}
        self._last_loss: tuple[int, tuple[int, ...], torch.Tensor] | None = None
        self._last_classes: tuple[tuple, dict] | None = None

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        self._last_loss = self._last_classes = None
        classes = outputs.shape[-1]
        logits = outputs.reshape(-1, classes).float()
        if targets.is_floating_point() and targets.shape == outputs.shape:
            probabilities = targets.reshape(-1, classes).float()
            kept = probabilities.sum(dim=-1) > 0
            if self.label_smoothing:
                mass = probabilities.sum(dim=-1, keepdim=True)
                probabilities = probabilities * (1 - self.label_smoothing) + mass * self.label_smoothing / classes
            per_row = -(probabilities * F.log_softmax(logits, dim=-1)).sum(dim=-1)
            # A masked mean without indexing: boolean indexing would wait for the GPU.
            return (per_row * kept).sum() / kept.sum()
        if outputs.shape[:-1] != targets.shape or targets.is_floating_point():
            raise ValueError(
                f"CrossEntropy needs logits [..., classes] with integer targets [...] or probabilities "
                f"[..., classes], got {tuple(outputs.shape)} and {targets.dtype} {tuple(targets.shape)}"
            )
        loss = F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        if not self.label_smoothing:
            # perplexity() reuses this instead of a second pass over the logits.
            self._last_loss = (outputs.data_ptr(), tuple(outputs.shape), loss.detach())
        return loss

    def _classification_inputs(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """Predicted and true class per position, in the form torchmetrics' multiclass functions take.

        Accuracy and F1 of one batch share them: the argmax over the logits is made once.
        """
        key = (outputs.data_ptr(), tuple(outputs.shape), targets.data_ptr(), tuple(targets.shape))
        if self._last_classes is None or self._last_classes[0] != key:
            classes = dict(
                # The first maximal class, as argmax gives it, but max's indices take about
                # half the time (the reduction is vectorised). Before flattening: logits are
                # often a permuted view (WaveNet's [B, C, T, V] over [B, C, V, T]), which
                # reshape would first copy whole.
                preds=outputs.max(dim=-1).indices.reshape(-1),
                target=hard_labels(targets).reshape(-1),
                num_classes=outputs.shape[-1],
                ignore_index=IGNORE_INDEX,
                validate_args=False,
            )
            self._last_classes = (key, classes)
        return self._last_classes[1]

    def accuracy(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multiclass_accuracy(**self._classification_inputs(outputs, targets), average="micro")

    def f1(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return multiclass_f1_score(**self._classification_inputs(outputs, targets), average="macro")

    def perplexity(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        last = self._last_loss
        if last is not None and last[:2] == (outputs.data_ptr(), tuple(outputs.shape)):
            return last[2].exp()
        smoothing, self.label_smoothing = self.label_smoothing, 0.0
        try:
            return self.forward(outputs, targets).exp()
        finally:
            self.label_smoothing = smoothing


class MSE(nn.Module):
    """Mean squared error over finite targets; NaN targets (missing channels) are skipped.

    Predictions and targets of one shape (``[B, C, T]`` for next-step models), in the
    signal's units; the loss is in those units squared.

    Metric: ``mae``, the mean absolute error over the same positions.
    """

    def __init__(self):
        super().__init__()
        self.metrics = {"mae": self.mae}

    @staticmethod
    def _kept_errors(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Errors (0 where the target is NaN) and how many targets are kept.

        Masked without indexing: boolean indexing would wait for the GPU at every step.
        """
        kept = ~torch.isnan(targets)
        errors = torch.where(kept, outputs.float() - targets.float().nan_to_num(), 0.0)
        return errors, kept.sum()

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if outputs.shape != targets.shape:
            raise ValueError(f"MSE needs outputs and targets of one shape, got {tuple(outputs.shape)} and {tuple(targets.shape)}")
        errors, kept = self._kept_errors(outputs, targets)
        return errors.square().sum() / kept

    @classmethod
    def mae(cls, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        errors, kept = cls._kept_errors(outputs, targets)
        return errors.abs().sum() / kept

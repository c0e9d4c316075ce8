"""LitModel: the LightningModule that trains any model with any loss."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from brain_gen.config.schema import LightningConfig


class LitModel(pl.LightningModule):
    """Runs a model and a loss through train, validation and test steps.

    Args:
        model: a plain nn.Module. A batch is ``(inputs, targets)``; a tuple of inputs
            is unpacked into the model's positional arguments.
        loss: ``loss(outputs, targets, model=model) -> scalar`` with a ``metrics``
            dict of ``name -> callable(outputs, targets)``.
        lightning: the ``lightning`` config section (a LightningConfig or a mapping).
        hparams: values stored in checkpoints and shown in TensorBoard (the run's config).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        lightning: LightningConfig | dict[str, Any],
        hparams: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.config = lightning if isinstance(lightning, LightningConfig) else LightningConfig.model_validate(lightning)
        if hparams:
            self.save_hyperparameters(hparams)

    def forward(self, inputs: Any) -> torch.Tensor:
        if isinstance(inputs, (tuple, list)):
            return self.model(*inputs)
        return self.model(inputs)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss_fn(outputs, targets, model=self.model)
        # Training logs every step; val and test log epoch means, reduced over devices.
        per_step = stage == "train"
        log_options = dict(on_step=per_step, on_epoch=not per_step, sync_dist=not per_step, batch_size=len(targets))
        self.log(f"{stage}/loss", loss, prog_bar=True, **log_options)
        with torch.no_grad():
            for name, metric in getattr(self.loss_fn, "metrics", {}).items():
                self.log(f"{stage}/{name}", metric(outputs.detach(), targets), **log_options)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

"""TestReport: the files a test run leaves in its version folder.

- ``test_metrics.json``: the logged ``test/*`` values; for classifiers, accuracy and
  macro F1 recomputed over the whole test split (the logged ones are batch means).
- For classifiers (datasets with ``classes``): ``confusion_matrix.png`` labelled with
  the class names, and ``test_predictions.csv`` with one row per event: session,
  onset, true label, predicted label and every class probability. These two need a
  single-device test run (with several processes only test_metrics.json is written).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

log = logging.getLogger(__name__)


class TestReport(pl.Callback):
    """Collects test predictions and writes the report files at the end of testing (rank zero only)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.classes: list[str] | None = getattr(dataset, "classes", None)
        self._probabilities: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._probabilities, self._targets = [], []

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.classes is None or trainer.world_size > 1:
            return
        logits = outputs["outputs"]  # what LitModel.test_step returns
        self._probabilities.append(torch.softmax(logits.float(), dim=-1).cpu())
        self._targets.append(batch[1].cpu())

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        folder = Path(trainer.logger.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {name.removeprefix("test/"): float(value) for name, value in trainer.callback_metrics.items() if name.startswith("test/")}
        if self.classes is not None and trainer.world_size > 1:
            # Each process saw a strided share of the split; matching rows back to events
            # would need every share gathered with its dataset indices.
            log.warning("test report: confusion_matrix.png and test_predictions.csv need a single-device test run; "
                        "test_metrics.json holds the logged test/* values only")
        elif self.classes is not None and self._targets:
            probabilities, targets = torch.cat(self._probabilities), torch.cat(self._targets)
            metrics.update(self._write_classification(folder, probabilities, targets))
        (folder / "test_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def _write_classification(self, folder: Path, probabilities: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        n_classes = len(self.classes)
        predicted = probabilities.argmax(dim=-1)
        confusion = MulticlassConfusionMatrix(num_classes=n_classes)
        confusion.update(predicted, targets)
        figure, axes = confusion.plot(labels=self.classes)
        axes.set_title(f"test split, {len(targets)} events")
        figure.savefig(folder / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
        with (folder / "test_predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session", "onset", "true_label", "predicted_label", *(f"p_{name}" for name in self.classes)])
            for index in range(len(targets)):
                session, onset, true_label = self.dataset.describe(index)
                writer.writerow([session, f"{onset:.6f}", true_label, self.classes[int(predicted[index])],
                                 *(f"{float(p):.6f}" for p in probabilities[index])])
        return {
            "accuracy": float(MulticlassAccuracy(num_classes=n_classes, average="micro")(predicted, targets)),
            "f1": float(MulticlassF1Score(num_classes=n_classes, average="macro")(predicted, targets)),
            "n_samples": int(len(targets)),
            "classes": list(self.classes),
            "confusion_matrix": confusion.compute().tolist(),
        }

"""TestReport: the files a test run leaves in its version folder.

- ``test_metrics.json``: the logged ``test/*`` values; for classifiers, accuracy and
  macro F1 recomputed over the whole test split (the logged ones are batch means).
- For classifiers (datasets with ``classes``): ``confusion_matrix.png`` labelled with
  the class names, and ``test_predictions.csv`` with one row per event: session,
  onset, true label, predicted label and every class probability.

Under a distributed strategy each process tests a share of the split (Lightning's
distributed sampler, which repeats a few events so that the shares are equal). The
predictions are gathered with their dataset indices, so the report covers every
tested event exactly once, in dataset order, whatever the world size.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import IterableDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

log = logging.getLogger(__name__)


class TestReport(pl.Callback):
    """Collects test predictions with their dataset indices and writes the report files at the end of testing."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.classes: list[str] | None = getattr(dataset, "classes", None)
        self._batch_indices: list[list[int]] = []
        self._indices: list[torch.Tensor] = []
        self._probabilities: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._indices, self._probabilities, self._targets = [], [], []
        self._batch_indices = []
        if self.classes is None:
            return
        # The dataset indices of each batch this process will test: its batch sampler (with
        # Lightning's distributed sampler inside under DDP) does not shuffle the test split,
        # so iterating it once more gives the order the batches come in. An iterable
        # dataset has no indices (and its sampler never ends).
        loader = trainer.test_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        batch_sampler = getattr(loader, "batch_sampler", None)
        if batch_sampler is not None and not isinstance(getattr(loader, "dataset", None), IterableDataset):
            self._batch_indices = [list(batch) for batch in batch_sampler]

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.classes is None or batch_idx >= len(self._batch_indices):
            return
        logits = outputs["outputs"]  # what LitModel.test_step returns
        self._indices.append(torch.as_tensor(self._batch_indices[batch_idx][: len(logits)]))
        self._probabilities.append(torch.softmax(logits.float(), dim=-1).cpu())
        self._targets.append(batch[1].cpu())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.classes is None or trainer.world_size == 1:
            return
        # Every process takes part; rank zero receives the shares and keeps their union.
        share = (self._cat(self._indices), self._cat(self._probabilities), self._cat(self._targets))
        shares: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
        torch.distributed.gather_object(share, shares, dst=0)
        if shares is not None:
            self._indices, self._probabilities, self._targets = (list(parts) for parts in zip(*shares))

    @staticmethod
    def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.empty(0)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        folder = Path(trainer.logger.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {name.removeprefix("test/"): float(value) for name, value in trainer.callback_metrics.items() if name.startswith("test/")}
        parts = [part for part in zip(self._indices, self._probabilities, self._targets) if len(part[0])]
        if self.classes is not None and parts:
            indices, probabilities, targets = (torch.cat(column) for column in zip(*parts))
            # One row per event, in dataset order: the events the distributed sampler repeated are dropped.
            order = torch.argsort(indices, stable=True)
            first = torch.ones(len(order), dtype=torch.bool)
            first[1:] = indices[order][1:] != indices[order][:-1]
            keep = order[first]
            metrics.update(self._write_classification(folder, indices[keep], probabilities[keep], targets[keep]))
        elif self.classes is not None:
            log.warning("test report: no predictions with dataset indices (an iterable dataset, or no test batches); "
                        "test_metrics.json holds the logged test/* values only")
        (folder / "test_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def _write_classification(self, folder: Path, indices: torch.Tensor, probabilities: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
        n_classes = len(self.classes)
        predicted = probabilities.argmax(dim=-1)
        # Rank zero alone computes these, over predictions already gathered from every process.
        local = {"num_classes": n_classes, "sync_on_compute": False}
        confusion = MulticlassConfusionMatrix(**local)
        confusion.update(predicted, targets)
        figure, axes = confusion.plot(labels=self.classes)
        axes.set_title(f"test split, {len(targets)} events")
        figure.savefig(folder / "confusion_matrix.png", dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
        with (folder / "test_predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session", "onset", "true_label", "predicted_label", *(f"p_{name}" for name in self.classes)])
            for row, index in enumerate(indices.tolist()):
                session, onset, true_label = self.dataset.describe(index)
                writer.writerow([session, f"{onset:.6f}", true_label, self.classes[int(predicted[row])],
                                 *(f"{float(p):.6f}" for p in probabilities[row])])
        return {
            "accuracy": float(MulticlassAccuracy(average="micro", **local)(predicted, targets)),
            "f1": float(MulticlassF1Score(average="macro", **local)(predicted, targets)),
            "n_samples": int(len(targets)),
            "classes": list(self.classes),
            "confusion_matrix": confusion.compute().tolist(),
        }

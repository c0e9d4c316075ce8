"""BrainDataModule: the train / val / test loaders of an experiment, in one LightningDataModule."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from brain_gen.config.schema import DataLoaderConfig
from brain_gen.dataset.loaders import make_loader


class BrainDataModule(pl.LightningDataModule):
    """Makes the three loaders with one loader class and one set of options.

    ``batch_size`` is the single attribute every loader reads, which is where
    Lightning's BatchSizeFinder looks for it and writes the size it finds.

    Args:
        datasets: ``{"train": ..., "val": ..., "test": ...}``.
        loader_class: DataLoader or a subclass taking the dataset first.
        options: the ``dataloader`` config section.
        extras: keyword arguments only the loader class understands (the typed options of MixupDataLoader or TextDataLoader).
        eval_extras: replacements in ``extras`` for the val and test loaders
            (MixupDataLoader gets ``mix=False`` there).
    """

    def __init__(
        self,
        datasets: dict[str, Dataset],
        loader_class: type[DataLoader],
        options: DataLoaderConfig,
        extras: dict[str, Any] | None = None,
        eval_extras: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.datasets = datasets
        self.loader_class = loader_class
        self.options = options
        self.extras = dict(extras or {})
        self.eval_extras = dict(eval_extras or {})
        self.batch_size = options.batch_size

    def make_loader(self, split: str) -> DataLoader | None:
        """The loader of one split; None when the split has no windows."""
        dataset = self.datasets[split]
        if len(dataset) == 0:
            return None
        return make_loader(dataset, self.loader_class, self.options, self.batch_size, split == "train", self.extras, self.eval_extras)

    def train_dataloader(self) -> DataLoader:
        return self.make_loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self.make_loader("val") or []

    def test_dataloader(self) -> DataLoader | list:
        return self.make_loader("test") or []

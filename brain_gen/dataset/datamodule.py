"""BrainDataModule: the train / val / test loaders of an experiment, in one LightningDataModule."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, IterableDataset

from brain_gen.config.schema import DataLoaderConfig
from brain_gen.dataset.loaders import make_loader
from brain_gen.dataset.order import TrainingOrder
from brain_gen.seeding import agreed_seed

log = logging.getLogger(__name__)


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
        seed: the run's seed; the training order and its loader workers derive from it.
        distributed_sampler: False when the Trainer's ``use_distributed_sampler`` is off:
            every rank then goes through all the training windows.

    The training loader's place in its order is saved in checkpoints, so that a
    resumed run goes on with the epoch it stopped in, and skips the batches it trained.
    """

    def __init__(
        self,
        datasets: dict[str, Dataset],
        loader_class: type[DataLoader],
        options: DataLoaderConfig,
        extras: dict[str, Any] | None = None,
        eval_extras: dict[str, Any] | None = None,
        seed: int = 0,
        distributed_sampler: bool = True,
    ):
        super().__init__()
        self.datasets = datasets
        self.loader_class = loader_class
        self.options = options
        self.extras = dict(extras or {})
        self.eval_extras = dict(eval_extras or {})
        self.batch_size = options.batch_size
        self.seed = seed
        self.distributed_sampler = distributed_sampler
        # Set when resuming a run whose batch size a search chose: the checkpoint's size is kept.
        self.keep_checkpoint_batch_size = False

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.seed = agreed_seed(self.trainer, self.seed)

    def make_loader(self, split: str) -> DataLoader | None:
        """The loader of one split; None when the split has no windows."""
        dataset = self.datasets[split]
        if len(dataset) == 0:
            return None
        order = None
        if split == "train" and not isinstance(dataset, IterableDataset):
            order = self._training_order(dataset)
        # A loader that draws (MixupDataLoader) draws from the run's seed, as the ranks agreed on it.
        extras = {**self.extras, "seed": self.seed} if "seed" in self.extras else self.extras
        return make_loader(dataset, self.loader_class, self.options, self.batch_size, split == "train", extras, self.eval_extras, order=order)

    def _training_order(self, dataset: Dataset) -> TrainingOrder:
        trainer = self.trainer
        shared = trainer is not None and trainer.world_size > 1 and self.distributed_sampler
        return TrainingOrder(dataset, self.seed, trainer.global_rank if shared else 0, trainer.world_size if shared else 1)

    def train_dataloader(self) -> DataLoader:
        loader = self.make_loader("train")
        order = loader.sampler
        if isinstance(order, TrainingOrder) and self.trainer is not None:
            # The epoch Lightning is about to give the sampler (set_epoch). It gives it only
            # after this loader's first iterator is made, and loader workers take their first
            # indices then: a run resumed at an epoch's end would start with epoch 0's order.
            order.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
            # Lightning keeps the place of a loader with state_dict / load_state_dict in
            # every checkpoint, and hands it back on resume before the loader is iterated.
            loader.state_dict = functools.partial(self._place_in_order, order)
            loader.load_state_dict = functools.partial(self._resume_order, order)
        return loader

    def _place_in_order(self, order: TrainingOrder) -> dict[str, Any]:
        """Where training stands in the training order, for a checkpoint."""
        trainer = self.trainer
        # Batches trained in this epoch, counting one whose end a checkpoint is saved at.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "epoch": order.epoch,
            "epoch_finished": done >= trainer.num_training_batches,
            "windows_done": done * self.batch_size,  # of this rank's share
            "seed": order.seed,
            "world_size": order.num_replicas,
        }

    def _resume_order(self, order: TrainingOrder, place: dict[str, Any]) -> None:
        if place["epoch_finished"]:
            order.resume(place["epoch"] + 1, 0)
            return
        if (place.get("seed"), place.get("world_size")) != (order.seed, order.num_replicas):
            log.warning(
                "resuming inside epoch %d with seed %s on %d process(es), where the checkpoint was trained with seed %s on %s: "
                "the rest of this epoch follows another order, so the run is not an exact continuation "
                "(resume with seed: %s and the same processes to continue exactly)",
                place["epoch"], order.seed, order.num_replicas, place.get("seed"), place.get("world_size"), place.get("seed"),
            )
        order.resume(place["epoch"], place["windows_done"])

    def state_dict(self) -> dict[str, Any]:
        """The batch size trained with: a resumed run keeps it instead of searching again."""
        return {"batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.keep_checkpoint_batch_size and "batch_size" in state_dict:
            self.batch_size = int(state_dict["batch_size"])

    def val_dataloader(self) -> DataLoader | list:
        return self.make_loader("val") or []

    def test_dataloader(self) -> DataLoader | list:
        return self.make_loader("test") or []

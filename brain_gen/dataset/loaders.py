"""Loader classes by config name, their extra arguments, and how a split's loader is made.

Kept free of Lightning so that an evaluation process can build the very loaders
training uses without importing it.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from brain_gen.config.errors import ConfigError
from brain_gen.config.schema import DataLoaderConfig, ExperimentConfig
from brain_gen.dataset.mixup import MixupDataLoader
from brain_gen.dataset.order import TrainingOrder
from brain_gen.dataset.text import TextDataLoader

# The built-in `dataloader_class` names and their import paths.
BUILTIN_LOADERS = {
    "DataLoader": "torch.utils.data:DataLoader",
    "MixupDataLoader": "brain_gen.dataset.mixup:MixupDataLoader",
    "TextDataLoader": "brain_gen.dataset.text:TextDataLoader",
}


def loader_extras(config: ExperimentConfig, loader_class: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the loader class: for every loader, and changes for val/test.

    A class given by import path gets the extras of the built-in loader it extends.
    """
    options = config.dataloader
    bases = {"MixupDataLoader": MixupDataLoader, "TextDataLoader": TextDataLoader}
    owner = next((name for name, base in bases.items() if issubclass(loader_class, base)), None)
    problems = options.misplaced_keys(owner, config.dataloader_class)
    if problems:
        raise ConfigError(problems)
    if owner == "MixupDataLoader":
        # The run's seed; BrainDataModule replaces it with the one the ranks agreed on.
        return {"options": options.options(owner), "seed": config.seed}, {"mix": False}
    if owner == "TextDataLoader":
        if options.tokenizer_path is None:
            raise ConfigError(f"dataloader.tokenizer_path is required with dataloader_class: {config.dataloader_class}")
        return {"options": options.options(owner)}, {}
    return {}, {}



def make_loader(
    dataset: Dataset,
    loader_class: type[DataLoader],
    options: DataLoaderConfig,
    batch_size: int,
    training: bool,
    extras: dict[str, Any],
    eval_extras: dict[str, Any],
    num_workers: int | None = None,
    order: TrainingOrder | None = None,
) -> DataLoader:
    """The loader of one split: shuffled and (optionally) dropping its last batch only for training.

    ``order`` shuffles the training loader the same way in every run of a seed (and
    seeds its workers); without one, torch's RandomSampler shuffles it.
    """
    workers = options.num_workers if num_workers is None else num_workers
    kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        # Only training drops the last partial batch: evaluation must see every window.
        drop_last=options.drop_last and training,
        num_workers=workers,
        pin_memory=options.pin_memory,
        persistent_workers=options.persistent_workers and workers > 0,
    )
    if workers > 0:
        kwargs["prefetch_factor"] = options.prefetch_factor
    if training and order is not None:
        kwargs.update(sampler=order, generator=order.generator)
    else:
        kwargs["shuffle"] = training
    return loader_class(dataset, **(extras if training else {**extras, **eval_extras}), **kwargs)

"""FSDP through Lightning's FSDPStrategy, with sharded checkpoints that appear whole or not at all.

With ``trainer.strategy: fsdp`` (or ``fsdp_cpu_offload``) the run's Trainer gets a
:class:`DurableFSDPStrategy` set up as Lightning's registered strategy of that name
would be, plus the state-dict choice of ``trainer.fsdp_state_dict_type``:

- ``full``: the whole model and optimizer state are gathered on rank zero and written
  as one ``.ckpt`` file, through the run's CheckpointIO (atomic, durable), like any
  other checkpoint. Readable anywhere with ``torch.load``, also by the eval runner.
- ``sharded``: every process writes its own shard into one ``torch.distributed.checkpoint``
  folder named like the file would be. Lightning writes that folder in place; here it
  is written under a temporary name and renamed once every shard and the metadata are
  on disk, so that a crash leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.strategies import FSDPStrategy, StrategyRegistry

from brain_gen.training.durable_write import TEMPORARY_SUFFIX, fsync_folder, temporary_path

# The file Lightning writes next to the shards, holding everything but the model and optimizer states.
SHARDED_METADATA_FILE = "meta.pt"


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is the folder of a sharded FSDP checkpoint."""
    return path.is_dir() and (path / SHARDED_METADATA_FILE).is_file()


def durable_fsdp_strategy(name: str, state_dict_type: str) -> DurableFSDPStrategy:
    """The strategy Lightning registers under ``name`` (``fsdp``, ``fsdp_cpu_offload``), with durable sharded saves."""
    return DurableFSDPStrategy(**StrategyRegistry[name]["init_params"], state_dict_type=state_dict_type)


class DurableFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy whose sharded checkpoints are written to a temporary folder, then renamed."""

    def __init__(self, *args: Any, state_dict_type: str = "full", **kwargs: Any):
        super().__init__(*args, state_dict_type=state_dict_type, **kwargs)
        self.sharded_checkpoints = state_dict_type == "sharded"

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: str | os.PathLike, storage_options: Any | None = None) -> None:
        if not self.sharded_checkpoints:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        final = Path(self.broadcast(str(filepath)))
        # One name for every rank, chosen by rank zero; the suffix is the one of every
        # unfinished write, so that leftovers of a crash are recognised as such.
        partial = Path(self.broadcast(str(temporary_path(final))))
        if self.is_global_zero and partial.exists():
            shutil.rmtree(partial)
        self.barrier("sharded checkpoint: start")
        error: Exception | None = None
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
        except Exception as exc:  # kept until every rank knows, so that none waits for the others
            error = exc
        # Every shard is written before rank zero makes the folder visible under its name;
        # if any process failed, every one of them raises and the folder goes.
        if not all_ranks_agree(error is None):
            if self.is_global_zero:
                shutil.rmtree(partial, ignore_errors=True)
            raise error or RuntimeError(f"sharded checkpoint {final}: another process failed to write its shard")
        if self.is_global_zero:
            publish_folder(partial, final)
        self.barrier("sharded checkpoint: published")


def all_ranks_agree(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (an object gather, which works on gloo and NCCL alike)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return ok
    answers: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(answers, ok)
    return all(answers)


def publish_folder(partial: Path, final: Path) -> None:
    """Make the finished folder ``partial`` durable and give it the name ``final``.

    An existing ``final`` (a checkpoint saved again under the same name) is moved
    aside first and removed after: at every moment one complete checkpoint exists
    under one of the two names.
    """
    for folder, _, files in os.walk(partial):
        for name in files:
            descriptor = os.open(Path(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_folder(Path(folder))
    replaced = temporary_path(final).with_suffix(f".replaced{TEMPORARY_SUFFIX}") if final.exists() else None
    if replaced is not None:
        os.replace(final, replaced)
    os.replace(partial, final)
    fsync_folder(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced) if replaced.is_dir() else replaced.unlink()

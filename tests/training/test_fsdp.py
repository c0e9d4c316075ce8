"""FSDP: refused on CPU in one line, and sharded checkpoints that appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from lightning_fabric.plugins.environments import LightningEnvironment
from pytorch_lightning.strategies import FSDPStrategy

from brain_gen.cli import main
from brain_gen.config.schema import FSDP_STRATEGIES
from brain_gen.training.checkpointing import newest_complete_checkpoint
from brain_gen.training.checks import checkpoint_file_problems
from brain_gen.training.fsdp import SHARDED_METADATA_FILE, DurableFSDPStrategy, durable_fsdp_strategy, is_sharded_checkpoint
from tests.conftest import tiny_config, write_config


def test_the_fsdp_strategy_names_and_metadata_file_are_lightnings():
    from lightning_fabric.utilities.load import _METADATA_FILENAME

    assert FSDP_STRATEGIES == tuple(FSDPStrategy.get_registered_strategies())
    assert SHARDED_METADATA_FILE == _METADATA_FILENAME
    strategy = durable_fsdp_strategy("fsdp_cpu_offload", "sharded")
    assert strategy.cpu_offload.offload_params and strategy.sharded_checkpoints


def test_fsdp_on_cpu_and_its_keys_out_of_place_are_reported_before_the_run(tmp_path, tiny_dataset, capsys):
    fsdp = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"strategy": "fsdp", "fsdp_state_dict_type": "sharded"}, eval_runner={"enabled": True})
    assert main(["validate", str(write_config(tmp_path, fsdp))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("brain-gen: error: trainer.strategy: The strategy `fsdp` requires a GPU accelerator") for line in lines), lines
    assert any(line.startswith("brain-gen: error: eval_runner.enabled: evaluations load whole checkpoints") for line in lines), lines
    ddp = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"strategy": "ddp", "fsdp_state_dict_type": "sharded"})
    assert main(["validate", str(write_config(tmp_path, ddp))]) == 2
    assert "fsdp_state_dict_type: sharded is only used with strategy fsdp or fsdp_cpu_offload" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def sharded_strategy(rank: int = 0, world_size: int = 1) -> DurableFSDPStrategy:
    environment = LightningEnvironment()
    environment.set_global_rank(rank)
    environment.set_world_size(world_size)
    return DurableFSDPStrategy(state_dict_type="sharded", cluster_environment=environment)


def lightning_checkpoint(value: float, step: int) -> dict:
    return {"state_dict": {"weight": torch.full((4,), value)}, "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}], "global_step": step}


def read_sharded(folder: Path) -> tuple[torch.Tensor, dict]:
    state = {"model": {"weight": torch.empty(4)}}
    dcp.load(state, checkpoint_id=folder)
    return state["model"]["weight"], torch.load(folder / "meta.pt", weights_only=False)


def _save_from_rank(rank: int, folder: str) -> None:
    """One process of a two-process gloo group saving a sharded checkpoint twice under one name."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2)
    try:
        strategy = sharded_strategy(rank, world_size=2)
        strategy.save_checkpoint(lightning_checkpoint(1.0, step=5), Path(folder, "last-checkpoint.ckpt"))
        strategy.save_checkpoint(lightning_checkpoint(2.0, step=6), Path(folder, "last-checkpoint.ckpt"))
        # Rank zero's metadata file fails after every shard is written: both ranks raise, none waits.
        broken = lightning_checkpoint(3.0, step=7)
        if rank == 0:
            broken["callbacks"] = {"cannot be pickled": lambda: None}
        try:
            strategy.save_checkpoint(broken, Path(folder, "last-checkpoint.ckpt"))
            outcome = "saved"
        except Exception as exc:
            outcome = type(exc).__name__
        Path(folder, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_write_one_sharded_checkpoint_folder_and_replace_it_whole(tmp_path):
    torch.multiprocessing.start_processes(_save_from_rank, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert outcomes[0] != "saved" and outcomes[1] == "RuntimeError", outcomes
    folder = tmp_path / "last-checkpoint.ckpt"
    assert is_sharded_checkpoint(folder)
    weight, metadata = read_sharded(folder)
    assert torch.equal(weight, torch.full((4,), 2.0)) and metadata["global_step"] == 6
    # Nothing left of the temporary folders or of the checkpoint it replaced.
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []
    assert newest_complete_checkpoint(tmp_path) == folder
    assert checkpoint_file_problems("resume_from", folder, sharded=True) == []
    assert checkpoint_file_problems("--ckpt", folder) == [
        f"--ckpt: {folder} is a sharded FSDP checkpoint, which only an FSDP run can load (trainer.strategy: fsdp); "
        "save with trainer.fsdp_state_dict_type: full to load it elsewhere"
    ]


def test_a_sharded_save_that_fails_midway_leaves_the_previous_checkpoint_under_its_name(tmp_path):
    strategy = sharded_strategy()
    folder = tmp_path / "last-checkpoint.ckpt"
    strategy.save_checkpoint(lightning_checkpoint(1.0, step=5), folder)
    broken = lightning_checkpoint(2.0, step=6)
    broken["callbacks"] = {"cannot be pickled": lambda: None}  # the metadata file fails after the shards are written
    with pytest.raises(Exception, match="pickle"):
        strategy.save_checkpoint(broken, folder)
    weight, metadata = read_sharded(folder)
    assert torch.equal(weight, torch.full((4,), 1.0)) and metadata["global_step"] == 5
    assert [path.name for path in tmp_path.iterdir()] == ["last-checkpoint.ckpt"]


def test_a_sharded_checkpoint_resumes_only_an_fsdp_run(tmp_path, tiny_dataset, capsys):
    folder = tmp_path / "last-checkpoint.ckpt"
    sharded_strategy().save_checkpoint(lightning_checkpoint(1.0, step=5), folder)
    config = tiny_config(tmp_path / "runs", tiny_dataset, resume_from=str(folder))
    assert main(["validate", str(write_config(tmp_path, config))]) == 2
    assert f"resume_from: {folder} is a sharded FSDP checkpoint, which only an FSDP run can load" in capsys.readouterr().err

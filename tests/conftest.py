"""Shared helpers: tiny datasets written in the session format, tiny configs, a run's scalars, a BPE tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from brain_gen.cli import main
from brain_gen.dataset.session import SessionMeta, write_session
from brain_gen.demo import make_synthetic_dataset


def write_constant_session(
    folder: Path,
    chunk_lengths: list[int],
    ch_names: list[str] | None = None,
    sfreq: float = 10.0,
    subject: str | None = None,
) -> Path:
    """A session whose chunk k holds the value k everywhere: easy to trace windows back."""
    ch_names = ch_names or ["A", "B"]
    chunks = [np.full((len(ch_names), length), float(k), dtype=np.float32) for k, length in enumerate(chunk_lengths)]
    positions = [[float(i), 0.0] for i in range(len(ch_names))]
    return write_session(folder, chunks, SessionMeta(sfreq, ch_names, positions, subject=subject))


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Six 40-second sessions of 4 channels at 50 Hz, two per subject."""
    return make_synthetic_dataset(
        tmp_path / "data", n_sessions=6, n_channels=4, sfreq=50.0, session_seconds=40.0, chunk_seconds=20.0, seed=1
    )


def tiny_config(save_dir: Path, dataset_root: Path, **sections: Any) -> dict[str, Any]:
    """A config that trains a one-layer ChannelGPT on ``tiny_dataset`` in seconds."""
    config: dict[str, Any] = {
        "save_dir": str(save_dir),
        "model_name": "ChannelGPT",
        "loss_name": "CrossEntropy",
        "model_config": {
            "vocab_size": 256,
            "num_channels": 4,
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "max_position_embeddings": 64,
        },
        "datasplitter": {
            "dataset_root": str(dataset_root),
            "example_seconds": 1.0,
            "val_ratio": 0.2,
            "test_ratio": 0.2,
            "dataset_kwargs": {"max_val": 4.0},
        },
        "dataloader": {"batch_size": 8},
        "lightning": {"lr": 3.0e-3, "weight_decay": 0.01},
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "tune_batch_size": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    }
    return with_changes(config, **sections)


def with_changes(config: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """Merge mappings into existing sections of ``config``; set every other value."""
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder: tag -> [(step, value), ...]."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def text_tokenizer(tmp_path, tiny_dataset, capsys):
    """A BPE tokenizer trained with the CLI on the tiny dataset's training split: its folder."""
    config = tiny_config(tmp_path / "runs", tiny_dataset, datasplitter={"dataset_class": "BPEDataset", "dataset_kwargs": {"max_val": 4.0, "group_size": 5}})
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["tokenizer-text", str(path), "--out", str(tmp_path / "tok"), "--vocab-size", "400", "--max-windows", "60"]) == 0
    capsys.readouterr()
    return tmp_path / "tok"


def text_changes(tokenizer_dir: Path, **dataloader) -> dict:
    return {
        "dataloader_class": "TextDataLoader",
        "dataloader": {"tokenizer_path": str(tokenizer_dir), **dataloader},
        "datasplitter": {"dataset_class": "BPEDataset", "dataset_kwargs": {"max_val": 4.0, "group_size": 5}},
        "model_name": "TextGPT",
        "model_config": {"vocab_size": 400, "num_channels": 4, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_position_embeddings": 512},
    }

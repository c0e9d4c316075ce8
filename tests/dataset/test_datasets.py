"""Mu-law coding and the next-step datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brain_gen.config.schema import DataSplitterConfig
from brain_gen.dataset.datasets import ChunkDataset, ChunkDatasetContinuous
from brain_gen.dataset.mulaw import mu_law_decode, mu_law_encode
from brain_gen.dataset.splitter import DataSplitter
from brain_gen.dataset.session import SessionMeta, write_session


def test_mu_law_matches_closed_form():
    mu, max_val = 255, 10.0
    x = torch.tensor([-20.0, -10.0, -1.0, 0.0, 0.5, 10.0, 30.0])
    expected = []
    for value in x.tolist():
        scaled = max(-1.0, min(1.0, value / max_val))
        companded = math.copysign(math.log1p(mu * abs(scaled)) / math.log1p(mu), scaled)
        expected.append(math.floor((companded + 1) / 2 * mu + 0.5))
    codes = mu_law_encode(x, mu, max_val)
    assert codes.dtype == torch.int64 and codes.tolist() == expected
    assert codes.min() == 0 and codes.max() == mu


def test_mu_law_round_trip_is_close_inside_range():
    x = torch.linspace(-9.5, 9.5, 1001)
    decoded = mu_law_decode(mu_law_encode(x, 255, 10.0), 255, 10.0)
    # The step between codes grows with amplitude; at 9.5 it is about 0.4.
    assert (decoded - x).abs().max() < 0.25


def ramp_split(tmp_path, dtype=np.float32):
    data = np.stack([np.linspace(-5, 5, 40), np.linspace(5, -5, 40)]).astype(dtype)
    write_session(tmp_path / "d" / "s0", [data], SessionMeta(10.0, ["A", "B"], [[0, 0], [1, 0]]))
    config = DataSplitterConfig(dataset_root=str(tmp_path / "d"), example_seconds=2.0, val_ratio=0, test_ratio=0)
    return DataSplitter(config, tmp_path / "cache").split()["train"], data


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_chunk_dataset_returns_shifted_code_pairs(tmp_path, dtype):
    split, data = ramp_split(tmp_path, dtype)
    dataset = ChunkDataset(split, max_val=5.0, mu=15)
    assert len(dataset) == 2 and dataset.vocab_size == 16 and dataset.sequence_length == 19
    inputs, targets = dataset[1]
    codes = mu_law_encode(torch.from_numpy(data[:, 20:40].astype(np.float32)), 15, 5.0)
    assert inputs.dtype == torch.int64 and inputs.shape == (2, 19)
    assert torch.equal(inputs, codes[:, :-1]) and torch.equal(targets, codes[:, 1:])
    assert codes.min() >= 0 and codes.max() <= 15


def test_continuous_dataset_returns_shifted_float_pairs(tmp_path):
    split, data = ramp_split(tmp_path)
    inputs, targets = ChunkDatasetContinuous(split)[0]
    assert inputs.dtype == torch.float32
    assert torch.equal(inputs, torch.from_numpy(data[:, 0:19])) and torch.equal(targets, torch.from_numpy(data[:, 1:20]))
    targets.add_(1)  # batches own their memory; the memory-mapped file is untouched
    assert torch.equal(ChunkDatasetContinuous(split)[0][1], torch.from_numpy(data[:, 1:20]))


def test_datasets_survive_pickling_for_worker_processes(tmp_path):
    import pickle

    split, _ = ramp_split(tmp_path)
    dataset = ChunkDataset(split)
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert all(torch.equal(a, b) for a, b in zip(first, clone[0]))

"""brain-gen baselines: closed-form references scored in the model's code space, as val/loss is."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import yaml
from scipy.stats import norm

from brain_gen.cli import main
from brain_gen.config.schema import DataSplitterConfig
from brain_gen.dataset.datasets import ChunkDataset
from brain_gen.dataset.splitter import DataSplitter
from brain_gen.demo import make_synthetic_dataset
from tests.conftest import tiny_config, write_config


def hand_ar1_nats(config: dict, cache) -> float:
    """AR(1) with intercept, written out: one least-squares fit over every training window, Gaussian mass per code bin."""
    settings = config["datasplitter"]
    splits = DataSplitter(DataSplitterConfig(**settings), cache_dir=cache).split()
    mu, max_val = 255, settings["dataset_kwargs"]["max_val"]

    def value_of(codes):  # the value each code stands for (mu-law expansion)
        c = codes / mu * 2.0 - 1.0
        return np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu * max_val

    def lower_edge(k):  # the smallest value that rounds to code k
        c = 2 * (k - 0.5) / mu - 1
        return np.where(k <= 0, -np.inf, np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu * max_val)

    def rows(split):
        dataset = ChunkDataset(split, max_val=max_val)
        for index in range(len(dataset)):
            inputs, targets = dataset[index]
            codes = torch.cat([inputs, targets[:, -1:]], dim=1).double().numpy()
            for channel in codes:
                values = value_of(channel)
                previous = values[:-1]  # the value before each target: every target has one in the window
                yield previous, values[1:], channel[1:].astype(int)

    train = list(rows(splits["train"]))
    design = np.concatenate([np.column_stack([np.ones_like(p), p]) for p, _, _ in train])
    target = np.concatenate([y for _, y, _ in train])
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    sigma = math.sqrt(np.mean((target - design @ coefficients) ** 2))
    nats = []
    for previous, _, codes in rows(splits["val"]):
        mean = coefficients[0] + coefficients[1] * previous
        upper = np.where(codes >= mu, np.inf, lower_edge(codes + 1))
        mass = norm.cdf((upper - mean) / sigma) - norm.cdf((lower_edge(codes) - mean) / sigma)
        nats.append(-np.log(mass))
    return float(np.concatenate(nats).mean())


def test_the_ar1_baseline_matches_a_hand_computed_cross_entropy(tmp_path, capsys):
    # One channel, so the per-channel AR(1) is the single fit written out above.
    data = make_synthetic_dataset(tmp_path / "data", n_sessions=5, n_channels=1, sfreq=50.0, session_seconds=20.0, chunk_seconds=10.0, seed=3)
    config = tiny_config(tmp_path / "runs", data, datasplitter={"test_ratio": 0.0})
    path = write_config(tmp_path, config)
    assert main(["baselines", str(path), "--ar", "1", "--var", ""]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "baselines.json").read_text())
    expected = hand_ar1_nats(config, tmp_path / "hand-cache")
    assert abs(result["scores"]["val"]["AR(1)"] - expected) < 1e-6
    assert "AR(1)" in out and "unigram" in out
    assert result["scores"]["val"]["AR(1)"] < result["scores"]["val"]["unigram"]


def test_lags_before_the_windows_start_are_zero():
    from brain_gen.eval.baselines import lagged

    lags = lagged(np.array([[1.0, 2.0, 3.0, 4.0]]), order=2)  # targets at t = 1, 2, 3; lags t-1 and t-2
    assert lags.tolist() == [[[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]]


def test_var_sees_what_one_channel_says_about_another_and_ar_does_not(tmp_path):
    # Channel 1 repeats channel 0 one sample later: only a model that mixes channels can use that.
    from brain_gen.dataset.session import SessionMeta, write_session

    rng = np.random.default_rng(0)
    for index in range(5):
        source = rng.standard_normal(1001).astype(np.float32)
        chunk = np.stack([source[1:], source[:-1] + 0.05 * rng.standard_normal(1000).astype(np.float32)])
        write_session(tmp_path / "data" / f"sub-{index}", [chunk], SessionMeta(50.0, ["A", "B"], [[0.0, 0.0], [1.0, 0.0]]))
    config = tiny_config(tmp_path / "runs", tmp_path / "data", datasplitter={"test_ratio": 0.0})
    assert main(["baselines", str(write_config(tmp_path, config)), "--ar", "2", "--var", "2"]) == 0
    scores = json.loads((tmp_path / "runs" / "baselines.json").read_text())["scores"]["val"]
    assert scores["VAR(2)"] < scores["AR(2)"] - 1.0  # over a nat per code better, pooled over both channels


def test_baselines_refuse_other_datasets_and_keep_an_earlier_result(tmp_path, tiny_dataset, capsys):
    continuous = tiny_config(tmp_path / "runs", tiny_dataset, datasplitter={"dataset_class": "ChunkDatasetContinuous", "dataset_kwargs": {}})
    assert main(["baselines", str(write_config(tmp_path, continuous)), "--ar", "1", "--var", ""]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("brain-gen: error: datasplitter.dataset_class:") and "ChunkDataset" in line

    path = write_config(tmp_path, tiny_config(tmp_path / "runs", tiny_dataset))
    assert main(["baselines", str(path), "--ar", "1", "--var", "1"]) == 0
    first = (tmp_path / "runs" / "baselines.json").read_text()
    capsys.readouterr()
    assert main(["baselines", str(path), "--ar", "2", "--var", ""]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "baselines.json" in line and "--overwrite" in line
    assert (tmp_path / "runs" / "baselines.json").read_text() == first
    assert main(["baselines", str(path), "--ar", "2", "--var", "", "--overwrite"]) == 0
    assert "AR(2)" in json.loads((tmp_path / "runs" / "baselines.json").read_text())["scores"]["val"]


def test_train_prints_its_best_val_loss_next_to_the_strongest_baseline(tmp_path, tiny_dataset, capsys):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 3})
    config["eval_runner"] = {"enabled": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["baselines", str(path), "--ar", "1,2", "--var", ""]) == 0
    scores = json.loads((tmp_path / "runs" / "baselines.json").read_text())["scores"]["val"]
    name = min(scores, key=scores.get)
    capsys.readouterr()
    assert main(["train", str(path)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best val/loss")]
    assert f"strongest baseline, {name} at {scores[name]:.4f}" in line

"""Event-locked classification, ConvClassifier, WaveNet, and the files test mode writes."""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from brain_gen.cli import main
from brain_gen.config.loading import load_config
from brain_gen.dataset.datasets import ChunkDatasetClassification
from brain_gen.dataset.splitter import DataSplitter
from brain_gen.demo import make_evoked_dataset, make_synthetic_dataset
from brain_gen.models.wavenet import WaveNet
from tests.conftest import tiny_config, write_constant_session
from tests.conftest import scalars

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def classification_config(tmp_path: Path, data: Path, **changes) -> dict:
    config = yaml.safe_load((EXAMPLES / "conv_classifier.yaml").read_text())
    config["save_dir"] = str(tmp_path / "runs")
    config["datasplitter"]["dataset_root"] = str(data)
    config["trainer"].update({"accelerator": "cpu", "enable_progress_bar": False, "log_every_n_steps": 1})
    for section, values in changes.items():
        config[section].update(values)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def splits_of(config: dict, tmp_path: Path) -> dict:
    loaded = load_config(config)
    return DataSplitter(loaded.datasplitter, cache_dir=tmp_path / "cache").split()


def test_conv_classifier_beats_chance_and_test_mode_writes_the_report(tmp_path, capsys):
    data = make_evoked_dataset(tmp_path / "evoked", n_sessions=10, session_seconds=40.0, seed=4)
    config = classification_config(tmp_path, data, trainer={"max_epochs": 12})
    path = write_yaml(tmp_path / "decode.yaml", config)
    assert main(["train", str(path)]) == 0
    capsys.readouterr()
    train_dir = tmp_path / "runs" / "logs" / "version_0"
    logged = scalars(train_dir)
    for name in ("val/accuracy", "val/f1", "train/f1", "val/perplexity"):
        assert name in logged, name
    best = next((train_dir / "checkpoints").glob("best-checkpoint*.ckpt"))

    assert main(["test", str(path), "--set", f"resume_from={best}"]) == 0
    test_dir = tmp_path / "runs" / "logs" / "version_1"
    metrics = json.loads((test_dir / "test_metrics.json").read_text())
    # Three balanced classes: chance is 1/3. The planted responses make them separable.
    assert metrics["accuracy"] > 1 / 3 + 0.3, metrics
    assert metrics["f1"] > 1 / 3 + 0.25 and metrics["classes"] == ["left", "right", "tone"]
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_samples"]
    assert (test_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (test_dir / "test_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n_samples"]
    assert list(rows[0]) == ["session", "onset", "true_label", "predicted_label", "p_left", "p_right", "p_tone"]
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in ("left", "right", "tone")]
        assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-4)
        assert row["predicted_label"] == ("left", "right", "tone")[int(np.argmax(probabilities))]
    accuracy = np.mean([row["true_label"] == row["predicted_label"] for row in rows])
    assert math.isclose(accuracy, metrics["accuracy"], abs_tol=1e-6)
    test_sessions = {session.name for session in splits_of(config, tmp_path)["test"].sessions}
    assert {row["session"] for row in rows} == test_sessions


def constant_sessions(root: Path, events: dict[str, list[tuple[float, str]]], chunk_lengths=(50, 50, 50)) -> Path:
    """Sessions at 10 Hz whose chunk k holds the value k, with the given events."""
    for index, (name, rows) in enumerate(events.items()):
        folder = write_constant_session(root / name, list(chunk_lengths), subject=f"sub-{index:02d}")
        (folder / "events.tsv").write_text("onset\tduration\ttrial_type\n" + "".join(f"{onset}\t0\t{label}\n" for onset, label in rows))
    return root


def dataset_for(tmp_path: Path, data: Path, **kwargs) -> dict[str, ChunkDatasetClassification]:
    config = tiny_config(tmp_path / "runs", data, datasplitter={"example_seconds": 1.0, "val_ratio": 0.0, "test_ratio": 0.0})
    splits = DataSplitter(load_config(config).datasplitter, cache_dir=tmp_path / "cache").split()
    return {name: ChunkDatasetClassification(split, **kwargs) for name, split in splits.items()}


def test_windows_cross_chunk_boundaries_and_edge_events_are_dropped_with_one_warning(tmp_path, caplog):
    data = constant_sessions(tmp_path / "data", {"s1": [(0.02, "a"), (4.8, "b"), (14.0, "a"), (14.9, "b")]})
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        dataset = dataset_for(tmp_path, data, tmin=-0.1, tmax=0.5)["train"]
    # 0.02 s starts before the recording; 14.9 s ends after its 15 s.
    assert len(dataset) == 2
    warnings = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert len(warnings) == 1 and "dropped 2 event(s)" in warnings[0]
    x, y = dataset[0]  # onset 4.8 s: samples 47..52, chunk 0 is samples 0..49
    assert x.dtype == torch.float32 and x.shape == (2, 6) and y.dtype == torch.int64 and int(y) == 1
    assert x[0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    x, y = dataset[1]  # onset 14.0 s: samples 139..144, all in chunk 2
    assert x[1].tolist() == [2.0] * 6 and int(y) == 0


def test_baseline_subtracts_each_channels_mean_over_the_span(tmp_path):
    data = constant_sessions(tmp_path / "data", {"s1": [(4.8, "a")]})
    x, _ = dataset_for(tmp_path, data, tmin=-0.1, tmax=0.5, baseline=[-0.1, 0.1])["train"][0]
    # Window 0,0,0,1,1,1 at t = -0.1 ... 0.4 s; a baseline over its first two samples has mean 0.
    assert x[0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    x, _ = dataset_for(tmp_path, data, tmin=-0.1, tmax=0.5, baseline=[0.1, 0.5])["train"][0]
    # Samples at 0.1 ... 0.4 s hold 0, 1, 1, 1: mean 0.75.
    assert torch.allclose(x[0], torch.tensor([-0.75, -0.75, -0.75, 0.25, 0.25, 0.25]))
    with pytest.raises(ValueError, match="baseline"):
        dataset_for(tmp_path, data, tmin=-0.1, tmax=0.5, baseline=[-0.5, 0.0])


def test_every_split_shares_one_class_mapping_and_classes_fix_order_and_filter(tmp_path):
    data = constant_sessions(
        tmp_path / "data",
        {f"sub-{k:02d}": rows for k, rows in enumerate([[(2.0, "cat")], [(2.0, "dog")], [(2.0, "emu")], [(3.0, "ant")], [(2.0, "cat")]])},
    )
    config = tiny_config(tmp_path / "runs", data, datasplitter={"example_seconds": 1.0, "val_ratio": 0.2, "test_ratio": 0.2})
    splits = DataSplitter(load_config(config).datasplitter, cache_dir=tmp_path / "cache").split()
    datasets = {name: ChunkDatasetClassification(split) for name, split in splits.items()}
    assert all(dataset.classes == ["ant", "cat", "dog", "emu"] for dataset in datasets.values())
    for dataset in datasets.values():
        for index in range(len(dataset)):
            assert dataset.classes[int(dataset[index][1])] == dataset.describe(index)[2]
    fixed = {name: ChunkDatasetClassification(split, classes=["emu", "cat"]) for name, split in splits.items()}
    assert all(dataset.classes == ["emu", "cat"] and dataset.num_classes == 2 for dataset in fixed.values())
    assert sum(len(dataset) for dataset in fixed.values()) == 3  # ant and dog events are left out


def test_n_classes_and_n_samples_mismatches_are_config_errors(tmp_path, capsys):
    data = make_evoked_dataset(tmp_path / "evoked", n_sessions=5, session_seconds=20.0)
    for key, value, expected in (("n_classes", 4, "model_config.n_classes: 4, but the data has 3 classes"),
                                 ("n_samples", 50, "model_config.n_samples: 50, but windows are 60 samples long")):
        config = classification_config(tmp_path, data)
        config["model_config"][key] = value
        assert main(["validate", str(write_yaml(tmp_path / "bad.yaml", config))]) == 2
        assert expected in capsys.readouterr().err


def test_wavenet_is_causal_and_its_receptive_field_is_as_documented():
    torch.manual_seed(0)
    model = WaveNet(vocab_size=16, num_channels=3, residual_channels=8, skip_channels=8, n_layers=4, dilation_cycle=4).eval()
    assert model.receptive_field == 16
    codes = torch.randint(0, 16, (2, 3, 40))
    changed = codes.clone()
    changed[:, :, 30:] = (changed[:, :, 30:] + 5) % 16
    out, out_changed = model(codes), model(changed)
    assert out.shape == (2, 3, 40, 16)
    assert torch.equal(out[:, :, :30], out_changed[:, :, :30])  # the future never leaks back
    assert not torch.equal(out[:, :, 30:], out_changed[:, :, 30:])
    early = codes.clone()
    early[:, 1, 10] = (early[:, 1, 10] + 1) % 16
    difference = (model(early) - out).abs().sum(dim=(0, 1, 3))
    # A change at step 10 of one channel reaches every channel from step 10 to 10 + 15, and no further.
    assert difference[:10].sum() == 0 and difference[10] > 0 and difference[26:].sum() == 0


def test_wavenet_example_trains_on_codes_and_on_the_mixup_quantize_path(tmp_path, capsys):
    make_synthetic_dataset(tmp_path / "demo_run" / "data", n_sessions=6, session_seconds=20.0, chunk_seconds=10.0)
    (tmp_path / "examples").mkdir()
    for name in ("wavenet.yaml", "conv_classifier.yaml"):
        shutil.copy(EXAMPLES / name, tmp_path / "examples" / name)
    example = str(tmp_path / "examples" / "wavenet.yaml")
    quick = ["--set", "trainer.max_epochs=1", "--set", "trainer.limit_train_batches=3", "--set", "trainer.limit_val_batches=2",
             "--set", "trainer.log_every_n_steps=1"]
    assert main(["train", example, *quick]) == 0
    mixup = ["--set", "dataloader_class=MixupDataLoader", "--set", "datasplitter.dataset_class=ChunkDatasetContinuous",
             "--set", "datasplitter.dataset_kwargs={target: codes, mu: 255, max_val: 4.0}", "--set", "dataloader.mixup_alpha=0.4",
             "--set", "dataloader.num_classes=256", "--set", "dataloader.quantize=true", "--set", "dataloader.max_val=4.0"]
    assert main(["train", example, *quick, *mixup]) == 0
    runs = sorted((tmp_path / "demo_run" / "runs_wavenet" / "logs").iterdir())
    assert len(runs) == 2 and all("train/loss" in scalars(run) for run in runs)
    capsys.readouterr()
    # The decoding example validates against the evoked data `make demo` writes.
    make_evoked_dataset(tmp_path / "demo_run" / "evoked_data", n_sessions=5, session_seconds=20.0)
    assert main(["validate", str(tmp_path / "examples" / "conv_classifier.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ConvClassifier with" in out and "windows of 60 samples (0.6 s)" in out
    # One sample per event: 18 events in each 20 s session (one a second, none in the first and last second).
    assert "  train: 2 sessions, 36 events" in out


def test_generative_test_report_has_loss_accuracy_and_perplexity(tmp_path, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, trainer={"max_epochs": 1, "limit_train_batches": 3})
    path = write_yaml(tmp_path / "gen.yaml", config)
    assert main(["train", str(path)]) == 0
    best = next((tmp_path / "runs" / "logs" / "version_0" / "checkpoints").glob("best-checkpoint*.ckpt"))
    assert main(["test", str(path), "--set", f"resume_from={best}"]) == 0
    metrics = json.loads((tmp_path / "runs" / "logs" / "version_1" / "test_metrics.json").read_text())
    assert {"loss", "accuracy", "perplexity", "f1"} <= set(metrics)
    # Batch-mean of exp(loss) is at least exp of the mean loss (Jensen), and close to it.
    assert math.exp(metrics["loss"]) <= metrics["perplexity"] * (1 + 1e-5) < 1.05 * math.exp(metrics["loss"])
    assert not (tmp_path / "runs" / "logs" / "version_1" / "confusion_matrix.png").exists()

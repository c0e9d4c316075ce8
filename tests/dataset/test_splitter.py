"""The datasplitter: windows, strategies, determinism, channel layout and cache."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from brain_gen.config.errors import ConfigError, DataError
from brain_gen.config.schema import DataSplitterConfig
from brain_gen.dataset.splitter import DataSplitter
from brain_gen.cli import main
from tests.conftest import tiny_config, write_config, write_constant_session


def splitter(tmp_path, **options) -> DataSplitter:
    return DataSplitter(DataSplitterConfig(**options), cache_dir=tmp_path / "cache")


def make_sessions(root, n_sessions, subjects=None, chunk_lengths=(30,), ch_names=None, sfreq=10.0):
    for index in range(n_sessions):
        subject = subjects[index] if subjects else None
        write_constant_session(root / f"session{index:02d}", list(chunk_lengths), ch_names, sfreq, subject)
    return root


def members(splits):
    return {name: {session.key for session in split.sessions} for name, split in splits.items()}


def test_window_count_matches_closed_form(tmp_path):
    # 2 s windows with 0.5 s overlap at 10 Hz: length 20, hop 15.
    root = make_sessions(tmp_path / "d", 1, chunk_lengths=(20, 35, 64, 19))
    split = splitter(tmp_path, dataset_root=str(root), example_seconds=2.0, overlap_seconds=0.5, val_ratio=0, test_ratio=0).split()["train"]
    expected = sum(1 + (n - 20) // 15 for n in (20, 35, 64))
    assert len(split) == expected
    assert split.window_samples == 20
    assert split.windows.tolist()[:4] == [[0, 0, 0], [0, 1, 0], [0, 1, 15], [0, 2, 0]]


def test_short_chunks_are_skipped_with_one_counting_warning(tmp_path, caplog):
    root = make_sessions(tmp_path / "d", 3, chunk_lengths=(5, 30, 8))
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        splitter(tmp_path, dataset_root=str(root), example_seconds=1.0, val_ratio=0, test_ratio=0).split()
    warnings = [r.getMessage() for r in caplog.records if "shorter than one window" in r.getMessage()]
    assert warnings == ["skipped 6 chunk(s) shorter than one window of 1 s (10 samples)"]


def test_a_training_split_of_short_chunks_is_one_error_with_its_counts(tmp_path, capsys):
    root = make_sessions(tmp_path / "d", 2, chunk_lengths=(5, 8, 7))
    config = write_config(tmp_path, tiny_config(tmp_path / "runs", root, datasplitter={"example_seconds": 1.0, "val_ratio": 0, "test_ratio": 0}))
    assert main(["validate", str(config)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "brain-gen: error: datasplitter.example_seconds: the training split has no windows: all 6 of its chunks are shorter "
        "than one window of 1 s (10 samples; the longest has 8); make example_seconds shorter"
    ]


def test_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    root = make_sessions(tmp_path / "d", 20)
    options = dict(dataset_root=str(root), example_seconds=1.0, val_ratio=0.2, test_ratio=0.1)
    first = members(splitter(tmp_path, **options).split())
    assert first == members(splitter(tmp_path, **options, refresh_cache=True).split())
    assert first != members(splitter(tmp_path, **options, seed=7).split())
    assert [len(first[name]) for name in ("train", "val", "test")] == [14, 4, 2]


def test_session_strategy_never_shares_a_session(tmp_path):
    root = make_sessions(tmp_path / "d", 10)
    groups = members(splitter(tmp_path, dataset_root=str(root), example_seconds=1.0).split())
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    assert sum(len(g) for g in groups.values()) == 10
    assert len(groups["val"]) == 1 and len(groups["test"]) == 1


def test_subject_strategy_keeps_each_subject_in_one_split(tmp_path):
    subjects = [f"sub-{index // 3:02d}" for index in range(18)]
    root = make_sessions(tmp_path / "d", 18, subjects=subjects)
    for seed in range(5):
        splits = splitter(tmp_path, dataset_root=str(root), example_seconds=1.0, split_strategy="subject", seed=seed, val_ratio=0.2, test_ratio=0.2).split()
        owner = {}
        for name, split in splits.items():
            for session in split.sessions:
                assert owner.setdefault(session.subject, name) == name
        assert len({s.subject for s in splits["val"].sessions}) == 1


def test_dataset_strategy_holds_out_one_dataset_split_by_subject(tmp_path):
    make_sessions(tmp_path / "a", 4)
    make_sessions(tmp_path / "b", 3)
    make_sessions(tmp_path / "held", 6, subjects=["sub-1", "sub-1", "sub-2", "sub-3", "sub-3", "sub-4"])
    roots = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b"), "held": str(tmp_path / "held")}
    splits = splitter(tmp_path, dataset_root=roots, example_seconds=1.0, split_strategy="dataset", heldout_dataset="held").split()
    assert {s.dataset for s in splits["train"].sessions} == {"a", "b"} and len(splits["train"].sessions) == 7
    val_subjects = {s.subject for s in splits["val"].sessions}
    test_subjects = {s.subject for s in splits["test"].sessions}
    assert len(val_subjects) == 2 and len(test_subjects) == 2 and not val_subjects & test_subjects
    assert {s.dataset for s in splits["val"].sessions + splits["test"].sessions} == {"held"}


def test_heldout_dataset_must_be_a_dataset_name(tmp_path):
    make_sessions(tmp_path / "a", 2)
    make_sessions(tmp_path / "b", 2)
    with pytest.raises(ConfigError, match="heldout_dataset: 'c' is not a dataset name; the datasets are a, b"):
        splitter(tmp_path, dataset_root=[str(tmp_path / "a"), str(tmp_path / "b")], example_seconds=1.0, split_strategy="dataset", heldout_dataset="c")


def test_too_few_sessions_is_a_clear_error(tmp_path):
    root = make_sessions(tmp_path / "d", 2)
    with pytest.raises(DataError, match="2 session\\(s\\) are too few"):
        splitter(tmp_path, dataset_root=str(root), example_seconds=1.0).split()


def test_sampling_rate_mismatch_names_both_sessions(tmp_path):
    make_sessions(tmp_path / "a", 2, sfreq=10.0)
    make_sessions(tmp_path / "b", 2, sfreq=20.0)
    with pytest.raises(DataError) as caught:
        splitter(tmp_path, dataset_root=[str(tmp_path / "a"), str(tmp_path / "b")], example_seconds=1.0).split()
    message = str(caught.value)
    assert str(tmp_path / "a" / "session00") in message and str(tmp_path / "b" / "session00") in message
    assert "10 Hz" in message and "20 Hz" in message


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        splitter(tmp_path, dataset_root=str(tmp_path / "nope"), example_seconds=1.0).split()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no session folders with a meta.json"):
        splitter(tmp_path, dataset_root=str(tmp_path / "empty"), example_seconds=1.0).split()


def test_channel_layout_is_the_union_and_missing_channels_are_masked(tmp_path):
    from brain_gen.dataset.datasets import IGNORE_INDEX, ChunkDataset, ChunkDatasetContinuous

    write_constant_session(tmp_path / "d" / "s0", [12], ch_names=["A", "B"])
    write_constant_session(tmp_path / "d" / "s1", [12], ch_names=["C", "A"])
    splits = splitter(tmp_path, dataset_root=str(tmp_path / "d"), example_seconds=1.0, val_ratio=0, test_ratio=0).split()
    train = splits["train"]
    assert train.layout.ch_names == ["A", "B", "C"]
    assert train.layout.pos_2d == [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    codes = ChunkDataset(train)
    session_of = {s.name: i for i, s in enumerate(train.sessions)}
    row = int(np.flatnonzero(train.windows[:, 0] == session_of["s1"])[0])
    inputs, targets = codes[row]
    assert inputs.shape == (3, 9) and targets.shape == (3, 9)
    assert (targets[1] == IGNORE_INDEX).all() and (targets[[0, 2]] != IGNORE_INDEX).all()
    continuous_inputs, continuous_targets = ChunkDatasetContinuous(train)[row]
    assert continuous_targets[1].isnan().all() and (continuous_inputs[1] == 0).all()


def test_cache_spares_the_second_start_from_reading_files(tmp_path):
    root = make_sessions(tmp_path / "d", 5)
    options = dict(dataset_root=str(root), example_seconds=1.0)
    first = splitter(tmp_path, **options)
    first.split()
    assert (first.sessions_read, first.sessions_from_cache) == (5, 0)

    second = splitter(tmp_path, **options)
    assert members(second.split()) == members(first.split())
    assert (second.sessions_read, second.sessions_from_cache) == (0, 5)

    # A changed chunk is noticed through its size and time stamp, and only its session is read.
    chunk = root / "session03" / "0.npy"
    np.save(chunk, np.zeros((2, 40), np.float32))
    os.utime(chunk, ns=(1, 1))
    third = splitter(tmp_path, **options)
    assert len(third.split()["train"]) + len(third.split()["val"]) + len(third.split()["test"]) == 4 * 3 + 4
    assert third.sessions_read == 1

    fourth = splitter(tmp_path, **options, refresh_cache=True)
    fourth.split()
    assert fourth.sessions_read == 5


def test_cache_dir_option_is_used(tmp_path):
    root = make_sessions(tmp_path / "d", 3)
    DataSplitter(DataSplitterConfig(dataset_root=str(root), example_seconds=1.0, cache_dir=str(tmp_path / "mine")), cache_dir=tmp_path / "other").split()
    assert list((tmp_path / "mine").glob("sessions-*.json")) and not (tmp_path / "other").exists()


def test_dataset_strategy_accepts_a_list_of_roots_and_needs_two_heldout_subjects(tmp_path):
    make_sessions(tmp_path / "a", 3)
    make_sessions(tmp_path / "b", 2, subjects=["sub-1", "sub-1"])
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(DataError, match="heldout_dataset: 'b' has 1 subject\\(s\\); it needs at least 2"):
        splitter(tmp_path, dataset_root=roots, example_seconds=1.0, split_strategy="dataset", heldout_dataset="b").split()
    splits = splitter(tmp_path, dataset_root=roots, example_seconds=1.0, split_strategy="dataset", heldout_dataset="a").split()
    assert {s.dataset for s in splits["train"].sessions} == {"b"}
    assert len(splits["val"].sessions) == 2 and len(splits["test"].sessions) == 1


def test_cache_notices_a_changed_meta_json(tmp_path):
    import json

    root = make_sessions(tmp_path / "d", 3)
    splitter(tmp_path, dataset_root=str(root), example_seconds=1.0).split()
    meta_path = root / "session01" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["subject"] = "sub-99"
    meta_path.write_text(json.dumps(meta))
    os.utime(meta_path, ns=(1, 1))
    again = splitter(tmp_path, dataset_root=str(root), example_seconds=1.0)
    sessions = again.scan()
    assert again.sessions_read == 1
    assert [s.subject for s in sessions if s.name == "session01"] == ["sub-99"]


def test_a_million_windows_cost_at_most_sixteen_bytes_each(tmp_path):
    from brain_gen.dataset.session import SessionMeta, write_session

    # 4 sessions of one 250,010-sample chunk; 10-sample windows with a hop of 1: 250,001 windows each.
    for index in range(4):
        write_session(tmp_path / "data" / f"s{index}", [np.zeros((2, 250_010), dtype=np.float32)], SessionMeta(10.0, ["A", "B"], [[0.0, 0.0], [1.0, 0.0]]))
    config = DataSplitterConfig(dataset_root=str(tmp_path / "data"), example_seconds=1.0, overlap_seconds=0.9, val_ratio=0.25, test_ratio=0.25)
    splits = DataSplitter(config, cache_dir=tmp_path / "cache").split()
    total = sum(len(split) for split in splits.values())
    assert total == 4 * 250_001
    # One array per split, no Python object per window.
    assert sum(split.windows.nbytes for split in splits.values()) / total <= 16
    assert all(split.windows.dtype == np.int32 for split in splits.values())

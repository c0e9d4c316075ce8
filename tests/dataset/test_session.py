"""Reading and checking the chunked session format."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from brain_gen.config.errors import DataError
from brain_gen.dataset.session import SessionMeta, list_chunk_files, list_session_dirs, read_meta, scan_session, subject_from_name, write_session
from tests.conftest import write_constant_session


def test_chunks_are_ordered_by_number_not_text(tmp_path):
    session = write_constant_session(tmp_path / "s", [5] * 12)
    names = [path.name for path in list_chunk_files(session)]
    assert names == [f"{k}.npy" for k in range(12)]
    info, was_read = scan_session(session, "d")
    assert was_read and [chunk.file_name for chunk in info.chunks][9:] == ["9.npy", "10.npy", "11.npy"]


def test_scan_reads_meta_and_subject(tmp_path):
    info, _ = scan_session(write_constant_session(tmp_path / "sub-07_ses-2", [4, 6]), "ds")
    assert info.sfreq == 10.0 and info.ch_names == ["A", "B"] and info.key == "ds/sub-07_ses-2"
    assert [chunk.n_samples for chunk in info.chunks] == [4, 6]
    assert info.subject == "sub-07"
    assert subject_from_name("rest_sub-12_run-1") == "sub-12" and subject_from_name("session3") is None
    meta_subject, _ = scan_session(write_constant_session(tmp_path / "sub-01", [4], subject="P9"), "ds")
    assert meta_subject.subject == "P9"


def test_float16_chunks_are_accepted(tmp_path):
    session = write_constant_session(tmp_path / "s", [4])
    np.save(session / "1.npy", np.ones((2, 3), dtype=np.float16))
    info, _ = scan_session(session, "d")
    assert [chunk.n_samples for chunk in info.chunks] == [4, 3]


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda s: (s / "0.npy").write_bytes(b"not numpy at all"), "0.npy: not a readable .npy array"),
        (lambda s: (s / "0.npy").write_bytes((s / "0.npy").read_bytes()[:-8]), "0.npy: not a readable .npy array"),
        (lambda s: np.save(s / "0.npy", np.ones((3, 5), np.float32)), "0.npy: shape (3, 5) does not match meta.json's 2 channels"),
        (lambda s: np.save(s / "0.npy", np.ones(5, np.float32)), "0.npy: shape (5,) does not match"),
        (lambda s: np.save(s / "0.npy", np.ones((2, 5), np.int32)), "0.npy: dtype int32 is not supported"),
        (lambda s: np.save(s / "0.npy", np.array([[1.0, np.nan], [0, 0]], np.float32)), "0.npy: contains NaN or Inf (first at sample 1)"),
        (lambda s: np.save(s / "0.npy", np.array([[1.0, 0], [np.inf, 0]], np.float32)), "0.npy: contains NaN or Inf (first at sample 0)"),
        (lambda s: np.save(s / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "0.npy: not a readable .npy array"),
        (lambda s: (s / "meta.json").write_text("{oops"), "meta.json: cannot read as JSON"),
        (lambda s: (s / "meta.json").write_text(json.dumps({"sfreq": 10, "ch_names": ["A", "B"]})), "meta.json: missing key 'pos_2d'"),
        (lambda s: (s / "meta.json").write_text(json.dumps({"sfreq": -1, "ch_names": ["A", "B"], "pos_2d": [[0, 0], [1, 0]]})), "sfreq must be a positive number"),
        (lambda s: (s / "meta.json").write_text(json.dumps({"sfreq": 10, "ch_names": ["A", "A"], "pos_2d": [[0, 0], [1, 0]]})), "ch_names has duplicates"),
        (lambda s: (s / "meta.json").write_text(json.dumps({"sfreq": 10, "ch_names": ["A", "B"], "pos_2d": [[0, 0]]})), "pos_2d must be 2 finite [x, y] pairs"),
        (lambda s: [p.unlink() for p in s.glob("*.npy")], "no chunk files named 0.npy"),
    ],
)
def test_bad_files_are_errors_naming_the_file(tmp_path, break_it, expected):
    session = write_constant_session(tmp_path / "s", [5])
    break_it(session)
    with pytest.raises(DataError) as caught:
        scan_session(session, "d")
    assert expected in str(caught.value)
    assert str(session) in str(caught.value)


def test_chunk_numbers_must_not_repeat_or_skip(tmp_path):
    session = write_constant_session(tmp_path / "s", [5, 5, 5])
    (session / "1.npy").rename(session / "01.npy")
    np.save(session / "1.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match="both 01.npy and 1.npy|both 1.npy and 01.npy"):
        list_chunk_files(session)
    (session / "01.npy").unlink()
    (session / "1.npy").unlink()
    with pytest.raises(DataError, match=r"without gaps; 1.npy is missing"):
        list_chunk_files(session)


def test_write_session_writes_what_read_meta_reads_and_never_overwrites_by_default(tmp_path):
    meta = SessionMeta(250.0, ["A", "B"], [[0.0, 0.0], [1.0, 0.0]], ch_types=["eeg", "eeg"], subject="sub-01", extra={"source": "x.fif"})
    chunks = [np.zeros((2, 5), dtype=np.float64), np.ones((2, 3), dtype=np.float16)]
    folder = write_session(tmp_path / "s", chunks, meta, events=[(0.5, 0.0, "tone")])
    assert read_meta(folder) == {"sfreq": 250.0, "ch_names": ["A", "B"], "pos_2d": [[0.0, 0.0], [1.0, 0.0]], "ch_types": ["eeg", "eeg"], "subject": "sub-01"}
    assert json.loads((folder / "meta.json").read_text())["source"] == "x.fif"
    assert [np.load(path).dtype for path in list_chunk_files(folder)] == [np.float32, np.float16]
    assert (folder / "events.tsv").read_text().splitlines() == ["onset\tduration\ttrial_type", "0.500000\t0.000000\ttone"]
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        write_session(folder, chunks, meta)
    write_session(folder, chunks[:1], meta, overwrite=True)
    assert len(list_chunk_files(folder)) == 1 and not (folder / "events.tsv").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["s"]


def test_a_write_removes_only_its_own_sessions_leftovers(tmp_path):
    # A killed write of sub-01 leaves its hidden folders; a write of sub-01-ses-2 may be running beside it.
    own = [tmp_path / ".partial-sub-01-4242", tmp_path / ".replaced-sub-01-4242"]
    other = [tmp_path / ".partial-sub-01-ses-2-4243", tmp_path / ".partial-xsub-01-4244"]
    for folder in own + other:
        folder.mkdir()
    meta = SessionMeta(10.0, ["A"], [[0.0, 0.0]])
    write_session(tmp_path / "sub-01", [np.zeros((1, 20), np.float32)], meta)
    assert not any(folder.exists() for folder in own)
    assert all(folder.exists() for folder in other)
    assert read_meta(tmp_path / "sub-01")["sfreq"] == 10.0


def test_only_hidden_folders_are_skipped_quietly(tmp_path, caplog):
    for name in ("sub-01", "sub-02"):
        write_constant_session(tmp_path / name, [20])
    (tmp_path / ".partial-sub-03-99").mkdir()  # an unfinished write: skipped without a word
    (tmp_path / "notes").mkdir()
    with caplog.at_level(logging.WARNING, logger="brain_gen"):
        assert [path.name for path in list_session_dirs(tmp_path)] == ["sub-01", "sub-02"]
    assert [record.getMessage() for record in caplog.records] == ["datasplitter.dataset_root: ignored 1 folder(s) without meta.json: notes"]
    # Chunks without meta.json: a session that would be left out is an error naming the folder.
    (tmp_path / "sub-01" / "meta.json").unlink()
    with pytest.raises(DataError, match=f"^{tmp_path / 'sub-01'}: chunk files but no meta.json, so not a session"):
        list_session_dirs(tmp_path)

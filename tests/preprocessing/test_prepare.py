"""brain-gen prepare: raw recordings (FIF, EDF, BDF, BrainVision, EEGLAB, BIDS) to sessions, through MNE."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import mne
import numpy as np
import pytest
import yaml

from brain_gen.cli import main
from brain_gen.config.errors import DataError
from brain_gen.config.schema import PrepareConfig
from brain_gen.dataset.session import scan_session
from brain_gen.preprocessing import prepare as prepare_module
from brain_gen.preprocessing.prepare import prepare_all
from brain_gen.preprocessing.steps import detect_bad_channels, robust_zscore, standard_montage_name
from brain_gen.preprocessing.recordings import find_recordings
from tests.conftest import tiny_config
from tests.conftest import scalars

EEG_NAMES = ["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "Cz", "Pz"]
EVENTS = [(1.0, 0.5, "left"), (5.5, 0.5, "right"), (20.0, 0.5, "left")]
SFREQ, SECONDS = 256.0, 40.0


def eeg_raw(seed: int = 0, sfreq: float = SFREQ) -> mne.io.RawArray:
    """A 12-channel 10-20 EEG recording: a 10 Hz rhythm plus noise, in volts, with annotations."""
    rng = np.random.default_rng(seed)
    times = np.arange(int(SECONDS * sfreq)) / sfreq
    data = 2e-5 * np.sin(2 * np.pi * 10 * times) * rng.uniform(0.5, 1.5, (len(EEG_NAMES), 1))
    data = data + 1e-5 * rng.standard_normal((len(EEG_NAMES), len(times)))
    raw = mne.io.RawArray(data, mne.create_info(EEG_NAMES, sfreq, "eeg"), verbose="error")
    raw.set_montage(standard_montage_name(), verbose="error")
    raw.set_annotations(mne.Annotations(*zip(*EVENTS)))
    return raw


def write_format(raw: mne.io.BaseRaw, folder: Path, fmt: str) -> Path:
    """Write ``raw`` as FIF (MNE) or through mne.export (EDF/BDF via edfio, BrainVision via pybv, EEGLAB via eeglabio)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "fif":
        path = folder / "rec_raw.fif"
        raw.save(path, overwrite=True, verbose="error")
    else:
        path = folder / f"rec.{ {'brainvision': 'vhdr', 'eeglab': 'set'}.get(fmt, fmt) }"
        mne.export.export_raw(path, raw, overwrite=True, verbose="error")
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def events_of(session: Path) -> list[list[str]]:
    return [line.split("\t") for line in (session / "events.tsv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("fmt", ["fif", "edf", "bdf", "brainvision", "eeglab"])
def test_every_writable_format_prepares_into_a_loadable_session(tmp_path, capsys, fmt):
    source = write_format(eeg_raw(), tmp_path / "raw", fmt)
    code, out, _ = run(capsys, "prepare", str(source), "--out", str(tmp_path / "out"), "--no-progress",
                       "--set", "prepare.resample=128", "--set", "prepare.h_freq=40")
    assert code == 0, out
    session = tmp_path / "out" / source.name.split(".")[0]
    info, _ = scan_session(session, "out")  # the datasplitter's own reader
    assert info.sfreq == 128.0 and info.ch_names == EEG_NAMES
    assert sum(chunk.n_samples for chunk in info.chunks) == int(SECONDS * 128)
    # Standard montage positions: left hemisphere electrodes lie left of the right ones.
    positions = dict(zip(info.ch_names, info.pos_2d))
    assert positions["C3"][0] < 0 < positions["C4"][0] and positions["Fp1"][1] > positions["O1"][1]
    data = np.concatenate([np.load(session / f"{k}.npy") for k in range(len(info.chunks))], axis=1)
    q25, median, q75 = np.percentile(data, [25, 50, 75], axis=1)
    assert np.allclose(median, 0, atol=1e-5) and np.allclose(q75 - q25, 1.349, rtol=1e-3)
    assert np.abs(data).max() <= 10.0
    # BrainVision stores markers as type/description; MNE reads them back as "Comment/left".
    prefix = "Comment/" if fmt == "brainvision" else ""
    expected = [(1.0, f"{prefix}left"), (5.5, f"{prefix}right"), (20.0, f"{prefix}left")]
    assert [(float(onset), kind) for onset, _, kind in events_of(session)] == expected
    meta = json.loads((session / "meta.json").read_text())
    assert meta["preprocessing"]["resample"] == 128 and meta["preprocessing"]["h_freq"] == 40
    assert meta["ch_types"] == ["eeg"] * 12


def test_bids_dataset_sessions_are_named_from_entities_and_carry_subject_and_events(tmp_path, capsys):
    mne_bids = pytest.importorskip("mne_bids")
    for subject in ("01", "02"):
        source = write_format(eeg_raw(seed=int(subject)), tmp_path / f"raw{subject}", "fif")
        raw = mne.io.read_raw_fif(source, verbose="error")
        raw.info["line_freq"] = 50
        path = mne_bids.BIDSPath(subject=subject, session="01", task="rest", run=1, root=tmp_path / "bids", datatype="eeg")
        mne_bids.write_raw_bids(raw, path, verbose=False)
    code, out, _ = run(capsys, "prepare", str(tmp_path / "bids"), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 0, out
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["sub-01_ses-01_task-rest_run-1", "sub-02_ses-01_task-rest_run-1"]
    session = tmp_path / "out" / names[1]
    assert json.loads((session / "meta.json").read_text())["subject"] == "sub-02"
    assert [kind for _, _, kind in events_of(session)] == ["left", "right", "left"]


def test_stim_channel_triggers_become_events(tmp_path):
    raw = eeg_raw()
    stim = np.zeros((1, raw.n_times))
    stim[0, [512, 2048]] = [3, 7]
    raw.add_channels([mne.io.RawArray(stim, mne.create_info(["STI 014"], SFREQ, "stim"), verbose="error")], force_update_info=True)
    raw.set_annotations(None)
    source = write_format(raw, tmp_path / "raw", "fif")
    [outcome] = prepare_all([source], tmp_path / "out", PrepareConfig(), progress=False)
    assert outcome.status == "done"
    assert events_of(tmp_path / "out" / "rec_raw") == [["2.000000", "0.000000", "3"], ["8.000000", "0.000000", "7"]]
    assert "STI 014" not in json.loads((tmp_path / "out" / "rec_raw" / "meta.json").read_text())["ch_names"]


def test_meg_sensors_are_projected_in_head_coordinates(tmp_path):
    # Magnetometers on a helmet-shaped half sphere, device coordinates equal to head coordinates.
    rng = np.random.default_rng(3)
    polar, azimuth = np.meshgrid(np.linspace(0.2, 1.3, 4), np.linspace(0, 2 * np.pi, 8, endpoint=False))
    xyz = 0.12 * np.column_stack([np.sin(polar.ravel()) * np.cos(azimuth.ravel()), np.sin(polar.ravel()) * np.sin(azimuth.ravel()), np.cos(polar.ravel())])
    names = [f"MEG {k:04d}" for k in range(len(xyz))]
    info = mne.create_info(names, 200.0, "mag")
    for channel, position in zip(info["chs"], xyz):
        channel["loc"][:3] = position
    with info._unlock():
        info["dev_head_t"] = mne.transforms.Transform("meg", "head")
    raw = mne.io.RawArray(1e-12 * rng.standard_normal((len(names), 4000)), info, verbose="error")
    [outcome] = prepare_all([write_format(raw, tmp_path / "raw", "fif")], tmp_path / "out", PrepareConfig(), progress=False)
    assert outcome.status == "done"
    meta = json.loads((tmp_path / "out" / "rec_raw" / "meta.json").read_text())
    radius = np.linalg.norm(np.array(meta["pos_2d"]), axis=1)
    # Azimuthal equidistant: the distance from the vertex is the polar angle.
    assert np.allclose(np.sort(radius), np.sort(polar.ravel()), atol=1e-4)
    assert meta["ch_types"] == ["mag"] * len(names) and meta["positions_missing"] == []


def test_marked_flat_and_noisy_channels_are_dropped_and_listed(tmp_path):
    raw = eeg_raw()
    data = raw.get_data()
    data[3] = 0.0  # flat
    data[5] *= 200  # noisy
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    raw.info["bads"] = ["O2"]
    [outcome] = prepare_all([write_format(raw, tmp_path / "raw", "fif")], tmp_path / "out", PrepareConfig(), progress=False)
    meta = json.loads((tmp_path / "out" / "rec_raw" / "meta.json").read_text())
    assert outcome.status == "done"
    assert meta["bads_marked"] == ["O2"] and meta["bads_detected"] == {"flat": ["F4"], "noisy": ["C4"]}
    assert {"O2", "F4", "C4"}.isdisjoint(meta["ch_names"]) and len(meta["ch_names"]) == 9


def test_picks_by_name_and_channels_without_positions_are_placed_on_a_ring(tmp_path):
    raw = eeg_raw()
    raw.rename_channels({"Pz": "EXG1"})
    source = write_format(raw, tmp_path / "raw", "edf")  # EDF keeps no positions: the montage is applied by name
    [outcome] = prepare_all([source], tmp_path / "out", PrepareConfig(picks=["Cz", "EXG1", "O1"]), progress=False)
    assert outcome.status == "done"
    meta = json.loads((tmp_path / "out" / "rec" / "meta.json").read_text())
    assert meta["ch_names"] == ["Cz", "EXG1", "O1"] and meta["positions_missing"] == ["EXG1"]  # in the order asked
    radius = np.linalg.norm(np.array(meta["pos_2d"]), axis=1)
    assert radius[1] > max(radius[0], radius[2])


def test_robust_zscore_and_bad_channel_detection_closed_forms():
    data = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [7.0, 7.0, 7.0, 7.0, 7.0]])
    robust_zscore(data)
    assert np.allclose(data[0], (np.arange(1, 6) - 3) / (2 / 1.349)) and np.allclose(data[1], 0)
    rng = np.random.default_rng(0)
    signals = rng.standard_normal((6, 1000))
    signals[1] = 0
    signals[4] *= 1000
    assert detect_bad_channels(signals, ["eeg"] * 6, noisy_z=5) == ([1], [4])
    # Fewer than three live channels of a type: no noisy detection, flat still found.
    assert detect_bad_channels(signals[:3], ["eeg", "eeg", "mag"], noisy_z=5) == ([1], [])


def test_corrupt_truncated_unsupported_and_failing_files_are_reported_and_the_run_goes_on(tmp_path, capsys):
    folder = tmp_path / "raw"
    good = write_format(eeg_raw(), folder / "good", "fif")
    truncated = folder / "truncated_raw.fif"
    truncated.write_bytes(good.read_bytes()[:5000])
    (folder / "garbage.edf").write_bytes(b"0       this is not an EDF header")
    unsupported = folder / "notes.xyz"
    unsupported.write_text("not a recording")
    code, out, _ = run(capsys, "prepare", str(folder), str(unsupported), "--out", str(tmp_path / "out"), "--no-progress")
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert code == 0
    assert "done" in lines["rec_raw"]
    assert "skipped  cannot be read" in lines["truncated_raw"] and "skipped  cannot be read" in lines["garbage"]
    assert "skipped  unsupported file type" in lines["notes"]
    assert out.splitlines()[-1] == "1 done, 3 skipped, 0 failed"
    # A readable recording whose settings cannot apply (low-pass above Nyquist) fails, and the run exits 1.
    code, out, _ = run(capsys, "prepare", str(good), "--out", str(tmp_path / "out2"), "--no-progress", "--set", "prepare.h_freq=200")
    assert code == 1
    assert "failed" in out.splitlines()[1] and "Nyquist" in out.splitlines()[1]
    assert out.splitlines()[-1] == "0 done, 0 skipped, 1 failed"
    assert not (tmp_path / "out2" / "rec_raw").exists()


def test_finished_sessions_are_skipped_overwrite_redoes_them_and_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    source = write_format(eeg_raw(), tmp_path / "raw", "fif")
    settings = PrepareConfig(chunk_seconds=10)
    real_save = np.save
    saved = []

    def interrupted(path, array):
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(prepare_module.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_all([source], tmp_path / "out", settings, progress=False)
    monkeypatch.undo()
    assert list((tmp_path / "out").iterdir()) == []

    assert prepare_all([source], tmp_path / "out", settings, progress=False)[0].status == "done"
    first = (tmp_path / "out" / "rec_raw" / "meta.json").stat().st_mtime_ns
    again = prepare_all([source], tmp_path / "out", settings, progress=False)[0]
    assert (again.status, again.detail) == ("skipped", "already prepared (--overwrite redoes it)")
    assert (tmp_path / "out" / "rec_raw" / "meta.json").stat().st_mtime_ns == first
    redone = prepare_all([source], tmp_path / "out", settings, overwrite=True, progress=False)[0]
    assert redone.status == "done" and (tmp_path / "out" / "rec_raw" / "meta.json").stat().st_mtime_ns != first
    assert sorted(path.name for path in (tmp_path / "out" / "rec_raw").iterdir()) == ["0.npy", "1.npy", "2.npy", "3.npy", "events.tsv", "meta.json"]


def test_parallel_jobs_prepare_every_recording(tmp_path, capsys):
    for seed in range(3):
        write_format(eeg_raw(seed), tmp_path / "raw" / f"s{seed}", "fif")
    code, out, err = run(capsys, "prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--jobs", "2")
    assert code == 0, out
    assert out.splitlines()[-1] == "3 done, 0 skipped, 0 failed"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["s0_rec_raw", "s1_rec_raw", "s2_rec_raw"]
    assert err.count("6/6") >= 3  # one finished progress line per session


def test_same_stem_in_several_formats_gets_distinct_names(tmp_path):
    raw = eeg_raw()
    for fmt in ("edf", "eeglab"):
        write_format(raw, tmp_path / "raw", fmt)
    assert sorted(recording.name for recording in find_recordings([tmp_path / "raw"])) == ["rec_edf", "rec_set"]


def test_bad_options_and_missing_inputs_exit_2_with_one_line(tmp_path, capsys):
    source = write_format(eeg_raw(), tmp_path / "raw", "fif")
    config = tmp_path / "prepare.yaml"
    config.write_text(yaml.safe_dump({"prepare": {"l_frq": 1.0}}))
    code, _, err = run(capsys, "prepare", str(source), "--out", str(tmp_path / "out"), "--config", str(config))
    assert code == 2 and err.strip().splitlines() == ["brain-gen: error: prepare.l_frq: unknown key (did you mean l_freq?)"]
    code, _, err = run(capsys, "prepare", str(source), "--out", str(tmp_path / "out"), "--set", "prepare.picks=megs")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "prepare.picks" in err
    code, _, err = run(capsys, "prepare", str(tmp_path / "nowhere.fif"), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere.fif: no such file or folder" in err
    with pytest.raises(DataError):
        find_recordings([tmp_path / "missing"])


def test_a_training_config_may_carry_the_prepare_section(tmp_path, capsys, tiny_dataset):
    config = tiny_config(tmp_path / "runs", tiny_dataset, prepare={"resample": 128.0, "notch": 50})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    source = write_format(eeg_raw(), tmp_path / "raw", "fif")
    code, out, _ = run(capsys, "prepare", str(source), "--out", str(tmp_path / "out"), "--config", str(path), "--no-progress")
    assert code == 0, out
    meta = json.loads((tmp_path / "out" / "rec_raw" / "meta.json").read_text())
    assert meta["sfreq"] == 128.0 and meta["preprocessing"]["notch"] == 50
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0, out


def test_real_clinical_edf_clip_prepares_validates_and_trains_one_epoch(tmp_path, capsys):
    pytest.importorskip("pyedflib")
    clip = importlib.resources.files("pyedflib") / "tests" / "data" / "test_subsecond.edf"
    code, out, _ = run(capsys, "prepare", str(clip), "--out", str(tmp_path / "sessions"), "--no-progress")
    assert code == 0, out
    session = tmp_path / "sessions" / "test_subsecond"
    meta = json.loads((session / "meta.json").read_text())
    assert meta["sfreq"] == 128.0 and meta["ch_names"] == ["Fp1"]
    assert [kind for _, _, kind in events_of(session)] == ["XLSpike", "Clip Note", "XLEvent", "XLSpike"]

    config = tiny_config(
        tmp_path / "runs", tmp_path / "sessions",
        model_config={"num_channels": 1, "max_position_embeddings": 64},
        datasplitter={"example_seconds": 0.5, "val_ratio": 0.0, "test_ratio": 0.0},
        dataloader={"batch_size": 64},
        trainer={"max_epochs": 1},
    )
    path = tmp_path / "edf.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "validate", str(path))
    assert code == 0 and "1 channels at 128 Hz" in out
    code, out, err = run(capsys, "train", str(path))
    assert code == 0, err
    run_dir = tmp_path / "runs" / "logs" / "version_0"
    losses = scalars(run_dir)["train/loss"]
    windows = int(698 * 128 // 64)  # 0.5 s windows without overlap
    assert len(losses) == -(-windows // 64)  # one full epoch, every batch logged
    assert losses[-1][1] < losses[0][1]


def test_annotation_onsets_count_from_the_first_sample_without_a_measurement_date(tmp_path):
    raw = eeg_raw()
    shifted = mne.io.RawArray(raw.get_data(), raw.info, first_samp=512, verbose="error")
    shifted.set_meas_date(None)
    shifted.set_annotations(mne.Annotations([3.0, 9.5], [0.5, 0.0], ["left", "right"]))  # from the first sample
    [outcome] = prepare_all([write_format(shifted, tmp_path / "raw", "fif")], tmp_path / "out", PrepareConfig(), progress=False)
    assert outcome.status == "done"
    assert events_of(tmp_path / "out" / "rec_raw") == [["3.000000", "0.500000", "left"], ["9.500000", "0.000000", "right"]]


@pytest.mark.parametrize(
    ("source", "expected"),
    [("auto", ["left", "right"]), ("annotations", ["left", "right"]), ("stim", ["3", "7"]), ("both", ["3", "left", "7", "right"])],
)
def test_events_come_from_annotations_or_triggers_never_both_by_default(tmp_path, source, expected):
    raw = eeg_raw()
    stim = np.zeros((1, raw.n_times))
    stim[0, [512, 2048]] = [3, 7]
    raw.add_channels([mne.io.RawArray(stim, mne.create_info(["STI 014"], SFREQ, "stim"), verbose="error")], force_update_info=True)
    # The same two events as annotations, plus a bad-segment mark that is not an event.
    raw.set_annotations(mne.Annotations([2.0, 8.0, 12.0], [0.0, 0.0, 1.0], ["left", "right", "BAD_muscle"]))
    source_file = write_format(raw, tmp_path / "raw", "fif")
    [outcome] = prepare_all([source_file], tmp_path / "out", PrepareConfig(events=source), progress=False)
    assert outcome.status == "done"
    assert [kind for _, _, kind in events_of(tmp_path / "out" / "rec_raw")] == expected


def test_fif_parts_are_read_through_the_first_part_and_bids_like_names_are_recordings(tmp_path):
    raw = eeg_raw()
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in ("sub-01.fif", "run-2.fif", "rest.fif", "rest-1.fif", "sub-02_task-x_split-01_meg.fif",
                 "sub-02_task-x_split-02_meg.fif", "sub-02_task-x_split-10_meg.fif"):
        raw.save(folder / name, overwrite=True, verbose="error")
    names = sorted(recording.path.name for recording in find_recordings([folder]))
    assert names == ["rest.fif", "run-2.fif", "sub-01.fif", "sub-02_task-x_split-01_meg.fif"]


def test_marked_bads_are_excluded_from_a_list_of_names_too(tmp_path):
    raw = eeg_raw()
    raw.info["bads"] = ["Cz", "O2"]
    source = write_format(raw, tmp_path / "raw", "fif")
    [outcome] = prepare_all([source], tmp_path / "out", PrepareConfig(picks=["Cz", "C3", "C4"]), progress=False)
    meta = json.loads((tmp_path / "out" / "rec_raw" / "meta.json").read_text())
    assert outcome.status == "done" and meta["ch_names"] == ["C3", "C4"] and meta["bads_marked"] == ["Cz"]
    [outcome] = prepare_all([source], tmp_path / "out2", PrepareConfig(picks=["Cz", "C3"], exclude_bads=False), progress=False)
    assert json.loads((tmp_path / "out2" / "rec_raw" / "meta.json").read_text())["ch_names"] == ["Cz", "C3"]


def test_an_interrupted_overwrite_keeps_the_old_session_whole_and_leftovers_are_cleaned(tmp_path, monkeypatch):
    from brain_gen.dataset import session as session_module
    from brain_gen.dataset.session import list_session_dirs

    source = write_format(eeg_raw(), tmp_path / "raw", "fif")
    settings = PrepareConfig(chunk_seconds=10)
    prepare_all([source], tmp_path / "out", settings, progress=False)
    session = tmp_path / "out" / "rec_raw"
    before = {path.name: path.read_bytes() for path in session.iterdir()}
    real_replace = session_module.os.replace
    calls = []

    def interrupted_once(source_path, target_path):
        calls.append(Path(source_path).name)
        if Path(target_path) == session and Path(source_path).name.startswith(".partial-"):
            raise KeyboardInterrupt  # Ctrl-C just as the new session moves in
        return real_replace(source_path, target_path)

    monkeypatch.setattr(session_module.os, "replace", interrupted_once)  # the session writer's renames
    with pytest.raises(KeyboardInterrupt):
        prepare_all([source], tmp_path / "out", settings.model_copy(update={"clip": 3.0}), overwrite=True, progress=False)
    monkeypatch.undo()
    # The old session was moved aside, the new one failed to move in, the old one came back whole.
    assert [name.split("-")[0] for name in calls] == ["rec_raw", ".partial", ".replaced"]
    assert {path.name: path.read_bytes() for path in session.iterdir()} == before
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["rec_raw"]

    # A run killed outright leaves hidden folders: never sessions, cleared by the next run.
    leftover = tmp_path / "out" / ".partial-rec_raw-99999"
    leftover.mkdir()
    (leftover / "meta.json").write_text("{}")
    assert list_session_dirs(tmp_path / "out") == [session]
    assert prepare_all([source], tmp_path / "out", settings, overwrite=True, progress=False)[0].status == "done"
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["rec_raw"]


def test_a_crashing_worker_fails_only_its_own_recording(tmp_path, capsys, monkeypatch):
    import multiprocessing
    import os

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the crash is planted through a patch that forked workers inherit")
    for seed in range(3):
        write_format(eeg_raw(seed), tmp_path / "raw" / f"s{seed}", "fif")
    real = prepare_module.prepare_recording

    def crashes_on_s1(recording, *args, **kwargs):
        if recording.name.startswith("s1"):
            os._exit(1)  # like a segfault or the kernel's OOM killer
        return real(recording, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_recording", crashes_on_s1)
    outcomes = prepare_all([tmp_path / "raw"], tmp_path / "out", PrepareConfig(), jobs=2, progress=False)
    status = {outcome.session: (outcome.status, outcome.detail) for outcome in outcomes}
    assert status["s0_rec_raw"][0] == "done" and status["s2_rec_raw"][0] == "done"
    assert status["s1_rec_raw"] == ("failed", "the worker process died while preparing it (a crash, or out of memory)")


def test_float16_without_normalizing_is_refused():
    with pytest.raises(ValueError, match="float16 needs normalize"):
        PrepareConfig(dtype="float16", normalize=False)

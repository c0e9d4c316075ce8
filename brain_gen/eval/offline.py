"""`brain-gen eval` and `brain-gen generate`: the evaluation of one checkpoint, and a generated recording as FIF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from brain_gen.config.errors import ConfigError
from brain_gen.config.schema import ExperimentConfig
from brain_gen.eval.evaluation import Evaluation, evaluation_folder_name, read_checkpoint


def resolve_checkpoint(config: ExperimentConfig, spec: str) -> Path:
    """``--ckpt``: a path, or ``last`` / ``best``, the newest such checkpoint under ``save_dir``."""
    from brain_gen.training.checkpointing import newest_complete_checkpoint
    from brain_gen.config.errors import raise_problems
    from brain_gen.training.checks import checkpoint_file_problems

    if spec in ("last", "best"):
        found = newest_complete_checkpoint(config.save_dir, prefix=f"{spec}-checkpoint")
        if found is None:
            raise ConfigError(f"--ckpt {spec}: no {spec}-checkpoint*.ckpt under save_dir {config.save_dir}; train first or give a path")
        raise_problems(checkpoint_file_problems(f"--ckpt {spec}", found))
        return found
    path = Path(spec).expanduser().resolve()
    raise_problems(checkpoint_file_problems("--ckpt", path))
    return path


def fresh_folder(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3`` ... when an earlier evaluation has that one."""
    candidate, count = base / name, 1
    while candidate.exists():
        count += 1
        candidate = base / f"{name}-{count}"
    return candidate


def evaluation_out_dir(config: ExperimentConfig, checkpoint: Path, out: str | None) -> Path:
    """Where an offline evaluation writes: ``--out`` (new or empty), else beside the run's own evaluations."""
    if out is not None:
        folder = Path(out).expanduser().resolve()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"--out: {folder} exists and is not an empty folder; choose a new one (nothing is overwritten)")
        return folder
    # A checkpoint of a run sits in <version folder>/checkpoints/; its evaluations go beside it.
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path(config.save_dir)
    contents = read_checkpoint(checkpoint)
    name = evaluation_folder_name(checkpoint, int(contents.get("epoch", 0)), int(contents.get("global_step", 0)))
    return fresh_folder(run_dir / "evals", name)


def evaluate_checkpoint(config: ExperimentConfig, checkpoint_spec: str, out: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Run the evaluation of one checkpoint now, in this process; returns the folder and the summary."""
    checkpoint = resolve_checkpoint(config, checkpoint_spec)
    out_dir = evaluation_out_dir(config, checkpoint, out)
    evaluation = Evaluation(config)
    # Offline results go to their own folder's TensorBoard file, not into the run's curves.
    return out_dir, evaluation.evaluate(checkpoint, out_dir, tensorboard_dir=out_dir)


def generate_recording(
    config: ExperimentConfig,
    checkpoint_spec: str,
    seconds: float,
    out: str,
    context_seconds: float | None = None,
    session: str | None = None,
) -> Path:
    """Continue a real context of a session and write context plus continuation as an MNE Raw FIF.

    The context starts at the session's first sample. The file carries channel names,
    sfreq, channel types, 2-D sensor positions as the session has them, and a
    ``generated`` annotation over the continuation (it starts where the context ends).
    """
    import mne

    out_path = Path(out).expanduser().resolve()
    if not out_path.name.endswith(".fif"):
        raise ConfigError(f"--out: {out_path.name} must end in .fif (MNE's raw files: name_raw.fif)")
    if out_path.exists():
        raise ConfigError(f"--out: {out_path} exists; choose a new file name (nothing is overwritten)")
    if not seconds > 0:
        raise ConfigError(f"--seconds: the continuation must be longer than 0 s, got {seconds}")
    checkpoint = resolve_checkpoint(config, checkpoint_spec)
    evaluation = Evaluation(config)
    if evaluation.generation_mode is None:
        if not evaluation.settings.generator.enabled:
            raise ConfigError("eval_runner.generator.enabled: false; brain-gen generate needs it true (the default)")
        raise ConfigError(f"model_name: {config.model_name} has no forecast method; brain-gen generate needs one")
    context_seconds = context_seconds if context_seconds is not None else evaluation.settings.example_sampler.context_length_s
    split, session_index = find_session(evaluation, session)
    from brain_gen.dataset.datasets import WindowDataset

    reader = WindowDataset(split)
    sfreq = split.sfreq
    context_samples = int(round(context_seconds * sfreq))
    steps = int(round(seconds * sfreq))
    if context_samples < 1 or steps < 1:
        raise ConfigError(f"--context-seconds / --seconds: at {sfreq:g} Hz both need at least one sample")
    available = reader.session_samples(session_index)
    if context_samples > available:
        raise ConfigError(
            f"--context-seconds: {context_seconds:g} s is longer than session {split.sessions[session_index].name} "
            f"({available / sfreq:g} s); shorten it"
        )
    signals, _ = reader.read_span(session_index, 0, context_samples)
    model, _ = evaluation.build_model(checkpoint)
    codes = evaluation.code_space.encode(torch.from_numpy(signals)[None])
    generator = torch.Generator(device=evaluation.device).manual_seed(evaluation.settings.generator.seed)
    continuation, _ = evaluation.continue_codes(model, codes, steps, generator)
    data = torch.cat([evaluation.code_space.decode(codes), evaluation.code_space.decode(continuation)], dim=-1)[0].numpy()

    layout = split.layout
    ch_types = [kind if kind in _MNE_TYPES else "misc" for kind in layout.ch_types]
    info = mne.create_info(layout.ch_names, sfreq, ch_types=ch_types)
    for channel, position in zip(info["chs"], layout.pos_2d):
        if position is not None and len(position) >= 2:
            channel["loc"][:3] = [float(position[0]), float(position[1]), 0.0]
    raw = mne.io.RawArray(data.astype(np.float64), info, verbose="error")
    raw.set_annotations(mne.Annotations(onset=[context_samples / sfreq], duration=[steps / sfreq], description=["generated"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(out_path, verbose="error")
    return out_path


# Channel types MNE's create_info accepts that sessions are likely to carry.
_MNE_TYPES = {"mag", "grad", "eeg", "seeg", "ecog", "dbs", "eog", "ecg", "emg", "misc", "stim", "ref_meg"}


def find_session(evaluation: Evaluation, name: str | None):
    """(split, session index) of the session called ``name``; default: the sampler split's first session."""
    if name is None:
        split = evaluation.splits[evaluation.settings.example_sampler.split]
        if not split.sessions:
            raise ConfigError(f"eval_runner.example_sampler.split: the {split.name} split has no sessions; give --session")
        return split, 0
    for split in evaluation.splits.values():
        for index, session in enumerate(split.sessions):
            if name in (session.name, session.key):
                return split, index
    names = [session.name for split in evaluation.splits.values() for session in split.sessions]
    from brain_gen.config.errors import did_you_mean

    raise ConfigError(f"--session: no session named {name!r}{did_you_mean(name, names)}; sessions: {', '.join(names[:10])}")

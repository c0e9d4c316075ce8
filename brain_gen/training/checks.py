"""The checks made before a run: each returns the problems it finds, one line each, naming its key.

ExperimentDL runs them in three passes, each as early as what it needs allows, and
each raising one ConfigError that holds every problem of its pass (the CLI prints
one line per problem):

1. ``setup_problems``: the config alone, before anything is read or made;
2. ``model_problems``: model and loss against the config, before data is read;
3. ``data_fit_problems``: the data against loader and model, before the first step.

The schema and the Trainer argument types are checked even earlier, together, by
``brain_gen.config.loading.load_config``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import zipfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning.plugins.io import CheckpointIO
from torch import nn

from brain_gen.config.errors import ConfigError, did_you_mean
from brain_gen.config.registry import check_arguments, resolve_class
from brain_gen.config.schema import FSDP_STRATEGIES, ExperimentConfig, LightningConfig, ResumeContextConfig
from brain_gen.dataset.mixup import sample_problems
from brain_gen.models import COMPILED_PREFIX
from brain_gen.training.fsdp import SHARDED_METADATA_FILE, is_sharded_checkpoint
from brain_gen.training.lightning import scheduler_classes

try:  # Lightning >= 2.1 raises this for impossible Trainer settings (e.g. a missing GPU).
    from lightning_fabric.utilities.exceptions import MisconfigurationException
except ImportError:  # pragma: no cover
    from pytorch_lightning.utilities.exceptions import MisconfigurationException


# --------------------------------------------------------------------------- pass 1: the config


def setup_problems(config: ExperimentConfig, check_trainer: bool = True) -> list[str]:
    """Everything that can be checked from the config alone: schedule, paths and, unless
    ``check_trainer`` is false (a command that only reads the data), the Trainer settings."""
    problems = lr_schedule_problems(config.lightning)
    # resume_from: last is resolved to a path by ExperimentDL first, or reported there.
    if config.resume_from is not None and config.resume_from != "last":
        fsdp = config.trainer.lightning_kwargs.get("strategy") in FSDP_STRATEGIES
        problems += checkpoint_file_problems("resume_from", Path(config.resume_from), sharded=fsdp)
    problems += writable_folder_problems("save_dir", Path(config.save_dir))
    if config.datasplitter.cache_dir:
        problems += writable_folder_problems("datasplitter.cache_dir", Path(config.datasplitter.cache_dir))
    return problems + (trainer_setup_problems(config) if check_trainer else [])


def class_problems(named: list[tuple[str, str, Mapping[str, str]]]) -> list[str]:
    """Each ``(key, name, built-ins)`` names a class that can be found (a built-in, or an import path)."""
    problems = []
    for key, name, builtins in named:
        try:
            resolve_class(key, name, builtins)
        except ConfigError as exc:
            problems += exc.problems
    return problems


def trainer_setup_problems(config: ExperimentConfig) -> list[str]:
    """The Trainer settings, and how they meet the eval runner and brain-gen's checkpoint writer."""
    kwargs = config.trainer.lightning_kwargs
    problems = []
    checkpoints = kwargs.get("enable_checkpointing", True) is not False
    evaluates = config.eval_runner is not None and config.eval_runner.enabled
    if evaluates and not checkpoints:
        problems.append(
            "eval_runner.enabled: evaluations read the last-checkpoints, but trainer.enable_checkpointing is false; "
            "enable one or the other"
        )
    if evaluates and checkpoints and config.trainer.fsdp_state_dict_type == "sharded":
        problems.append(
            "eval_runner.enabled: evaluations load whole checkpoints, and trainer.fsdp_state_dict_type: sharded writes "
            "folders of shards; use fsdp_state_dict_type: full, or disable the eval runner"
        )
    plugins = kwargs.get("plugins")
    plugins = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    if checkpoints and any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        problems.append(
            "trainer.plugins: brain-gen writes checkpoints through its own CheckpointIO (BackgroundCheckpointIO), "
            "and a Trainer takes one; remove yours, or set trainer.enable_checkpointing: false"
        )
    return problems + trainer_problems(kwargs)


def trainer_problems(kwargs: dict[str, Any]) -> list[str]:
    """Settings pytorch_lightning.Trainer refuses (a missing GPU, an unknown strategy), found by building one.

    The probe has no logger and no callbacks, and its device lines are held back:
    the run's own Trainer prints them once, when it is built.
    """
    problems = []
    remaining = dict(kwargs)
    error = _trainer_refusal(remaining)
    while error is not None:
        # Lightning's message names no config key. The keys it is about are those whose
        # removal makes it go (a probe each, only when something is wrong); without them
        # the next refusal, if any, is another problem.
        without = {key: _trainer_refusal({k: v for k, v in remaining.items() if k != key}) for key in remaining}
        culprits = [key for key, other in without.items() if other != error]
        if not culprits:
            problems.append(f"trainer: {error}")
            break
        problems.append(f"{', '.join(f'trainer.{key}' for key in culprits)}: {error}")
        for key in culprits:
            del remaining[key]
        error = _trainer_refusal(remaining)
    return problems


def _trainer_refusal(kwargs: dict[str, Any]) -> str | None:
    """Why pytorch_lightning.Trainer refuses these arguments, or None when it takes them."""
    import pytorch_lightning as pl

    probe_kwargs = {**kwargs, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    try:
        with _device_lines_held_back():
            pl.Trainer(**probe_kwargs)
    except (MisconfigurationException, ValueError) as exc:
        return str(exc)
    return None


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


@contextlib.contextmanager
def _device_lines_held_back():
    # Lightning logs "GPU available: ..." at INFO through this logger. The filter is on
    # for the probe's construction only, on the thread that starts the run.
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    quiet = _DropInfo()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def lr_schedule_problems(config: LightningConfig) -> list[str]:
    """The scheduler class exists and takes its arguments.

    The scheduler is built once on a throwaway optimizer, so that bad values (not
    only bad names) are found now rather than when training starts.
    """
    scheduler = config.lr_scheduler
    if scheduler is None:
        return []
    classes = scheduler_classes()
    if scheduler.class_name not in classes:
        hint = did_you_mean(scheduler.class_name, classes, n=3) or f"; choose one of {', '.join(sorted(classes))}"
        return [f"lightning.lr_scheduler.class_name: {scheduler.class_name!r} is not a scheduler of torch.optim.lr_scheduler{hint}"]
    kwargs = scheduler.constructor_kwargs
    if "last_epoch" in kwargs:
        return ["lightning.lr_scheduler.last_epoch: set by brain-gen (a resumed run restores it from the checkpoint); remove it"]
    scheduler_class = classes[scheduler.class_name]
    # A misspelled interval, frequency or monitor lands among the constructor's arguments.
    own_keys = tuple(name for name in type(scheduler).model_fields if name != "class_name")
    problems = check_arguments("lightning.lr_scheduler", scheduler_class, kwargs, 1, other_keys=own_keys)
    if problems:
        return problems
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    try:
        scheduler_class(probe, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        return [f"lightning.lr_scheduler: {scheduler.class_name} rejected its arguments: {exc}"]
    return []


def checkpoint_file_problems(key: str, path: Path, sharded: bool = False) -> list[str]:
    """A cheap look at a checkpoint: a torch.save zip archive, or with ``sharded`` also a sharded FSDP folder."""
    if is_sharded_checkpoint(path):
        if sharded:
            return checkpoint_file_problems(key, path / SHARDED_METADATA_FILE)
        return [f"{key}: {path} is a sharded FSDP checkpoint, which only an FSDP run can load (trainer.strategy: fsdp); "
                "save with trainer.fsdp_state_dict_type: full to load it elsewhere"]
    if not path.is_file():
        return [f"{key}: checkpoint not found: {path}"]
    try:
        with zipfile.ZipFile(path) as archive:
            is_torch_archive = any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        is_torch_archive = False
    if not is_torch_archive:
        return [f"{key}: {path} is not a PyTorch checkpoint (or it is truncated); point it at a .ckpt file"]
    return []


# --------------------------------------------------------------------------- checkpoint contents


# What is said of a file that holds more than tensors and plain data.
PICKLED_OBJECTS = (
    "holds pickled objects beyond tensors and plain data, which brain-gen does not unpickle (unpickling can run "
    "any code); use a checkpoint brain-gen wrote, or save the model's state_dict alone"
)


def read_checkpoint_safely(path: Path) -> Any | None:
    """The checkpoint's contents, unpickled as tensors and plain containers only; None if unreadable.

    ``weights_only`` never runs code from the file. One that holds other objects (a
    class or function to import) raises pickle.UnpicklingError.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise
    except Exception:
        return None  # a torn or foreign file: the file checks say what is wrong with it


def is_lightning_checkpoint(contents: Any) -> bool:
    return isinstance(contents, dict) and "state_dict" in contents and "pytorch-lightning_version" in contents


def model_weights(contents: Any) -> dict[str, torch.Tensor] | None:
    """The model's weights by parameter name, from a Lightning checkpoint or a plain state_dict; None if neither."""
    if is_lightning_checkpoint(contents):
        state = {key.removeprefix("model."): value for key, value in contents["state_dict"].items() if key.startswith("model.")}
    elif isinstance(contents, dict) and contents and all(
        torch.is_tensor(value) or str(key).endswith("_extra_state") for key, value in contents.items()  # a module's own extra state
    ):
        state = contents
        if all(key.startswith("model.") for key in state):
            state = {key.removeprefix("model."): value for key, value in state.items()}
    else:
        return None
    # Saved by tools that compiled the model themselves.
    return {key.replace(COMPILED_PREFIX, ""): value for key, value in state.items()}


def weights_fit_problems(key: str, path: Path, weights: dict[str, torch.Tensor], model: nn.Module, contents: Any, model_kwargs: dict[str, Any]) -> list[str]:
    """The weights have the parameter names and shapes of ``model``; one line naming what differs."""
    def shape(value: Any) -> tuple[int, ...] | None:
        return tuple(value.shape) if torch.is_tensor(value) else None  # extra state has no shape

    expected = {name: shape(value) for name, value in model.state_dict().items()}
    mismatched = [(name, shape(weights[name]), wanted) for name, wanted in expected.items() if name in weights and shape(weights[name]) != wanted]
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if not (mismatched or missing or unexpected):
        return []
    parts = []
    if mismatched:
        shown = ", ".join(f"{name} {list(stored or ())} in the file, {list(wanted or ())} in the model" for name, stored, wanted in mismatched[:3])
        parts.append(f"{len(mismatched)} parameter(s) differ in shape ({shown}{', ...' if len(mismatched) > 3 else ''})")
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    stored_config = contents.get("hyper_parameters", {}).get("model_config") if is_lightning_checkpoint(contents) else None
    differing = ""
    if isinstance(stored_config, dict):
        changed = [f"{name} {stored_config.get(name)!r} -> {model_kwargs.get(name)!r}" for name in sorted(set(stored_config) | set(model_kwargs))
                   if stored_config.get(name) != model_kwargs.get(name)]
        differing = f"; model_config keys that differ from the checkpoint's: {', '.join(changed)}" if changed else ""
    return [f"{key}: {path} does not fit the model: {'; '.join(parts)}{differing}"]


def resume_checkpoint_problems(path: Path, model: nn.Module, model_name: str, model_kwargs: dict[str, Any], reshapes: bool) -> list[str]:
    """resume_from holds a Lightning checkpoint of this model (its shapes unless resume_context reshapes it)."""
    if is_sharded_checkpoint(path):
        return []  # FSDP reads its shards itself
    try:
        contents = read_checkpoint_safely(path)
    except pickle.UnpicklingError:
        return [f"resume_from: {path} {PICKLED_OBJECTS}"]
    if contents is None:
        return []
    if not is_lightning_checkpoint(contents):
        if model_weights(contents) is not None:
            return [f"resume_from: {path} holds a plain state_dict (weights only), not a Lightning checkpoint with the optimizer "
                    f"and training progress to continue from; to start a new training from these weights, use init_from: {path}"]
        return [f"resume_from: {path} is a torch.save file but not a Lightning checkpoint (no state_dict, no "
                "pytorch-lightning_version); point it at a .ckpt that brain-gen or Lightning wrote"]
    stored_name = (contents.get("hyper_parameters") or {}).get("model_name")
    if isinstance(stored_name, str) and stored_name != model_name:
        return [f"resume_from: {path} was written by model_name {stored_name}, not {model_name}; resume with the model it was trained with"]
    if reshapes:
        return []  # resume_context changes the model's shapes after the checkpoint is loaded
    return weights_fit_problems("resume_from", path, model_weights(contents), model, contents, model_kwargs)


def init_weights(path: Path, model: nn.Module, model_kwargs: dict[str, Any]) -> list[str]:
    """Load init_from's weights into ``model``, or the problems that keep them out."""
    problems = checkpoint_file_problems("init_from", path)
    if problems:
        return problems
    try:
        contents = read_checkpoint_safely(path)
    except pickle.UnpicklingError:
        return [f"init_from: {path} {PICKLED_OBJECTS}"]
    if contents is None:
        return [f"init_from: {path} cannot be read as a torch.save file; point it at a .ckpt or a saved state_dict"]
    weights = model_weights(contents)
    if weights is None:
        return [f"init_from: {path} holds neither a Lightning checkpoint nor a state_dict of tensors"]
    problems = weights_fit_problems("init_from", path, weights, model, contents, model_kwargs)
    if not problems:
        model.load_state_dict(weights)
    return problems


def writable_folder_problems(key: str, path: Path) -> list[str]:
    """The folder exists or can be made, and can be written, without creating anything yet."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return [f"{key}: {existing} is a file, not a folder; choose another path"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{key}: no permission to write in {existing}; choose another path"]
    return []


# --------------------------------------------------------------------------- pass 2: model and loss


def model_problems(model: nn.Module, config: LightningConfig) -> list[str]:
    """A model that can train, and that has what the resume overrides ask of it."""
    if not any(parameter.requires_grad for parameter in model.parameters()):
        return [f"model_name: {type(model).__name__} has no trainable parameters; nothing to train"]
    return resume_support_problems(model, config)


def resume_support_problems(model: nn.Module, config: LightningConfig) -> list[str]:
    """What a resume override asks for and the model lacks."""
    problems = []
    name = type(model).__name__
    if config.resume_context is not None:
        resize = getattr(model, "resize_context", None)
        if resize is None:
            problems.append(f"lightning.resume_context: {name} has no resize_context method; remove the key")
        else:
            accepted = inspect.signature(resize).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                for key in config.resume_context.model_dump(exclude_none=True):
                    if key not in accepted:
                        problems.append(f"lightning.resume_context.{key}: {name}.resize_context cannot change it")
    settings = config.resume_token_corruption
    if settings is not None:
        if not hasattr(model, "update_token_corruption_cfg"):
            problems.append(f"lightning.resume_token_corruption: {name} has no update_token_corruption_cfg method; remove the key")
        else:
            # Tried on the fresh model now; the checkpoint restores its own settings and
            # the override is applied again after that.
            try:
                model.update_token_corruption_cfg(settings)
            except (ValueError, TypeError) as exc:
                problems.append(f"lightning.resume_token_corruption: {exc}")
    return problems


# --------------------------------------------------------------------------- pass 3: data


def data_fit_problems(model: nn.Module, dataset: Any, loader: Any, resume_context: ResumeContextConfig | None = None) -> list[str]:
    """The training data against the loader and the model."""
    return mixup_problems(loader, dataset) + model_fit_problems(model, dataset, resume_context, loader)


def mixup_problems(loader: Any, dataset: Any) -> list[str]:
    """MixupDataLoader can mix the dataset's inputs and targets, and quantizes inputs as the targets are coded."""
    collate = getattr(loader, "mixup", None)
    if collate is None or len(dataset) == 0:
        return []
    options = collate.options
    problems = sample_problems(options, dataset[0])
    vocab = getattr(dataset, "vocab_size", None)
    if options.num_classes is not None and vocab is not None and options.num_classes != vocab:
        problems.append(f"dataloader.num_classes: {options.num_classes}, but the targets have {vocab} classes; set it to {vocab}")
    if options.quantize and vocab is not None:
        for key, value in (("mu", options.mu), ("max_val", options.max_val)):
            if getattr(dataset, key, value) != value:
                problems.append(
                    f"dataloader.{key}: {value}, but the dataset codes its targets with {key}="
                    f"{getattr(dataset, key)}; inputs and targets must be quantized alike"
                )
    return problems


def model_fit_problems(model: nn.Module, dataset: Any, resume_context: ResumeContextConfig | None = None, loader: Any = None) -> list[str]:
    """The model's declared input geometry against what the dataset produces.

    Models and datasets that expose ``num_channels``, ``vocab_size``, ``n_classes`` /
    ``num_classes``, ``n_samples`` or ``max_position_embeddings`` / ``sequence_length``
    are compared, so a mismatch is a one-line config error instead of a shape error
    deep inside the first step. A ``resume_context`` that will resize the model on
    resume counts as its new geometry.
    """
    problems = []
    # A model whose constructor names these differently says so (``config_keys``), so that
    # the message names the key the user wrote.
    keys = {"num_channels": "num_channels", "vocab_size": "vocab_size", **getattr(model, "config_keys", {})}
    model_channels = getattr(model, "num_channels", None)
    data_channels = getattr(dataset, "num_channels", None)
    if model_channels is not None and data_channels is not None and model_channels != data_channels:
        problems.append(f"model_config.{keys['num_channels']}: {model_channels}, but the data has {data_channels} channels; set it to {data_channels}")
    model_vocab = getattr(model, "vocab_size", None)
    # A text loader's tokenizer, when there is one, decides the vocabulary.
    data_vocab = getattr(loader, "vocab_size", None) or getattr(dataset, "vocab_size", None)
    if model_vocab is not None and data_vocab is not None and model_vocab < data_vocab:
        problems.append(f"model_config.{keys['vocab_size']}: {model_vocab}, but the data has {data_vocab} codes or tokens; set it to {data_vocab}")
    model_classes, data_classes = getattr(model, "n_classes", None), getattr(dataset, "num_classes", None)
    if model_classes is not None and data_classes is not None and model_classes != data_classes:
        problems.append(f"model_config.n_classes: {model_classes}, but the data has {data_classes} classes; set it to {data_classes}")
    model_samples, data_samples = getattr(model, "n_samples", None), getattr(dataset, "sequence_length", None)
    if model_samples is not None and data_samples is not None and model_samples != data_samples:
        problems.append(
            f"model_config.n_samples: {model_samples}, but windows are {data_samples} samples long "
            f"(round((tmax - tmin) x sfreq)); set it to {data_samples}"
        )
    model_positions = getattr(model, "max_position_embeddings", None)
    if model_positions is not None and resume_context is not None:
        # The geometry after resizing: an explicit length wins, a longer input_shape raises it.
        if resume_context.max_position_embeddings is not None:
            model_positions = resume_context.max_position_embeddings
        elif resume_context.input_shape and len(resume_context.input_shape) == 2:
            model_positions = max(model_positions, resume_context.input_shape[1])
    data_length = getattr(dataset, "sequence_length", None) or getattr(loader, "sequence_length", None)
    if model_positions is not None and data_length is not None and model_positions < data_length:
        problems.append(
            f"model_config.max_position_embeddings: {model_positions}, but windows are {data_length} steps long; "
            f"raise it to at least {data_length} or shorten datasplitter.example_seconds"
        )
    return problems

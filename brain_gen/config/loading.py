"""Load a config: read YAML, apply ``--set`` overrides, resolve paths, validate.

Every problem found is collected into a single ConfigError: one line per problem,
each naming its dotted key.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from brain_gen.config.errors import ConfigError, did_you_mean
from brain_gen.config.schema import TRAINER_CUSTOM_KEYS, ExperimentConfig, PrepareConfig, TrainerConfig
from brain_gen.seeding import derive_seed, draw_seed

# Keys the framework sets itself on pytorch_lightning.Trainer, with what to use instead.
TRAINER_MANAGED_KEYS = {
    "logger": "a TensorBoardLogger is always attached under save_dir; remove this key",
    "default_root_dir": "use the top-level save_dir instead",
}


def read_yaml_mapping(path: Path, key: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; ``key`` names what the file is for in errors."""
    if not path.is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{key}: invalid YAML in {path}{where}: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} must hold a mapping of keys, not a {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=VALUE`` into the key path and the YAML-typed value."""
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted KEY such as trainer.max_epochs=3, got {text!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value {raw_value!r} is not valid YAML") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Set each ``a.b.c=VALUE`` override into the nested mapping ``data`` in place."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                parent = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {'.'.join(path)}: {parent} is a {type(child).__name__}, not a mapping")
            node = child
        node[path[-1]] = value


def _resolve_path(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())
    return value


def resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make the path-valued keys absolute, relative to ``base_dir`` (the config file's folder)."""
    data["save_dir"] = _resolve_path(data.get("save_dir"), base_dir)
    if data.get("resume_from") != "last":
        data["resume_from"] = _resolve_path(data.get("resume_from"), base_dir)
    if data.get("init_from") is not None:
        data["init_from"] = _resolve_path(data.get("init_from"), base_dir)
    splitter = data.get("datasplitter")
    if isinstance(splitter, dict):
        roots = splitter.get("dataset_root")
        if isinstance(roots, list):
            splitter["dataset_root"] = [_resolve_path(root, base_dir) for root in roots]
        elif isinstance(roots, dict):
            splitter["dataset_root"] = {name: _resolve_path(root, base_dir) for name, root in roots.items()}
        else:
            splitter["dataset_root"] = _resolve_path(roots, base_dir)
        if "cache_dir" in splitter:
            splitter["cache_dir"] = _resolve_path(splitter["cache_dir"], base_dir)
    loader = data.get("dataloader")
    if isinstance(loader, dict) and "tokenizer_path" in loader:
        loader["tokenizer_path"] = _resolve_path(loader["tokenizer_path"], base_dir)
    for key in ("save_dir", "resume_from"):
        if data.get(key) is None:
            data.pop(key, None)


def _copy_containers(value: Any) -> Any:
    """Copy mappings and lists so loading never edits the caller's config; other objects
    (a callback instance passed from Python) stay the very same object."""
    if isinstance(value, dict):
        return {key: _copy_containers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_containers(item) for item in value]
    return value


def _inline_model_config(data: dict[str, Any], base_dir: Path) -> None:
    model_config = data.get("model_config")
    if isinstance(model_config, str):
        data["model_config"] = read_yaml_mapping(Path(_resolve_path(model_config, base_dir)), "model_config")


def load_config(
    source: dict[str, Any] | str | os.PathLike, overrides: list[str] | None = None, check_trainer: bool = True
) -> ExperimentConfig:
    """Build the validated config from a mapping or a YAML file path, plus ``--set`` overrides.

    Relative paths resolve against the config file's folder (the current folder for
    a mapping), and that holds for paths given in overrides too. ``check_trainer=False``
    skips checking the trainer keys against pytorch_lightning.Trainer, which imports
    Lightning: for processes that never build a Trainer and read a config a run wrote.
    """
    if isinstance(source, dict):
        data = _copy_containers(source)
        base_dir = Path.cwd()
    else:
        config_path = Path(source).expanduser().resolve()
        data = read_yaml_mapping(config_path, "config")
        base_dir = config_path.parent
    # A model_config file is read before the overrides, so `--set model_config.d_model=64`
    # edits it as if it were written inline; an override may also name another file.
    _inline_model_config(data, base_dir)
    apply_overrides(data, list(overrides or []))
    _inline_model_config(data, base_dir)
    resolve_paths(data, base_dir)

    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_errors(exc, data, ExperimentConfig)
        # The Trainer arguments are checked too, so that a schema error does not hide them.
        if check_trainer:
            problems += check_trainer_kwargs(_trainer_passthrough(data))
        raise ConfigError(problems) from None
    problems = check_trainer_kwargs(config.trainer.model_extra or {}) if check_trainer else []
    if problems:
        raise ConfigError(problems)
    resolve_seeds(config)
    return config


def resolve_seeds(config: ExperimentConfig) -> None:
    """Put the seeds in force into the config, so that the run's config.yaml repeats the run.

    ``seed: null`` draws a seed; eval runner seeds left null derive from the run's seed.
    """
    if config.seed is None:
        config.seed = draw_seed()
        config._seed_drawn = True
    for section, stream in _eval_seed_sections(config):
        if section.seed is None:
            section.seed = derive_seed(config.seed, stream)


def _eval_seed_sections(config: ExperimentConfig) -> list[tuple[Any, str]]:
    """The eval runner sections with a seed of their own, and the name of the stream each derives."""
    settings = config.eval_runner
    if settings is None:
        return []
    return [(settings.example_sampler, "eval contexts"), (settings.generator, "eval generation")]


def _trainer_passthrough(data: dict[str, Any]) -> dict[str, Any]:
    """The keys of a raw ``trainer`` mapping that go to pytorch_lightning.Trainer (not brain-gen's own)."""
    trainer = data.get("trainer")
    if not isinstance(trainer, dict):
        return {}
    own = set(TrainerConfig.model_fields) | {field.alias for field in TrainerConfig.model_fields.values() if field.alias}
    return {key: value for key, value in trainer.items() if key not in own}


def load_prepare_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> PrepareConfig:
    """The ``prepare`` section of a YAML file (defaults without a file), plus ``--set prepare.KEY=VALUE``.

    The file may be a training config too: only its ``prepare`` section is read.
    """
    data: dict[str, Any] = {}
    if path is not None:
        config_path = Path(path).expanduser().resolve()
        data = read_yaml_mapping(config_path, "--config")
        if "prepare" not in data:
            raise ConfigError(f"prepare: {config_path} has no prepare section; put the options under a top-level prepare: key")
    data = {"prepare": _copy_containers(data.get("prepare") or {})}
    for override in overrides or []:
        keys, _ = parse_override(override)
        if keys[0] != "prepare":
            raise ConfigError(f"--set {'.'.join(keys)}: brain-gen prepare only reads prepare.* keys")
    apply_overrides(data, list(overrides or []))
    try:
        return PrepareSection.model_validate(data).prepare
    except ValidationError as exc:
        raise ConfigError(describe_validation_errors(exc, data, PrepareSection)) from None


class PrepareSection(BaseModel):
    """A file's ``prepare`` section, so that errors name ``prepare.KEY``."""

    model_config = ConfigDict(extra="forbid")
    prepare: PrepareConfig


# --------------------------------------------------------------------------- error messages


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold, directly or as dict values / list items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _model_at(root: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The schema model that validates the mapping found at ``path``, if there is one."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None:
            return None
        field = next(
            (f for name, f in model.model_fields.items() if part in (name, f.alias)),
            None,
        )
        if field is None:
            return None
        candidates = _models_in(field.annotation)
        model = candidates[0] if len(candidates) == 1 else None
    return model


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


_SCALAR_TAGS = {"str", "int", "bool", "float", "none"}


def _is_union_tag(part: Any) -> bool:
    # pydantic names each failed union member in the location: 'int', 'list[str]', 'LRWarmupConfig'.
    return isinstance(part, str) and (part in _SCALAR_TAGS or "[" in part or part[:1].isupper())


def _split_location(loc: tuple, data: Any) -> tuple[list[str], list[str]]:
    """Separate a pydantic error location into real config keys and union-member tags."""
    keys, tags = [], []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif _is_union_tag(part):
            tags.append(part)
            continue
        else:
            node = None
        keys.append(str(part))
    return keys, tags


def _keyed_line(dotted: str, fields: list[str], line: str) -> str:
    """A section validator's sentence, led by the full dotted key of the field it starts with.

    "overlap_seconds (1.0) must be smaller ..." in section datasplitter reads
    "datasplitter.overlap_seconds (1.0) must be smaller ...": searchable, and
    naming the key to change. Other sentences get the section's key in front.
    """
    first_word = re.match(r"[A-Za-z_]\w*", line)
    if first_word is not None and first_word[0] in fields:
        return f"{dotted}.{line}" if dotted else line
    return f"{dotted}: {line}" if dotted else line


def describe_validation_errors(exc: ValidationError, data: dict[str, Any], root: type[BaseModel]) -> list[str]:
    """One short sentence per problem, each starting with the dotted key it concerns."""
    grouped: dict[str, dict[str, Any]] = {}
    for error in exc.errors():
        keys, tags = _split_location(error["loc"], data)
        # A wrong value for a union field fails once per member; report it once.
        group = grouped.setdefault(".".join(keys), {"errors": [], "tags": [], "keys": keys})
        group["errors"].append(error)
        group["tags"].extend(tag for tag in tags if tag not in group["tags"])

    messages = []
    for dotted, group in grouped.items():
        first = group["errors"][0]
        prefix = f"{dotted}: " if dotted else ""
        if first["type"] == "extra_forbidden":
            parent = _model_at(root, group["keys"][:-1])
            hint = did_you_mean(group["keys"][-1], _field_keys(parent)) if parent else ""
            messages.append(f"{prefix}unknown key{hint}")
        elif first["type"] == "missing":
            messages.append(f"{prefix}required key is missing")
        elif first["type"] in ("value_error", "assertion_error"):
            # A validator that finds several problems puts each on its own line.
            section = _model_at(root, group["keys"])
            fields = _field_keys(section) if section is not None else []
            messages.extend(_keyed_line(dotted, fields, line) for line in first["msg"].removeprefix("Value error, ").splitlines())
        elif len(group["errors"]) > 1 and group["tags"]:
            expected = " or ".join(group["tags"])
            messages.append(f"{prefix}expected {expected}, got {first['input']!r}")
        else:
            message = first["msg"][:1].lower() + first["msg"][1:]
            messages.append(f"{prefix}{message}, got {first['input']!r}")
    return messages


def adopt_seed(config: ExperimentConfig, seed: int) -> None:
    """Put ``seed`` in place of a drawn one, and eval runner seeds derived from it (resuming with ``seed: null``)."""
    drawn, config.seed = config.seed, seed
    for section, stream in _eval_seed_sections(config):
        if section.seed == derive_seed(drawn, stream):
            section.seed = derive_seed(seed, stream)
    config._seed_drawn = False


# --------------------------------------------------------------------------- trainer pass-through


@functools.cache
def _trainer_parameters() -> dict[str, Any]:
    """Name -> type annotation of every pytorch_lightning.Trainer constructor argument."""
    import pytorch_lightning as pl

    signature = inspect.signature(pl.Trainer.__init__)
    try:
        hints = typing.get_type_hints(pl.Trainer.__init__)
    except Exception:  # an unresolvable annotation: check names only
        hints = {}
    return {name: hints.get(name, Any) for name in signature.parameters if name != "self"}


@functools.cache
def _type_adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))


def _type_name(annotation: Any) -> str:
    """A readable form of a type annotation: `int | None`, `'16-mixed' | 'bf16-mixed'`."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in typing.get_args(annotation))
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " | ".join(_type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and origin is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_trainer_kwargs(passthrough: dict[str, Any]) -> list[str]:
    """Check the keys handed to pytorch_lightning.Trainer against its signature.

    Values pass through pydantic with Trainer's own annotations and are replaced in
    ``passthrough``, so ``max_epochs: "3"`` reaches Trainer as the int 3 and
    ``max_epochs: three`` is an error here.
    """
    parameters = _trainer_parameters()
    problems = []
    for key, value in list(passthrough.items()):
        if key in TRAINER_MANAGED_KEYS:
            problems.append(f"trainer.{key}: set by brain-gen; {TRAINER_MANAGED_KEYS[key]}")
        elif key not in parameters:
            hint = did_you_mean(key, [*parameters, *TRAINER_CUSTOM_KEYS])
            problems.append(f"trainer.{key}: unknown key{hint}; it is neither a brain-gen key nor a pytorch_lightning.Trainer argument")
        else:
            annotation = parameters[key]
            try:
                if isinstance(value, bool) and not _admits_bool(annotation):
                    raise ValueError("a boolean is not a number")
                passthrough[key] = _type_adapter(annotation).validate_python(value)
            except (ValidationError, ValueError):
                problems.append(f"trainer.{key}: expected {_type_name(annotation)}, got {value!r}")
    return problems


def _admits_bool(annotation: Any) -> bool:
    """Whether a Trainer annotation really means to take True/False (pydantic would turn them into 1/0)."""
    if annotation is bool or annotation is Any:
        return True
    return any(_admits_bool(arg) for arg in typing.get_args(annotation) if arg is not type(None))

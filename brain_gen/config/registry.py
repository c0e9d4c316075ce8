"""Turn a class name from a config into the class: a built-in name or an import path."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from brain_gen.config.errors import ConfigError, did_you_mean


def import_object(path: str):
    """Import ``package.module:Name`` or ``package.module.Name``; raises ImportError/AttributeError."""
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ImportError(f"{path!r} is not of the form package.module:Name")
    module = importlib.import_module(module_name)
    for part in attribute.split("."):
        module = getattr(module, part)
    return module


def resolve_class(key: str, name: str, builtins: Mapping[str, str]):
    """Resolve the value of config key ``key``.

    ``builtins`` maps each built-in name to the import path of its class, so that a
    built-in costs nothing until it is used. Anything containing a dot or colon is
    taken as an import path to a user's own class.
    """
    if name in builtins:
        return import_object(builtins[name])
    if ":" in name or "." in name:
        try:
            return import_object(name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{key}: cannot import {name!r} ({exc}); check the module path and that it is installed") from exc
    raise ConfigError(
        f"{key}: unknown name {name!r}{did_you_mean(name, builtins)}; built-ins are "
        f"{', '.join(sorted(builtins))}, or give an import path package.module:Class"
    )


def check_arguments(key: str, cls, kwargs: Mapping, n_positional: int = 0, other_keys: tuple[str, ...] = ()) -> list[str]:
    """Problems with calling ``cls(<n_positional args>, **kwargs)``, each naming ``key.ARG``.

    Unknown argument names (with the closest valid one, among the arguments and
    ``other_keys``, the section's own keys) and missing required arguments are found
    from the signature, without calling anything.
    """
    import inspect

    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return []
    parameters = list(signature.parameters.values())[n_positional:]
    named_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in parameters if p.kind in named_kinds]
    problems = []
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        for name in kwargs:
            if name not in names:
                problems.append(f"{key}.{name}: not an argument of {cls.__name__}{did_you_mean(name, [*names, *other_keys])}")
    for parameter in parameters:
        if parameter.kind in named_kinds and parameter.default is inspect.Parameter.empty and parameter.name not in kwargs:
            problems.append(f"{key}.{parameter.name}: required by {cls.__name__}")
    return problems


def instantiate(key: str, cls, kwargs: Mapping, *args):
    """Call ``cls(*args, **kwargs)``, checking ``kwargs`` against its signature first.

    ``key`` is the config key that holds ``kwargs`` (e.g. ``model_config``), so that a
    misspelt or missing argument is reported as ``model_config.d_modle``. A
    ValueError or TypeError raised by the constructor is a config problem too.
    """
    problems = check_arguments(key, cls, kwargs, len(args))
    if problems:
        raise ConfigError(problems)
    try:
        return cls(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key}: {cls.__name__} rejected its arguments: {exc}") from exc

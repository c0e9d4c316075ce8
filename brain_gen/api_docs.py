"""Render the Python API reference (docs/python-api.md) from the public entry points' docstrings.

What a user may import and rely on is listed here once (``PUBLIC``, plus every
built-in model, dataset and loader by its registry); each entry's signature and
docstring are the documentation. `make docs` rewrites the file and a test fails when
it is out of date.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from brain_gen.dataset import DATASETS
from brain_gen.dataset.loaders import BUILTIN_LOADERS
from brain_gen.models import MODELS

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"

# (section, [import paths "module:Name"]) in the order the page lists them.
PUBLIC: list[tuple[str, list[str]]] = [
    ("Running experiments", ["brain_gen.training.train:ExperimentDL", "brain_gen.config.loading:load_config"]),
    ("The LightningModule", ["brain_gen.training.lightning:LitModel"]),
    ("Models", sorted(MODELS.values())),
    ("Datasets", sorted(DATASETS.values())),
    ("Loaders", sorted(f"brain_gen.training.train:{name}" for name in BUILTIN_LOADERS)),
    ("Losses", ["brain_gen.losses.next_step:CrossEntropy", "brain_gen.losses.next_step:MSE"]),
    ("Codes", ["brain_gen.dataset.mulaw:mu_law_encode", "brain_gen.dataset.mulaw:mu_law_decode"]),
    ("Errors", ["brain_gen.config.errors:ConfigError", "brain_gen.config.errors:NonFiniteTraining", "brain_gen.config.errors:CheckpointWriteError"]),
]


def resolve(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def public_methods(cls: type) -> list[str]:
    """The methods a class defines itself that do not start with an underscore, in source order."""
    return [name for name, value in vars(cls).items() if not name.startswith("_") and inspect.isfunction(value)]


def signature(item) -> str:
    try:
        return str(inspect.signature(item))
    except (TypeError, ValueError):
        return "(...)"


def render_entry(path: str) -> list[str]:
    item = resolve(path)
    module, name = path.split(":")
    lines = [f"### `{name}`", "", f"`from {module} import {name}`", ""]
    if not item.__module__.startswith("brain_gen"):
        # Another library's class, used as it is: its own documentation applies.
        return lines + [f"`{item.__module__}.{item.__qualname__}`, as that library documents it.", ""]
    lines += ["```python", f"{name}{signature(item)}", "```", "", inspect.getdoc(item) or "", ""]
    if inspect.isclass(item):
        for method in public_methods(item):
            doc = inspect.getdoc(getattr(item, method)) or ""
            summary = doc.split("\n\n")[0].replace("\n", " ")
            lines.append(f"- `{method}{signature(getattr(item, method))}`" + (f": {summary}" if summary else ""))
        if public_methods(item):
            lines.append("")
    return lines


def render() -> str:
    lines = [
        "# Python API",
        "",
        "<!-- Generated from the docstrings by `make docs` (brain_gen/api_docs.py); edit those, not this file. -->",
        "",
        "What a user may import and rely on: the entry points below, with their signatures",
        "and docstrings (shapes are `[B, C, T]`: batch, channels, time steps; `V`: codes or",
        "tokens). Everything else is internal and may change. Config keys are in",
        "[configuration.md](configuration.md).",
        "",
    ]
    for section, paths in PUBLIC:
        lines += [f"## {section}", ""]
        for path in paths:
            lines += render_entry(path)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    REFERENCE.write_text(render())
    print(f"wrote {REFERENCE}")

"""Render the config reference (docs/configuration.md) from the schema.

The schema's field descriptions are the only place a key is documented; this
module lays them out as tables. `make docs` rewrites the file and a test fails
when it is out of date.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from brain_gen.config import schema

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Top level", schema.ExperimentConfig, ""),
    ("`datasplitter`", schema.DataSplitterConfig, "datasplitter."),
    ("`dataloader`", schema.DataLoaderConfig, "dataloader."),
    ("`lightning`", schema.LightningConfig, "lightning."),
    ("`lightning.lr_scheduler`", schema.LRSchedulerConfig, "lightning.lr_scheduler."),
    ("`lightning.lr_warmup`", schema.LRWarmupConfig, "lightning.lr_warmup."),
    ("`lightning.resume_context`", schema.ResumeContextConfig, "lightning.resume_context."),
    ("`trainer`", schema.TrainerConfig, "trainer."),
    ("`trainer.early_stopping`", schema.EarlyStoppingConfig, "trainer.early_stopping."),
    ("`eval_runner`", schema.EvalRunnerConfig, "eval_runner."),
    ("`eval_runner.example_sampler`", schema.ExampleSamplerConfig, "eval_runner.example_sampler."),
    ("`eval_runner.generator`", schema.GeneratorConfig, "eval_runner.generator."),
    ("`eval_runner.generator.sampling`", schema.SamplingConfig, "eval_runner.generator.sampling."),
    ("`prepare` (brain-gen prepare)", schema.PrepareConfig, "prepare."),
]

SECTION_NOTES = {
    schema.LRSchedulerConfig: "Other keys are checked against the scheduler's constructor before anything runs.",
    schema.LRWarmupConfig: "`lr_warmup: N` is short for `lr_warmup: {steps: N}`.",
    schema.TrainerConfig: "Any other key is passed to `pytorch_lightning.Trainer` and checked against its signature, "
    "except `logger` and `default_root_dir`, which brain-gen sets.",
    schema.PrepareConfig: "Read by `brain-gen prepare --config FILE` from the file's `prepare:` section "
    "(see docs/preparing.md); a training config may carry it too.",
    schema.EvalRunnerConfig: "How evaluations run, what they compute and how to read their plots: docs/evaluation.md. "
    "`brain-gen eval CONFIG --ckpt PATH|last|best` runs the same evaluation offline.",
    schema.EarlyStoppingConfig: "`early_stopping: true` takes every default; a bare number is the patience; "
    "`false` or `null` switches it off. Keys left `null` keep Lightning's own default.",
}


def type_name(annotation: Any) -> str:
    """A short, readable type: `int | null`, `"epoch" | "step"`, `mapping`."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(arguments[0])
    if origin is typing.Literal:
        return " \\| ".join(f'"{value}"' for value in arguments)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " \\| ".join(type_name(argument) for argument in arguments)
    if annotation is type(None):
        return "null"
    if origin in (list, tuple):
        return "list"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, (dict, BaseModel))):
        return "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "section defaults"
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `brain_gen/config/schema.py` by `make docs`; do not edit by hand.",
        "Every key below is type-checked before a run starts. For how the keys behave",
        "together, see [training.md](training.md).",
        "",
    ]
    for title, model, prefix in SECTIONS:
        lines += [f"## {title}", ""]
        if model.__doc__:
            lines += [model.__doc__.strip().splitlines()[0], ""]
        if model in SECTION_NOTES:
            lines += [SECTION_NOTES[model], ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            description = (field.description or "").replace("|", "\\|")
            # A field normalised by a validator names the forms it accepts, not the one it holds.
            accepts = (field.json_schema_extra or {}).get("accepts") if isinstance(field.json_schema_extra, dict) else None
            written = accepts.replace("|", "\\|") if accepts else type_name(field.annotation)
            lines.append(f"| `{prefix}{key}` | {written} | {default_text(field)} | {description} |")
        lines.append("")
    return "\n".join(lines)


def write(path: str | Path = "docs/configuration.md") -> None:
    Path(path).write_text(render())


if __name__ == "__main__":
    write()

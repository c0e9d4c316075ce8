"""The config reference is generated from the schema and kept in step with it."""

from pathlib import Path

from brain_gen.config import schema
from brain_gen.config.docs import SECTIONS, render

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date():
    assert REFERENCE.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_key_has_a_description_and_every_section_is_listed():
    documented = {model for _, model, _ in SECTIONS}
    for model in vars(schema).values():
        if isinstance(model, type) and issubclass(model, schema.BaseModel) and model.__module__ == schema.__name__:
            if model is schema.Section:
                continue
            # The typed loader options are documented as part of the section built from them.
            assert any(issubclass(section, model) for section in documented), f"{model.__name__} is missing from the reference"
            for name, field in model.model_fields.items():
                assert field.description, f"{model.__name__}.{name} has no description"

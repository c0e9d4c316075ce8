"""docs/python-api.md: generated from the public entry points' docstrings, never stale."""

from __future__ import annotations

import inspect

from brain_gen.api_docs import PUBLIC, REFERENCE, render, resolve


def test_python_api_reference_is_up_to_date():
    assert REFERENCE.read_text() == render(), "docs/python-api.md is stale: run `make docs`"


def test_every_public_entry_of_ours_has_a_docstring_and_tensors_have_shapes():
    for section, paths in PUBLIC:
        for path in paths:
            item = resolve(path)
            if not item.__module__.startswith("brain_gen"):
                continue  # another library's class, used as it is
            doc = inspect.getdoc(item)
            assert doc and len(doc) > 40, f"{path} needs a docstring"
            if section in ("Models", "Datasets", "Loaders", "Losses", "Codes"):
                assert "[" in doc, f"{path}: say the shapes of what goes in and out"

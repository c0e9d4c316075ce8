"""Keys that parse and validate but whose behaviour has not landed yet.

A run that asks for one of these stops before any data loads with
"not implemented yet: KEY", so no key is ever silently ignored. Each entry is
removed by the change that implements it.
"""

from __future__ import annotations

from brain_gen.config.schema import ExperimentConfig


def pending_features(config: ExperimentConfig) -> list[str]:
    """The keys of ``config`` that ask for behaviour brain-gen does not have yet."""
    asks: dict[str, bool] = {}
    return [key for key, asked in asks.items() if asked]

"""Helpers shared by the benchmarks: best-of-N wall time in one process, and the rows of `make bench`'s table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


def best_time(function: Callable[[], object], repeats: int = 15, warmup: int = 2) -> float:
    """The fastest of ``repeats`` runs, in seconds: the least disturbed by the rest of the machine."""
    for _ in range(warmup):
        function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best(functions: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 5) -> dict[str, float]:
    """Best time of each function, alternating between them so drifts hit all alike."""
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            best[name] = min(best[name], best_time(function, repeats=repeats, warmup=1))
    return best


@dataclass(frozen=True)
class Result:
    """One measured figure of a benchmark, with its target: a row of `make bench`'s table.

    ``met`` is None where the figure has no target of its own (context for another row).
    """

    benchmark: str
    measure: str
    measured: str
    target: str
    met: bool | None


def print_table(results: list[Result]) -> None:
    """Every result as one markdown table, with a verdict per row."""
    print("| benchmark | measure | measured | target | verdict |")
    print("| --- | --- | --- | --- | --- |")
    for result in results:
        verdict = "" if result.met is None else ("met" if result.met else "NOT met")
        print(f"| {result.benchmark} | {result.measure} | {result.measured} | {result.target} | {verdict} |")

"""Run every benchmark and print one table of every measured ratio and its target: `make bench`.

Each benchmark prints its own details as it goes; the table comes last. The slow,
multi-round benchmarks run one round here, and the forecast 600 steps instead of
1,000, against more when started alone (``python -m benchmarks.bench_ddp_scaling``),
so that the whole run stays under ten minutes.
"""

from __future__ import annotations

import time

from benchmarks import (
    bench_checkpoint_stall,
    bench_data_path,
    bench_ddp_scaling,
    bench_eval_runner,
    bench_forecast,
    bench_mixup_collate,
    bench_performance_monitor,
    bench_prepare,
    bench_realistic_step,
    bench_startup,
    bench_step_overhead,
    bench_text_collate,
)
from benchmarks.common import Result, print_table

# (benchmark, keyword arguments of its main) in the order they run.
SCHEDULE = [
    (bench_step_overhead, {}),
    (bench_realistic_step, {}),
    (bench_startup, {}),
    (bench_data_path, {}),
    (bench_checkpoint_stall, {"rounds": 1}),
    (bench_text_collate, {}),
    (bench_mixup_collate, {}),
    (bench_performance_monitor, {}),
    (bench_prepare, {"rounds": 1}),
    (bench_forecast, {"rounds": 1, "steps": 600}),
    (bench_eval_runner, {"rounds": 1}),
    (bench_ddp_scaling, {"rounds": 1}),
]


def main() -> list[Result]:
    results: list[Result] = []
    started = time.perf_counter()
    for module, arguments in SCHEDULE:
        name = module.__name__.rsplit(".", 1)[1]
        print(f"== {name}", flush=True)
        module_started = time.perf_counter()
        try:
            results.extend(module.main(**arguments))
        except Exception as error:  # one broken benchmark still leaves the others' rows
            results.append(Result(name, "failed to run", f"{type(error).__name__}: {error}", "", False))
        print(f"({name}: {time.perf_counter() - module_started:.0f} s)", flush=True)
    print(f"\n== all benchmarks, {time.perf_counter() - started:.0f} s")
    print_table(results)
    return results


if __name__ == "__main__":
    main()

"""Run every benchmark and print its ratio; `make bench`."""

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

if __name__ == "__main__":
    for module in (bench_step_overhead, bench_realistic_step, bench_startup, bench_data_path, bench_text_collate, bench_mixup_collate, bench_performance_monitor, bench_checkpoint_stall, bench_prepare, bench_forecast, bench_eval_runner, bench_ddp_scaling):
        print(f"== {module.__name__}")
        module.main()

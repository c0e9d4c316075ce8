"""Cost of the eval runner: the demo run with an evaluation of every checkpoint against the same run without.

Each run is a separate process that trains the demo config (3 epochs of ChannelGPT on
the generated dataset) and reports the wall time of ``ExperimentDL.train()``, which
includes waiting for the final checkpoint's evaluation. Runs with and without the
runner take turns, so that the machine's drifts in speed hit both alike; the ratio of
each pair and their median are printed. Target: at most 1.10x.

Also timed: one offline evaluation of the demo checkpoint with the default settings,
as `brain-gen eval` runs it (target: under 60 s on CPU).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROUNDS = 3

RUN = r"""
import json, sys, time
from brain_gen.training.train import ExperimentDL
experiment = ExperimentDL(sys.argv[1])
started = time.perf_counter()
experiment.train()
elapsed = time.perf_counter() - started
runner = experiment.eval_runner
print(json.dumps({"seconds": elapsed, "evaluated": [name for name, ok, _ in runner.completed if ok] if runner else []}))
"""

OFFLINE = r"""
import json, sys, time
started = time.perf_counter()
from brain_gen.config.loading import load_config
from brain_gen.eval.offline import evaluate_checkpoint
_, summary = evaluate_checkpoint(load_config(sys.argv[1]), "last")
print(json.dumps({"seconds": time.perf_counter() - started, "evaluate_seconds": summary["wall_time_s"]}))
"""


def run(script: str, *arguments: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> float:
    from brain_gen.demo import demo_config, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_synthetic_dataset(root / "data")
        configs = {}
        for side, enabled in (("without", False), ("with", True)):
            config = demo_config()
            config["save_dir"] = str(root / f"runs_{side}")
            config["datasplitter"]["dataset_root"] = str(root / "data")
            config["trainer"]["enable_progress_bar"] = True
            config["eval_runner"] = {"enabled": enabled}
            configs[side] = root / f"{side}.yaml"
            configs[side].write_text(yaml.safe_dump(config))
        ratios = []
        for round_index in range(ROUNDS):
            without = run(RUN, str(configs["without"]))
            with_runner = run(RUN, str(configs["with"]))
            ratios.append(with_runner["seconds"] / without["seconds"])
            print(
                f"round {round_index + 1}: without {without['seconds']:.1f} s, with {with_runner['seconds']:.1f} s "
                f"(evaluated {', '.join(with_runner['evaluated'])}): {ratios[-1]:.3f}x"
            )
        median = statistics.median(ratios)
        print(f"demo run with eval_runner at every checkpoint vs without: median {median:.3f}x (target <= 1.10x)")
        offline = run(OFFLINE, str(configs["with"]))
        print(
            f"one offline evaluation of the demo checkpoint with the defaults: {offline['seconds']:.1f} s "
            f"({offline['evaluate_seconds']:.1f} s after start-up; target < 60 s)"
        )
    return median


if __name__ == "__main__":
    main()
